package nl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/nl/nltest"
)

// TestLinks creates, changes, lists and deletes a VXLAN device through a
// Conn and checks each step with ip(8).
func TestLinks(t *testing.T) {
	ns := nltest.NewNS(t, "lk")
	ns.IP(t, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	ns.IP(t, "addr", "add", "192.0.2.11/24", "dev", "eth0")
	c := open(t, ns)
	eth0, err := c.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if eth0.Kind != "veth" || eth0.VXLAN != nil || eth0.Up || eth0.Name != "eth0" || eth0.MTU != 1500 {
		t.Fatalf("eth0: %+v", eth0)
	}
	if _, err := c.LinkByName("nosuch0"); !errors.Is(err, ErrLinkNotFound) {
		t.Fatalf("missing link: %v", err)
	}
	if _, err := c.LinkByIndex(9999); !errors.Is(err, ErrLinkNotFound) {
		t.Fatalf("missing index: %v", err)
	}

	mac := net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 1}
	want := VXLAN{VNI: 7, Port: 8472, GBP: true, VtepDevIndex: eth0.Index, SrcAddr: addr("192.0.2.11")}
	if err := c.AddLink(Link{Name: "weft.7", MTU: 1400, HardwareAddr: mac, VXLAN: &want}); err != nil {
		t.Fatal(err)
	}
	if err := c.AddLink(Link{Name: "x0"}); err == nil {
		t.Fatal("AddLink of a device that is not vxlan succeeded")
	}
	vx, err := c.LinkByName("weft.7")
	if err != nil {
		t.Fatal(err)
	}
	if vx.Kind != "vxlan" || vx.VXLAN == nil || *vx.VXLAN != want || vx.MTU != 1400 || vx.HardwareAddr.String() != mac.String() || vx.Up {
		t.Fatalf("created %+v (vxlan %+v), want %+v", vx, vx.VXLAN, want)
	}
	if out := ns.IP(t, "-d", "link", "show", "weft.7"); !strings.Contains(out, "vxlan id 7") || !strings.Contains(out, "nolearning") ||
		!strings.Contains(out, "local 192.0.2.11") || !strings.Contains(out, "dev eth0") || !strings.Contains(out, "dstport 8472") {
		t.Fatalf("ip link: %s", out)
	}

	mac2 := net.HardwareAddr{0x02, 0xbb, 0, 0, 0, 2}
	for _, err := range []error{c.SetLinkMTU(vx.Index, 1350), c.SetLinkHardwareAddr(vx.Index, mac2), c.SetLinkUp(vx.Index)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	vx, err = c.LinkByIndex(vx.Index)
	if err != nil || vx.MTU != 1350 || vx.HardwareAddr.String() != mac2.String() || !vx.Up {
		t.Fatalf("after changes: %+v %v", vx, err)
	}
	links, err := c.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(links, func(l Link) bool { return l.Name == "weft.7" }); i < 0 || links[i].VXLAN == nil || links[i].VXLAN.VNI != 7 {
		t.Fatalf("LinkList: %+v", links)
	}
	if err := c.DelLink(vx.Index); err != nil {
		t.Fatal(err)
	}
	if _, err := c.LinkByName("weft.7"); !errors.Is(err, ErrLinkNotFound) {
		t.Fatalf("after DelLink: %v", err)
	}
}

// TestAddrs adds and removes addresses, a point-to-point one among them,
// and checks what they put on-link.
func TestAddrs(t *testing.T) {
	ns := nltest.NewNS(t, "ad")
	ns.IP(t, "link", "add", "d0", "type", "veth", "peer", "name", "d0p")
	ns.IP(t, "link", "add", "d1", "type", "veth", "peer", "name", "d1p")
	ns.IP(t, "addr", "add", "10.9.0.1", "peer", "10.9.0.2/32", "dev", "d1")
	ns.IP(t, "-6", "addr", "add", "2001:db8::1/64", "dev", "d0", "nodad")
	c := open(t, ns)
	d0, err := c.LinkByName("d0")
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := c.LinkByName("d1")
	if err := c.AddAddr(d0.Index, pfx("192.0.2.11/24")); err != nil {
		t.Fatal(err)
	}
	if err := c.AddAddr(d0.Index, pfx("198.18.1.0/32")); err != nil {
		t.Fatal(err)
	}
	if err := c.AddAddr(d0.Index, pfx("192.0.2.11/24")); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("adding an address twice: %v", err)
	}
	v4, err := c.AddrList(d0.Index, FamilyV4)
	if err != nil {
		t.Fatal(err)
	}
	if got := OnLink(v4); !slices.Equal(got, []netip.Prefix{pfx("192.0.2.0/24"), pfx("198.18.1.0/32")}) {
		t.Fatalf("on-link on d0: %v (addresses %+v)", got, v4)
	}
	if v4[0].Prefix != pfx("192.0.2.11/24") || v4[0].LinkIndex != d0.Index || v4[0].Scope != unix.RT_SCOPE_UNIVERSE {
		t.Fatalf("address: %+v", v4[0])
	}
	p2p, err := c.AddrList(d1.Index, FamilyV4)
	if err != nil || len(p2p) != 1 {
		t.Fatalf("d1: %+v %v", p2p, err)
	}
	if p2p[0].Prefix != pfx("10.9.0.1/32") || p2p[0].Peer != pfx("10.9.0.2/32") || p2p[0].OnLink() != pfx("10.9.0.2/32") {
		t.Fatalf("point-to-point address: %+v, on-link %s", p2p[0], p2p[0].OnLink())
	}
	all, err := c.AddrList(0, FamilyAll)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(all, func(a Addr) bool { return a.Prefix == pfx("2001:db8::1/64") && a.LinkIndex == d0.Index }) ||
		!slices.ContainsFunc(all, func(a Addr) bool { return a.Prefix == pfx("10.9.0.1/32") }) {
		t.Fatalf("every address: %+v", all)
	}
	// Deleting as listed, the point-to-point one too.
	for _, a := range append(v4[:1:1], p2p...) {
		if err := c.DelAddr(a); err != nil {
			t.Fatalf("delete %+v: %v", a, err)
		}
	}
	if rest, _ := c.AddrList(0, FamilyV4); len(rest) != 2 || rest[1].Prefix != pfx("198.18.1.0/32") { // and lo's
		t.Fatalf("left after deleting: %+v", rest)
	}
}

// TestRouteTo asks for the route to an address behind a gateway.
func TestRouteTo(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	h.IP(t, "route", "add", "default", "via", "192.0.2.1")
	c := open(t, h.NS)
	idx, src, err := c.RouteTo(addr("203.0.113.5"))
	if err != nil || idx != h.ExtIndex || src != h.Addr {
		t.Fatalf("route to 203.0.113.5: index %d (want %d), source %s (want %s), %v", idx, h.ExtIndex, src, h.Addr, err)
	}
	if _, _, err := c.RouteTo(addr("2001:db8::9")); err == nil {
		t.Fatal("route to an IPv6 address in a namespace without IPv6 routes")
	}
}

// TestDelOwnedRoutes removes only the selected routes of one protocol, and
// their nexthop objects.
func TestDelOwnedRoutes(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	c := open(t, h.NS)
	tbl := c.RouteTable(network, proto)
	errs := tbl.ReplaceAll([]RouteSpec{
		{Dst: pfx("198.18.2.0/24"), Gw: addr("192.0.2.20"), LinkIndex: h.ExtIndex},
		{Dst: pfx("198.18.3.0/24"), Gw: addr("198.18.3.0"), LinkIndex: h.ExtIndex, OnLink: true},
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	h.IP(t, "route", "add", "198.18.4.0/24", "via", "192.0.2.40", "table", "100", "proto", "87")
	h.IP(t, "route", "add", "198.18.5.0/24", "via", "192.0.2.50") // not ours
	n, err := c.DelOwnedRoutes(proto, func(o Owned) bool { return o.Gw.IsValid() && !o.OnLink })
	if err != nil || n < 1 {
		t.Fatalf("removed %d: %v", n, err)
	}
	out := h.IP(t, "route", "show", "table", "all", "proto", "87")
	if strings.Contains(out, "198.18.2.0") || strings.Contains(out, "198.18.4.0") || !strings.Contains(out, "198.18.3.0/24") {
		t.Fatalf("routes of protocol 87 left: %q", out)
	}
	if !strings.Contains(h.IP(t, "route", "show"), "198.18.5.0/24") {
		t.Fatal("a route of another protocol was removed")
	}
	if _, err := c.DelOwnedRoutes(proto, nil); err != nil {
		t.Fatal(err)
	}
	if out := strings.TrimSpace(h.IP(t, "route", "show", "table", "all", "proto", "87")); out != "" {
		t.Fatalf("left: %q", out)
	}
	if tbl.UsesNexthops() {
		if out := strings.TrimSpace(h.IP(t, "nexthop", "show", "protocol", "87")); out != "" {
			t.Fatalf("nexthop objects left: %q", out)
		}
	}
}

// TestWatchEvents makes one change of each kind in a namespace and checks
// that Watch reduces the kernel's event to the Event that describes it, as
// ip(8) made it.
func TestWatchEvents(t *testing.T) {
	n := nltest.NewNS(t, "e")
	var mu sync.Mutex
	var links []LinkEvent
	var addrs []AddrEvent
	var routes []RouteEvent
	var neighs []NeighEvent
	var nhs []NexthopEvent
	record := func(f func()) bool { mu.Lock(); defer mu.Unlock(); f(); return true }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var kicks atomic.Int64
	go func() {
		defer close(done)
		Watch(ctx, n.Handle, slog.New(slog.DiscardHandler), Events{
			Link:    func(e LinkEvent) bool { return record(func() { links = append(links, e) }) },
			Addr:    func(e AddrEvent) bool { return record(func() { addrs = append(addrs, e) }) },
			Route:   func(e RouteEvent) bool { return record(func() { routes = append(routes, e) }) },
			Neigh:   func(e NeighEvent) bool { return record(func() { neighs = append(neighs, e) }) },
			Nexthop: func(e NexthopEvent) bool { return record(func() { nhs = append(nhs, e) }) },
		}, func() { kicks.Add(1) })
	}()
	t.Cleanup(func() { cancel(); <-done })
	time.Sleep(100 * time.Millisecond)
	n.IP(t, "link", "add", "wvxe0", "mtu", "1400", "type", "veth", "peer", "name", "wvxe1")
	n.IP(t, "link", "set", "wvxe0", "up")
	n.IP(t, "addr", "add", "198.18.1.1/24", "dev", "wvxe0")
	n.IP(t, "addr", "add", "198.18.9.1", "peer", "198.18.9.2/32", "dev", "wvxe0")
	n.IP(t, "route", "add", "198.18.2.0/24", "via", "198.18.1.20", "proto", "87")
	n.IP(t, "route", "del", "198.18.2.0/24", "via", "198.18.1.20", "proto", "87")
	n.IP(t, "neigh", "add", "198.18.1.30", "lladdr", "02:00:00:00:00:01", "nud", "permanent", "dev", "wvxe0")
	_, nhErr := n.Exec("ip", "nexthop", "add", "id", "7", "via", "198.18.1.40", "dev", "wvxe0", "proto", "87")
	if nhErr == nil {
		n.IP(t, "nexthop", "del", "id", "7")
	}
	idx := 0
	for _, line := range strings.Split(n.IP(t, "-o", "link", "show", "wvxe0"), ":") {
		fmt.Sscan(line, &idx)
		break
	}

	has := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for {
			mu.Lock()
			found := ok()
			mu.Unlock()
			if found {
				return
			}
			if time.Now().After(deadline) {
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("no event for %s; links %+v addrs %+v routes %+v neighs %+v nexthops %+v", what, links, addrs, routes, neighs, nhs)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	has("the link up", func() bool {
		return slices.Contains(links, LinkEvent{Index: idx, Name: "wvxe0", Up: true, MTU: 1400})
	})
	has("the address", func() bool {
		return slices.Contains(addrs, AddrEvent{LinkIndex: idx, Prefix: pfx("198.18.1.1/24")})
	})
	has("the point-to-point address", func() bool {
		return slices.Contains(addrs, AddrEvent{LinkIndex: idx, Prefix: pfx("198.18.9.1/32")})
	})
	has("the route and its deletion", func() bool {
		var added, deleted bool
		for _, r := range routes {
			if r.Dst == pfx("198.18.2.0/24") && r.Gw == addr("198.18.1.20") && r.Protocol == proto &&
				r.Table == unix.RT_TABLE_MAIN && r.LinkIndex == idx {
				added = added || !r.Deleted
				deleted = deleted || r.Deleted
			}
		}
		return added && deleted
	})
	has("the neighbour", func() bool {
		return slices.Contains(neighs, NeighEvent{LinkIndex: idx, Family: FamilyV4, State: unix.NUD_PERMANENT, IP: addr("198.18.1.30")})
	})
	if nhErr == nil {
		has("the nexthop object and its deletion", func() bool {
			return slices.Contains(nhs, NexthopEvent{ID: 7, Protocol: proto}) &&
				slices.Contains(nhs, NexthopEvent{Deleted: true, ID: 7, Protocol: proto})
		})
	}
	if kicks.Load() == 0 {
		t.Fatal("events passed the filters but nothing kicked")
	}
}

// FuzzParseEvents feeds the event parsers arbitrary payloads: they must
// not panic, and a payload shorter than its header is no event.
func FuzzParseEvents(f *testing.F) {
	f.Add(uint16(unix.RTM_NEWLINK), []byte{0, 0, 1, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 10, 0, 3, 0, 'w', 'x', 0, 0})
	f.Add(uint16(unix.RTM_NEWADDR), []byte{2, 24, 0, 0, 4, 0, 0, 0, 8, 0, 1, 0, 198, 18, 1, 1, 8, 0, 2, 0, 198, 18, 1, 1})
	f.Add(uint16(unix.RTM_DELNEXTHOP), []byte{2, 0, 87, 0, 0, 0, 0, 0, 8, 0, 1, 0, 7, 0, 0, 0})
	f.Fuzz(func(t *testing.T, typ uint16, p []byte) {
		if _, ok := parseLinkEvent(typ, p); ok && len(p) < 16 {
			t.Fatal("short link message parsed")
		}
		if ev, ok := parseAddrEvent(typ, p); ok && (len(p) < 8 || (ev.Prefix.IsValid() && !ev.Prefix.Addr().Is4() && !ev.Prefix.Addr().Is6())) {
			t.Fatalf("addr: %+v from %d bytes", ev, len(p))
		}
		if _, ok := parseNexthopEvent(typ, p); ok && len(p) < 8 {
			t.Fatal("short nexthop message parsed")
		}
		parseRoute(p)
		parseNeigh(p)
	})
}

// TestReplaceAllAcksInOrder installs more routes than two batches hold,
// some of them through a device that does not exist, and checks that each
// route gets its own result and that exactly the others are installed.
func TestReplaceAllAcksInOrder(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	c := open(t, h.NS)
	tbl := c.RouteTable(network, proto)
	if !tbl.UsesNexthops() {
		t.Skip("no nexthop objects in this kernel: routes are not batched")
	}
	const total = 300 // more than two batches of batchChunk/2 routes
	ws := make([]RouteSpec, total)
	for i := range ws {
		dst := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32)
		ws[i] = RouteSpec{Dst: dst, Gw: dst.Addr(), LinkIndex: h.ExtIndex, OnLink: true}
		if i%97 == 5 {
			ws[i].LinkIndex = 99999 // no such device
		}
	}
	errs := tbl.ReplaceAll(ws)
	if len(errs) != total {
		t.Fatalf("%d results for %d routes", len(errs), total)
	}
	bad := 0
	for i, err := range errs {
		if i%97 == 5 {
			if err == nil || !strings.Contains(err.Error(), ws[i].Dst.String()) {
				t.Fatalf("route %d through a missing device: %v", i, err)
			}
			bad++
		} else if err != nil {
			t.Fatalf("route %d: %v", i, err)
		}
	}
	rs, err := tbl.List()
	if err != nil {
		t.Fatal(err)
	}
	got := map[netip.Prefix]bool{}
	for _, r := range rs {
		if r.Protocol == proto {
			got[r.Dst] = true
		}
	}
	for i, w := range ws {
		if got[w.Dst] != (i%97 != 5) {
			t.Fatalf("route %d (%s) installed: %v", i, w.Dst, got[w.Dst])
		}
	}
	if len(got) != total-bad {
		t.Fatalf("%d routes of ours, want %d", len(got), total-bad)
	}
}
