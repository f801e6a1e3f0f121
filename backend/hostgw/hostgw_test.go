package hostgw

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl/nltest"
	"github.com/weftnet/weft/subnet"
)

// countingHandler counts records whose message contains a substring.
type countingHandler struct {
	slog.Handler
	match string
	n     *atomic.Int64
}

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.match) {
		h.n.Add(1)
	}
	if !h.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}
func (h countingHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return countingHandler{h.Handler.WithAttrs(a), h.match, h.n}
}
func (h countingHandler) WithGroup(g string) slog.Handler {
	return countingHandler{h.Handler.WithGroup(g), h.match, h.n}
}

func baseHandler() slog.Handler {
	if testing.Verbose() {
		return slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	return slog.DiscardHandler
}

func netConfig(t testing.TB) *subnet.Config {
	t.Helper()
	c, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","Backend":{"Type":"host-gw"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func extOf(h *nltest.Host) backend.ExternalInterface {
	return backend.ExternalInterface{Name: h.ExtName, Index: h.ExtIndex, Addr: h.Addr, PublicIP: h.Addr, MTU: h.MTU}
}

func newBackend(t testing.TB, h *nltest.Host, logger *slog.Logger) *Backend {
	t.Helper()
	if logger == nil {
		logger = slog.New(baseHandler())
	}
	b, err := New(backend.Config{Network: netConfig(t), Ext: extOf(h), Netns: h.Handle, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	hb := b.(*Backend)
	t.Cleanup(func() {
		hb.kmu.Lock()
		hb.closeHandles()
		hb.kmu.Unlock()
	})
	return hb
}

func lease(sn, pub string) subnet.Lease {
	return subnet.Lease{
		Subnet: netip.MustParsePrefix(sn),
		Attrs:  subnet.LeaseAttrs{PublicIP: netip.MustParseAddr(pub), BackendType: Type},
	}
}

func ourRoutes(t testing.TB, h *nltest.Host) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(h.IP(t, "route", "show", "proto", "87")), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			// Drop "nhid N" so that the text is the same with and
			// without nexthop objects.
			f := strings.Fields(l)
			var keep []string
			for i := 0; i < len(f); i++ {
				if f[i] == "nhid" {
					i++
					continue
				}
				keep = append(keep, f[i])
			}
			lines = append(lines, strings.Join(keep, " "))
		}
	}
	return strings.Join(lines, "\n")
}

func TestNewRejectsNAT(t *testing.T) {
	ext := backend.ExternalInterface{Name: "eth0", Index: 2, Addr: netip.MustParseAddr("192.0.2.10"),
		PublicIP: netip.MustParseAddr("203.0.113.10"), MTU: 1500}
	_, err := New(backend.Config{Network: netConfig(t), Ext: ext, Logger: slog.New(slog.DiscardHandler)})
	want := "host-gw cannot work through NAT: --public-ip 203.0.113.10 differs from interface address 192.0.2.10"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
	ext.PublicIP = ext.Addr
	if _, err := New(backend.Config{Network: netConfig(t), Ext: ext, Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Fatal(err)
	}
}

func TestRoutesAndRefusal(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	var refusals atomic.Int64
	logger := slog.New(countingHandler{baseHandler(), "refusing peer", &refusals})
	b := newBackend(t, h, logger)
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if attrs.BackendType != "host-gw" || len(attrs.BackendData) != 0 {
		t.Fatalf("attrs %+v", attrs)
	}
	if b.MTU() != h.MTU {
		t.Fatalf("MTU %d, want %d", b.MTU(), h.MTU)
	}
	own := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.1.0/24"), Attrs: subnet.LeaseAttrs{PublicIP: h.Addr, BackendType: Type}}
	far := lease("198.18.4.0/24", "203.0.113.40")
	b.SetDesired(own, subnet.Pointers([]subnet.Lease{lease("198.18.2.0/24", "192.0.2.20"), lease("198.18.3.0/24", "192.0.2.30"), far}))
	for i := 0; i < 3; i++ {
		b.loop.Reconcile()
	}
	want := "198.18.2.0/24 via 192.0.2.20 dev eth0\n198.18.3.0/24 via 192.0.2.30 dev eth0"
	if got := ourRoutes(t, h); got != want {
		t.Fatalf("routes:\n%s\nwant\n%s", got, want)
	}
	st := b.Status()
	if st.PeersWanted != 3 || st.PeersProgrammed != 2 || !st.Ready() || st.LastError != "" {
		t.Fatalf("status %+v", st)
	}
	if why := st.Refused[far.Subnet]; !strings.Contains(why, "not on-link") || len(st.Refused) != 1 {
		t.Fatalf("refused %v", st.Refused)
	}
	if n := refusals.Load(); n != 1 {
		t.Fatalf("refusal logged %d times over 3 passes, want once", n)
	}
	// Removing a peer removes its route.
	b.SetDesired(own, subnet.Pointers([]subnet.Lease{lease("198.18.3.0/24", "192.0.2.30")}))
	b.loop.Reconcile()
	if got := ourRoutes(t, h); got != "198.18.3.0/24 via 192.0.2.30 dev eth0" {
		t.Fatalf("routes after removal: %s", got)
	}
	if st := b.Status(); len(st.Refused) != 0 || st.PeersProgrammed != 1 {
		t.Fatalf("status after removal %+v", st)
	}

	// Cleanup removes host-gw's routes, leaves the vxlan (onlink) and udp
	// (device route) shapes alone, and succeeds on nothing.
	h.IP(t, "route", "add", "198.18.8.0/24", "via", "198.18.8.0", "dev", "eth0", "onlink", "proto", "87")
	h.IP(t, "route", "add", "198.18.128.0/17", "dev", "eth0", "proto", "87")
	for i := 0; i < 2; i++ {
		if err := Cleanup(context.Background(), h.Handle, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
	}
	if got := ourRoutes(t, h); got != "198.18.8.0/24 via 198.18.8.0 dev eth0 onlink\n198.18.128.0/17 dev eth0 scope link" {
		t.Fatalf("routes left after cleanup: %q", got)
	}
}

func waitFor(t *testing.T, what string, timeout time.Duration, ok func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !ok() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func startRun(t *testing.T, b *Backend) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return")
		}
	})
}

func TestRepairAndPing(t *testing.T) {
	lab := nltest.NewLab(t, 3)
	subnets := []string{"198.18.1.0/24", "198.18.2.0/24", "198.18.3.0/24"}
	var leases []subnet.Lease
	var bs []*Backend
	var pods []*nltest.NS
	var podIPs []netip.Addr
	for i, h := range lab.Hosts {
		pod, ip := h.AddPod(t, netip.MustParsePrefix(subnets[i]))
		pods, podIPs = append(pods, pod), append(podIPs, ip)
		b := newBackend(t, h, nil)
		b.cfg.ResyncInterval = time.Hour // only events may trigger the repair below
		b.loop = backend.NewLoop(b.cfg, "", b.pass)
		attrs, err := b.Setup(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		attrs.PublicIP = h.Addr
		leases = append(leases, subnet.Lease{Subnet: netip.MustParsePrefix(subnets[i]), Attrs: attrs})
		bs = append(bs, b)
		startRun(t, b)
	}
	var wg sync.WaitGroup
	for i, b := range bs {
		var peers []subnet.Lease
		for j := range leases {
			if j != i {
				peers = append(peers, leases[j])
			}
		}
		b.SetDesired(leases[i], subnet.Pointers(peers))
		wg.Add(1)
		go func() {
			defer wg.Done()
			waitFor(t, "ready", 2*time.Second, func() bool { st := b.Status(); return st.Ready() && st.PeersProgrammed == 2 })
		}()
	}
	wg.Wait()
	for i := range pods {
		j := (i + 1) % len(pods)
		if out, err := pods[i].Ping(podIPs[j]); err != nil {
			t.Fatalf("pod %d cannot reach pod %d at %s: %v\n%s", i, j, podIPs[j], err, out)
		}
	}

	// A hand-deleted route comes back, and the repair is counted.
	h := lab.Hosts[0]
	time.Sleep(50 * time.Millisecond)
	h.IP(t, "route", "del", "198.18.2.0/24")
	took := waitFor(t, "route back", time.Second, func() bool {
		return strings.Contains(ourRoutes(t, h), "198.18.2.0/24 via 192.0.2.11 dev eth0")
	})
	t.Logf("route repaired %v after deletion", took)
	waitFor(t, "repair counted", time.Second, func() bool { return bs[0].Status().Repairs["route"] == 1 })
	if out, err := pods[0].Ping(podIPs[1]); err != nil {
		t.Fatalf("no traffic after repair: %v\n%s", err, out)
	}
}

func TestRunLeavesNoGoroutines(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	b := newBackend(t, h, nil)
	if _, err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- b.Run(ctx) }()
	own := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.1.0/24"), Attrs: subnet.LeaseAttrs{PublicIP: h.Addr, BackendType: Type}}
	b.SetDesired(own, subnet.Pointers([]subnet.Lease{lease("198.18.2.0/24", "192.0.2.20")}))
	waitFor(t, "ready", 2*time.Second, func() bool { st := b.Status(); return st.Ready() && st.PeersProgrammed == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := ourRoutes(t, h); got != "198.18.2.0/24 via 192.0.2.20 dev eth0" {
		t.Fatalf("routes after Run returned: %q", got)
	}
	waitFor(t, "goroutines gone", 2*time.Second, func() bool { return runtime.NumGoroutine() <= before })
}
