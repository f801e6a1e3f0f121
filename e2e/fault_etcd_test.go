package e2e_test

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/lab"
)

// TestFaultEtcdDownAtStart starts weftd 15 s before etcd: /readyz must
// answer 503 naming etcd, weftd must keep running, and once etcd starts
// every host must be ready within 5 s.
func TestFaultEtcdDownAtStart(t *testing.T) {
	t.Parallel()
	l := faultLab(t, lab.Options{Hosts: 2})
	ctx := testCtx(t, 2*time.Minute)
	if err := l.StopEtcd(); err != nil {
		t.Fatal(err)
	}
	for _, h := range l.Hosts {
		if err := h.StartWeftd("--reconcile-interval=1s"); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range l.Hosts {
		var last string
		if _, err := waitFor(ctx, 10*time.Second, 100*time.Millisecond, func() (bool, string) {
			code, body, err := readyz(ctx, h)
			last = fmt.Sprintf("%d %q %v", code, body, err)
			return err == nil && code == http.StatusServiceUnavailable && strings.Contains(strings.ToLower(body), "etcd"), last
		}); err != nil {
			t.Fatalf("%s: /readyz while etcd is down: want 503 with a reason naming etcd: %v", h.Name, err)
		}
		t.Logf("%s: /readyz while etcd is down: %s", h.Name, last)
	}
	// Long enough for gRPC's reconnect backoff to grow: a waiting weftd
	// must still notice etcd quickly once it is back.
	time.Sleep(15 * time.Second)
	for _, h := range l.Hosts {
		if !weftdRunning(h) {
			t.Fatalf("%s: weftd exited while etcd was down", h.Name)
		}
		if code, body, _ := readyz(ctx, h); code != http.StatusServiceUnavailable {
			t.Errorf("%s: /readyz %d %q with etcd down", h.Name, code, body)
		}
	}
	if err := l.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var slow []string
	for _, h := range l.Hosts {
		rctx, cancel := context.WithTimeout(ctx, 40*time.Second)
		err := h.WaitReady(rctx)
		cancel()
		took := time.Since(start)
		if err != nil {
			t.Fatalf("%s: never ready after etcd started: %v", h.Name, err)
		}
		t.Logf("%s: ready %s after etcd started", h.Name, took.Round(time.Millisecond))
		if took > 5*time.Second {
			slow = append(slow, fmt.Sprintf("%s: %s", h.Name, took.Round(time.Millisecond)))
		}
	}
	t.Run("ready within 5s", func(t *testing.T) {
		if len(slow) > 0 {
			t.Errorf("ready only after %s, want ≤ 5s", strings.Join(slow, ", "))
		}
	})
}

// TestFaultEtcdOutage takes etcd away while the cluster runs, once stopped
// for 30 s and once frozen with SIGSTOP: pods keep talking without losing a
// packet, weftd stays up, its watches resume (a lease added afterwards is
// programmed everywhere) and its own lease keeps being renewed.
func TestFaultEtcdOutage(t *testing.T) {
	t.Parallel()
	const ttl = 30 * time.Second // renewal at 15 s left: it must happen during or after each outage
	// watchResume bounds how long after etcd is back a change must reach
	// every host.
	const watchResume = 5 * time.Second
	// The hosts lease below 198.18.250.0: the leases the cases add after
	// each outage must not land on a host's own subnet.
	l := faultLab(t, lab.Options{Hosts: 3, ExtraConfig: map[string]any{"SubnetMax": "198.18.249.0"}})
	ctx := testCtx(t, 4*time.Minute)
	startWeftds(t, ctx, l.Hosts, "--subnet-lease-ttl=30s", "--reconcile-interval=1s")
	pods := onePodPerHost(t, ctx, l)
	subnets := map[*lab.Host]netip.Prefix{}
	for _, h := range l.Hosts {
		subnets[h] = ownSubnet(t, ctx, h)
	}

	cases := []struct {
		name          string
		outage        time.Duration
		down, up      func() error
		peer, peerMAC string
	}{
		{"stopped 30s", 30 * time.Second, l.StopEtcd, l.StartEtcd, "198.18.250.0/24", "02:00:c0:00:02:fa"},
		// A freeze must stay under the renew margin: etcd's lease clock
		// keeps running while it is stopped, unlike a restart, which
		// refreshes every lease.
		{"paused 12s", 12 * time.Second, l.PauseEtcd, l.ResumeEtcd, "198.18.251.0/24", "02:00:c0:00:02:fb"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			const rate = 10 // pings per second
			count := int((tc.outage + 8*time.Second).Seconds()) * rate
			pgs := pingAll(t, pods, count, time.Second/rate)
			time.Sleep(2 * time.Second)
			if err := tc.down(); err != nil {
				t.Fatal(err)
			}
			// Readiness is about the data path, which is intact: no host
			// turns unready while etcd is away.
			end := time.Now().Add(tc.outage)
			unready := map[string]string{}
			for time.Now().Before(end) {
				for _, h := range l.Hosts {
					if code, body, err := readyz(ctx, h); code != http.StatusOK {
						unready[h.Name] = fmt.Sprintf("%d %q %v", code, body, err)
					}
				}
				time.Sleep(min(time.Until(end), time.Second))
			}
			for name, why := range unready {
				t.Errorf("%s: /readyz during the etcd outage: %s", name, why)
			}
			if err := tc.up(); err != nil {
				t.Fatal(err)
			}
			back := time.Now()
			for _, h := range l.Hosts {
				if !weftdRunning(h) {
					t.Errorf("%s: weftd exited during the etcd outage", h.Name)
				}
			}

			// Watches resumed: a new lease shows up on every host.
			cli := etcdClient(t, ctx, l)
			peer := netip.MustParsePrefix(tc.peer)
			if _, err := cli.Put(ctx, leaseKey(peer), vxlanLease("192.0.2.250", tc.peerMAC)); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			var mu sync.Mutex
			var late []string
			for _, h := range l.Hosts {
				wg.Go(func() {
					_, err := waitFor(ctx, 40*time.Second, 50*time.Millisecond, func() (bool, string) {
						r, n, f, err := peerEntries(ctx, h, peer, tc.peerMAC, "192.0.2.250")
						return r && n && f, fmt.Sprintf("route %v neigh %v fdb %v err %v", r, n, f, err)
					})
					took := time.Since(back)
					if err != nil {
						t.Errorf("%s: lease added after the outage not programmed (watch not resumed): %v", h.Name, err)
						return
					}
					t.Logf("%s: new lease programmed %s after etcd came back", h.Name, took.Round(time.Millisecond))
					if took > watchResume {
						mu.Lock()
						late = append(late, fmt.Sprintf("%s: %s", h.Name, took.Round(time.Millisecond)))
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			t.Run("watch resumed within 5s", func(t *testing.T) {
				if len(late) > 0 {
					t.Errorf("a lease added after the outage reached hosts only after %s, want ≤ %s", strings.Join(late, ", "), watchResume)
				}
			})
			expectNoLoss(t, ctx, pgs)

			// Our lease is renewed after the outage: each host's etcd
			// lease TTL goes back up, and the key keeps its lease.
			for _, h := range l.Hosts {
				wg.Go(func() { checkRenewed(t, ctx, cli, h, subnets[h], ttl) })
			}
			wg.Wait()
			if _, err := cli.Delete(ctx, leaseKey(peer)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// checkRenewed waits until the etcd lease behind h's key is renewed: its
// remaining TTL goes up. It fails when the key disappears or changes lease.
func checkRenewed(t *testing.T, ctx context.Context, cli *clientv3.Client, h *lab.Host, sn netip.Prefix, ttl time.Duration) {
	t.Helper()
	attrs, id, err := getLease(ctx, cli, sn)
	if err != nil || attrs == nil || id == 0 {
		t.Errorf("%s: lease key of %s after the outage: attrs %v, etcd lease %x, err %v", h.Name, sn, attrs, id, err)
		return
	}
	if attrs.PublicIP != h.IP {
		t.Errorf("%s: key of %s now carries %s", h.Name, sn, attrs.PublicIP)
		return
	}
	lowest := int64(1 << 62)
	_, err = waitFor(ctx, ttl+5*time.Second, 250*time.Millisecond, func() (bool, string) {
		resp, err := cli.TimeToLive(ctx, clientv3.LeaseID(id))
		if err != nil {
			return false, err.Error()
		}
		if resp.TTL <= 0 {
			return false, fmt.Sprintf("etcd lease %x expired", id)
		}
		if resp.TTL > lowest {
			return true, ""
		}
		lowest = resp.TTL
		return false, fmt.Sprintf("TTL %ds and falling", resp.TTL)
	})
	if err != nil {
		t.Errorf("%s: etcd lease %x of %s not renewed after the outage: %v", h.Name, id, sn, err)
	}
	if a, id2, err := getLease(ctx, cli, sn); err != nil || a == nil || id2 != id {
		t.Errorf("%s: key of %s after renewal: %v lease %x (was %x) err %v", h.Name, sn, a, id2, id, err)
	}
}

// TestFaultLeaseExpired freezes etcd for longer than the lease TTL so every
// lease expires. A host whose subnet stayed free re-acquires the same
// subnet; a host whose subnet another node took meanwhile gets a new one,
// rewrites its subnet file and logs a loud warning, leaving the other
// node's key alone.
func TestFaultLeaseExpired(t *testing.T) {
	t.Parallel()
	l := faultLab(t, lab.Options{Hosts: 3})
	ctx := testCtx(t, 3*time.Minute)
	startWeftds(t, ctx, l.Hosts, "--subnet-lease-ttl=10s", "--reconcile-interval=1s")
	cli := etcdClient(t, ctx, l)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	before := map[*lab.Host]netip.Prefix{}
	ids := map[*lab.Host]int64{}
	for _, h := range l.Hosts {
		before[h] = ownSubnet(t, ctx, h)
		_, id, err := getLease(ctx, cli, before[h])
		if err != nil || id == 0 {
			t.Fatalf("%s: lease of %s: id %x err %v", h.Name, before[h], id, err)
		}
		ids[h] = id
	}

	// h2's weftd sleeps through the outage, so another node can take its
	// subnet before it wakes up.
	pid2 := h2.WeftdPID()
	if err := syscall.Kill(pid2, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid2, syscall.SIGCONT) })
	if err := l.PauseEtcd(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(14 * time.Second)
	if err := l.ResumeEtcd(); err != nil {
		t.Fatal(err)
	}
	if _, err := waitFor(ctx, 10*time.Second, 100*time.Millisecond, func() (bool, string) {
		a, _, err := getLease(ctx, cli, before[h2])
		return err == nil && a == nil, fmt.Sprintf("key %v err %v", a, err)
	}); err != nil {
		t.Fatalf("%s's key did not expire: %v", h2.Name, err)
	}
	const otherIP = "192.0.2.99"
	foreign := vxlanLease(otherIP, "02:00:c0:00:02:63")
	if _, err := cli.Put(ctx, leaseKey(before[h2]), foreign); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid2, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

	for _, h := range []*lab.Host{h1, h3} {
		if _, err := waitFor(ctx, 15*time.Second, 200*time.Millisecond, func() (bool, string) {
			a, id, err := getLease(ctx, cli, before[h])
			return err == nil && a != nil && a.PublicIP == h.IP && id != 0 && id != ids[h],
				fmt.Sprintf("key %v etcd lease %x (old %x) err %v", a, id, ids[h], err)
		}); err != nil {
			t.Errorf("%s: did not re-acquire its subnet %s with a new etcd lease: %v", h.Name, before[h], err)
			continue
		}
		if got := ownSubnet(t, ctx, h); got != before[h] {
			t.Errorf("%s: holds %s after expiry, want the same subnet %s", h.Name, got, before[h])
		}
		if env, err := h.SubnetEnv(); err != nil || env.LeaseSubnet() != before[h] {
			t.Errorf("%s: subnet file says %v (%v), want %s", h.Name, env.LeaseSubnet(), err, before[h])
		}
	}

	var now2 netip.Prefix
	if _, err := waitFor(ctx, 20*time.Second, 200*time.Millisecond, func() (bool, string) {
		s, err := status(ctx, h2)
		if err != nil {
			return false, err.Error()
		}
		p, _ := netip.ParsePrefix(s.Lease)
		now2 = p
		return p.IsValid() && p != before[h2], fmt.Sprintf("lease %q", s.Lease)
	}); err != nil {
		t.Fatalf("%s: no new subnet after its old one was taken: %v", h2.Name, err)
	}
	t.Logf("%s: %s taken by %s; moved to %s", h2.Name, before[h2], otherIP, now2)
	if a, _, err := getLease(ctx, cli, now2); err != nil || a == nil || a.PublicIP != h2.IP {
		t.Errorf("%s: key of its new subnet %s: %v %v", h2.Name, now2, a, err)
	}
	if resp, err := cli.Get(ctx, leaseKey(before[h2])); err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != foreign {
		t.Errorf("the other node's key %s was touched: %v %v", leaseKey(before[h2]), resp, err)
	}
	if _, err := waitFor(ctx, 5*time.Second, 100*time.Millisecond, func() (bool, string) {
		env, err := h2.SubnetEnv()
		return err == nil && env.LeaseSubnet() == now2, fmt.Sprintf("subnet file %v %v", env.LeaseSubnet(), err)
	}); err != nil {
		t.Errorf("%s: subnet file not rewritten to %s: %v", h2.Name, now2, err)
	}
	var loud []string
	for _, line := range logLines(h2, "level=WARN") {
		if l := strings.ToLower(line); strings.Contains(l, now2.String()) && strings.Contains(l, before[h2].String()) {
			loud = append(loud, line)
		}
	}
	if len(loud) == 0 {
		t.Errorf("%s: no warning naming the old subnet %s and the new one %s in the log", h2.Name, before[h2], now2)
	} else {
		t.Logf("%s warned: %s", h2.Name, loud[0])
	}
	if !weftdRunning(h2) {
		t.Errorf("%s: weftd exited", h2.Name)
	}
	// The others follow: h2's new subnet is routed on h1 and h3.
	for _, h := range []*lab.Host{h1, h3} {
		if _, err := waitFor(ctx, 5*time.Second, 100*time.Millisecond, func() (bool, string) {
			r, err := routeTo(ctx, h, now2)
			return err == nil && r != nil, fmt.Sprintf("route %v err %v", r, err)
		}); err != nil {
			t.Errorf("%s: no route to %s's new subnet %s: %v", h.Name, h2.Name, now2, err)
		}
	}
}
