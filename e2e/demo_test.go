package e2e_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
)

// TestDemo runs `weft-lab demo` the way `make demo` does and checks that it
// reports full connectivity, shows the leases and leaves nothing behind.
func TestDemo(t *testing.T) {
	needBins(t, "weft-lab", "weftd", "weft")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "weft-lab"), "demo", "--hosts", "2", "--backend", "vxlan")
	out, err := cmd.CombinedOutput()
	t.Logf("weft-lab demo:\n%s", out)
	if err != nil {
		t.Fatalf("weft-lab demo: %v", err)
	}
	s := string(out)
	if n := strings.Count(s, "✓"); n != 4*3 {
		t.Errorf("want 12 ✓ in a 4-pod matrix, got %d", n)
	}
	if strings.Contains(s, "✗") {
		t.Errorf("matrix has failures")
	}
	if _, err := os.Stat(filepath.Join(binDir, "weftctl")); err == nil {
		// The weftctl leases section lists both hosts' public IPs.
		i, j := strings.Index(s, "weftctl --etcd-endpoints"), strings.Index(s, "pod-to-pod")
		if i < 0 || j < i {
			t.Errorf("no weftctl leases section")
		} else if sec := s[i:j]; !strings.Contains(sec, "192.0.2.11") || !strings.Contains(sec, "192.0.2.12") {
			t.Errorf("weftctl leases lacks a host:\n%s", sec)
		}
	}
	if !strings.Contains(s, "torn down") {
		t.Errorf("demo did not report tearing down")
	}
	after, _ := lab.ListStates()
	for _, st := range after {
		if st.OwnerPID == cmd.Process.Pid {
			t.Errorf("demo left lab %s recorded in %s", st.Name, lab.StateDir)
		}
	}
}
