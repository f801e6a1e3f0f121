package hostgw

// Dual-stack tests: IPv6 routes via a peer's PublicIPv6, first against the
// fake namespace (plans, no root), then in the kernel.

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nlfake"
	"github.com/weftnet/weft/internal/nl/nltest"
	"github.com/weftnet/weft/subnet"
)

func netConfig6(t testing.TB) *subnet.Config {
	t.Helper()
	c, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"host-gw"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// lease6 is a dual-stack host-gw lease; an empty pub6 leaves PublicIPv6
// out.
func lease6(sn, pub, sn6, pub6 string) subnet.Lease {
	l := lease(sn, pub)
	l.IPv6Subnet = netip.MustParsePrefix(sn6)
	if pub6 != "" {
		l.Attrs.PublicIPv6 = netip.MustParseAddr(pub6)
	}
	return l
}

// fakeBackend6 is fakeBackend on a dual-stack network: eth0 also holds
// 2001:db8::11/64.
func fakeBackend6(t *testing.T, logger *slog.Logger) (*Backend, *nlfake.NS) {
	t.Helper()
	f := nlfake.New()
	ext := f.AddDevice("eth0", 1500, netip.MustParsePrefix("192.0.2.11/24"), netip.MustParsePrefix("2001:db8::11/64"))
	addr, addr6 := netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("2001:db8::11")
	if logger == nil {
		logger = slog.New(baseHandler())
	}
	bb, err := New(backend.Config{
		Network: netConfig6(t),
		Ext:     backend.ExternalInterface{Name: "eth0", Index: ext, Addr: addr, PublicIP: addr, Addr6: addr6, PublicIPv6: addr6},
		Netns:   netns.None(), Logger: logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	b := bb.(*Backend)
	useFake(b, f)
	return b, f
}

// fakeRoutes6 lists our IPv6 routes in the fake, "dst via gw dev N" each.
func fakeRoutes6(f *nlfake.NS) []string {
	rs, _ := f.RouteList(nl.FamilyV6, 0, func(r *nl.Route) bool { return r.Protocol == backend.RouteProtocol }, nil)
	var lines []string
	for _, r := range rs {
		s := fmt.Sprintf("%s via %s dev %d", r.Dst, r.Gw, r.LinkIndex)
		if r.Flags&unix.RTNH_F_ONLINK != 0 || r.Table != unix.RT_TABLE_MAIN {
			s += " (unexpected flags or table)"
		}
		lines = append(lines, s)
	}
	sort.Strings(lines)
	return lines
}

// TestPlanDualStack: a dual-stack peer with an on-link PublicIPv6 gets an
// IPv6 route via it beside its IPv4 route; a peer without PublicIPv6 or
// without an IPv6 subnet gets IPv4 only; a peer whose PublicIPv6 is not
// on-link gets IPv4 only, is logged once and still counts as programmed;
// a peer not on-link over IPv4 is refused outright. Drift is repaired and a
// second identical pass writes nothing.
func TestPlanDualStack(t *testing.T) {
	var skips atomic.Int64
	b, f := fakeBackend6(t, slog.New(countingHandler{baseHandler(), "programming only the IPv4 route", &skips}))
	if _, err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	ext := b.cfg.Ext.Index
	own := lease6("198.18.1.0/24", "192.0.2.11", "2001:db8:100:1::/64", "2001:db8::11")
	dual := lease6("198.18.2.0/24", "192.0.2.12", "2001:db8:100:2::/64", "2001:db8::12")
	noPub6 := lease6("198.18.3.0/24", "192.0.2.13", "2001:db8:100:3::/64", "")
	v4only := lease("198.18.4.0/24", "192.0.2.14")
	routed6 := lease6("198.18.5.0/24", "192.0.2.15", "2001:db8:100:5::/64", "2001:db8:ff::15")
	far := lease6("198.18.6.0/24", "203.0.113.16", "2001:db8:100:6::/64", "2001:db8::16")
	r6 := func(sn, gw string) string { return fmt.Sprintf("%s via %s dev %d", sn, gw, ext) }

	peers := []subnet.Lease{dual, noPub6, v4only, routed6, far}
	for i := range 2 {
		p := b.pass(own, subnet.Pointers(peers))
		if p.Err != nil || p.Programmed != 4 || len(p.Refused) != 1 || p.Refused[far.Subnet] == "" {
			t.Fatalf("pass %d: %+v", i, p)
		}
	}
	wantList(t, "IPv6 routes", fakeRoutes6(f), r6("2001:db8:100:2::/64", "2001:db8::12"))
	if n := strings.Count(fakeRoutes(f), "\n") + 1; n != 4 {
		t.Fatalf("IPv4 routes:\n%s", fakeRoutes(f))
	}
	if n := skips.Load(); n != 1 {
		t.Fatalf("the peer whose PublicIPv6 is not on-link was logged %d times, want once", n)
	}
	before := f.Writes()
	b.pass(own, subnet.Pointers(peers))
	if w := f.Writes() - before; w != 0 {
		t.Fatalf("identical pass made %d writes", w)
	}

	// A hand-deleted IPv6 route is repaired.
	f.RemoveRoute(dual.IPv6Subnet)
	if p := b.pass(own, subnet.Pointers(peers)); p.Repairs["route"] != 1 || p.Programmed != 4 {
		t.Fatalf("repair pass: %+v", p)
	}
	wantList(t, "IPv6 routes after repair", fakeRoutes6(f), r6("2001:db8:100:2::/64", "2001:db8::12"))

	// The peer moves to another IPv6 address, then leaves.
	moved := lease6("198.18.2.0/24", "192.0.2.12", "2001:db8:100:2::/64", "2001:db8::22")
	b.pass(own, subnet.Pointers([]subnet.Lease{moved, v4only}))
	wantList(t, "IPv6 routes after a move", fakeRoutes6(f), r6("2001:db8:100:2::/64", "2001:db8::22"))
	b.pass(own, subnet.Pointers([]subnet.Lease{v4only}))
	wantList(t, "IPv6 routes after the peer left", fakeRoutes6(f))

	// Without an IPv6 subnet of our own, no IPv6 routes.
	b.pass(own, subnet.Pointers([]subnet.Lease{dual}))
	own.IPv6Subnet = netip.Prefix{}
	if p := b.pass(own, subnet.Pointers([]subnet.Lease{dual})); p.Programmed != 1 {
		t.Fatalf("pass: %+v", p)
	}
	wantList(t, "IPv6 routes without our IPv6 subnet", fakeRoutes6(f))
}

// TestPlanDualStackRefusedIPv6Part: an IPv6 route the reconciler refuses
// (it would cover a connected IPv6 network) refuses the peer with a reason
// that names its IPv6 subnet; its IPv4 route stays.
func TestPlanDualStackRefusedIPv6Part(t *testing.T) {
	b, f := fakeBackend6(t, nil)
	f.AddDevice("cni0", 1500, netip.MustParsePrefix("2001:db8:100:9::1/64"))
	own := lease6("198.18.1.0/24", "192.0.2.11", "2001:db8:100:1::/64", "2001:db8::11")
	clash := lease6("198.18.9.0/24", "192.0.2.19", "2001:db8:100:9::/64", "2001:db8::19")
	p := b.pass(own, subnet.Pointers([]subnet.Lease{clash}))
	if p.Programmed != 0 || !strings.Contains(p.Refused[clash.Subnet], "IPv6 subnet 2001:db8:100:9::/64") {
		t.Fatalf("pass: %+v", p)
	}
	if !strings.Contains(fakeRoutes(f), "198.18.9.0/24 via 192.0.2.19") || len(fakeRoutes6(f)) != 0 {
		t.Fatalf("routes: %s / %q", fakeRoutes(f), fakeRoutes6(f))
	}
}

func TestDualStackSetupAndExpect(t *testing.T) {
	b, _ := fakeBackend6(t, nil)
	b.cfg.Ext.PublicIPv6 = netip.Addr{}
	if _, err := b.Setup(context.Background()); err == nil || !strings.Contains(err.Error(), "eth0") || !strings.Contains(err.Error(), "--public-ipv6") {
		t.Fatalf("Setup without an IPv6 address: %v", err)
	}
	ext := backend.ExternalInterface{Name: "eth0", Index: 2, Addr: netip.MustParseAddr("192.0.2.10"), PublicIP: netip.MustParseAddr("192.0.2.10"),
		Addr6: netip.MustParseAddr("2001:db8::10"), PublicIPv6: netip.MustParseAddr("2001:db8:ff::10")}
	if _, err := New(backend.Config{Network: netConfig6(t), Ext: ext}); err == nil || !strings.Contains(err.Error(), "--public-ipv6") {
		t.Fatalf("New with a NATed --public-ipv6: %v", err)
	}
	if !Descriptor.DualStack {
		t.Fatal("host-gw does not declare dual stack")
	}

	own := lease6("198.18.1.0/24", "192.0.2.11", "2001:db8:100:1::/64", "2001:db8::11")
	exp, err := Expect(backend.ExpectInput{Network: netConfig6(t), Own: own,
		Peers: subnet.Pointers([]subnet.Lease{
			lease6("198.18.2.0/24", "192.0.2.12", "2001:db8:100:2::/64", "2001:db8::12"),
			lease6("198.18.5.0/24", "192.0.2.15", "2001:db8:100:5::/64", "2001:db8:ff::15"),
			lease6("198.18.6.0/24", "203.0.113.16", "2001:db8:100:6::/64", "2001:db8::16"),
		}),
		Ext:    backend.ExternalInterface{Name: "eth0"},
		OnLink: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/64")}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range exp.Routes {
		got = append(got, r.Dst.String()+" via "+r.Gw.String())
	}
	sort.Strings(got)
	wantList(t, "expected routes", got, "198.18.2.0/24 via 192.0.2.12", "198.18.5.0/24 via 192.0.2.15", "2001:db8:100:2::/64 via 2001:db8::12")
	if len(exp.Refused) != 1 || exp.Refused[netip.MustParsePrefix("198.18.6.0/24")] == "" {
		t.Fatalf("expected refusals: %v", exp.Refused)
	}
}

func wantList(t testing.TB, what string, got []string, want ...string) {
	t.Helper()
	sort.Strings(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("%s:\n got %q\nwant %q", what, got, want)
	}
}

// ourRoutes6 lists our IPv6 routes in h's namespace, as ip(8) shows them.
func ourRoutes6(t testing.TB, h *nltest.Host) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(h.IP(t, "-6", "route", "show", "proto", "87")), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			lines = append(lines, strings.Join(f, " "))
		}
	}
	return strings.Join(lines, "\n")
}

// TestDualStackPing: three hosts on one L2 segment with IPv4 and IPv6
// (2001:db8::/64) underlays, one dual-stack pod each; the pods reach each
// other over both families through host-gw routes, a hand-deleted IPv6
// route comes back through the netlink events, and Cleanup removes the
// IPv6 routes with the IPv4 ones.
func TestDualStackPing(t *testing.T) {
	lab := nltest.NewLab(t, 3)
	var leases []subnet.Lease
	var bs []*Backend
	var pods []*nltest.NS
	var podIPs, podIPs6 []netip.Addr
	nss := []*nltest.NS{}
	for i, h := range lab.Hosts {
		sn := netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", i+1))
		sn6 := netip.MustParsePrefix(fmt.Sprintf("2001:db8:100:%d::/64", i+1))
		addr6 := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(0x10 + i)})
		h.AddIPv6(t, addr6)
		pod, ip := h.AddPod(t, sn)
		ip6 := h.AddPod6(t, pod, sn6)
		pods, podIPs, podIPs6 = append(pods, pod), append(podIPs, ip), append(podIPs6, ip6)
		nss = append(nss, h.NS, pod)
		ext := extOf(h)
		ext.Addr6, ext.PublicIPv6 = addr6, addr6
		bb, err := New(backend.Config{Network: netConfig6(t), Ext: ext, Netns: h.Handle, Logger: slog.New(baseHandler()),
			ResyncInterval: time.Hour}) // only events may trigger the repair below
		if err != nil {
			t.Fatal(err)
		}
		b := bb.(*Backend)
		t.Cleanup(func() {
			b.kmu.Lock()
			b.closeHandles()
			b.kmu.Unlock()
		})
		attrs, err := b.Setup(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		attrs.PublicIP, attrs.PublicIPv6 = h.Addr, addr6
		leases = append(leases, subnet.Lease{Subnet: sn, IPv6Subnet: sn6, Attrs: attrs})
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
	h := lab.Hosts[0]
	want6 := "2001:db8:100:2::/64 via 2001:db8::11 dev eth0 metric 1024 pref medium\n" +
		"2001:db8:100:3::/64 via 2001:db8::12 dev eth0 metric 1024 pref medium"
	if got := strings.ReplaceAll(ourRoutes6(t, h), " proto 87", ""); got != want6 {
		t.Fatalf("IPv6 routes:\n%s\nwant\n%s", got, want6)
	}
	nltest.WaitDAD(t, nss...)
	for i := range pods {
		j := (i + 1) % len(pods)
		if out, err := pods[i].Ping(podIPs[j]); err != nil {
			t.Fatalf("pod %d cannot reach pod %d at %s: %v\n%s", i, j, podIPs[j], err, out)
		}
		if out, err := pods[i].Ping(podIPs6[j]); err != nil {
			t.Fatalf("pod %d cannot reach pod %d at %s over IPv6: %v\n%s", i, j, podIPs6[j], err, out)
		}
	}

	time.Sleep(50 * time.Millisecond)
	h.IP(t, "-6", "route", "del", "2001:db8:100:2::/64")
	took := waitFor(t, "IPv6 route back", time.Second, func() bool {
		return strings.Contains(ourRoutes6(t, h), "2001:db8:100:2::/64 via 2001:db8::11 dev eth0")
	})
	t.Logf("IPv6 route repaired %v after deletion", took)
	waitFor(t, "repair counted", time.Second, func() bool { return bs[0].Status().Repairs["route"] == 1 })
	if out, err := pods[0].Ping(podIPs6[1]); err != nil {
		t.Fatalf("no IPv6 traffic after repair: %v\n%s", err, out)
	}
}

// TestDualStackCleanup: Cleanup removes host-gw's IPv6 routes and leaves a
// vxlan-style onlink IPv6 route alone.
func TestDualStackCleanup(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	h.AddIPv6(t, netip.MustParseAddr("2001:db8::10"))
	h.IP(t, "-6", "route", "add", "2001:db8:100:2::/64", "via", "2001:db8::11", "dev", "eth0", "proto", "87")
	h.IP(t, "-6", "route", "add", "2001:db8:100:3::/64", "via", "2001:db8::12", "dev", "eth0", "onlink", "proto", "87")
	if err := Cleanup(context.Background(), h.Handle, slog.New(baseHandler())); err != nil {
		t.Fatal(err)
	}
	if got := ourRoutes6(t, h); !strings.HasPrefix(got, "2001:db8:100:3::/64") || strings.Contains(got, "2001:db8:100:2::") {
		t.Fatalf("after cleanup: %q", got)
	}
}
