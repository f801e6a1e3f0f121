package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/lab"
)

// TestFaultRestart restarts weftd on a host (SIGTERM, then kill -9) while
// pods ping each other at 100/s, for vxlan and host-gw: not one packet is
// lost, the host keeps its subnet (and VTEP MAC), and its lease key sees no
// DELETE and no value change, so peers never flap.
func TestFaultRestart(t *testing.T) {
	t.Parallel()
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			l := faultLab(t, lab.Options{Hosts: 2, Backend: backend})
			ctx := testCtx(t, 3*time.Minute)
			startWeftds(t, ctx, l.Hosts, "--reconcile-interval=1s")
			pods := onePodPerHost(t, ctx, l)
			cli := etcdClient(t, ctx, l)
			h := l.Host(1)
			sn := ownSubnet(t, ctx, h)
			attrs0, _, err := getLease(ctx, cli, sn)
			if err != nil || attrs0 == nil {
				t.Fatalf("lease of %s: %v %v", sn, attrs0, err)
			}
			val0, _ := attrs0.MarshalJSON()
			mac0 := linkMAC(ctx, h, vxlanDev)

			for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
				t.Run(sig.String(), func(t *testing.T) {
					resp, err := cli.Get(ctx, leaseKey(sn))
					if err != nil {
						t.Fatal(err)
					}
					events := watchKey(t, ctx, cli, leaseKey(sn), resp.Header.Revision+1)

					pgs := pingAll(t, pods, 500, 10*time.Millisecond) // 5 s at 100/s
					time.Sleep(time.Second)
					if err := h.StopWeftd(sig); err != nil {
						t.Fatal(err)
					}
					if err := h.StartWeftd("--reconcile-interval=1s"); err != nil {
						t.Fatal(err)
					}
					rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
					err = h.WaitReady(rctx)
					cancel()
					if err != nil {
						t.Fatal(err)
					}
					expectNoLoss(t, ctx, pgs)

					if got := ownSubnet(t, ctx, h); got != sn {
						t.Errorf("subnet after restart %s, want %s", got, sn)
					}
					if backend == "vxlan" {
						if mac := linkMAC(ctx, h, vxlanDev); mac != mac0 || mac == "" {
							t.Errorf("VTEP MAC after restart %q, want %q", mac, mac0)
						}
					}
					for _, ev := range events.stop() {
						switch {
						case ev.Type == clientv3.EventTypeDelete:
							t.Errorf("lease key %s was deleted during the restart (rev %d): peers flap", leaseKey(sn), ev.Kv.ModRevision)
						case string(ev.Kv.Value) != string(val0):
							t.Errorf("lease value changed during the restart: %s, was %s", ev.Kv.Value, val0)
						default:
							t.Logf("lease key rewritten with the same value at rev %d", ev.Kv.ModRevision)
						}
					}
				})
			}
		})
	}
}

// keyWatch collects etcd events on one key.
type keyWatch struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	events []*clientv3.Event
	times  []time.Time
}

func watchKey(t *testing.T, ctx context.Context, cli *clientv3.Client, key string, rev int64) *keyWatch {
	wctx, cancel := context.WithCancel(ctx)
	w := &keyWatch{cancel: cancel, done: make(chan struct{})}
	ch := cli.Watch(wctx, key, clientv3.WithRev(rev))
	go func() {
		defer close(w.done)
		for resp := range ch {
			now := time.Now()
			w.mu.Lock()
			for _, ev := range resp.Events {
				w.events = append(w.events, ev)
				w.times = append(w.times, now)
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { w.stop() })
	return w
}

// stop ends the watch and returns every event seen.
func (w *keyWatch) stop() []*clientv3.Event {
	w.cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]*clientv3.Event(nil), w.events...)
}

// TestFaultPeers covers peers changing under a running cluster: a host
// wiped and restarted (reboot) gets its subnet back; a peer's new VTEP MAC
// reaches every host within 1 s; a deleted lease disappears from every
// host's routes, neighbours and FDB within 1 s.
func TestFaultPeers(t *testing.T) {
	t.Parallel()
	// The hosts lease below 198.18.250.0: the peer lease added below
	// must not land on a host's own subnet.
	l := faultLab(t, lab.Options{Hosts: 3, ExtraConfig: map[string]any{"SubnetMax": "198.18.249.0"}})
	ctx := testCtx(t, 3*time.Minute)
	startWeftds(t, ctx, l.Hosts, "--reconcile-interval=1s")
	onePodPerHost(t, ctx, l)
	cli := etcdClient(t, ctx, l)

	t.Run("host reboot", func(t *testing.T) {
		h := l.Host(1)
		sn := ownSubnet(t, ctx, h)
		mac0 := linkMAC(ctx, h, vxlanDev)
		resp, err := cli.Get(ctx, leaseKey(sn))
		if err != nil {
			t.Fatal(err)
		}
		events := watchKey(t, ctx, cli, leaseKey(sn), resp.Header.Revision+1)
		if err := h.KillWeftd(); err != nil {
			t.Fatal(err)
		}
		// A wiped host: no vxlan device (and so none of its neighbours,
		// FDB entries or routes), no subnet file; same PublicIP.
		if out, err := h.Exec(ctx, "ip", "link", "del", vxlanDev); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		if err := os.Remove(h.SubnetFile()); err != nil {
			t.Fatal(err)
		}
		if err := h.StartWeftd("--reconcile-interval=1s"); err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err = h.WaitReady(rctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if got := ownSubnet(t, ctx, h); got != sn {
			t.Errorf("subnet after reboot %s, want %s", got, sn)
		}
		mac1 := linkMAC(ctx, h, vxlanDev)
		t.Logf("VTEP MAC before %s, after %s", mac0, mac1)
		// If the MAC changed, every peer must follow within 1 s of the
		// new value landing in etcd.
		evs := events.stop()
		for i, ev := range evs {
			if ev.Type == clientv3.EventTypeDelete {
				t.Errorf("lease key deleted during the reboot: peers flap")
				continue
			}
			seen := events.times[i]
			for _, p := range l.Hosts[1:] {
				start := time.Now()
				d, err := waitFor(ctx, 3*time.Second, 10*time.Millisecond, func() (bool, string) {
					r, n, f, err := peerEntries(ctx, p, sn, mac1, h.IP.String())
					return r && n && f, fmt.Sprintf("route %v neigh %v fdb %v err %v", r, n, f, err)
				})
				lag := start.Add(d).Sub(seen) // from the PUT reaching our watch
				switch {
				case err != nil:
					t.Errorf("%s: never programmed the rebooted host's new MAC %s: %v", p.Name, mac1, err)
				case lag > time.Second:
					t.Errorf("%s: new lease value (rev %d) programmed %s after the PUT, want ≤ 1s", p.Name, ev.Kv.ModRevision, lag)
				default:
					t.Logf("%s: new lease value (rev %d) programmed ≤ %s after the PUT", p.Name, ev.Kv.ModRevision, lag.Round(time.Millisecond))
				}
			}
		}
		if m, err := l.WaitConnectivity(ctx, 10*time.Second); err != nil {
			t.Errorf("after reboot: %v\n%s", err, m)
		}
	})

	t.Run("peer MAC change within 1s", func(t *testing.T) {
		peer := netip.MustParsePrefix("198.18.252.0/24")
		const ip, macA, macB = "192.0.2.252", "02:00:c0:00:02:0a", "02:00:c0:00:02:0b"
		if _, err := cli.Put(ctx, leaseKey(peer), vxlanLease(ip, macA)); err != nil {
			t.Fatal(err)
		}
		for _, h := range l.Hosts {
			if _, err := waitFor(ctx, 5*time.Second, 50*time.Millisecond, func() (bool, string) {
				r, n, f, err := peerEntries(ctx, h, peer, macA, ip)
				return r && n && f, fmt.Sprintf("route %v neigh %v fdb %v err %v", r, n, f, err)
			}); err != nil {
				t.Fatalf("%s: peer not programmed: %v", h.Name, err)
			}
		}
		put := time.Now()
		if _, err := cli.Put(ctx, leaseKey(peer), vxlanLease(ip, macB)); err != nil {
			t.Fatal(err)
		}
		putDone := time.Now()
		var wg sync.WaitGroup
		for _, h := range l.Hosts {
			wg.Go(func() {
				_, err := waitFor(ctx, 3*time.Second, 10*time.Millisecond, func() (bool, string) {
					r, n, f, err := peerEntries(ctx, h, peer, macB, ip)
					_, oldN, oldF, _ := peerEntries(ctx, h, peer, macA, ip)
					return r && n && f && !oldN && !oldF, fmt.Sprintf("new: route %v neigh %v fdb %v; old neigh %v fdb %v; err %v", r, n, f, oldN, oldF, err)
				})
				lag := time.Since(put)
				switch {
				case err != nil:
					t.Errorf("%s: new VTEP MAC not programmed: %v", h.Name, err)
				case lag > time.Second+putDone.Sub(put):
					t.Errorf("%s: new VTEP MAC programmed %s after the PUT, want ≤ 1s", h.Name, lag)
				default:
					t.Logf("%s: new VTEP MAC programmed ≤ %s after the PUT", h.Name, lag.Round(time.Millisecond))
				}
			})
		}
		wg.Wait()
		if _, err := cli.Delete(ctx, leaseKey(peer)); err != nil {
			t.Fatal(err)
		}
	})

	// A healthy cluster logs no errors: every ERROR line is an alert for
	// someone. (Runs last: it covers everything above.)
	defer t.Run("no errors logged", func(t *testing.T) {
		for _, h := range l.Hosts[:2] {
			for _, line := range logLines(h, "level=ERROR") {
				t.Errorf("%s: %s", h.Name, line)
			}
		}
	})

	t.Run("peer leaves within 1s", func(t *testing.T) {
		gone := l.Host(3)
		sn := ownSubnet(t, ctx, gone)
		mac := linkMAC(ctx, gone, vxlanDev)
		// weftd keeps its lease on SIGTERM; deleting the key is the host
		// leaving the cluster.
		if err := gone.StopWeftd(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		for _, h := range l.Hosts[:2] {
			if r, n, f, err := peerEntries(ctx, h, sn, mac, gone.IP.String()); !(r && n && f) || err != nil {
				t.Fatalf("%s: before the delete: route %v neigh %v fdb %v err %v", h.Name, r, n, f, err)
			}
		}
		del := time.Now()
		if _, err := cli.Delete(ctx, leaseKey(sn)); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for _, h := range l.Hosts[:2] {
			wg.Go(func() {
				_, err := waitFor(ctx, 3*time.Second, 10*time.Millisecond, func() (bool, string) {
					r, n, f, err := peerEntries(ctx, h, sn, mac, gone.IP.String())
					return err == nil && !r && !n && !f, fmt.Sprintf("route %v neigh %v fdb %v err %v", r, n, f, err)
				})
				lag := time.Since(del)
				switch {
				case err != nil:
					t.Errorf("%s: entries of the deleted peer remain: %v", h.Name, err)
				case lag > time.Second:
					t.Errorf("%s: peer removed %s after the DELETE, want ≤ 1s", h.Name, lag)
				default:
					t.Logf("%s: peer removed ≤ %s after the DELETE", h.Name, lag.Round(time.Millisecond))
				}
			})
		}
		wg.Wait()
	})
}
