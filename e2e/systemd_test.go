package e2e_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
)

// TestSystemdNotify plays systemd's part of Type=notify: weftd must send
// READY=1 on $NOTIFY_SOCKET only once it is ready (config present, lease
// held, subnet file written), and not while it waits for a config.
func TestSystemdNotify(t *testing.T) {
	needBins(t, "weftd", "weft-lab")
	l := newLab(t, lab.Options{Hosts: 1, Name: "wn", NoConfig: true})
	h := l.Host(1)

	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The lab starts weftd with this process's environment.
	t.Setenv("NOTIFY_SOCKET", sock)
	if err := h.StartWeftd(); err != nil {
		t.Fatal(err)
	}
	os.Unsetenv("NOTIFY_SOCKET")

	read := func(wait time.Duration) string {
		buf := make([]byte, 512)
		conn.SetReadDeadline(time.Now().Add(wait))
		n, _, err := conn.ReadFromUnix(buf)
		if err != nil {
			return ""
		}
		return string(buf[:n])
	}
	if msg := read(3 * time.Second); msg != "" {
		t.Fatalf("weftd notified %q while no network config exists", msg)
	}
	if _, err := os.Stat(h.SubnetFile()); err == nil {
		t.Fatal("subnet file written without a network config")
	}

	if err := l.WriteConfig(`{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan"}}`); err != nil {
		t.Fatal(err)
	}
	msg := read(10 * time.Second)
	if !strings.Contains(msg, "READY=1") {
		t.Fatalf("no READY=1 within 10 s of the config appearing (got %q)\n%s", msg, readFile(h.WeftdLog()))
	}
	if _, err := h.SubnetEnv(); err != nil {
		t.Fatalf("READY=1 sent before the subnet file was written: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.WaitReady(ctx); err != nil {
		t.Fatalf("READY=1 sent but /readyz is not 200: %v", err)
	}
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
