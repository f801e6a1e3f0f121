package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weftnet/weft/internal/lab"
)

// demoConfig is what `weft-lab demo` was asked for.
type demoConfig struct {
	hosts       int
	podsPerHost int
	backend     string
	keep        bool
	binDir      string
	verbose     bool
	dualStack   bool
}

func parseDemo(args []string, stderr io.Writer) (demoConfig, error) {
	var c demoConfig
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&c.hosts, "hosts", 3, "number of hosts")
	fs.IntVar(&c.podsPerHost, "pods", 2, "pods per host")
	fs.StringVar(&c.backend, "backend", "vxlan", "backend type: vxlan, host-gw, udp or wireguard")
	fs.BoolVar(&c.keep, "keep", false, "leave the lab running; remove it later with 'weft-lab down'")
	fs.StringVar(&c.binDir, "bin-dir", "", "directory holding weftd, weftctl and weft (default: this executable's directory)")
	fs.BoolVar(&c.verbose, "v", false, "log lab progress")
	fs.BoolVar(&c.dualStack, "dual-stack", false, "IPv6 beside IPv4: IPv6 underlay addresses (2001:db8::/64), EnableIPv6 with IPv6Network 2001:db8:100::/48, and a ping matrix per family (vxlan and host-gw)")
	if err := fs.Parse(args); err != nil {
		return c, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("%w: demo takes no arguments, got %q", errUsage, fs.Args())
	}
	switch c.backend {
	case "vxlan", "host-gw", "udp", "wireguard":
	default:
		return c, fmt.Errorf("%w: --backend must be vxlan, host-gw, udp or wireguard, got %q", errUsage, c.backend)
	}
	if c.dualStack && c.backend == "udp" {
		return c, fmt.Errorf("%w: --dual-stack needs vxlan or host-gw: the udp backend carries IPv4 only", errUsage)
	}
	if c.hosts < 1 || c.hosts > 99 {
		return c, fmt.Errorf("%w: --hosts must be 1..99, got %d", errUsage, c.hosts)
	}
	if c.podsPerHost < 0 || c.podsPerHost > 9 {
		return c, fmt.Errorf("%w: --pods must be 0..9, got %d", errUsage, c.podsPerHost)
	}
	if c.binDir == "" {
		exe, err := os.Executable()
		if err != nil {
			return c, fmt.Errorf("find bin dir: %w", err)
		}
		c.binDir = filepath.Dir(exe)
	}
	// The commands the demo prints name the binaries by this path: make
	// it absolute, so that they work from any directory.
	abs, err := filepath.Abs(c.binDir)
	if err != nil {
		return c, fmt.Errorf("find bin dir: %w", err)
	}
	c.binDir = abs
	return c, nil
}

// checkBins reports missing binaries with the command that builds them.
func checkBins(dir string, names ...string) error {
	var missing []string
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s in %s: run 'make build' and use bin/weft-lab, or pass --bin-dir", strings.Join(missing, ", "), dir)
	}
	return nil
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseDemo(args, stderr)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("demo needs root: it creates network namespaces")
	}
	if err := lab.CheckTools("ip", "iptables", "ping"); err != nil {
		return err
	}
	if err := checkBins(c.binDir, "weftd", "weft", "weft-lab"); err != nil {
		return err
	}
	level := slog.LevelWarn
	if c.verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	start := time.Now()
	step := func(format string, a ...any) {
		fmt.Fprintf(stdout, "[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, a...))
	}
	upCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	l, err := lab.New(upCtx, lab.Options{
		Hosts: c.hosts, Backend: c.backend, BinDir: c.binDir,
		Name: "weft", Logger: logger, NoConfig: true, IPv6: c.dualStack,
	})
	if err != nil {
		return err
	}
	kept := false
	defer func() {
		if !kept {
			if err := l.Close(); err != nil {
				fmt.Fprintf(stderr, "weft-lab: tear down: %v\n", err)
			} else {
				step("lab %s torn down", l.Name)
			}
		}
	}()
	underlay := "192.0.2.0/24"
	if c.dualStack {
		underlay += " and 2001:db8::/64"
	}
	step("lab %s (weft-lab %s): switch %s, %d hosts on %s, etcd at %s", l.Name, version, l.Switch, c.hosts, underlay, lab.EtcdEndpoint)

	config := fmt.Sprintf(`{"Network":"198.18.0.0/16","Backend":{"Type":%q}}`, c.backend)
	if c.dualStack {
		config = fmt.Sprintf(`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":%q,"Backend":{"Type":%q}}`, l.Options().Network6, c.backend)
	}
	if err := l.WriteConfig(config); err != nil {
		return err
	}
	step("network config: %s", config)

	for _, h := range l.Hosts {
		if err := h.StartWeftd(); err != nil {
			return err
		}
	}
	for _, h := range l.Hosts {
		if err := h.WaitReady(upCtx); err != nil {
			return err
		}
		env, err := h.SubnetEnv()
		if err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		if c.dualStack {
			step("%s (%s, %s): weftd ready, subnets %s and %s, mtu %d", h.Name, h.IP, h.IP6, env.LeaseSubnet(), env.LeaseSubnet6(), env.MTU)
			continue
		}
		step("%s (%s): weftd ready, subnet %s, mtu %d", h.Name, h.IP, env.LeaseSubnet(), env.MTU)
	}
	for _, h := range l.Hosts {
		for k := 0; k < c.podsPerHost; k++ {
			p, err := h.AddPod(upCtx, "")
			if err != nil {
				return err
			}
			if c.dualStack {
				step("pod %s on %s: %s and %s", p.NSName, h.Name, p.IP, p.IP6)
				continue
			}
			step("pod %s on %s: %s", p.NSName, h.Name, p.IP)
		}
	}

	h1 := l.Host(1)
	tour := tourOf(l, c.binDir)
	haveWeftctl := checkBins(c.binDir, "weftctl") == nil
	if !haveWeftctl {
		fmt.Fprintf(stderr, "weft-lab: not showing leases: %v\n", checkBins(c.binDir, "weftctl"))
	} else {
		out, err := h1.Exec(upCtx, tour.leases().argv...)
		fmt.Fprintf(stdout, "\n$ %s\n%s\n", tour.leases().line(), strings.TrimRight(string(out), "\n"))
		if err != nil {
			fmt.Fprintf(stderr, "weft-lab: weftctl leases: %v\n", err)
		}
	}

	var demoErr error
	if c.podsPerHost > 0 {
		if _, err := l.WaitConnectivity(upCtx, 30*time.Second); err != nil {
			demoErr = err
		}
		m := l.PingMatrix(upCtx)
		fmt.Fprintf(stdout, "\npod-to-pod ping (3 packets each, average RTT):\n%s\n", m)
		if !m.OK() && demoErr == nil {
			demoErr = fmt.Errorf("connectivity: %s", strings.Join(m.Failures(), "; "))
		}
		if c.dualStack {
			if _, err := l.WaitConnectivity6(upCtx, 30*time.Second); err != nil && demoErr == nil {
				demoErr = err
			}
			m6 := l.PingMatrix6(upCtx)
			fmt.Fprintf(stdout, "\npod-to-pod ping over IPv6 (3 packets each, average RTT):\n%s\n", m6)
			if !m6.OK() && demoErr == nil {
				demoErr = fmt.Errorf("IPv6 connectivity: %s", strings.Join(m6.Failures(), "; "))
			}
		}
		if demoErr != nil {
			l.DumpLogs(stderr)
		}
	}

	if c.keep {
		if err := l.Keep(); err != nil {
			return err
		}
		kept = true
		fmt.Fprintf(stdout, "lab %s kept running. Look around:\n", l.Name)
		for _, h := range tour.lookAround(haveWeftctl) {
			fmt.Fprintf(stdout, "  %s\n", h.line())
		}
		fmt.Fprintf(stdout, "Clean up with:\n  %s\n", tour.down().line())
	}
	return demoErr
}

// tour is what the demo suggests to look at: commands printed so that they
// work as printed, pasted into a shell from any directory (binaries by
// absolute path, arguments quoted where needed).
type tour struct {
	binDir, lab string
	host        string // first host's namespace
	healthz     string // its weftd's HTTP address
	weftdLog    string
	podNS       string     // first pod's namespace, "" without pods
	podIP       netip.Addr // last pod's address
}

func tourOf(l *lab.Lab, binDir string) tour {
	h1 := l.Host(1)
	t := tour{binDir: binDir, lab: l.Name, host: h1.Name, healthz: h1.HealthzAddr(), weftdLog: h1.WeftdLog()}
	if pods := l.Pods(); len(pods) > 0 {
		t.podNS, t.podIP = pods[0].NSName, pods[len(pods)-1].IP
	}
	return t
}

// hint is one suggested command, run in the network namespace ns ("": the
// caller's), and what it shows.
type hint struct {
	ns   string
	argv []string
	note string
}

// words is the whole command line: ip netns exec NS ARGV...
func (h hint) words() []string {
	if h.ns == "" {
		return h.argv
	}
	return append([]string{"ip", "netns", "exec", h.ns}, h.argv...)
}

// line is the hint as a shell line, the note as a comment.
func (h hint) line() string {
	var words []string
	for _, a := range h.words() {
		words = append(words, shellQuote(a))
	}
	s := strings.Join(words, " ")
	if h.note != "" {
		s += "    # " + h.note
	}
	return s
}

// shellQuote quotes s for a POSIX shell when it holds anything but plain
// word characters.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+=/.,:@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (t tour) weftctl(args ...string) []string {
	return append([]string{filepath.Join(t.binDir, "weftctl")}, args...)
}

func (t tour) leases() hint {
	return hint{ns: t.host, argv: t.weftctl("--etcd-endpoints="+lab.EtcdEndpoint, "leases"), note: "every host's lease, from etcd"}
}

// lookAround lists the commands shown when the lab is kept.
func (t tour) lookAround(withWeftctl bool) []hint {
	hs := []hint{
		{argv: []string{"ip", "netns", "list"}, note: "the lab's namespaces start with " + t.lab},
		{ns: t.host, argv: []string{"bash"}, note: "a shell on a host: ip route, ip -d link show, iptables -S"},
	}
	if withWeftctl {
		hs = append(hs, t.leases(),
			hint{ns: t.host, argv: t.weftctl("status", "--addr", t.healthz), note: "what weftd on " + t.host + " says"})
	}
	if t.podNS != "" {
		hs = append(hs, hint{ns: t.podNS, argv: []string{"ping", "-c", "3", t.podIP.String()}, note: "from a pod to another"})
	}
	return append(hs, hint{argv: []string{"less", t.weftdLog}, note: "weftd's log on " + t.host})
}

func (t tour) down() hint {
	return hint{argv: []string{filepath.Join(t.binDir, "weft-lab"), "down", t.lab}}
}

func runDown(args []string, stdout io.Writer) error {
	if os.Geteuid() != 0 {
		return errors.New("down needs root: it deletes network namespaces")
	}
	states, err := lab.ListStates()
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, a := range args {
		want[a] = true
	}
	var errs []error
	found := 0
	for _, s := range states {
		if len(want) > 0 && !want[s.Name] {
			continue
		}
		if len(want) == 0 && !s.Orphaned() {
			fmt.Fprintf(stdout, "skipping lab %s: its owner (pid %d) is still running; name it to remove it anyway\n", s.Name, s.OwnerPID)
			continue
		}
		found++
		delete(want, s.Name)
		if err := lab.Down(s); err != nil {
			errs = append(errs, fmt.Errorf("down %s: %w", s.Name, err))
			continue
		}
		fmt.Fprintf(stdout, "removed lab %s (%d namespaces)\n", s.Name, len(s.Namespaces))
	}
	for name := range want {
		errs = append(errs, fmt.Errorf("no lab named %q in %s", name, lab.StateDir))
	}
	if found == 0 && len(args) == 0 {
		fmt.Fprintf(stdout, "no labs recorded in %s\n", lab.StateDir)
	}
	return errors.Join(errs...)
}
