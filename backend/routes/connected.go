package routes

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

// IsConnected reports whether r is a connected route of the main table: the
// IPv4 route the kernel adds for an interface address's prefix (protocol
// kernel, scope link). These are the networks the Reconciler refuses to
// cover.
func IsConnected(r *nl.Route) bool {
	return r.Dst.IsValid() && r.Dst.Addr().Is4() &&
		(r.Table == 0 || r.Table == unix.RT_TABLE_MAIN) &&
		r.Protocol == unix.RTPROT_KERNEL && r.Scope == unix.RT_SCOPE_LINK
}

// UnderlayConflict says why a route to dst, a cluster network or a part of
// it, would take the host's own traffic off its underlay, or returns "" if
// it would not. rs is the main table as listed and addrs the host's IPv4
// addresses; the caller leaves out what belongs to the overlay itself (its
// own device, its own subnet and the pod bridge on it). Routes tagged with
// backend.RouteProtocol are weft's and are skipped. dst is refused when
//
//   - another route has the same destination (the default route, for
//     0.0.0.0/0): a route of ours would replace or shadow it;
//   - it overlaps a connected network, either way round;
//   - it holds the gateway of a route to somewhere outside dst (the default
//     route's gateway, say), which the host could then no longer reach;
//   - it holds one of addrs (an underlay address with no connected route,
//     such as a /32 on a cloud VM).
//
// The cost is linear in len(rs)+len(addrs); it is meant for a handful of
// destinations per pass (the udp backend has one).
func UnderlayConflict(dst netip.Prefix, rs []nl.Route, addrs []netip.Addr) string {
	dst = dst.Masked()
	inside := func(p netip.Prefix) bool { return p.Bits() >= dst.Bits() && dst.Contains(p.Addr()) }
	for i := range rs {
		r := &rs[i]
		if r.Protocol == backend.RouteProtocol || r.Dst != dst || !r.Dst.Addr().Is4() {
			continue
		}
		what := "the route to " + r.Dst.String()
		if r.Dst.Bits() == 0 {
			what = "the default route"
		}
		if r.Gw.IsValid() {
			what += " via " + r.Gw.String()
		}
		return fmt.Sprintf("route %s would replace or shadow %s (interface index %d, protocol %d)", dst, what, r.LinkIndex, r.Protocol)
	}
	for i := range rs {
		r := &rs[i]
		if r.Protocol == backend.RouteProtocol || !IsConnected(r) || !r.Dst.Overlaps(dst) {
			continue
		}
		if inside(r.Dst) {
			return fmt.Sprintf("route %s would cover the connected network %s on interface index %d", dst, r.Dst, r.LinkIndex)
		}
		return fmt.Sprintf("route %s lies inside the connected network %s on interface index %d", dst, r.Dst, r.LinkIndex)
	}
	for i := range rs {
		r := &rs[i]
		if r.Protocol == backend.RouteProtocol || !r.Gw.IsValid() || !r.Dst.IsValid() || inside(r.Dst) || !dst.Contains(r.Gw) {
			continue
		}
		return fmt.Sprintf("route %s would cover %s, the gateway of the route to %s on interface index %d", dst, r.Gw, r.Dst, r.LinkIndex)
	}
	for _, a := range addrs {
		if a = a.Unmap(); a.Is4() && dst.Contains(a) {
			return fmt.Sprintf("route %s would cover the host's address %s", dst, a)
		}
	}
	return ""
}

// AddrLister lists the addresses of a device (nl.Conn, nlfake.NS).
type AddrLister interface {
	AddrList(linkIndex int, family nl.Family) ([]nl.Addr, error)
}

// OnLink returns the IPv4 prefixes that are on-link on the external
// interface ext, masked: the prefix of each address, or for a
// point-to-point address only its peer's (nl.Addr.OnLink). A gateway in
// one of them needs no onlink flag.
func OnLink(k AddrLister, ext backend.ExternalInterface) ([]netip.Prefix, error) {
	addrs, err := k.AddrList(ext.Index, nl.FamilyV4)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", ext.Name, err)
	}
	return nl.OnLink(addrs), nil
}
