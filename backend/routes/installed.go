package routes

import (
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

// installedRoute is what a Reconciler keeps of a route it installed, one
// per peer between passes: the destination and the fields matches
// compares, packed into 40 bytes without pointers (an nl.RouteSpec takes
// 72, and its addresses hold a pointer that every GC cycle follows). An
// IPv6 zone is not kept: routes have none.
type installedRoute struct {
	dst, gw [16]byte
	link    int32
	bits    uint8
	flags   uint8 // installed*
}

const (
	installedDst4   = 1 << iota // dst is IPv4 (not IPv4-mapped IPv6)
	installedGw                 // gw is valid
	installedGw4                // gw is IPv4
	installedOnLink             // OnLink
	installedLive               // the table held it when the pass ended
)

// packRoute packs w, whose destination must be valid and masked.
func packRoute(w nl.RouteSpec) installedRoute {
	ir := installedRoute{dst: w.Dst.Addr().As16(), link: int32(w.LinkIndex), bits: uint8(w.Dst.Bits())}
	if w.Dst.Addr().Is4() {
		ir.flags |= installedDst4
	}
	if w.Gw.IsValid() {
		ir.gw = w.Gw.As16()
		ir.flags |= installedGw
		if w.Gw.Is4() {
			ir.flags |= installedGw4
		}
	}
	if w.OnLink {
		ir.flags |= installedOnLink
	}
	return ir
}

// route returns the route as a dump of the table shows it once installed
// (see packRoute and matches): tagged with backend.RouteProtocol in the
// main table, with the metric a route installed without one gets.
func (ir *installedRoute) route() nl.Route {
	dst := ir.Dst()
	r := nl.Route{Dst: dst, LinkIndex: int(ir.link), Priority: Metric(dst), Table: unix.RT_TABLE_MAIN,
		Protocol: backend.RouteProtocol, Scope: unix.RT_SCOPE_UNIVERSE, Type: unix.RTN_UNICAST}
	if ir.flags&installedGw != 0 {
		r.Gw = netip.AddrFrom16(ir.gw)
		if ir.flags&installedGw4 != 0 {
			r.Gw = r.Gw.Unmap()
		}
	}
	if ir.flags&installedOnLink != 0 {
		r.Flags = unix.RTNH_F_ONLINK
	}
	return r
}

// Dst returns the route's destination.
func (ir *installedRoute) Dst() netip.Prefix {
	a := netip.AddrFrom16(ir.dst)
	if ir.flags&installedDst4 != 0 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, int(ir.bits))
}
