package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/weftnet/weft/internal/lab"
)

// bindProbeEnv makes the test binary, started again as a child, try one
// bind and exit: "udp:192.0.2.11:8472" or "tcp:127.0.0.1:8471".
const bindProbeEnv = "WEFT_E2E_BIND_PROBE"

// Exit codes of the bind probe.
const (
	probeBound     = 0
	probeInUse     = 3
	probeOtherFail = 4
)

func bindProbe(spec string) int {
	network, addr, _ := strings.Cut(spec, ":")
	var err error
	switch network {
	case "udp":
		var c net.PacketConn
		if c, err = net.ListenPacket("udp4", addr); err == nil {
			c.Close()
		}
	case "tcp":
		var ln net.Listener
		if ln, err = net.Listen("tcp4", addr); err == nil {
			ln.Close()
		}
	default:
		err = fmt.Errorf("unknown network %q", network)
	}
	switch {
	case err == nil:
		fmt.Printf("uid %d bound %s\n", os.Getuid(), spec)
		return probeBound
	case errors.Is(err, syscall.EADDRINUSE):
		fmt.Printf("uid %d: %v\n", os.Getuid(), err)
		return probeInUse
	default:
		fmt.Printf("uid %d: %v\n", os.Getuid(), err)
		return probeOtherFail
	}
}

// probeBinary returns a copy of the test binary that uid 65534 may run (go
// test keeps its own in a directory only root can enter).
func probeBinary(t *testing.T) string {
	t.Helper()
	probeOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			probeErr = err
			return
		}
		data, err := os.ReadFile(self)
		if err != nil {
			probeErr = err
			return
		}
		dir, err := os.MkdirTemp("", "weft-e2e-probe-")
		if err != nil {
			probeErr = err
			return
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			probeErr = err
			return
		}
		probePath = filepath.Join(dir, "probe")
		probeErr = os.WriteFile(probePath, data, 0o755)
	})
	if probeErr != nil {
		t.Fatalf("copy the test binary for the bind probe: %v", probeErr)
	}
	return probePath
}

var (
	probeOnce sync.Once
	probePath string
	probeErr  error
)

// removeProbeBinary deletes the copy made by probeBinary, if any.
func removeProbeBinary() {
	if probePath != "" {
		os.RemoveAll(filepath.Dir(probePath))
	}
}

// bindAsNobody tries, as uid/gid 65534 inside h's namespace, to bind spec
// ("udp:ADDR:PORT" or "tcp:ADDR:PORT"), and returns the probe's exit code
// and output.
func bindAsNobody(t *testing.T, ctx context.Context, h *lab.Host, spec string) (int, string) {
	t.Helper()
	self := probeBinary(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatalf("setpriv (util-linux) is needed to run a probe as another user: %v", err)
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", h.Name,
		"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", self)
	cmd.Env = append(os.Environ(), bindProbeEnv+"="+spec)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return probeBound, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("bind probe %s on %s: %v: %s", spec, h.Name, err, out)
	return 0, ""
}
