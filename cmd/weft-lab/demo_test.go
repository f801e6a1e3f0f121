package main

import (
	"bytes"
	"context"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestParseDemoBinDir: the bin dir is absolute, so that the commands the
// demo prints work from any directory.
func TestParseDemoBinDir(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseDemo([]string{"--bin-dir", "bin"}, io.Discard)
	if err != nil || c.binDir != filepath.Join(wd, "bin") {
		t.Fatalf("--bin-dir bin: %q, %v; want %s", c.binDir, err, filepath.Join(wd, "bin"))
	}
	c, err = parseDemo(nil, io.Discard)
	if err != nil || !filepath.IsAbs(c.binDir) {
		t.Fatalf("default bin dir %q, %v: not absolute", c.binDir, err)
	}
}

// shellWords has sh parse line and returns the words it runs.
func shellWords(t *testing.T, line string) []string {
	t.Helper()
	out, err := exec.Command("sh", "-c", "set -- "+line+"\nprintf '%s\\0' \"$@\"").Output()
	if err != nil {
		t.Fatalf("sh cannot parse %q: %v", line, err)
	}
	return strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
}

// TestTourLines: every command the demo prints runs, as printed, the
// binary meant (weft's by absolute path, others from PATH) with the
// arguments meant, even from a bin dir whose path needs quoting.
func TestTourLines(t *testing.T) {
	binDir := filepath.Join(t.TempDir(), "my bin's dir")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"weftctl", "weft-lab"} {
		if err := os.WriteFile(filepath.Join(binDir, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tr := tour{binDir: binDir, lab: "weft", host: "weft-h1", healthz: "127.0.0.1:8471", weftdLog: "/var/lib/weft-lab/weft/h1/weftd.log",
		podNS: "weft-h1p1", podIP: netip.MustParseAddr("198.18.3.2")}
	hints := append(tr.lookAround(true), tr.leases(), tr.down())
	for _, h := range hints {
		line := h.line()
		if got := shellWords(t, line); !slices.Equal(got, h.words()) {
			t.Errorf("%q runs %q, want %q", line, got, h.words())
		}
		bin := h.argv[0]
		if filepath.IsAbs(bin) {
			if st, err := os.Stat(bin); err != nil || st.Mode()&0o111 == 0 {
				t.Errorf("%q: %s is not an executable: %v", line, bin, err)
			}
		} else if slices.Contains([]string{"weftctl", "weft-lab", "weftd", "weft"}, bin) {
			t.Errorf("%q: %s is not on PATH; name it by its path", line, bin)
		}
		if h.ns != "" && h.argv[0] == "ip" {
			t.Errorf("%q: ip netns exec twice", line)
		}
	}
	var all []string
	for _, h := range hints {
		all = append(all, h.line())
	}
	joined := strings.Join(all, "\n")
	for _, want := range []string{"weftctl' --etcd-endpoints=http://", "status --addr 127.0.0.1:8471", "ping -c 3 198.18.3.2", "down weft"} {
		if !strings.Contains(joined, want) {
			t.Errorf("the tour lacks %q:\n%s", want, joined)
		}
	}
	// Without weftctl built, no weftctl command is suggested.
	for _, h := range tr.lookAround(false) {
		if strings.Contains(h.line(), "weftctl") {
			t.Errorf("weftctl suggested without it: %s", h.line())
		}
	}
}

// TestDemoCommandsWork runs weft-lab demo --keep from the built binaries
// (make build; WEFT_E2E_BIN_DIR names them), then pastes every command it
// printed into sh, from another directory: each must succeed (the
// interactive ones, bash and less, are only checked to name what exists).
// The printed clean-up command removes the lab.
func TestDemoCommandsWork(t *testing.T) {
	bin := os.Getenv("WEFT_E2E_BIN_DIR")
	switch {
	case testing.Short():
		t.Skip("runs a lab")
	case os.Geteuid() != 0:
		t.Skip("needs root: the demo creates network namespaces")
	case bin == "":
		t.Skip("WEFT_E2E_BIN_DIR is not set (make test sets it to bin/)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "weft-lab"), "demo", "--hosts", "2", "--pods", "1", "--keep")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out := stdout.String()
	_, tail, kept := strings.Cut(out, "Look around:\n")
	look, cleanup, _ := strings.Cut(tail, "Clean up with:\n")
	cleanup = strings.TrimSpace(cleanup)
	if kept && cleanup != "" {
		t.Cleanup(func() { exec.Command("sh", "-c", cleanup).Run() })
	}
	if err != nil || !kept || cleanup == "" {
		t.Fatalf("weft-lab demo --keep: %v\n%s\n%s", err, out, stderr.String())
	}
	t.Logf("weft-lab demo --keep:\n%s", out)
	var lines []string
	if _, after, ok := strings.Cut(out, "\n$ "); ok {
		lines = append(lines, strings.SplitN(after, "\n", 2)[0])
	}
	for _, l := range strings.Split(strings.TrimRight(look, "\n"), "\n") {
		lines = append(lines, strings.TrimSpace(l))
	}
	elsewhere := t.TempDir()
	for _, line := range lines {
		words := shellWords(t, line)
		if words[len(words)-1] == "bash" || words[0] == "less" {
			if _, err := os.Stat(words[len(words)-1]); words[0] == "less" && err != nil {
				t.Errorf("%q: %v", line, err)
			}
			continue
		}
		c := exec.CommandContext(ctx, "sh", "-c", line)
		c.Dir = elsewhere
		o, err := c.CombinedOutput()
		if err != nil {
			t.Errorf("%q as printed: %v\n%s", line, err, o)
		}
		t.Logf("$ %s\n%s", line, o)
	}
	c := exec.CommandContext(ctx, "sh", "-c", cleanup)
	c.Dir = elsewhere
	if o, err := c.CombinedOutput(); err != nil || !strings.Contains(string(o), "removed lab") {
		t.Errorf("%q as printed: %v\n%s", cleanup, err, o)
	}
}
