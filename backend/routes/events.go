package routes

import (
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

// Events selects the netlink events after which the routes this package
// installs for the networks (the IPv4 cluster network, and on a dual-stack
// network the IPv6 one; invalid prefixes are skipped) need another pass:
// one of our routes, or one of our nexthop objects (whose deletion silently
// takes its route), was deleted; somebody installed a route of their own
// to a destination inside a network, or a connected route overlapping one
// (which may cover our routes, see Reconciler); or somebody created a
// nexthop object of their own (its id may be one we would use). These are
// also what a Reconciler reads the table for, so that a pass without any
// of them since the last may trust what it knows (ReconcileTrustedFunc).
// Backends add their own Link, Addr and Neigh predicates.
func Events(networks ...netip.Prefix) nl.Events {
	return nl.Events{
		Nexthop: func(e nl.NexthopEvent) bool {
			return e.Deleted == (e.Protocol == backend.RouteProtocol)
		},
		Route: func(e nl.RouteEvent) bool {
			if e.Protocol == backend.RouteProtocol {
				return e.Deleted
			}
			if !e.Dst.IsValid() || e.Deleted || e.Table != unix.RT_TABLE_MAIN {
				return false
			}
			for _, n := range networks {
				if n.IsValid() && (n.Contains(e.Dst.Addr()) || IsConnected(&e.Route) && n.Overlaps(e.Dst)) {
					return true
				}
			}
			return false
		},
	}
}
