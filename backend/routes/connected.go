package routes

import (
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

// IsConnected reports whether r is a connected route of the main table: the
// route the kernel adds for an interface address's prefix. For IPv4 that is
// protocol kernel, scope link; IPv6 has no link scope for routes, so there
// it is protocol kernel, without a gateway, out of a device (the kernel
// adds one for every address, a /128 too, and fe80::/64 on every device).
// These are the networks the Reconciler refuses to cover.
func IsConnected(r *nl.Route) bool {
	if !r.Dst.IsValid() || (r.Table != 0 && r.Table != unix.RT_TABLE_MAIN) || r.Protocol != unix.RTPROT_KERNEL {
		return false
	}
	if r.Dst.Addr().Is4() {
		return r.Scope == unix.RT_SCOPE_LINK
	}
	return !r.Gw.IsValid() && r.LinkIndex != 0 && !r.MultiPath && (r.Type == 0 || r.Type == unix.RTN_UNICAST)
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

// OnLink6 is OnLink for IPv6: the prefixes of ext's global IPv6 addresses,
// masked. Link-local prefixes (fe80::/64 is on every device) are left out:
// a peer's PublicIPv6 is never link-local, and a route via a link-local
// gateway would not say which peer it serves.
func OnLink6(k AddrLister, ext backend.ExternalInterface) ([]netip.Prefix, error) {
	addrs, err := k.AddrList(ext.Index, nl.FamilyV6)
	if err != nil {
		return nil, fmt.Errorf("list IPv6 addresses of %s: %w", ext.Name, err)
	}
	out := nl.OnLink(addrs)
	return slices.DeleteFunc(out, func(p netip.Prefix) bool {
		return !p.Addr().Is6() || p.Addr().IsLinkLocalUnicast() || p.Addr().IsMulticast()
	}), nil
}
