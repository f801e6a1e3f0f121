package nlfake

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nltest"
)

// ns is what both a real namespace (through nl.Conn) and the fake offer.
type ns interface {
	LinkByName(name string) (nl.Link, error)
	LinkByIndex(index int) (nl.Link, error)
	LinkList() ([]nl.Link, error)
	AddLink(l nl.Link) error
	DelLink(index int) error
	SetLinkUp(index int) error
	SetLinkMTU(index, mtu int) error
	SetLinkHardwareAddr(index int, mac net.HardwareAddr) error
	AddrList(linkIndex int, family nl.Family) ([]nl.Addr, error)
	AddAddr(linkIndex int, p netip.Prefix) error
	DelAddr(a nl.Addr) error
	RouteList(family nl.Family, table uint32, keep func(*nl.Route) bool, out []nl.Route) ([]nl.Route, error)
	ReplaceRoute(r nl.RouteSpec, protocol uint8) error
	DelRoute(r *nl.Route) error
	NeighList(linkIndex int, family nl.Family, out []nl.Neigh) ([]nl.Neigh, error)
	SetNeighs(specs []nl.NeighSpec) []error
	DelNeigh(n *nl.Neigh) error
}

// table is nl.RouteTable's methods.
type table interface {
	List() ([]nl.Route, error)
	ReplaceAll(ws []nl.RouteSpec) []error
	Delete(r *nl.Route) error
}

var (
	_ ns    = (*nl.Conn)(nil)
	_ ns    = (*NS)(nil)
	_ table = (*nl.RouteTable)(nil)
	_ table = (*Table)(nil)
)

const proto = 87

var (
	zero = net.HardwareAddr{0, 0, 0, 0, 0, 0}       // the flood entry
	mac0 = net.HardwareAddr{2, 0xaa, 0, 0, 0, 0xff} // the device's own
	mac1 = net.HardwareAddr{2, 0xaa, 0, 0, 0, 1}
	mac2 = net.HardwareAddr{2, 0xaa, 0, 0, 0, 2}
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

// side is one of the two namespaces under comparison.
type side struct {
	name string
	ns   ns
	tbl  table
	tbl6 table // the IPv6 table
	// appendFDB adds a second remote for a MAC, as "bridge fdb append".
	appendFDB func(dev string, mac net.HardwareAddr, remote netip.Addr)
}

// state renders what s holds, with link names instead of indexes (which
// differ between the two).
func (s side) state(t *testing.T) string {
	t.Helper()
	links, err := s.ns.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	name := map[int]string{0: "-"}
	var b strings.Builder
	for _, l := range links {
		name[l.Index] = l.Name
	}
	for _, l := range links {
		if l.Name == "lo" || l.Name == "eth0p" { // the kernel's own, and eth0's veth peer
			continue
		}
		fmt.Fprintf(&b, "link %s mtu %d up %v", l.Name, l.MTU, l.Up)
		if vx := l.VXLAN; vx != nil {
			fmt.Fprintf(&b, " vxlan %d port %d dev %s local %s", vx.VNI, vx.Port, name[vx.VtepDevIndex], vx.SrcAddr)
		}
		b.WriteString("\n")
		addrs, _ := s.ns.AddrList(l.Index, nl.FamilyAll)
		slices.SortFunc(addrs, func(x, y nl.Addr) int { return x.Prefix.Addr().Compare(y.Prefix.Addr()) })
		for _, a := range addrs {
			if !kernelOwn(a.Prefix.Addr()) {
				fmt.Fprintf(&b, "  addr %s peer %s\n", a.Prefix, a.Peer)
			}
		}
		if l.VXLAN == nil {
			continue
		}
		var neighs []nl.Neigh
		for _, fam := range []nl.Family{nl.FamilyV4, nl.FamilyV6} {
			list, _ := s.ns.NeighList(l.Index, fam, nil)
			neighs = append(neighs, list...)
		}
		slices.SortFunc(neighs, func(x, y nl.Neigh) int { return x.IP.Compare(y.IP) })
		for _, n := range neighs {
			if !kernelOwn(n.IP) {
				fmt.Fprintf(&b, "  neigh %s %s permanent %v\n", n.IP, n.HardwareAddr(), n.State&unix.NUD_PERMANENT != 0)
			}
		}
		fdb, _ := s.ns.NeighList(l.Index, nl.FamilyBridge, nil)
		var lines []string
		for _, n := range fdb {
			lines = append(lines, fmt.Sprintf("  fdb %s %s permanent %v self %v\n", n.HardwareAddr(), n.IP,
				n.State&unix.NUD_PERMANENT != 0, n.Flags&unix.NTF_SELF != 0))
		}
		slices.Sort(lines) // the kernel lists remotes newest first
		b.WriteString(strings.Join(lines, ""))
	}
	routes, err := s.ns.RouteList(nl.FamilyAll, unix.RT_TABLE_MAIN, func(r *nl.Route) bool { return !kernelOwn(r.Dst.Addr()) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(routes, compareRoutes)
	for _, r := range routes {
		fmt.Fprintf(&b, "route %s via %s dev %s metric %d proto %d scope %d onlink %v\n", r.Dst, r.Gw, name[r.LinkIndex],
			r.Priority, r.Protocol, r.Scope, r.Flags&unix.RTNH_F_ONLINK != 0)
	}
	return b.String()
}

// kernelOwn reports whether a is an IPv6 link-local or multicast address:
// the kernel adds addresses, routes and neighbour entries for these to
// every IPv6 device by itself, and the fake does not model them.
func kernelOwn(a netip.Addr) bool {
	return a.Is6() && (a.IsLinkLocalUnicast() || a.IsMulticast())
}

// TestMatchesKernel applies the same steps to a real namespace and to the
// fake and compares what each holds, and each step's errors, after every
// step.
func TestMatchesKernel(t *testing.T) {
	kns := nltest.NewNS(t, "fk")
	kns.IP(t, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	kns.IP(t, "link", "set", "eth0", "up")
	kns.IP(t, "link", "set", "eth0p", "up") // carrier: the kernel refuses gateways on a link without
	kns.IP(t, "addr", "add", "192.0.2.11/24", "dev", "eth0")
	kns.IP(t, "addr", "add", "2001:db8::11/64", "dev", "eth0", "nodad")
	c, err := nl.Open(kns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	f := New()
	f.AddDevice("eth0", 1500, pfx("192.0.2.11/24"), pfx("2001:db8::11/64"))
	network, network6 := pfx("198.18.0.0/16"), pfx("2001:db8:100::/48")
	sides := []side{
		{name: "kernel", ns: c, tbl: c.RouteTable(network, proto), tbl6: c.RouteTable(network6, proto), appendFDB: func(dev string, mac net.HardwareAddr, remote netip.Addr) {
			nltest.Cmd(t, "bridge", "-n", kns.Name, "fdb", "append", mac.String(), "dev", dev, "dst", remote.String(), "self", "permanent")
		}},
		{name: "fake", ns: f, tbl: f.RouteTable(network, proto), tbl6: f.RouteTable(network6, proto), appendFDB: func(dev string, mac net.HardwareAddr, remote netip.Addr) {
			l, _ := f.LinkByName(dev)
			f.AppendFDB(l.Index, mac, remote)
		}},
	}
	idx := func(s side, name string) int {
		l, err := s.ns.LinkByName(name)
		if err != nil {
			return 9999 // the step's own request then fails with ENODEV on both sides
		}
		return l.Index
	}
	neigh := func(dev int, addr netip.Addr, mac net.HardwareAddr) nl.NeighSpec {
		return nl.NeighSpec{LinkIndex: dev, Family: nl.FamilyV4, State: unix.NUD_PERMANENT, Type: unix.RTN_UNICAST, IP: addr, MAC: mac}
	}
	fdb := func(dev int, mac net.HardwareAddr, remote netip.Addr) nl.NeighSpec {
		return nl.NeighSpec{LinkIndex: dev, Family: nl.FamilyBridge, State: unix.NUD_PERMANENT, Flags: unix.NTF_SELF, IP: remote, MAC: mac}
	}
	errStr := func(errs ...error) string {
		var s []string
		for _, err := range errs {
			var errno unix.Errno
			switch {
			case err == nil:
				s = append(s, "ok")
			case errors.As(err, &errno):
				s = append(s, errno.Error())
			case errors.Is(err, nl.ErrLinkNotFound):
				s = append(s, "link not found")
			default:
				s = append(s, "error")
			}
		}
		return strings.Join(s, ",")
	}
	steps := []struct {
		name string
		do   func(s side) string
	}{
		{"create vxlan", func(s side) string {
			eth0 := idx(s, "eth0")
			vx := nl.VXLAN{VNI: 1, Port: 8472, VtepDevIndex: eth0, SrcAddr: ip("192.0.2.11")}
			e1 := s.ns.AddLink(nl.Link{Name: "weft.1", MTU: 1450, HardwareAddr: mac0, VXLAN: &vx})
			e2 := s.ns.AddLink(nl.Link{Name: "weft.1", MTU: 1450, VXLAN: &nl.VXLAN{VNI: 2, Port: 8472}})
			e3 := s.ns.AddLink(nl.Link{Name: "weft.x", MTU: 1450, VXLAN: &vx})
			l, _ := s.ns.LinkByName("weft.1")
			e4 := s.ns.SetLinkUp(l.Index)
			e5 := s.ns.SetLinkMTU(l.Index, 1400)
			_, e6 := s.ns.LinkByName("weft.x")
			return errStr(e1, e2, e3, e4, e5, e6)
		}},
		{"addresses", func(s side) string {
			dev := idx(s, "weft.1")
			e1 := s.ns.AddAddr(dev, pfx("198.18.1.0/32"))
			e2 := s.ns.AddAddr(dev, pfx("198.18.1.0/32"))
			e3 := s.ns.AddAddr(dev, pfx("10.1.0.1/24"))
			e4 := s.ns.DelAddr(nl.Addr{LinkIndex: dev, Prefix: pfx("10.1.0.1/24")})
			e5 := s.ns.DelAddr(nl.Addr{LinkIndex: dev, Prefix: pfx("10.1.0.1/24")})
			return errStr(e1, e2, e3, e4, e5)
		}},
		{"neighbours and FDB", func(s side) string {
			dev := idx(s, "weft.1")
			errs := s.ns.SetNeighs([]nl.NeighSpec{
				neigh(dev, ip("198.18.2.0"), mac1), neigh(dev, ip("198.18.3.0"), mac2),
				fdb(dev, mac1, ip("203.0.113.1")), fdb(dev, mac2, ip("203.0.113.2")),
				neigh(9999, ip("198.18.4.0"), mac2),
			})
			return errStr(errs...)
		}},
		{"replace rewrites", func(s side) string {
			dev := idx(s, "weft.1")
			s.appendFDB("weft.1", mac1, ip("203.0.113.8")) // a unicast MAC keeps one remote
			s.appendFDB("weft.1", zero, ip("203.0.113.9"))
			s.appendFDB("weft.1", zero, ip("203.0.113.10"))
			errs := s.ns.SetNeighs([]nl.NeighSpec{neigh(dev, ip("198.18.2.0"), mac2), fdb(dev, mac2, ip("203.0.113.3"))})
			return errStr(errs...)
		}},
		{"delete one remote", func(s side) string {
			dev := idx(s, "weft.1")
			list, _ := s.ns.NeighList(dev, nl.FamilyBridge, nil)
			var errs []error
			for i := range list {
				if list[i].IP == ip("203.0.113.9") {
					errs = append(errs, s.ns.DelNeigh(&list[i]), s.ns.DelNeigh(&list[i]))
				}
			}
			n, _ := s.ns.NeighList(dev, nl.FamilyV4, nil)
			for i := range n {
				if n[i].IP == ip("198.18.3.0") {
					errs = append(errs, s.ns.DelNeigh(&n[i]), s.ns.DelNeigh(&n[i]))
				}
			}
			return errStr(errs...)
		}},
		{"routes", func(s side) string {
			dev, eth0 := idx(s, "weft.1"), idx(s, "eth0")
			errs := s.tbl.ReplaceAll([]nl.RouteSpec{
				{Dst: pfx("198.18.2.0/24"), Gw: ip("198.18.2.0"), LinkIndex: dev, OnLink: true},
				{Dst: pfx("198.18.3.0/24"), Gw: ip("192.0.2.13"), LinkIndex: eth0},
				{Dst: pfx("198.18.4.0/24"), Gw: ip("192.0.2.14"), LinkIndex: eth0},
			})
			errs = append(errs, s.tbl.ReplaceAll([]nl.RouteSpec{{Dst: pfx("198.18.3.0/24"), Gw: ip("192.0.2.23"), LinkIndex: eth0}})...)
			del := &nl.Route{Dst: pfx("198.18.4.0/24"), Table: unix.RT_TABLE_MAIN, Protocol: proto}
			errs = append(errs, s.tbl.Delete(del), s.tbl.Delete(del))
			rs, err := s.tbl.List()
			n := 0
			for _, r := range rs {
				if r.Protocol == proto {
					n++
				}
			}
			return errStr(append(errs, err)...) + fmt.Sprintf(" (%d listed)", n)
		}},
		{"single routes", func(s side) string {
			dev := idx(s, "weft.1")
			nw := nl.RouteSpec{Dst: pfx("10.7.0.0/16"), LinkIndex: dev}
			e1 := s.ns.ReplaceRoute(nw, proto)
			e2 := s.ns.ReplaceRoute(nw, proto)
			e3 := s.ns.ReplaceRoute(nl.RouteSpec{Dst: pfx("10.8.0.0/16"), LinkIndex: dev}, proto)
			e4 := s.ns.ReplaceRoute(nl.RouteSpec{Dst: pfx("10.9.0.0/16"), LinkIndex: 9999}, proto)
			// Another protocol, and the universe scope of a route with a
			// gateway, do not match the device route; the scope it was
			// dumped with does.
			dst := pfx("10.8.0.0/16")
			e5 := s.ns.DelRoute(&nl.Route{Dst: dst, Table: unix.RT_TABLE_MAIN, Protocol: unix.RTPROT_BOOT, Scope: unix.RT_SCOPE_LINK})
			e6 := s.ns.DelRoute(&nl.Route{Dst: dst, Table: unix.RT_TABLE_MAIN, Protocol: proto})
			e7 := s.ns.DelRoute(&nl.Route{Dst: dst, Table: unix.RT_TABLE_MAIN, Protocol: proto, Scope: unix.RT_SCOPE_LINK})
			e8 := s.ns.DelRoute(&nl.Route{Dst: dst, Table: unix.RT_TABLE_MAIN, Protocol: proto, Scope: unix.RT_SCOPE_LINK})
			return errStr(e1, e2, e3, e4, e5, e6, e7, e8)
		}},
		{"create IPv6 vxlan beside the IPv4 one", func(s side) string {
			eth0 := idx(s, "eth0")
			vx := nl.VXLAN{VNI: 1, Port: 8472, VtepDevIndex: eth0, SrcAddr: ip("2001:db8::11")}
			e1 := s.ns.AddLink(nl.Link{Name: "weft-v6.1", MTU: 1430, HardwareAddr: mac2, VXLAN: &vx})
			e2 := s.ns.AddLink(nl.Link{Name: "weft-v6.x", MTU: 1430, VXLAN: &vx})
			l, _ := s.ns.LinkByName("weft-v6.1")
			e3 := s.ns.SetLinkUp(l.Index)
			return errStr(e1, e2, e3)
		}},
		{"IPv6 addresses", func(s side) string {
			dev := idx(s, "weft-v6.1")
			e1 := s.ns.AddAddr(dev, pfx("2001:db8:100:1::/128"))
			e2 := s.ns.AddAddr(dev, pfx("2001:db8:100:1::/128"))
			e3 := s.ns.AddAddr(dev, pfx("2001:db8:7::1/64"))
			return errStr(e1, e2, e3)
		}},
		{"IPv6 neighbours and FDB", func(s side) string {
			dev := idx(s, "weft-v6.1")
			n := neigh(dev, ip("2001:db8:100:2::"), mac1)
			n.Family = nl.FamilyV6
			errs := s.ns.SetNeighs([]nl.NeighSpec{n, fdb(dev, mac1, ip("2001:db8::12"))})
			n.MAC = mac0
			errs = append(errs, s.ns.SetNeighs([]nl.NeighSpec{n, fdb(dev, mac1, ip("2001:db8::13"))})...)
			return errStr(errs...)
		}},
		{"IPv6 routes", func(s side) string {
			dev, eth0 := idx(s, "weft-v6.1"), idx(s, "eth0")
			errs := s.tbl6.ReplaceAll([]nl.RouteSpec{
				{Dst: pfx("2001:db8:100:2::/64"), Gw: ip("2001:db8:100:2::"), LinkIndex: dev, OnLink: true},
				{Dst: pfx("2001:db8:100:3::/64"), Gw: ip("2001:db8::13"), LinkIndex: eth0},
				{Dst: pfx("2001:db8:100:4::/64"), Gw: ip("2001:db8::14"), LinkIndex: eth0},
			})
			errs = append(errs, s.tbl6.ReplaceAll([]nl.RouteSpec{{Dst: pfx("2001:db8:100:3::/64"), Gw: ip("2001:db8::23"), LinkIndex: eth0}})...)
			del := &nl.Route{Dst: pfx("2001:db8:100:4::/64"), Table: unix.RT_TABLE_MAIN, Protocol: proto, Priority: 1024}
			errs = append(errs, s.tbl6.Delete(del), s.tbl6.Delete(del))
			rs, err := s.tbl6.List()
			n, n4 := 0, 0
			for _, r := range rs {
				if r.Protocol == proto {
					n++
				}
			}
			rs4, err4 := s.tbl.List() // the IPv4 table sees none of them, and keeps its own
			for _, r := range rs4 {
				if r.Protocol == proto {
					n4++
				}
			}
			return errStr(append(errs, err, err4)...) + fmt.Sprintf(" (%d listed, %d IPv4)", n, n4)
		}},
		{"delete the IPv6 device", func(s side) string {
			dev := idx(s, "weft-v6.1")
			return errStr(s.ns.DelLink(dev), s.ns.DelLink(dev))
		}},
		{"delete the device", func(s side) string {
			dev := idx(s, "weft.1")
			return errStr(s.ns.DelLink(dev), s.ns.DelLink(dev))
		}},
	}
	for _, st := range steps {
		k, fk := st.do(sides[0]), st.do(sides[1])
		if k != fk {
			t.Errorf("%s: the kernel says %s, the fake %s", st.name, k, fk)
		}
		ks, fs := sides[0].state(t), sides[1].state(t)
		if ks != fs {
			t.Fatalf("after %s:\nkernel:\n%s\nfake:\n%s", st.name, ks, fs)
		}
		t.Logf("after %s (%s):\n%s", st.name, k, ks)
	}
}
