package etcd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/subnet"
	"github.com/weftnet/weft/subnet/etcd/etcdtest"
)

const (
	bigNet   = `{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan"}}`
	smallNet = `{"Network":"198.18.0.0/24","SubnetLen":26,"SubnetMin":"198.18.0.64","SubnetMax":"198.18.0.128","Backend":{"Type":"host-gw"}}`
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// setup starts etcd, stores cfg and returns a registry under a fresh prefix.
func setup(t *testing.T, cfg string) (*clientv3.Client, *Registry, *subnet.Config) {
	t.Helper()
	cli, _ := etcdtest.Start(t)
	reg := NewRegistry(cli, "")
	if err := reg.PutConfig(testCtx(t), []byte(cfg)); err != nil {
		t.Fatal(err)
	}
	nc, err := reg.Config(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return cli, reg, nc
}

func attrs(ip string) subnet.LeaseAttrs {
	return subnet.LeaseAttrs{
		PublicIP:    netip.MustParseAddr(ip),
		BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`),
	}
}

func getKV(t *testing.T, cli *clientv3.Client, reg *Registry, sn netip.Prefix) (value []byte, lease, modRev int64, ok bool) {
	t.Helper()
	resp, err := cli.Get(testCtx(t), reg.LeaseKey(sn))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, 0, false
	}
	kv := resp.Kvs[0]
	return kv.Value, kv.Lease, kv.ModRevision, true
}

func countLeases(t *testing.T, cli *clientv3.Client) int {
	t.Helper()
	resp, err := cli.Leases(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Leases)
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestConfig(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	reg := NewRegistry(cli, "/weft-test")
	ctx := testCtx(t)

	_, err := reg.Config(ctx)
	if !errors.Is(err, ErrNoConfig) || !strings.Contains(err.Error(), "/weft-test/config") {
		t.Fatalf("absent config: got %v, want ErrNoConfig naming the key", err)
	}
	err = reg.PutConfig(ctx, []byte(`{"Network":"198.18.0.0/16","SubnetLen":40}`))
	var fe *subnet.FieldError
	if !errors.As(err, &fe) || fe.Field != "SubnetLen" {
		t.Fatalf("PutConfig(bad SubnetLen) = %v, want a FieldError for SubnetLen", err)
	}
	if _, _, err := reg.ConfigRaw(ctx); !errors.Is(err, ErrNoConfig) {
		t.Fatalf("invalid config was written: %v", err)
	}
	// A bad config written behind our back: Config reports the field.
	if _, err := cli.Put(ctx, "/weft-test/config", `{"Network":"198.18.0.0/16","SubnetMin":"10.0.0.0"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Config(ctx); !errors.As(err, &fe) || fe.Field != "SubnetMin" {
		t.Fatalf("Config() = %v, want a FieldError for SubnetMin", err)
	}
	if err := reg.PutConfig(ctx, []byte(bigNet)); err != nil {
		t.Fatal(err)
	}
	raw, rev, err := reg.ConfigRaw(ctx)
	if err != nil || string(raw) != bigNet || rev == 0 {
		t.Fatalf("ConfigRaw = %q, %d, %v", raw, rev, err)
	}
	if reg.LastContact().IsZero() || time.Since(reg.LastContact()) > 10*time.Second {
		t.Fatalf("LastContact = %v", reg.LastContact())
	}
}

func TestAcquire(t *testing.T) {
	cli, reg, nc := setup(t, bigNet)
	ctx := testCtx(t)
	a := attrs("192.0.2.11")
	h := NewHolder(reg, HolderConfig{Network: nc, Attrs: a})
	if _, ok := h.Lease(); ok {
		t.Fatal("Lease() before Acquire reports a lease")
	}
	l, err := h.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !nc.InRange(l.Subnet) {
		t.Fatalf("subnet %s out of range", l.Subnet)
	}
	want, _ := a.MarshalJSON()
	v, id, rev, ok := getKV(t, cli, reg, l.Subnet)
	if !ok || !bytes.Equal(v, want) || id != l.EtcdLease || id == 0 || rev != l.ModRevision {
		t.Fatalf("key = %q lease %x rev %d ok %v; want %q lease %x rev %d", v, id, rev, ok, want, l.EtcdLease, l.ModRevision)
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil || ttl.GrantedTTL != int64(DefaultTTL/time.Second) {
		t.Fatalf("granted TTL = %v, %v; want 24h", ttl, err)
	}
	if time.Until(l.Expiration) < 23*time.Hour {
		t.Fatalf("Expiration %v too soon", l.Expiration)
	}
	if got, ok := h.Lease(); !ok || got.Subnet != l.Subnet {
		t.Fatalf("Lease() = %v %v", got, ok)
	}
	snap, err := reg.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Leases) != 1 || snap.Leases[0].Subnet != l.Subnet || snap.Leases[0].Reservation ||
		time.Until(snap.Leases[0].Expiration) < 23*time.Hour || snap.Revision < l.ModRevision {
		t.Fatalf("Leases() = %+v", snap)
	}
}

func TestReuseAfterRestart(t *testing.T) {
	cli, reg, nc := setup(t, bigNet)
	ctx := testCtx(t)
	l1, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.11")}).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Another host too, so the reuse is not just "the only key".
	if _, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.12")}).Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	// Restart with the same attributes: same key, same etcd lease, no PUT.
	l2, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.11")}).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Subnet != l1.Subnet || l2.EtcdLease != l1.EtcdLease || l2.ModRevision != l1.ModRevision {
		t.Fatalf("after restart got %s lease %x rev %d; want %s lease %x rev %d (no write)",
			l2.Subnet, l2.EtcdLease, l2.ModRevision, l1.Subnet, l1.EtcdLease, l1.ModRevision)
	}
	// Restart with a new VtepMAC: same key and etcd lease, value rewritten.
	a := attrs("192.0.2.11")
	a.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}`)
	l3, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: a}).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, id, rev, _ := getKV(t, cli, reg, l1.Subnet)
	want, _ := a.MarshalJSON()
	if l3.Subnet != l1.Subnet || id != l1.EtcdLease || !bytes.Equal(v, want) || rev == l1.ModRevision || rev != l3.ModRevision {
		t.Fatalf("after restart with new attrs: %s lease %x value %q rev %d", l3.Subnet, id, v, rev)
	}
	if n := countLeases(t, cli); n != 2 {
		t.Fatalf("%d etcd leases, want 2", n)
	}
}

func TestPreviousSubnet(t *testing.T) {
	_, reg, nc := setup(t, bigNet)
	ctx := testCtx(t)
	prev := netip.MustParsePrefix("198.18.42.0/24")
	l, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.11"), PreviousSubnet: prev}).Acquire(ctx)
	if err != nil || l.Subnet != prev {
		t.Fatalf("got %v, %v; want the previous subnet %s", l.Subnet, err, prev)
	}
	// Taken by someone else: another subnet.
	l, err = NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.12"), PreviousSubnet: prev}).Acquire(ctx)
	if err != nil || l.Subnet == prev {
		t.Fatalf("got %v, %v; want a subnet other than %s", l.Subnet, err, prev)
	}
	// Out of range (the first subnet is never leased): ignored.
	first := netip.MustParsePrefix("198.18.0.0/24")
	l, err = NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.13"), PreviousSubnet: first}).Acquire(ctx)
	if err != nil || l.Subnet == first || !nc.InRange(l.Subnet) {
		t.Fatalf("got %v, %v; want an in-range subnet", l.Subnet, err)
	}
}

func TestReservation(t *testing.T) {
	cli, reg, nc := setup(t, smallNet)
	ctx := testCtx(t)
	res := netip.MustParsePrefix("198.18.0.64/26")
	other := netip.MustParsePrefix("198.18.0.128/26")
	owner := netip.MustParseAddr("192.0.2.11")
	if err := reg.Reserve(ctx, res, owner); err != nil {
		t.Fatal(err)
	}
	if err := reg.Reserve(ctx, res, netip.MustParseAddr("192.0.2.99")); err == nil {
		t.Fatal("Reserve for another PublicIP succeeded over an existing reservation")
	}
	if err := reg.Reserve(ctx, netip.MustParsePrefix("10.0.0.0/26"), owner); err == nil {
		t.Fatal("Reserve outside the network succeeded")
	}
	// Others never take the reserved subnet.
	for i := 0; i < 5; i++ {
		h := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.12"), PreviousSubnet: res})
		l, err := h.Acquire(ctx)
		if err != nil || l.Subnet != other {
			t.Fatalf("non-owner got %v, %v; want %s", l.Subnet, err, other)
		}
	}
	if _, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.13")}).Acquire(ctx); !errors.Is(err, subnet.ErrOutOfSubnets) {
		t.Fatalf("third host: %v, want ErrOutOfSubnets (reserved subnet must not be taken)", err)
	}
	// The owner uses it, and it stays lease-less.
	a := attrs("192.0.2.11")
	l, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: a}).Acquire(ctx)
	if err != nil || l.Subnet != res || !l.Reservation || l.EtcdLease != 0 {
		t.Fatalf("owner got %+v, %v; want reservation %s", l, err, res)
	}
	v, id, _, _ := getKV(t, cli, reg, res)
	want, _ := a.MarshalJSON()
	if id != 0 || !bytes.Equal(v, want) {
		t.Fatalf("reserved key: lease %x value %q; want no lease and %q", id, v, want)
	}
	// Release refuses normal leases and absent keys; works on reservations.
	if err := reg.Release(ctx, other); err == nil {
		t.Fatal("Release of a normal lease succeeded")
	}
	if err := reg.Release(ctx, netip.MustParsePrefix("198.18.0.192/26")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Release of an absent key: %v", err)
	}
	if err := reg.Release(ctx, res); err != nil {
		t.Fatal(err)
	}
	if _, _, _, ok := getKV(t, cli, reg, res); ok {
		t.Fatal("reservation still present after Release")
	}
	// Converting our own live lease into a reservation keeps its value.
	v0, _, _, _ := getKV(t, cli, reg, other)
	if err := reg.Reserve(ctx, other, netip.MustParseAddr("192.0.2.12")); err != nil {
		t.Fatal(err)
	}
	v1, id, _, _ := getKV(t, cli, reg, other)
	if id != 0 || !bytes.Equal(v0, v1) {
		t.Fatalf("converted lease: lease %x value %q, want no lease and %q", id, v1, v0)
	}
}

func TestRaceTwoHolders(t *testing.T) {
	cli, _ := etcdtest.Start(t)
	ctx := testCtx(t)
	const iterations = 25
	for i := 0; i < iterations; i++ {
		reg := NewRegistry(cli, fmt.Sprintf("/race/%d", i))
		if err := reg.PutConfig(ctx, []byte(smallNet)); err != nil {
			t.Fatal(err)
		}
		nc, _ := reg.Config(ctx)
		var wg sync.WaitGroup
		got := make([]subnet.Lease, 2)
		errs := make([]error, 2)
		start := make(chan struct{})
		for j := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs(fmt.Sprintf("192.0.2.%d", 20+j))})
				<-start
				got[j], errs[j] = h.Acquire(ctx)
			}()
		}
		close(start)
		wg.Wait()
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("iteration %d: %v, %v", i, errs[0], errs[1])
		}
		if got[0].Subnet == got[1].Subnet {
			t.Fatalf("iteration %d: both got %s", i, got[0].Subnet)
		}
		snap, err := reg.Leases(ctx)
		if err != nil || len(snap.Leases) != 2 {
			t.Fatalf("iteration %d: %d leases, %v", i, len(snap.Leases), err)
		}
	}
	if n := countLeases(t, cli); n != 2*iterations {
		t.Fatalf("%d etcd leases after %d races, want %d (lost grants must be revoked)", n, iterations, 2*iterations)
	}
}

func TestOutOfSubnets(t *testing.T) {
	cli, reg, nc := setup(t, smallNet)
	ctx := testCtx(t)
	for i := range 2 {
		if _, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs(fmt.Sprintf("192.0.2.%d", 30+i))}).Acquire(ctx); err != nil {
			t.Fatal(err)
		}
	}
	_, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.40")}).Acquire(ctx)
	if !errors.Is(err, subnet.ErrOutOfSubnets) {
		t.Fatalf("got %v, want ErrOutOfSubnets", err)
	}
	if n := countLeases(t, cli); n != 2 {
		t.Fatalf("%d etcd leases, want 2", n)
	}
}

// runHolder runs h in the background and returns a channel of OnChange calls.
func runHolder(t *testing.T, reg *Registry, cfg HolderConfig) (*Holder, chan subnet.Lease) {
	t.Helper()
	changes := make(chan subnet.Lease, 10)
	cfg.OnChange = func(l subnet.Lease) { changes <- l }
	h := NewHolder(reg, cfg)
	return h, changes
}

func startRun(t *testing.T, h *Holder) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
}

func waitChange(t *testing.T, ch chan subnet.Lease, d time.Duration) subnet.Lease {
	t.Helper()
	select {
	case l := <-ch:
		return l
	case <-time.After(d):
		t.Fatal("no OnChange call")
	}
	return subnet.Lease{}
}

func TestOwnLeaseDeleted(t *testing.T) {
	cli, reg, nc := setup(t, bigNet)
	ctx := testCtx(t)
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	h, changes := runHolder(t, reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.11"), Logger: logger})
	l, err := h.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	startRun(t, h)
	time.Sleep(200 * time.Millisecond) // let the watch start (it starts from the claim revision anyway)
	if _, err := reg.cli.Delete(ctx, reg.LeaseKey(l.Subnet)); err != nil {
		t.Fatal(err)
	}
	got := waitChange(t, changes, 15*time.Second)
	if got.Subnet != l.Subnet || got.EtcdLease == l.EtcdLease {
		t.Fatalf("re-acquired %s lease %x; want %s with a new etcd lease", got.Subnet, got.EtcdLease, l.Subnet)
	}
	if _, id, _, ok := getKV(t, cli, reg, l.Subnet); !ok || id != got.EtcdLease {
		t.Fatalf("key after re-acquire: ok %v lease %x", ok, id)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "DELETED") {
		t.Fatalf("no loud error log:\n%s", logs.String())
	}
	if n := countLeases(t, cli); n != 1 {
		t.Fatalf("%d etcd leases, want 1 (the old one revoked)", n)
	}
	if cur, _ := h.Lease(); cur.EtcdLease != got.EtcdLease {
		t.Fatalf("Lease() = %+v", cur)
	}
}

func TestLeaseExpiry(t *testing.T) {
	cli, reg, nc := setup(t, bigNet)
	ctx := testCtx(t)
	h, changes := runHolder(t, reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.11"), TTL: 2 * time.Second, RenewMargin: time.Second})
	l, err := h.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The daemon is frozen: nothing renews, the lease expires.
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, _, _, ok := getKV(t, cli, reg, l.Subnet); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lease did not expire")
		}
		time.Sleep(200 * time.Millisecond)
	}
	startRun(t, h)
	got := waitChange(t, changes, 15*time.Second)
	if got.Subnet != l.Subnet {
		t.Fatalf("re-acquired %s, want the same subnet %s", got.Subnet, l.Subnet)
	}
	// And it is kept alive from now on.
	time.Sleep(3 * time.Second)
	if _, id, _, ok := getKV(t, cli, reg, l.Subnet); !ok || id != got.EtcdLease {
		t.Fatalf("lease not kept alive: ok %v lease %x", ok, id)
	}
}

func TestRenewNoLeak(t *testing.T) {
	cli, reg, nc := setup(t, bigNet)
	ctx := testCtx(t)
	h := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.11"), TTL: 3 * time.Second, RenewMargin: 2990 * time.Millisecond})
	l, err := h.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, _, rev0, _ := getKV(t, cli, reg, l.Subnet)
	startRun(t, h)
	deadline := time.Now().Add(30 * time.Second)
	for {
		h.mu.Lock()
		n := h.renewals
		h.mu.Unlock()
		if n >= 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d renewals", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := cli.Leases(ctx)
	if err != nil || len(resp.Leases) != 1 || int64(resp.Leases[0].ID) != l.EtcdLease {
		t.Fatalf("etcd leases after 100 renewals: %+v, %v; want exactly %x", resp, err, l.EtcdLease)
	}
	if _, _, rev, _ := getKV(t, cli, reg, l.Subnet); rev != rev0 {
		t.Fatalf("renewals wrote the key (rev %d -> %d)", rev0, rev)
	}
}

func TestWatchLeases(t *testing.T) {
	cli, reg, _ := setup(t, bigNet)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	events := make(chan Event, 100)
	done := make(chan error, 1)
	go func() { done <- reg.WatchLeases(ctx, 0, func(e Event) { events <- e }) }()
	time.Sleep(300 * time.Millisecond)
	key := reg.LeaseKey(netip.MustParsePrefix("198.18.7.0/24"))
	v1, _ := attrs("192.0.2.11").MarshalJSON()
	v2, _ := attrs("192.0.2.12").MarshalJSON()
	for _, op := range []clientv3.Op{
		clientv3.OpPut(key, string(v1)),
		clientv3.OpPut(key, string(v1)),
		clientv3.OpPut(key, string(v2)),
		clientv3.OpPut(reg.subnetsPrefix+"junk", "x"),
		clientv3.OpDelete(key),
	} {
		if _, err := cli.Do(ctx, op); err != nil {
			t.Fatal(err)
		}
	}
	type want struct {
		typ     EventType
		renewal bool
		ip      string
		bad     bool
	}
	for i, w := range []want{{EventAdded, false, "192.0.2.11", false}, {EventUpdated, true, "192.0.2.11", false},
		{EventUpdated, false, "192.0.2.12", false}, {EventAdded, false, "", true}, {EventRemoved, false, "", false}} {
		select {
		case e := <-events:
			ip := ""
			if e.Lease.Attrs.PublicIP.IsValid() {
				ip = e.Lease.Attrs.PublicIP.String()
			}
			if e.Type != w.typ || e.Renewal() != w.renewal || ip != w.ip || (e.Err != nil) != w.bad || e.Revision == 0 {
				t.Fatalf("event %d = %+v (renewal %v); want %+v", i, e, e.Renewal(), w)
			}
			if !w.bad && e.Subnet.String() != "198.18.7.0/24" {
				t.Fatalf("event %d subnet %s", i, e.Subnet)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("event %d missing", i)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("WatchLeases after cancel: %v", err)
	}

	// A compacted start revision is reported.
	resp, err := cli.Put(testCtx(t), key, string(v1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(testCtx(t), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	err = reg.WatchLeases(testCtx(t), 2, func(Event) {})
	if !errors.Is(err, ErrCompacted) {
		t.Fatalf("WatchLeases from a compacted revision: %v", err)
	}
}

// applies collects Watcher snapshots.
type applies struct {
	mu    sync.Mutex
	snaps []Snapshot
	ch    chan Snapshot
}

func (a *applies) apply(s Snapshot) {
	a.mu.Lock()
	a.snaps = append(a.snaps, s)
	a.mu.Unlock()
	select {
	case a.ch <- s:
	default:
	}
}

func (a *applies) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.snaps)
}

func (a *applies) last() Snapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.snaps[len(a.snaps)-1]
}

func runWatcher(t *testing.T, w *Watcher, a *applies) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, a.apply) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watcher.Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Watcher.Run did not return after cancel")
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func putLeases(t *testing.T, cli *clientv3.Client, reg *Registry, from, n, perTxn int) {
	t.Helper()
	for i := from; i < from+n; i += perTxn {
		var ops []clientv3.Op
		for j := i; j < min(i+perTxn, from+n); j++ {
			sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(j * 4 >> 8), byte(j * 4)}), 30)
			v, _ := attrs(fmt.Sprintf("192.0.2.%d", 1+j%200)).MarshalJSON()
			ops = append(ops, clientv3.OpPut(reg.LeaseKey(sn), string(v)))
		}
		if _, err := cli.Txn(testCtx(t)).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWatcherCoalescing(t *testing.T) {
	cli, reg, _ := setup(t, bigNet)
	a := &applies{ch: make(chan Snapshot, 1)}
	runWatcher(t, NewWatcher(reg, nil), a)
	waitFor(t, "initial apply", func() bool { return a.count() == 1 })
	if n := len(a.last().Leases); n != 0 {
		t.Fatalf("initial apply has %d leases", n)
	}
	putLeases(t, cli, reg, 4, 500, 125)
	waitFor(t, "500 leases", func() bool { return len(a.last().Leases) == 500 })
	if n := a.count() - 1; n > 4 {
		t.Fatalf("%d applies for 4 transactions; want at most one per watch response", n)
	}
	// Removal is reflected too.
	if _, err := cli.Delete(testCtx(t), reg.subnetsPrefix, clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "empty set", func() bool { return len(a.last().Leases) == 0 })
}

func TestWatcherCompaction(t *testing.T) {
	cli, reg, _ := setup(t, bigNet)
	putLeases(t, cli, reg, 4, 3, 3)
	w := NewWatcher(reg, nil)
	first := true
	w.afterList = func() {
		if !first {
			return
		}
		first = false
		// Between the list and the watch: more writes, a delete, then a
		// compaction past the revision the watch will ask for.
		putLeases(t, cli, reg, 10, 2, 1)
		if _, err := cli.Delete(testCtx(t), reg.LeaseKey(netip.MustParsePrefix("198.18.0.16/30"))); err != nil {
			t.Error(err)
		}
		resp, err := cli.Get(testCtx(t), "x")
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := cli.Compact(testCtx(t), resp.Header.Revision); err != nil {
			t.Error(err)
		}
	}
	a := &applies{ch: make(chan Snapshot, 1)}
	runWatcher(t, w, a)
	waitFor(t, "second apply", func() bool { return a.count() >= 2 })
	if n := len(a.snaps[0].Leases); n != 3 {
		t.Fatalf("first apply: %d leases, want 3", n)
	}
	want := "[198.18.0.20/30 198.18.0.24/30 198.18.0.40/30 198.18.0.44/30]"
	if got := fmt.Sprint(leaseSubnets(a.snaps[1])); got != want {
		t.Fatalf("apply after compaction: %s, want %s", got, want)
	}
	snap, err := reg.list(testCtx(t), false)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(leaseSubnets(a.snaps[1])) != fmt.Sprint(leaseSubnets(snap)) || a.snaps[1].Revision < snap.Revision {
		t.Fatalf("apply after compaction: %v at %d; etcd has %v at %d", leaseSubnets(a.snaps[1]), a.snaps[1].Revision, leaseSubnets(snap), snap.Revision)
	}
}

func leaseSubnets(s Snapshot) []string {
	var out []string
	for _, l := range s.Leases {
		out = append(out, l.Subnet.String())
	}
	for _, inv := range s.Invalid {
		out = append(out, "invalid:"+inv.Key)
	}
	return out
}

func TestHolderFollowsOperatorChanges(t *testing.T) {
	cli, reg, nc := setup(t, bigNet)
	ctx := testCtx(t)
	h := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.11")})
	l, err := h.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	startRun(t, h)
	a := attrs("192.0.2.11")
	want, _ := a.MarshalJSON()

	// An operator turns our lease into a reservation: we follow, stop
	// renewing, and the now unused etcd lease is revoked.
	if err := reg.Reserve(ctx, l.Subnet, a.PublicIP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the holder to see the reservation", func() bool {
		cur, _ := h.Lease()
		return cur.Reservation && cur.EtcdLease == 0
	})
	waitFor(t, "the old etcd lease to be revoked", func() bool { return countLeases(t, cli) == 0 })
	if v, id, _, ok := getKV(t, cli, reg, l.Subnet); !ok || id != 0 || !bytes.Equal(v, want) {
		t.Fatalf("reserved key: ok %v lease %x value %q", ok, id, v)
	}
}

func TestWatcherCoalescesDuringSlowApply(t *testing.T) {
	cli, reg, _ := setup(t, bigNet)
	a := &applies{ch: make(chan Snapshot, 1)}
	slow := func(s Snapshot) {
		a.apply(s)
		if len(s.Leases) > 0 {
			time.Sleep(time.Second) // a backend programming routes
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewWatcher(reg, nil).Run(ctx, slow) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "initial apply", func() bool { return a.count() == 1 })
	time.Sleep(200 * time.Millisecond) // the watch is established
	putLeases(t, cli, reg, 10, 1, 1)
	waitFor(t, "the first change to be applied", func() bool { return a.count() == 2 })
	start := time.Now()
	for i := 1; i < 20; i++ {
		putLeases(t, cli, reg, 10+i, 1, 1) // 19 separate revisions during slow applies
		time.Sleep(10 * time.Millisecond)
	}
	writing := time.Since(start)
	waitFor(t, "20 leases", func() bool { return len(a.last().Leases) == 20 })
	// Each 1s apply may take only what arrived before it started: at most
	// one apply per second of writing, plus the first and the last.
	limit := 2 + int(writing/time.Second) + 1
	if n := a.count() - 1; n > limit || n >= 20 {
		t.Fatalf("%d applies for 20 writes over %s during 1s applies, want at most %d: responses that piled up must be applied together",
			n, writing.Round(time.Millisecond), limit)
	}
}

func TestManyHoldersFewSubnets(t *testing.T) {
	cli, reg, nc := setup(t, `{"Network":"198.18.0.0/24","SubnetLen":28,"SubnetMin":"198.18.0.0"}`)
	ctx := testCtx(t)
	const hosts = 20 // for 16 subnets
	var wg sync.WaitGroup
	got := make([]subnet.Lease, hosts)
	errs := make([]error, hosts)
	for i := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs(fmt.Sprintf("192.0.2.%d", 100+i))}).Acquire(ctx)
		}()
	}
	wg.Wait()
	seen := map[netip.Prefix]bool{}
	full := 0
	for i := range hosts {
		switch {
		case errors.Is(errs[i], subnet.ErrOutOfSubnets):
			full++
		case errs[i] != nil:
			t.Fatalf("host %d: %v", i, errs[i])
		case seen[got[i].Subnet]:
			t.Fatalf("subnet %s handed out twice", got[i].Subnet)
		default:
			seen[got[i].Subnet] = true
		}
	}
	if len(seen) != 16 || full != 4 {
		t.Fatalf("%d hosts got a subnet and %d were told the network is full; want 16 and 4", len(seen), full)
	}
	if n := countLeases(t, cli); n != 16 {
		t.Fatalf("%d etcd leases, want 16", n)
	}
}

// TestOwnStaleLeases: a host that comes back with its subnet file keeps the
// subnet its pods use even when a reservation (or a planted key without an
// etcd lease) carries its PublicIP too; a host that comes back without one
// takes the reservation and removes its own older lease, which would live
// on for its TTL with the same VTEP MAC otherwise.
func TestOwnStaleLeases(t *testing.T) {
	cli, reg, nc := setup(t, bigNet)
	ctx := testCtx(t)
	a := attrs("192.0.2.11")
	live, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: a}).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res := netip.MustParsePrefix("198.18.200.0/24")
	if live.Subnet == res {
		t.Skip("the random subnet is the test's reservation")
	}
	if err := reg.Reserve(ctx, res, a.PublicIP); err != nil {
		t.Fatal(err)
	}

	// With the subnet file: the live lease, untouched; the reservation stays.
	l, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: a, PreviousSubnet: live.Subnet}).Acquire(ctx)
	if err != nil || l.Subnet != live.Subnet || l.EtcdLease != live.EtcdLease {
		t.Fatalf("with the subnet file: got %+v, %v; want %s", l, err, live.Subnet)
	}
	if _, _, _, ok := getKV(t, cli, reg, res); !ok {
		t.Fatal("the reservation was removed")
	}

	// Without it: the reservation, and the old live lease is gone.
	l, err = NewHolder(reg, HolderConfig{Network: nc, Attrs: a}).Acquire(ctx)
	if err != nil || l.Subnet != res || !l.Reservation {
		t.Fatalf("without the subnet file: got %+v, %v; want the reservation %s", l, err, res)
	}
	if _, _, _, ok := getKV(t, cli, reg, live.Subnet); ok {
		t.Fatalf("our stale lease %s is still in etcd", live.Subnet)
	}
	// Another host's lease is never touched.
	other, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.12")}).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: a}).Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, _, ok := getKV(t, cli, reg, other.Subnet); !ok {
		t.Fatal("another host's lease was removed")
	}
}
