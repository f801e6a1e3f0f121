package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/subnet"
)

// vtepDevice is the vxlan device weftd creates for VNI 1.
const vtepDevice = "weft.1"

// TestVXLAN is issue #2 end to end: three hosts on vxlan with one pod each.
// The subtests run in order on one lab, each starting from full
// connectivity:
//   - every pod reaches every other pod;
//   - weftd restarted on a host while another host's pod pings a pod there
//     at 100/s: no packet lost, same subnet, same VTEP MAC;
//   - a deleted route and a deleted vxlan device come back;
//   - a host whose weftd stopped and whose lease was deleted disappears
//     from the others' routes.
func TestVXLAN(t *testing.T) {
	needBins(t, "weft-lab", "weftd", "weft")
	l := newLab(t, lab.Options{Hosts: 3, Backend: "vxlan", Logger: testLogger(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	startAll(ctx, t, l)
	pods := make([]*lab.Pod, len(l.Hosts))
	for i, h := range l.Hosts {
		p, err := h.AddPod(ctx, "")
		if err != nil {
			t.Fatalf("AddPod on %s: %v", h.Name, err)
		}
		pods[i] = p
	}

	t.Run("full mesh", func(t *testing.T) {
		m, err := l.WaitConnectivity(ctx, 20*time.Second)
		t.Logf("ping matrix:\n%s", m)
		if err != nil {
			t.Fatal(err)
		}
		for i, h := range l.Hosts {
			env, err := h.SubnetEnv()
			if err != nil {
				t.Fatal(err)
			}
			if env.MTU != lab.UnderlayMTU-50 {
				t.Errorf("%s: FLANNEL_MTU=%d, want %d", h.Name, env.MTU, lab.UnderlayMTU-50)
			}
			if !env.LeaseSubnet().Contains(pods[i].IP) {
				t.Errorf("pod %s IP %s is outside %s's subnet %s", pods[i].Name, pods[i].IP, h.Name, env.LeaseSubnet())
			}
		}
		// Per peer: a neighbour entry (peer subnet address → peer VTEP MAC)
		// and an FDB entry (peer VTEP MAC → peer public IP).
		for _, h := range l.Hosts {
			for _, o := range l.Hosts {
				if o == h {
					continue
				}
				sn, mac := mustEnv(t, o).LeaseSubnet(), vtepMAC(ctx, t, o)
				if !hasNeigh(ctx, t, h, sn.Addr(), mac) {
					t.Errorf("%s: no neighbour entry %s → %s", h.Name, sn.Addr(), mac)
				}
				if !hasFDB(ctx, t, h, mac, o.IP) {
					t.Errorf("%s: no FDB entry %s → %s", h.Name, mac, o.IP)
				}
			}
		}
	})

	t.Run("restart keeps traffic subnet and MAC", func(t *testing.T) {
		src, dst := pods[0], pods[1]
		h := l.Host(2)
		envBefore := mustEnv(t, h)
		macBefore := vtepMAC(ctx, t, h)

		const count, interval = 300, 10 * time.Millisecond // 3 s at 100/s
		type pingOut struct {
			res lab.PingResult
			err error
		}
		done := make(chan pingOut, 1)
		pingStart := time.Now()
		go func() {
			r, err := src.Ping(ctx, dst.IP, count, interval)
			done <- pingOut{r, err}
		}()
		time.Sleep(500 * time.Millisecond)
		if err := h.StopWeftd(syscall.SIGTERM); err != nil {
			t.Errorf("stop weftd: %v", err)
		}
		if err := h.StartWeftd(); err != nil {
			t.Fatal(err)
		}
		rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
		err := h.WaitReady(rctx)
		rcancel()
		if err != nil {
			t.Fatal(err)
		}
		restarted := time.Since(pingStart)
		out := <-done
		pingEnded := time.Since(pingStart)
		if out.err != nil {
			t.Fatal(out.err)
		}
		t.Logf("ping %s → %s across the restart: %d sent, %d received, rtt avg %v max %v; weftd ready again %v after the pings began",
			src.IP, dst.IP, out.res.Sent, out.res.Received, out.res.RTTs.Avg, out.res.RTTs.Max, restarted.Round(time.Millisecond))
		if restarted+500*time.Millisecond > pingEnded {
			t.Errorf("weftd was ready again %v after the pings began, but they ended at %v: the pings did not cover the restart", restarted, pingEnded)
		}
		if out.res.Sent != count || out.res.Lost() != 0 {
			t.Errorf("lost %d of %d packets across the weftd restart", out.res.Lost(), out.res.Sent)
		}
		if envAfter := mustEnv(t, h); envAfter.Subnet != envBefore.Subnet {
			t.Errorf("subnet changed across restart: %s → %s", envBefore.Subnet, envAfter.Subnet)
		}
		if macAfter := vtepMAC(ctx, t, h); macAfter != macBefore {
			t.Errorf("VTEP MAC changed across restart: %s → %s", macBefore, macAfter)
		}
	})

	t.Run("deleted route comes back", func(t *testing.T) {
		h := l.Host(1)
		peer := mustEnv(t, l.Host(2)).LeaseSubnet()
		if !hasRoute(ctx, t, h, peer) {
			t.Fatalf("%s has no route to %s to begin with", h.Name, peer)
		}
		if out, err := h.Exec(ctx, "ip", "route", "del", peer.String()); err != nil {
			t.Fatalf("ip route del: %v %s", err, out)
		}
		took, err := eventually(ctx, 15*time.Second, func() error {
			if !hasRoute(ctx, t, h, peer) {
				return fmt.Errorf("%s: no route to %s", h.Name, peer)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("route to %s restored after %v", peer, took.Round(time.Millisecond))
		expectMesh(ctx, t, l)
	})

	t.Run("deleted device comes back", func(t *testing.T) {
		h := l.Host(1)
		macBefore := vtepMAC(ctx, t, h)
		if out, err := h.Exec(ctx, "ip", "link", "del", vtepDevice); err != nil {
			t.Fatalf("ip link del: %v %s", err, out)
		}
		took, err := eventually(ctx, 15*time.Second, func() error {
			out, err := h.Exec(ctx, "ip", "link", "show", "dev", vtepDevice)
			if err != nil {
				return fmt.Errorf("%s: %s missing: %s", h.Name, vtepDevice, strings.TrimSpace(string(out)))
			}
			for _, o := range l.Hosts[1:] {
				if sn := mustEnv(t, o).LeaseSubnet(); !hasRoute(ctx, t, h, sn) {
					return fmt.Errorf("%s: no route to %s", h.Name, sn)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s and its routes restored after %v", vtepDevice, took.Round(time.Millisecond))
		if mac := vtepMAC(ctx, t, h); mac != macBefore {
			t.Errorf("recreated device has MAC %s, want the leased %s", mac, macBefore)
		}
		expectMesh(ctx, t, l)
	})

	t.Run("removed lease removes routes", func(t *testing.T) {
		gone := l.Host(3)
		sn := mustEnv(t, gone).LeaseSubnet()
		mac := vtepMAC(ctx, t, gone)
		if err := gone.StopWeftd(syscall.SIGTERM); err != nil {
			t.Errorf("stop weftd: %v", err)
		}
		cli, err := l.Etcd(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		key := "/coreos.com/network/subnets/" + subnet.SubnetKey(sn)
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := cli.Delete(dctx, key)
		dcancel()
		if err != nil {
			t.Fatal(err)
		}
		if resp.Deleted != 1 {
			t.Fatalf("lease key %s did not exist", key)
		}
		took, err := eventually(ctx, 15*time.Second, func() error {
			for _, h := range l.Hosts[:2] {
				if hasRoute(ctx, t, h, sn) {
					return fmt.Errorf("%s still routes %s", h.Name, sn)
				}
				if hasNeigh(ctx, t, h, sn.Addr(), mac) {
					return fmt.Errorf("%s still has the neighbour entry %s → %s", h.Name, sn.Addr(), mac)
				}
				if hasFDB(ctx, t, h, mac, gone.IP) {
					return fmt.Errorf("%s still has the FDB entry %s → %s", h.Name, mac, gone.IP)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("route, neighbour and FDB entries for %s removed after %v", sn, took.Round(time.Millisecond))
		// The remaining hosts still reach each other.
		r, err := pods[0].Ping(ctx, pods[1].IP, 3, 50*time.Millisecond)
		if err != nil || !r.OK() {
			t.Errorf("h1 → h2 after removing h3: %+v %v", r, err)
		}
	})
}

// startAll writes nothing (the lab wrote the config), starts weftd on every
// host and waits until all are ready.
func startAll(ctx context.Context, t *testing.T, l *lab.Lab) {
	t.Helper()
	for _, h := range l.Hosts {
		if err := h.StartWeftd(); err != nil {
			t.Fatal(err)
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, h := range l.Hosts {
		if err := h.WaitReady(rctx); err != nil {
			t.Fatal(err)
		}
	}
}

func expectMesh(ctx context.Context, t *testing.T, l *lab.Lab) {
	t.Helper()
	if m, err := l.WaitConnectivity(ctx, 10*time.Second); err != nil {
		t.Errorf("%v\n%s", err, m)
	}
}

func mustEnv(t *testing.T, h *lab.Host) subnet.Env {
	t.Helper()
	env, err := h.SubnetEnv()
	if err != nil {
		t.Fatalf("%s: %v", h.Name, err)
	}
	return env
}

var etherRE = regexp.MustCompile(`link/ether ([0-9a-f:]{17})`)

// vtepMAC reads the vxlan device's MAC inside the host namespace.
func vtepMAC(ctx context.Context, t *testing.T, h *lab.Host) string {
	t.Helper()
	out, err := h.Exec(ctx, "ip", "-d", "link", "show", "dev", vtepDevice)
	if err != nil {
		t.Fatalf("%s: %v", h.Name, err)
	}
	if !strings.Contains(string(out), "vxlan id 1 ") {
		t.Errorf("%s: %s is not vxlan id 1:\n%s", h.Name, vtepDevice, out)
	}
	m := etherRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("%s: no MAC in:\n%s", h.Name, out)
	}
	return string(m[1])
}

// hasRoute reports whether the host has a route for exactly sn.
func hasRoute(ctx context.Context, t *testing.T, h *lab.Host, sn netip.Prefix) bool {
	t.Helper()
	family := "-4"
	if sn.Addr().Is6() {
		family = "-6"
	}
	out, err := h.Exec(ctx, "ip", family, "route", "show", "exact", sn.String())
	if err != nil {
		t.Fatalf("%s: ip route show: %v", h.Name, err)
	}
	return strings.TrimSpace(string(out)) != ""
}

// hasNeigh reports whether the host has a permanent neighbour entry
// addr → mac on the vxlan device.
func hasNeigh(ctx context.Context, t *testing.T, h *lab.Host, addr netip.Addr, mac string) bool {
	t.Helper()
	out, err := h.Exec(ctx, "ip", "-4", "neigh", "show", addr.String(), "dev", vtepDevice)
	if err != nil {
		t.Fatalf("%s: ip neigh show: %v", h.Name, err)
	}
	s := string(out)
	return strings.Contains(s, "lladdr "+mac) && strings.Contains(s, "PERMANENT")
}

// hasFDB reports whether the vxlan device forwards mac to dst.
func hasFDB(ctx context.Context, t *testing.T, h *lab.Host, mac string, dst netip.Addr) bool {
	t.Helper()
	out, err := h.Exec(ctx, "bridge", "fdb", "show", "dev", vtepDevice)
	if err != nil {
		t.Fatalf("%s: bridge fdb show: %v", h.Name, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, mac+" ") && strings.Contains(line, "dst "+dst.String()+" ") {
			return true
		}
	}
	return false
}

// eventually polls check every 100 ms until it succeeds or timeout passes,
// and returns how long it took.
func eventually(ctx context.Context, timeout time.Duration, check func() error) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		err := check()
		if err == nil {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Since(start), fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
