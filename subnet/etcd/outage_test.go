package etcd

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weftnet/weft/subnet/etcd/etcdtest"
)

// partition is a TCP proxy in front of etcd that can cut the connection, to
// play a network partition between one client and a healthy etcd.
type partition struct {
	t       *testing.T
	ln      net.Listener
	target  string
	mu      sync.Mutex
	blocked bool
	conns   map[net.Conn]bool
	wg      sync.WaitGroup
}

func newPartition(t *testing.T, endpoint string) *partition {
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &partition{t: t, ln: ln, target: u.Host, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.block()
		p.wg.Wait()
	})
	return p
}

func (p *partition) endpoint() string { return "http://" + p.ln.Addr().String() }

func (p *partition) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.blocked {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *partition) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
}

func (p *partition) block() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = true
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *partition) unblock() {
	p.mu.Lock()
	p.blocked = false
	p.mu.Unlock()
}

func proxiedClient(t *testing.T, p *partition) *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            []string{p.endpoint()},
		DialTimeout:          2 * time.Second,
		DialKeepAliveTime:    time.Second,
		DialKeepAliveTimeout: time.Second,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// ourGoroutines lists goroutines running code of this package.
func ourGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "weft/subnet/etcd.(*Holder)") || strings.Contains(g, "weft/subnet/etcd.(*Watcher)") ||
			strings.Contains(g, "weft/subnet/etcd.(*Registry)") {
			out = append(out, g)
		}
	}
	return out
}

func TestHolderPartitionLongerThanTTL(t *testing.T) {
	direct, srv := etcdtest.Start(t)
	p := newPartition(t, srv.Endpoints()[0])
	ctx := testCtx(t)
	dreg := NewRegistry(direct, "")
	if err := dreg.PutConfig(ctx, []byte(bigNet)); err != nil {
		t.Fatal(err)
	}
	reg := NewRegistry(proxiedClient(t, p), "")
	nc, err := reg.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	h, changes := runHolder(t, reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.11"), TTL: 2 * time.Second,
		RenewMargin: time.Second, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	l, err := h.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	startRun(t, h)
	time.Sleep(1500 * time.Millisecond) // at least one renewal through the proxy
	if _, id, _, ok := getKV(t, direct, dreg, l.Subnet); !ok || id != l.EtcdLease {
		t.Fatal("lease not kept alive before the partition")
	}
	contact := reg.LastContact()

	p.block()
	waitFor(t, "the lease to expire on the etcd side", func() bool {
		_, _, _, ok := getKV(t, direct, dreg, l.Subnet)
		return !ok
	})
	if !reg.LastContact().Before(contact.Add(3 * time.Second)) {
		t.Fatalf("LastContact advanced during the partition: %v -> %v", contact, reg.LastContact())
	}
	p.unblock()

	got := waitChange(t, changes, 20*time.Second)
	if got.Subnet != l.Subnet || got.EtcdLease == l.EtcdLease {
		t.Fatalf("after the partition: %s lease %x; want %s with a new etcd lease", got.Subnet, got.EtcdLease, l.Subnet)
	}
	if !strings.Contains(logs.String(), "EXPIRED") {
		t.Fatalf("no loud warning about the expiry:\n%s", logs.String())
	}
	if _, id, _, ok := getKV(t, direct, dreg, l.Subnet); !ok || id != got.EtcdLease {
		t.Fatalf("key after re-acquire: ok %v lease %x", ok, id)
	}
	if n := countLeases(t, direct); n != 1 {
		t.Fatalf("%d etcd leases, want 1", n)
	}
}

func TestWatcherPartitionAndCompaction(t *testing.T) {
	direct, srv := etcdtest.Start(t)
	p := newPartition(t, srv.Endpoints()[0])
	dreg := NewRegistry(direct, "")
	reg := NewRegistry(proxiedClient(t, p), "")
	a := &applies{ch: make(chan Snapshot, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewWatcher(reg, nil).Run(ctx, a.apply) }()

	putLeases(t, direct, dreg, 1, 2, 2)
	waitFor(t, "2 leases", func() bool { return a.count() > 0 && len(a.last().Leases) == 2 })

	// Cut the watcher off; change and compact meanwhile.
	p.block()
	putLeases(t, direct, dreg, 3, 3, 1)
	if _, err := direct.Delete(testCtx(t), dreg.LeaseKey(netip.MustParsePrefix("198.18.0.4/30"))); err != nil {
		t.Fatal(err)
	}
	resp, err := direct.Get(testCtx(t), "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Compact(testCtx(t), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	p.unblock()

	want := "[198.18.0.8/30 198.18.0.12/30 198.18.0.16/30 198.18.0.20/30]"
	waitFor(t, "the set after the partition", func() bool { return fmtSubnets(a.last()) == want })

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	time.Sleep(100 * time.Millisecond)
	if g := ourGoroutines(); len(g) > 0 {
		t.Fatalf("goroutines left behind:\n%s", strings.Join(g, "\n\n"))
	}
}

func fmtSubnets(s Snapshot) string {
	return strings.ReplaceAll(strings.Join(append([]string{"["}, leaseSubnets(s)...), " "), "[ ", "[") + "]"
}

func TestHolderReuseOfCompactedKey(t *testing.T) {
	cli, reg, nc := setup(t, bigNet)
	ctx := testCtx(t)
	if _, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.11")}).Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	putLeases(t, cli, reg, 1, 5, 1)
	resp, err := cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	h, changes := runHolder(t, reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.11"), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	l, err := h.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	startRun(t, h)
	time.Sleep(2500 * time.Millisecond)
	if n := strings.Count(logs.String(), "was compacted"); n != 1 {
		t.Fatalf("compacted watch handled %d times in 2.5s, want once:\n%s", n, logs.String())
	}
	if _, err := reg.cli.Delete(ctx, reg.LeaseKey(l.Subnet)); err != nil {
		t.Fatal(err)
	}
	if got := waitChange(t, changes, 15*time.Second); got.Subnet != l.Subnet {
		t.Fatalf("re-acquired %s, want %s", got.Subnet, l.Subnet)
	}
	if strings.Contains(logs.String(), "broke") {
		t.Fatalf("watch of a compacted key kept breaking:\n%s", logs.String())
	}
}

func TestHolderRunLeavesNoGoroutines(t *testing.T) {
	_, reg, nc := setup(t, bigNet)
	h := NewHolder(reg, HolderConfig{Network: nc, Attrs: attrs("192.0.2.11")})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }() // Run acquires by itself
	waitFor(t, "a lease", func() bool { _, ok := h.Lease(); return ok })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if g := ourGoroutines(); len(g) > 0 {
		t.Fatalf("goroutines left behind:\n%s", strings.Join(g, "\n\n"))
	}
}

func TestWatcherKeepsContactWhenIdle(t *testing.T) {
	_, reg, _ := setup(t, bigNet)
	var logs syncBuffer
	w := NewWatcher(reg, slog.New(slog.NewTextHandler(&logs, nil)))
	w.progressEvery = 200 * time.Millisecond
	a := &applies{ch: make(chan Snapshot, 1)}
	runWatcher(t, w, a)
	waitFor(t, "initial apply", func() bool { return a.count() == 1 })
	first := reg.LastContact()
	waitFor(t, "a progress notification", func() bool { return reg.LastContact().After(first.Add(500 * time.Millisecond)) })
	if a.count() != 1 {
		t.Fatalf("%d applies on an idle cluster, want 1 (progress notifications carry no change)\n%s", a.count(), logs.String())
	}
}
