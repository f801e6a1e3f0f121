// Package routes is the route reconciler shared by weft's kernel backends.
//
// A backend describes the routes it wants (one per peer subnet, keyed by
// destination prefix, main table) and the Reconciler makes the main table
// match: it lists the table once, indexes it in maps, adds what is missing,
// replaces what drifted and deletes routes tagged with backend.RouteProtocol
// that are no longer wanted. The cost is linear in the number of routes.
//
// A wanted destination that is already routed by somebody else (for example
// a flanneld route left behind by an in-place migration) is taken over with
// a replace, never refused with EEXIST. Routes that would cover the host's
// own connected networks, or that leave the cluster network, are refused and
// reported so that the underlay can never be hijacked.
package routes

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

// Table is the kernel routing table as the reconciler needs it.
type Table interface {
	// List returns the IPv4 routes of the main table that the reconciler
	// must see, in one consistent dump: at least every route tagged with
	// backend.RouteProtocol, every kernel (connected) route and every
	// route to a destination inside the cluster network.
	List() ([]Route, error)
	// Replace installs r, replacing any route with the same destination
	// and metric in the same table.
	Replace(r *netlink.Route) error
	// Delete removes the listed route r; removing a route that is already
	// gone is not an error the reconciler cares about.
	Delete(r *Route) error
}

// Route is a route as a dump shows it, reduced to the fields the
// reconciler compares (a netlink.Route is ten times the size and a dump
// of thousands of them was most of each pass's garbage).
type Route struct {
	// Dst is the destination, masked; 0.0.0.0/0 for a default route.
	Dst netip.Prefix
	// Gw is RTA_GATEWAY (invalid if none), unmapped.
	Gw netip.Addr
	// LinkIndex is RTA_OIF.
	LinkIndex int
	// Priority is the metric (RTA_PRIORITY).
	Priority int
	// Table is RTA_TABLE, or rtm_table without it.
	Table uint32
	// Flags is rtm_flags (RTNH_F_ONLINK among them).
	Flags uint32
	// NHID is RTA_NH_ID: the route uses a nexthop object.
	NHID     uint32
	Protocol uint8
	Scope    uint8
	Type     uint8
	// MultiPath: the route has RTA_MULTIPATH next hops.
	MultiPath bool
}

// RouteOf reduces a netlink.Route to a Route.
func RouteOf(r *netlink.Route) Route {
	out := Route{
		LinkIndex: r.LinkIndex, Priority: r.Priority, Table: uint32(r.Table), Flags: uint32(r.Flags),
		Protocol: uint8(r.Protocol), Scope: uint8(r.Scope), Type: uint8(r.Type), MultiPath: len(r.MultiPath) > 0,
	}
	out.Dst, _ = ipNetToPrefix(r.Dst)
	if gw, ok := netip.AddrFromSlice(r.Gw); ok {
		out.Gw = gw.Unmap()
	}
	return out
}

// BatchTable is a Table that can also install many routes in one go.
type BatchTable interface {
	Table
	// ReplaceAll is Replace(w.Route()) for every want, in order; it
	// returns one error (or nil) per want.
	ReplaceAll(ws []Want) []error
}

// Want is one wanted route: Dst via Gw out of LinkIndex.
type Want struct {
	Dst       netip.Prefix
	Gw        netip.Addr
	LinkIndex int
	// OnLink sets RTNH_F_ONLINK: the gateway is reachable on the link even
	// though no connected route covers it (vxlan).
	OnLink bool
}

// Route returns the kernel route for w, tagged with backend.RouteProtocol.
func (w Want) Route() *netlink.Route {
	r := &netlink.Route{
		Family:    netlink.FAMILY_V4,
		Dst:       prefixToIPNet(w.Dst),
		Gw:        net.IP(w.Gw.AsSlice()),
		LinkIndex: w.LinkIndex,
		Protocol:  backend.RouteProtocol,
		Table:     unix.RT_TABLE_MAIN,
		Scope:     netlink.SCOPE_UNIVERSE,
		Type:      unix.RTN_UNICAST,
	}
	if w.OnLink {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	return r
}

// matches reports whether the kernel route r is exactly w.
func (w Want) matches(r *Route) bool {
	if r.Priority != 0 || r.MultiPath || r.LinkIndex != w.LinkIndex {
		return false
	}
	if r.Type != 0 && r.Type != unix.RTN_UNICAST {
		return false
	}
	if !r.Gw.IsValid() || r.Gw != w.Gw {
		return false
	}
	return (r.Flags&unix.RTNH_F_ONLINK != 0) == w.OnLink
}

// Result says what one reconcile pass did.
type Result struct {
	// Added counts routes installed for the first time; Updated routes
	// replaced because the wanted route changed; Repaired routes
	// re-installed because the kernel no longer held what this Reconciler
	// had installed (deleted or modified behind our back); Removed routes
	// deleted because they are no longer wanted.
	Added, Updated, Repaired, Removed int
	// Refused maps wanted destinations that were not installed to the
	// reason.
	Refused map[netip.Prefix]string
	// Failed maps wanted destinations whose installation failed to the
	// error. Their absence from the kernel is retried on the next pass.
	Failed map[netip.Prefix]error
}

// Reconciler makes the routes tagged with backend.RouteProtocol in the main
// table match a wanted set. It remembers what it installed so that it can
// tell a repair from a first-time install. It is not safe for concurrent use.
type Reconciler struct {
	table     Table
	network   netip.Prefix
	installed map[netip.Prefix]Want
}

// New returns a Reconciler that installs only routes inside network.
func New(t Table, network netip.Prefix) *Reconciler {
	return &Reconciler{table: t, network: network.Masked(), installed: map[netip.Prefix]Want{}}
}

// SetTable swaps the table (for example after reopening a socket), keeping
// what the Reconciler knows it installed.
func (rc *Reconciler) SetTable(t Table) { rc.table = t }

// Reconcile makes the table match want. Later entries for the same
// destination win. It keeps going after individual failures, which are
// returned joined and listed in Result.Failed.
func (rc *Reconciler) Reconcile(want []Want) (Result, error) {
	res := Result{Refused: map[netip.Prefix]string{}, Failed: map[netip.Prefix]error{}}
	existing, err := rc.table.List()
	if err != nil {
		return res, fmt.Errorf("list routes: %w", err)
	}

	ours := make(map[netip.Prefix][]*Route, len(want))
	connected := map[netip.Prefix]int{}
	for i := range existing {
		r := &existing[i]
		dst := r.Dst
		if !dst.IsValid() || !dst.Addr().Is4() {
			continue
		}
		if r.Table != 0 && r.Table != unix.RT_TABLE_MAIN {
			continue
		}
		switch {
		case r.Protocol == backend.RouteProtocol:
			ours[dst] = append(ours[dst], r)
		case r.Protocol == unix.RTPROT_KERNEL && r.Scope == unix.RT_SCOPE_LINK:
			connected[dst] = r.LinkIndex
		}
	}

	wanted := make(map[netip.Prefix]Want, len(want))
	for _, w := range want {
		w.Dst = w.Dst.Masked()
		wanted[w.Dst] = w
	}
	rc.refuse(wanted, connected, res.Refused)

	var errs []error
	type pendingReplace struct {
		w       Want
		hadOurs bool
	}
	var pending []pendingReplace
	if n := len(wanted) - len(rc.installed); n > 16 {
		pending = make([]pendingReplace, 0, n) // first pass: most are new
	}
	if len(rc.installed) == 0 {
		rc.installed = make(map[netip.Prefix]Want, len(wanted))
	}
	for dst, w := range wanted {
		have := ours[dst]
		delete(ours, dst) // what is left in ours at the end is extra
		match := -1
		for i, r := range have {
			if w.matches(r) {
				match = i
				break
			}
		}
		if match < 0 {
			pending = append(pending, pendingReplace{w: w, hadOurs: len(have) > 0})
		} else {
			rc.installed[dst] = w
		}
		// Same destination at another metric or shape: ours, but extra.
		for i, r := range have {
			if i == match || (match < 0 && r.Priority == 0) {
				continue // kept, or about to be overwritten by a replace
			}
			if err := rc.del(r); err != nil {
				errs = append(errs, err)
			} else {
				res.Removed++
			}
		}
	}

	var results []error
	if bt, ok := rc.table.(BatchTable); ok {
		ws := make([]Want, len(pending))
		for i, p := range pending {
			ws[i] = p.w
		}
		results = bt.ReplaceAll(ws)
	} else {
		results = make([]error, len(pending))
		for i, p := range pending {
			results[i] = rc.table.Replace(p.w.Route())
		}
	}
	for i, p := range pending {
		dst := p.w.Dst
		if err := results[i]; err != nil {
			err = fmt.Errorf("install route %s via %s: %w", dst, p.w.Gw, err)
			res.Failed[dst] = err
			errs = append(errs, err)
			delete(rc.installed, dst)
			continue
		}
		prev, had := rc.installed[dst]
		switch {
		case had && prev == p.w:
			res.Repaired++
		case had || p.hadOurs:
			res.Updated++
		default:
			res.Added++
		}
		rc.installed[dst] = p.w
	}
	for dst := range res.Refused {
		delete(rc.installed, dst)
	}
	for dst, rs := range ours {
		if _, ok := wanted[dst]; !ok {
			delete(rc.installed, dst)
		}
		for _, r := range rs {
			if err := rc.del(r); err != nil {
				errs = append(errs, err)
			} else {
				res.Removed++
			}
		}
	}
	return res, errors.Join(errs...)
}

func (rc *Reconciler) del(r *Route) error {
	err := rc.table.Delete(r)
	if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete route %s: %w", r.Dst, err)
	}
	return nil
}

// refuse moves from wanted to refused every destination outside the
// network or overlapping a connected route. Overlap is found with map
// lookups of every shorter prefix, so the cost is O(33·(routes+connected)).
func (rc *Reconciler) refuse(wanted map[netip.Prefix]Want, connected map[netip.Prefix]int, refused map[netip.Prefix]string) {
	for dst := range wanted {
		if !rc.network.IsValid() || dst.Bits() < rc.network.Bits() || !rc.network.Contains(dst.Addr()) {
			refused[dst] = fmt.Sprintf("route %s is outside the cluster network %s", dst, rc.network)
			continue
		}
		for bits := dst.Bits(); bits >= 0; bits-- {
			c, _ := dst.Addr().Prefix(bits)
			if idx, ok := connected[c]; ok {
				refused[dst] = fmt.Sprintf("route %s would cover the connected network %s on interface index %d", dst, c, idx)
				break
			}
		}
	}
	// A connected network inside a wanted destination.
	for c, idx := range connected {
		for bits := c.Bits() - 1; bits >= 0; bits-- {
			p, _ := c.Addr().Prefix(bits)
			if _, ok := wanted[p]; ok {
				if _, done := refused[p]; !done {
					refused[p] = fmt.Sprintf("route %s would cover the connected network %s on interface index %d", p, c, idx)
				}
			}
		}
	}
	for dst := range refused {
		delete(wanted, dst)
	}
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits == 0 || bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones).Masked(), true
}

// Owned describes a route or nexthop object tagged with
// backend.RouteProtocol, for DeleteOwned's selector.
type Owned struct {
	// LinkIndex is the output device (0 for a nexthop group).
	LinkIndex int
	// Gw is the gateway; invalid for a device route.
	Gw netip.Addr
	// OnLink is RTNH_F_ONLINK.
	OnLink bool
}

// DeleteOwned removes, from every table of the namespace ns (which h must
// belong to), the routes and nexthop objects tagged with
// backend.RouteProtocol that sel selects; nil selects all. It returns how
// many routes it removed. Backend Cleanup functions use it with a selector
// that matches only their own shape of route, because weftd calls the
// Cleanup of every other backend type at each start and must not take the
// configured backend's routes down.
func DeleteOwned(ns netns.NsHandle, h *netlink.Handle, sel func(Owned) bool) (int, error) {
	if sel == nil {
		sel = func(Owned) bool { return true }
	}
	if err := deleteOwnedNexthops(ns, sel); err != nil {
		return 0, err
	}
	rs, err := nl.Dump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: backend.RouteProtocol, Table: unix.RT_TABLE_UNSPEC},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	n := 0
	var errs []error
	for i := range rs {
		r := &rs[i]
		if r.Protocol != backend.RouteProtocol {
			continue
		}
		o := Owned{LinkIndex: r.LinkIndex, OnLink: r.Flags&int(netlink.FLAG_ONLINK) != 0}
		if gw, ok := netip.AddrFromSlice(r.Gw); ok {
			o.Gw = gw.Unmap()
		}
		if !sel(o) {
			continue
		}
		err := h.RouteDel(&netlink.Route{Family: netlink.FAMILY_V4, Dst: r.Dst, Table: r.Table, Priority: r.Priority, Protocol: r.Protocol})
		if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", r.Dst, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
