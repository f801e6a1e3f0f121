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

// TestLabSelf checks the lab itself, without weftd: the topology, etcd
// reachable from the root namespace (through the in-namespace dialer) and
// from every host namespace over the underlay, etcd stop/start/pause, and
// that Close leaves no namespace, process or file behind.
func TestLabSelf(t *testing.T) {
	needBins(t, "weft-lab")
	rootLinks := linkNames(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	l, err := lab.New(ctx, lab.Options{Hosts: 3, BinDir: binDir, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("lab.New: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			l.Close()
		}
	})

	t.Run("topology", func(t *testing.T) {
		if len(l.Hosts) != 3 {
			t.Fatalf("got %d hosts, want 3", len(l.Hosts))
		}
		for i, h := range l.Hosts {
			if want := "192.0.2.1" + string(rune('1'+i)); h.IP.String() != want {
				t.Errorf("%s: IP %s, want %s", h.Name, h.IP, want)
			}
			if len(h.Name) > 15 {
				t.Errorf("%s: namespace name longer than 15 characters", h.Name)
			}
			out, err := h.Exec(ctx, "ip", "-o", "-4", "addr", "show", "dev", "eth0")
			if err != nil || !strings.Contains(string(out), h.IP.String()+"/24") {
				t.Errorf("%s: eth0 address: %v %s", h.Name, err, out)
			}
			out, err = h.Exec(ctx, "ip", "-o", "link", "show", "dev", "eth0")
			if err != nil || !strings.Contains(string(out), "mtu 1500") || !strings.Contains(string(out), "UP") {
				t.Errorf("%s: eth0 not up with mtu 1500: %v %s", h.Name, err, out)
			}
			out, err = h.Exec(ctx, "cat", "/proc/sys/net/ipv4/ip_forward")
			if err != nil || strings.TrimSpace(string(out)) != "1" {
				t.Errorf("%s: ip_forward = %q (%v), want 1", h.Name, out, err)
			}
			// Underlay: every host reaches the switch and the next host.
			next := l.Hosts[(i+1)%len(l.Hosts)]
			for _, dst := range []string{lab.SwitchIP, next.IP.String()} {
				if out, err := h.Exec(ctx, "ping", "-n", "-q", "-c", "1", "-W", "2", dst); err != nil {
					t.Errorf("%s: ping %s: %v %s", h.Name, dst, err, out)
				}
			}
		}
		out, err := exec.CommandContext(ctx, "ip", "-n", l.Switch, "-o", "link", "show", "master", "br0").Output()
		if err != nil || strings.Count(string(out), "\n") != 3 {
			t.Errorf("switch br0 ports: %v\n%s", err, out)
		}
	})

	t.Run("root namespace untouched", func(t *testing.T) {
		if got := linkNames(t, ""); strings.Join(got, ",") != strings.Join(rootLinks, ",") {
			t.Errorf("root namespace links changed: before %v, after %v", rootLinks, got)
		}
	})

	t.Run("etcd from root through the switch namespace", func(t *testing.T) {
		cli, err := l.Etcd(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		resp, err := cli.Get(ctx, lab.ConfigKey)
		if err != nil {
			t.Fatalf("get config: %v", err)
		}
		if len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `"Type":"vxlan"`) {
			t.Fatalf("config = %v, want the lab's vxlan config %s", resp.Kvs, l.NetworkConfig())
		}
	})

	t.Run("etcd from every host namespace", func(t *testing.T) {
		for _, h := range l.Hosts {
			out, err := h.Exec(ctx, filepath.Join(binDir, "weft-lab"), "probe", lab.EtcdEndpoint+"/health")
			if err != nil || !strings.Contains(string(out), `"health":"true"`) {
				t.Errorf("%s: etcd /health: %v %s", h.Name, err, out)
			}
		}
	})

	t.Run("etcd stop start pause", func(t *testing.T) {
		if err := l.Put("/lab/test", "kept"); err != nil {
			t.Fatal(err)
		}
		if err := l.StopEtcd(); err != nil {
			t.Fatal(err)
		}
		h := l.Host(1)
		if out, err := h.Exec(ctx, filepath.Join(binDir, "weft-lab"), "probe", "--timeout=1s", lab.EtcdEndpoint+"/health"); err == nil {
			t.Fatalf("etcd still answers after StopEtcd: %s", out)
		}
		if err := l.StartEtcd(); err != nil {
			t.Fatal(err)
		}
		cli, err := l.Etcd(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		resp, err := cli.Get(ctx, "/lab/test")
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "kept" {
			t.Fatalf("data lost across etcd restart: %v %v", resp, err)
		}
		if err := l.PauseEtcd(); err != nil {
			t.Fatal(err)
		}
		pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err = cli.Get(pctx, "/lab/test")
		pcancel()
		if err == nil {
			t.Errorf("paused etcd answered a request")
		}
		if err := l.ResumeEtcd(); err != nil {
			t.Fatal(err)
		}
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = cli.Get(rctx, "/lab/test")
		rcancel()
		if err != nil {
			t.Errorf("resumed etcd: %v", err)
		}
	})

	// Close: everything goes, and a second Close is harmless.
	nss := l.State().Namespaces
	dir := l.Dir
	etcdPID := l.EtcdPID()
	if err := l.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	closed = true
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, n := range nss {
		if _, err := os.Stat("/var/run/netns/" + n); err == nil {
			t.Errorf("namespace %s still exists after Close", n)
		}
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("lab dir %s still exists after Close", dir)
	}
	if _, err := os.Stat(filepath.Join(lab.StateDir, l.Name+".json")); err == nil {
		t.Errorf("state file still exists after Close")
	}
	if etcdPID != 0 {
		if _, err := os.Stat("/proc/" + itoa(etcdPID)); err == nil {
			if data, _ := os.ReadFile("/proc/" + itoa(etcdPID) + "/cmdline"); strings.Contains(string(data), "weft-lab") {
				t.Errorf("etcd (pid %d) still running after Close", etcdPID)
			}
		}
	}
}

// linkNames lists link names in the namespace (root when ns is "").
func linkNames(t *testing.T, ns string) []string {
	t.Helper()
	args := []string{"-o", "link", "show"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	out, err := exec.Command("ip", args...).Output()
	if err != nil {
		t.Fatalf("ip link: %v", err)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			names = append(names, strings.TrimSuffix(f[1], ":"))
		}
	}
	return names
}

// TestLabKeepDown checks that a kept lab survives its Close and that
// `weft-lab down NAME` removes all of it.
func TestLabKeepDown(t *testing.T) {
	needBins(t, "weft-lab")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := lab.New(ctx, lab.Options{Hosts: 1, BinDir: binDir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	st := l.State()
	t.Cleanup(func() { lab.Down(st) }) // backstop if the test fails midway
	if err := l.Keep(); err != nil {
		t.Fatal(err)
	}
	etcdPID := l.EtcdPID()
	l.Close() // no effect on a kept lab
	for _, n := range st.Namespaces {
		if _, err := os.Stat("/var/run/netns/" + n); err != nil {
			t.Fatalf("kept lab lost namespace %s: %v", n, err)
		}
	}
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "weft-lab"), "down", st.Name).CombinedOutput()
	if err != nil {
		t.Fatalf("weft-lab down: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "removed lab "+st.Name) {
		t.Errorf("weft-lab down output: %s", out)
	}
	for _, n := range st.Namespaces {
		if _, err := os.Stat("/var/run/netns/" + n); err == nil {
			t.Errorf("namespace %s survived weft-lab down", n)
		}
	}
	if _, err := os.Stat(st.Dir); err == nil {
		t.Errorf("lab dir %s survived weft-lab down", st.Dir)
	}
	if data, err := os.ReadFile("/proc/" + itoa(etcdPID) + "/cmdline"); err == nil && strings.Contains(string(data), "weft-lab") {
		t.Errorf("etcd pid %d survived weft-lab down", etcdPID)
	}
	out, err = exec.CommandContext(ctx, filepath.Join(binDir, "weft-lab"), "down", st.Name).CombinedOutput()
	if err == nil {
		t.Errorf("weft-lab down of a removed lab succeeded: %s", out)
	}
}
