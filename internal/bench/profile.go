package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Profile is the hot spots of one profiled phase.
type Profile struct {
	Phase string
	// Self lists the symbols with the most samples of their own, e.g.
	// "31.2% syscall.Syscall6"; Weft the weft functions with the most
	// samples including their callees.
	Self, Weft []string
	Samples    string // as perf reports it, e.g. "1K"
}

// PerfAvailable reports whether perf can be used for profiles.
func PerfAvailable() bool {
	_, err := exec.LookPath("perf")
	return err == nil
}

// PerfProfile samples pid (user and kernel stacks, 499 Hz) with perf while
// fn runs and returns the hottest symbols. The perf data file is written
// in dir and removed afterwards.
func PerfProfile(ctx context.Context, pid int, dir, phase string, fn func() error) (Profile, error) {
	prof := Profile{Phase: phase}
	data := filepath.Join(dir, "perf-"+strings.ReplaceAll(phase, " ", "-")+".data")
	defer os.Remove(data)
	rec := exec.Command("perf", "record", "-q", "-F", "499", "-g", "-p", strconv.Itoa(pid), "-o", data)
	rec.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := rec.Start(); err != nil {
		return prof, fmt.Errorf("perf record: %w", err)
	}
	time.Sleep(200 * time.Millisecond) // let perf attach
	fnErr := fn()
	_ = rec.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- rec.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = rec.Process.Kill()
		<-done
	}
	if fnErr != nil {
		return prof, fnErr
	}
	self, err := perfReport(ctx, data, "--no-children")
	if err != nil {
		return prof, err
	}
	prof.Self = topN(self, 8, func(string) bool { return true })
	prof.Samples = perfSamples(self)
	incl, err := perfReport(ctx, data, "--children")
	if err != nil {
		return prof, err
	}
	prof.Weft = topN(incl, 8, func(s string) bool { return strings.Contains(s, "weftnet/weft/") && !strings.Contains(s, "main.main") })
	return prof, nil
}

func perfReport(ctx context.Context, data, mode string) (string, error) {
	out, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--stdio", mode,
		"--sort", "symbol", "-g", "none", "--percent-limit", "0.5").Output()
	if err != nil {
		return "", fmt.Errorf("perf report: %w", err)
	}
	return string(out), nil
}

func perfSamples(report string) string {
	for line := range strings.SplitSeq(report, "\n") {
		if rest, ok := strings.CutPrefix(line, "# Samples: "); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				return f[0]
			}
		}
	}
	return "?"
}

// ParsePerfReport extracts "percent symbol" pairs from `perf report
// --stdio --sort symbol -g none` output, in order. With --children the
// first percentage (children, inclusive) is kept.
func ParsePerfReport(report string) [][2]string {
	var out [][2]string
	sc := bufio.NewScanner(strings.NewReader(report))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 || !strings.HasSuffix(f[0], "%") {
			continue
		}
		// Columns: Children% [Self%] [.]|[k] symbol...
		i := 1
		for i < len(f) && strings.HasSuffix(f[i], "%") {
			i++
		}
		if i >= len(f) || (f[i] != "[.]" && f[i] != "[k]") {
			continue
		}
		rest := f[i+1:]
		// perf pads the columns it cannot fill with "-".
		for len(rest) > 1 && rest[len(rest)-1] == "-" {
			rest = rest[:len(rest)-1]
		}
		sym := strings.Join(rest, " ")
		out = append(out, [2]string{f[0], sym})
	}
	return out
}

func topN(report string, n int, keep func(string) bool) []string {
	var out []string
	for _, e := range ParsePerfReport(report) {
		if len(out) == n {
			break
		}
		if keep(e[1]) {
			out = append(out, e[0]+" "+e[1])
		}
	}
	return out
}
