package etcd

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/weftnet/weft/internal/etcdserver"
	"github.com/weftnet/weft/subnet"
	"github.com/weftnet/weft/subnet/etcd/etcdtest"
)

// Dual-stack keys written by flannel are read whole: the IPv6 part of the
// key and the creation revision reach the Lease, in a listing, in the
// Watcher's snapshots and in raw watch events; a key with a bad IPv6 part is
// invalid, not cut down to its IPv4 part.
func TestDualStackKeysFromEtcd(t *testing.T) {
	cli, reg, _ := setup(t, bigNet)
	ctx := testCtx(t)
	v, _ := attrs("192.0.2.11").MarshalJSON()
	put := func(name string) int64 {
		t.Helper()
		resp, err := cli.Put(ctx, reg.subnetsPrefix+name, string(v))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	const (
		plain = "198.18.7.0-24"
		dual  = "198.18.8.0-24&2001:db8:1:2::-64"
		bad   = "198.18.9.0-24&2001:db8:1:2::1-64"
	)
	revPlain := put(plain)
	revDual := put(dual)
	put(bad)
	put(dual) // a rewrite keeps the creation revision

	snap, err := reg.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkDual := func(what string, snap Snapshot) {
		t.Helper()
		if len(snap.Leases) != 2 || len(snap.Invalid) != 1 {
			t.Fatalf("%s: leases %v", what, leaseSubnets(snap))
		}
		p, d := snap.Leases[0], snap.Leases[1]
		if p.Key() != plain || p.IPv6Subnet.IsValid() || p.CreateRevision != revPlain {
			t.Fatalf("%s: plain lease %+v, want key %s created at %d", what, p, plain, revPlain)
		}
		if d.Key() != dual || d.IPv6Subnet.String() != "2001:db8:1:2::/64" || d.CreateRevision != revDual || d.ModRevision <= revDual {
			t.Fatalf("%s: dual-stack lease %+v, want key %s created at %d", what, d, dual, revDual)
		}
		if inv := snap.Invalid[0]; !strings.HasSuffix(inv.Key, bad) || !strings.Contains(inv.Err.Error(), bad) || !strings.Contains(inv.Err.Error(), "host bits") {
			t.Fatalf("%s: invalid %+v, want %s refused for its IPv6 host bits", what, inv, bad)
		}
	}
	checkDual("Leases", snap)

	a := &applies{ch: make(chan Snapshot, 1)}
	runWatcher(t, NewWatcher(reg, nil), a)
	waitFor(t, "the first apply", func() bool { return a.count() >= 1 })
	checkDual("Watcher list", a.last())
	put(dual)
	waitFor(t, "the apply after a rewrite", func() bool { return a.count() >= 2 })
	checkDual("Watcher after a watch event", a.last())

	// Raw events carry the IPv6 part and the creation revision too.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan Event, 10)
	done := make(chan error, 1)
	go func() { done <- reg.WatchLeases(wctx, revDual, func(e Event) { events <- e }) }()
	e := <-events
	if e.Key != reg.subnetsPrefix+dual || e.Lease.IPv6Subnet.String() != "2001:db8:1:2::/64" || e.Lease.CreateRevision != revDual {
		t.Fatalf("event %+v", e)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// requestCounter counts the gRPC requests a client sends to etcd: every
// unary call (Range, Txn, LeaseGrant, ...) and every stream opened (Watch,
// LeaseKeepAlive).
type requestCounter struct{ n atomic.Int64 }

func (c *requestCounter) options() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			c.n.Add(1)
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			c.n.Add(1)
			return streamer(ctx, desc, cc, method, opts...)
		}),
	}
}

// countingRegistry returns a registry on its own client for srv whose
// requests are counted.
func countingRegistry(t *testing.T, srv *etcdserver.Server) (*Registry, *requestCounter) {
	t.Helper()
	rc := &requestCounter{}
	cli, err := NewClient(ClientOptions{Endpoints: srv.Endpoints(), DialOptions: rc.options()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return NewRegistry(cli, ""), rc
}

// A dual-stack key that carries our PublicIP on an IPv4-only network (left
// from before the config dropped IPv6, or planted) is rewritten into the
// plain key of its IPv4 subnet in one transaction, keeping its etcd lease or
// its being a reservation, and etcd sees only a handful of requests. An
// earlier holder adopted the key, addressed it by its IPv4 part alone, lost
// the compare on a key that does not exist and retried at once, about a
// thousand requests a second.
func TestHolderDualStackKeyWithOurIP(t *testing.T) {
	for _, tc := range []struct {
		name        string
		reservation bool
		sameValue   bool
	}{
		{"lease with another value", false, false},
		{"lease with our value", false, true},
		{"reservation with another value", true, false},
		{"reservation with our value", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, srv := etcdtest.Start(t)
			ctx := testCtx(t)
			if err := NewRegistry(cli, "").PutConfig(ctx, []byte(`{"Network":"198.18.0.0/22"}`)); err != nil {
				t.Fatal(err)
			}
			reg, rc := countingRegistry(t, srv)
			nc, err := reg.Config(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ours := attrs("192.0.2.11")
			planted := attrs("192.0.2.11")
			if !tc.sameValue {
				planted.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:99"}`)
			}
			pv, _ := planted.MarshalJSON()
			const dual = "198.18.1.0-24&2001:db8:1:2::-64"
			var opts []clientv3.OpOption
			var grantID clientv3.LeaseID
			if !tc.reservation {
				g, err := cli.Grant(ctx, 3600)
				if err != nil {
					t.Fatal(err)
				}
				grantID = g.ID
				opts = append(opts, clientv3.WithLease(g.ID))
			}
			dualKey := reg.subnetsPrefix + dual
			put, err := cli.Put(ctx, dualKey, string(pv), opts...)
			if err != nil {
				t.Fatal(err)
			}

			var logs syncBuffer
			h, changes := runHolder(t, reg, HolderConfig{Network: nc, Attrs: ours, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			before := rc.n.Load()
			start := time.Now()
			startRun(t, h)
			const window = 2 * time.Second
			var got subnet.Lease
			select {
			case got = <-changes:
			case <-time.After(window):
			}
			time.Sleep(time.Until(start.Add(window)))
			n := rc.n.Load() - before
			t.Logf("%d etcd requests in %s (%.0f/s)", n, window, float64(n)/window.Seconds())
			if n > 20 {
				t.Errorf("%d etcd requests in %s with a dual-stack key carrying our IP; want at most 20", n, window)
			}
			if !got.Subnet.IsValid() {
				t.Fatalf("no lease acquired in %s\n%s", window, logs.String())
			}
			if got.Subnet != netip.MustParsePrefix("198.18.1.0/24") || got.IPv6Subnet.IsValid() || got.Reservation != tc.reservation {
				t.Fatalf("acquired %+v; want the plain key of the dual-stack key's subnet, reservation %v", got, tc.reservation)
			}
			v, id, _, ok := getKV(t, cli, reg, got.Subnet)
			if want, _ := ours.MarshalJSON(); !ok || !bytes.Equal(v, want) || id != got.EtcdLease {
				t.Fatalf("our key %s: ok %v value %s lease %x", got.Subnet, ok, v, id)
			}
			if got.EtcdLease != int64(grantID) {
				t.Fatalf("etcd lease %x, want the dual-stack key's %x kept", got.EtcdLease, grantID)
			}
			resp, err := cli.Get(ctx, dualKey)
			if err != nil || len(resp.Kvs) != 0 {
				t.Fatalf("the dual-stack key is still there: %+v %v", resp, err)
			}
			if got.CreateRevision <= put.Header.Revision {
				t.Fatalf("create revision %d: not the rewritten key's", got.CreateRevision)
			}
			if !strings.Contains(logs.String(), dual) {
				t.Errorf("no log naming the dual-stack key:\n%s", logs.String())
			}
		})
	}
}

// countFor runs for d and returns how many requests rc counted meanwhile.
func countFor(t *testing.T, rc *requestCounter, d time.Duration) int64 {
	t.Helper()
	before := rc.n.Load()
	time.Sleep(d)
	n := rc.n.Load() - before
	t.Logf("%d etcd requests in %s (%.1f/s)", n, d, float64(n)/d.Seconds())
	return n
}

// A key carrying our PublicIP whose etcd lease has a TTL no longer than the
// renew margin (bound by hand, or by a tool with another TTL) is adopted and
// renewed at half-life, not in a tight loop.
func TestHolderAdoptsKeyWithShortTTL(t *testing.T) {
	cli, srv := etcdtest.Start(t)
	ctx := testCtx(t)
	if err := NewRegistry(cli, "").PutConfig(ctx, []byte(bigNet)); err != nil {
		t.Fatal(err)
	}
	reg, rc := countingRegistry(t, srv)
	nc, err := reg.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sn := netip.MustParsePrefix("198.18.7.0/24")
	g, err := cli.Grant(ctx, int64(DefaultRenewMargin/time.Second)) // TTL == margin
	if err != nil {
		t.Fatal(err)
	}
	v, _ := attrs("192.0.2.11").MarshalJSON()
	if _, err := cli.Put(ctx, reg.LeaseKey(sn), string(v), clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	h, changes := runHolder(t, reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.11")})
	startRun(t, h)
	if l := waitChange(t, changes, 10*time.Second); l.Subnet != sn || l.EtcdLease != int64(g.ID) {
		t.Fatalf("adopted %+v, want %s on etcd lease %x", l, sn, g.ID)
	}
	if n := countFor(t, rc, 2*time.Second); n > 5 {
		t.Fatalf("%d etcd requests in 2s holding a key with a %s etcd lease; want at most 5", n, DefaultRenewMargin)
	}
	h.mu.Lock()
	renewals := h.renewals
	h.mu.Unlock()
	if renewals > 1 {
		t.Fatalf("%d renewals in 2s, want at most 1", renewals)
	}
}

// Two hosts that claim the same PublicIP with different values rewrite the
// key back and forth; the restores wait a growing, jittered backoff instead
// of answering each other as fast as etcd allows.
func TestHolderOverwriteFightIsRateLimited(t *testing.T) {
	cli, srv := etcdtest.Start(t)
	ctx := testCtx(t)
	if err := NewRegistry(cli, "").PutConfig(ctx, []byte(bigNet)); err != nil {
		t.Fatal(err)
	}
	regA, rcA := countingRegistry(t, srv)
	regB, rcB := countingRegistry(t, srv)
	nc, err := regA.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := attrs("192.0.2.11")
	b := attrs("192.0.2.11")
	b.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:99"}`)
	hA, changesA := runHolder(t, regA, HolderConfig{Network: nc, Attrs: a})
	startRun(t, hA)
	waitChange(t, changesA, 10*time.Second)
	hB, changesB := runHolder(t, regB, HolderConfig{Network: nc, Attrs: b})
	startRun(t, hB)
	waitChange(t, changesB, 10*time.Second)

	before := rcA.n.Load() + rcB.n.Load()
	const window = 3 * time.Second
	time.Sleep(window)
	n := rcA.n.Load() + rcB.n.Load() - before
	t.Logf("%d etcd requests from both hosts in %s (%.1f/s)", n, window, float64(n)/window.Seconds())
	if n > 40 {
		t.Fatalf("%d etcd requests in %s from two hosts fighting over one key; want at most 40", n, window)
	}
}

// Someone deleting our key again and again: each loss re-acquires the
// subnet, but losses in quick succession wait a growing backoff first.
func TestHolderRepeatedDeletesAreRateLimited(t *testing.T) {
	cli, srv := etcdtest.Start(t)
	ctx := testCtx(t)
	if err := NewRegistry(cli, "").PutConfig(ctx, []byte(bigNet)); err != nil {
		t.Fatal(err)
	}
	reg, rc := countingRegistry(t, srv)
	nc, err := reg.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	h, changes := runHolder(t, reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.11"), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	// Drain OnChange calls until the holder has stopped (cleanups run last
	// registered first, so this one runs after startRun's).
	drained := make(chan struct{})
	t.Cleanup(func() { close(drained) })
	startRun(t, h)
	l := waitChange(t, changes, 10*time.Second)
	go func() {
		for {
			select {
			case <-changes:
			case <-drained:
				return
			}
		}
	}()

	// The vandal deletes the key each time it appears.
	vctx, stop := context.WithCancel(ctx)
	defer stop()
	vandalDone := make(chan struct{})
	go func() {
		defer close(vandalDone)
		key := reg.LeaseKey(l.Subnet)
		for vctx.Err() == nil {
			if _, err := cli.Delete(vctx, key); err != nil {
				return
			}
			for resp := range cli.Watch(vctx, key) {
				if len(resp.Events) > 0 && resp.Events[0].Type == clientv3.EventTypePut {
					break
				}
			}
		}
	}()
	defer func() { stop(); <-vandalDone }()
	const window = 3 * time.Second
	if n := countFor(t, rc, window); n > 60 {
		t.Fatalf("%d etcd requests in %s while our key is deleted again and again; want at most 60", n, window)
	}
	if !strings.Contains(logs.String(), "waiting before re-acquiring") {
		t.Fatalf("no wait between losses:\n%s", logs.String())
	}
}

// When every claim loses (here an interceptor reports each claiming Txn as
// failed, as if another host always got there first), acquire tries a few
// subnets per listing and lists again after a growing wait; it used to try
// every subnet and list again at once, over and over.
func TestAcquireBacksOffWhenEveryClaimLoses(t *testing.T) {
	cli, srv := etcdtest.Start(t)
	ctx := testCtx(t)
	if err := NewRegistry(cli, "").PutConfig(ctx, []byte(bigNet)); err != nil {
		t.Fatal(err)
	}
	rc := &requestCounter{}
	lose := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if r, ok := reply.(*etcdserverpb.TxnResponse); ok && err == nil {
			r.Succeeded = false
		}
		return err
	})
	lcli, err := NewClient(ClientOptions{Endpoints: srv.Endpoints(), DialOptions: append(rc.options(), lose)})
	if err != nil {
		t.Fatal(err)
	}
	defer lcli.Close()
	reg := NewRegistry(lcli, "")
	nc, err := reg.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	before := rc.n.Load()
	_, err = NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.11")}).Acquire(actx)
	n := rc.n.Load() - before
	t.Logf("%d etcd requests in 2s of lost claims (%v)", n, err)
	if err == nil {
		t.Fatal("Acquire succeeded though every claim lost")
	}
	if n > 150 {
		t.Fatalf("%d etcd requests in 2s of lost claims; want at most 150", n)
	}
	if l := countLeases(t, cli); l != 0 {
		t.Fatalf("%d etcd leases left; every lost claim must revoke its grant", l)
	}
}

// Garbage written over our own key is nobody's claim: the holder keeps the
// subnet, puts its value back on the same key, bound to its own etcd lease,
// and says so in the log. It used to treat the garbage as a takeover and
// move to a new subnet.
func TestOwnKeyGarbageIsRestored(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		otherLease  bool // the garbage is bound to someone else's etcd lease
	}{
		{"binary, no etcd lease", "\x00\xffnot json", false},
		{"empty", "", false},
		{"JSON without PublicIP", `{"BackendType":"vxlan"}`, false},
		{"bad PublicIP, another etcd lease", `{"PublicIP":"999.1.1.1"}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, reg, nc := setup(t, bigNet)
			ctx := testCtx(t)
			var logs syncBuffer
			a := attrs("192.0.2.11")
			h, changes := runHolder(t, reg, HolderConfig{Network: nc, Attrs: a, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			l, err := h.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			startRun(t, h)
			time.Sleep(200 * time.Millisecond)
			var opts []clientv3.OpOption
			if tc.otherLease {
				g, err := cli.Grant(ctx, 3600)
				if err != nil {
					t.Fatal(err)
				}
				opts = append(opts, clientv3.WithLease(g.ID))
			}
			put, err := cli.Put(ctx, reg.LeaseKey(l.Subnet), tc.value, opts...)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := a.MarshalJSON()
			waitFor(t, "our value back on our key", func() bool {
				v, id, rev, ok := getKV(t, cli, reg, l.Subnet)
				return ok && rev > put.Header.Revision && bytes.Equal(v, want) && id == l.EtcdLease
			})
			select {
			case c := <-changes:
				t.Fatalf("OnChange(%s): the holder moved although garbage is nobody's claim", c.Subnet)
			case <-time.After(500 * time.Millisecond):
			}
			if cur, ok := h.Lease(); !ok || cur.Subnet != l.Subnet || cur.EtcdLease != l.EtcdLease || !bytes.Equal(mustMarshal(t, cur.Attrs), want) {
				t.Fatalf("Lease() = %+v %v", cur, ok)
			}
			snap, err := reg.Leases(ctx)
			if err != nil || len(snap.Leases) != 1 || len(snap.Invalid) != 0 {
				t.Fatalf("leases after the restore: %v %v", leaseSubnets(snap), err)
			}
			out := logs.String()
			if !strings.Contains(out, "unparsable value") || !strings.Contains(out, "restored our lease value") {
				t.Fatalf("the overwrite and the restore are not logged:\n%s", out)
			}
			if strings.Contains(out, "TAKEN OVER") {
				t.Fatalf("garbage treated as a takeover:\n%s", out)
			}
			// The restored key is still renewed: our etcd lease holds it.
			if _, err := cli.KeepAliveOnce(ctx, clientv3.LeaseID(l.EtcdLease)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func mustMarshal(t *testing.T, a subnet.LeaseAttrs) []byte {
	t.Helper()
	b, err := a.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A host that restarts and finds the key of its previous subnet (from the
// subnet file) holding garbage takes that key back instead of moving.
func TestAcquireTakesBackPreviousSubnetFromGarbage(t *testing.T) {
	cli, reg, nc := setup(t, bigNet)
	ctx := testCtx(t)
	prev := netip.MustParsePrefix("198.18.42.0/24")
	put, err := cli.Put(ctx, reg.LeaseKey(prev), "\x00garbage")
	if err != nil {
		t.Fatal(err)
	}
	a := attrs("192.0.2.11")
	l, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: a, PreviousSubnet: prev}).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet != prev || l.EtcdLease == 0 {
		t.Fatalf("acquired %s lease %x; want the previous subnet %s back", l.Subnet, l.EtcdLease, prev)
	}
	v, id, rev, ok := getKV(t, cli, reg, prev)
	if !ok || !bytes.Equal(v, mustMarshal(t, a)) || id != l.EtcdLease || rev <= put.Header.Revision {
		t.Fatalf("key: ok %v value %q lease %x rev %d", ok, v, id, rev)
	}
	// Garbage on a key that is not our previous subnet is not taken.
	other := netip.MustParsePrefix("198.18.43.0/24")
	if _, err := cli.Put(ctx, reg.LeaseKey(other), "junk"); err != nil {
		t.Fatal(err)
	}
	l2, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.12")}).Acquire(ctx)
	if err != nil || l2.Subnet == other || l2.Subnet == prev {
		t.Fatalf("second host got %s, %v; want neither %s nor %s", l2.Subnet, err, other, prev)
	}
	// Nor when a valid dual-stack key claims the same IPv4 subnet.
	third := netip.MustParsePrefix("198.18.44.0/24")
	if _, err := cli.Put(ctx, reg.LeaseKey(third), "junk"); err != nil {
		t.Fatal(err)
	}
	v3, _ := attrs("192.0.2.13").MarshalJSON()
	if _, err := cli.Put(ctx, reg.subnetsPrefix+"198.18.44.0-24&fd00:44::-64", string(v3)); err != nil {
		t.Fatal(err)
	}
	l3, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.14"), PreviousSubnet: third}).Acquire(ctx)
	if err != nil || l3.Subnet == third {
		t.Fatalf("third host got %s, %v; want another subnet than %s, which a dual-stack key claims", l3.Subnet, err, third)
	}
}
