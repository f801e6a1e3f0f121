package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/weftnet/weft/internal/bench"
	"github.com/weftnet/weft/internal/lab"
)

// benchConfig is what `weft-lab bench` was asked for.
type benchConfig struct {
	binDir  string
	out     string
	quick   bool
	only    []string
	verbose bool
	// flanneld is measured next to weftd in the control plane: --flanneld,
	// or $FLANNELD.
	flanneld string
	// peers are the control plane's peer counts (default bench's).
	peers []int
	// heapProfiles is a directory for weftd's heap profiles, or empty.
	heapProfiles string
}

func parseBench(args []string, stderr io.Writer) (benchConfig, error) {
	var c benchConfig
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.binDir, "bin-dir", "", "directory holding weftd, weft and weft-lab (default: this executable's directory)")
	fs.StringVar(&c.out, "out", "Documentation/benchmarks.md", "write the Markdown report here (empty: don't)")
	fs.BoolVar(&c.quick, "quick", false, "shorter transfers and fewer pods (about 3 minutes)")
	only := fs.String("only", strings.Join(bench.AllSections, ","), "comma-separated sections to run")
	fs.BoolVar(&c.verbose, "v", false, "log the lab's progress")
	fs.StringVar(&c.flanneld, "flanneld", os.Getenv("FLANNELD"), "also measure this flanneld binary's control plane, side by side (default $FLANNELD)")
	peers := fs.String("peers", "", "comma-separated peer counts of the control plane (default "+intsString(bench.ControlPeerCounts)+")")
	fs.StringVar(&c.heapProfiles, "heap-profiles", "", "save weftd's heap profiles after start-up, join and leave of the control plane in this directory")
	if err := fs.Parse(args); err != nil {
		return c, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("%w: bench takes no arguments, got %q", errUsage, fs.Args())
	}
	for _, s := range strings.Split(*only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			c.only = append(c.only, s)
		}
	}
	for _, s := range strings.Split(*peers, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return c, fmt.Errorf("%w: --peers: %q is not a positive number", errUsage, s)
		}
		c.peers = append(c.peers, n)
	}
	if err := bench.CheckSections(c.only); err != nil {
		return c, fmt.Errorf("%w: --only: %v", errUsage, err)
	}
	if c.flanneld != "" {
		fi, err := os.Stat(c.flanneld)
		if err != nil {
			return c, fmt.Errorf("%w: flanneld: %v", errUsage, err)
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return c, fmt.Errorf("%w: flanneld: %s is not an executable file", errUsage, c.flanneld)
		}
	}
	if c.binDir == "" {
		exe, err := os.Executable()
		if err != nil {
			return c, err
		}
		c.binDir = filepath.Dir(exe)
	}
	return c, nil
}

func intsString(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

// runBench is `weft-lab bench`: it runs the measurements of package
// internal/bench, prints one table and writes it with the machine description
// to --out.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseBench(args, stderr)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("bench needs root: it creates network namespaces")
	}
	if err := lab.CheckTools("ip", "iptables", "ping", "iperf3", "sysctl"); err != nil {
		return err
	}
	if err := checkBins(c.binDir, "weftd", "weft", "weft-lab"); err != nil {
		return err
	}
	level := slog.LevelWarn
	if c.verbose {
		level = slog.LevelDebug
	}
	start := time.Now()
	res, err := bench.Run(ctx, bench.Options{
		BinDir:   c.binDir,
		Name:     "wb",
		Only:     c.only,
		Quick:    c.quick,
		Logger:   slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
		Progress: stderr,
		Flanneld: c.flanneld,

		ControlPeers: c.peers,
		HeapProfiles: c.heapProfiles,
	})
	if err != nil {
		return err
	}
	table := res.Table()
	fmt.Fprint(stdout, table.Text())
	missed := res.Missed()
	for _, m := range missed {
		fmt.Fprintf(stdout, "target missed: %s\n", m)
	}
	if c.out != "" {
		cmd := "make bench"
		if c.quick || len(c.only) != len(bench.AllSections) {
			cmd = "make build && ./bin/weft-lab " + strings.Join(append([]string{"bench"}, args...), " ")
		}
		if c.flanneld != "" && !strings.Contains(cmd, "--flanneld") {
			cmd = "FLANNELD=/path/to/flanneld " + cmd
		}
		doc := bench.Document{
			Env:     bench.CollectEnv(),
			Table:   table,
			Command: cmd,
			Quick:   c.quick,
			Elapsed: time.Since(start),
			Notes:   bench.Notes(res),
		}
		if err := os.WriteFile(c.out, []byte(doc.Markdown()), 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
		fmt.Fprintf(stderr, "bench: report written to %s\n", c.out)
	}
	// Missed targets are results; failed measurements are errors.
	if failed := res.Failed(); len(failed) > 0 {
		return fmt.Errorf("%d measurement(s) failed:\n  %s", len(failed), strings.Join(failed, "\n  "))
	}
	return nil
}
