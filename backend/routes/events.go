package routes

import (
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

// Filter selects the netlink events after which the routes this package
// installs for network need another pass: one of our routes, or one of our
// nexthop objects (whose deletion silently takes its route), was deleted;
// or somebody installed a route of their own to a destination inside the
// network. Backends add their own Link, Addr and Neigh predicates.
func Filter(network netip.Prefix) nl.Filter {
	return nl.Filter{
		Nexthop: func(u nl.NexthopUpdate) bool {
			return u.Type == unix.RTM_DELNEXTHOP && u.Protocol == backend.RouteProtocol
		},
		Route: func(u netlink.RouteUpdate) bool {
			if u.Protocol == backend.RouteProtocol {
				return u.Type == unix.RTM_DELROUTE
			}
			if u.Dst == nil || u.Type != unix.RTM_NEWROUTE || u.Table != unix.RT_TABLE_MAIN {
				return false
			}
			dst, ok := netip.AddrFromSlice(u.Dst.IP)
			return ok && network.Contains(dst.Unmap())
		},
	}
}
