// Package routes is the route reconciler shared by weft's kernel backends.
//
// A backend describes the routes it wants (one per peer subnet, keyed by
// destination prefix, main table) and the Reconciler makes the main table
// match, for the family of its cluster network (a dual-stack backend has one
// Reconciler per family): it reads the table in one dump, adds what is
// missing, replaces what drifted and deletes routes tagged with
// backend.RouteProtocol that are no longer wanted. The cost is
// O(n log n) in the number of routes, and its memory a few bytes per
// wanted route besides what it installed (see Reconciler).
//
// A wanted destination that is already routed by somebody else (for example
// a flanneld route left behind by an in-place migration) is taken over with
// a replace, never refused with EEXIST. Routes that would cover the host's
// own connected networks, or that leave the cluster network, are refused and
// reported so that the underlay can never be hijacked.
//
// The package also holds what vxlan and host-gw share around the
// Reconciler: Kernel, their lazily opened netlink connection, and OnLink
// and ExtMTU, what they read of the external interface.
package routes

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

// Table is the kernel routing table as the reconciler needs it. In the
// kernel it is *nl.RouteTable; *nlfake.Table is its fake.
type Table interface {
	// Walk calls fn with each route of the main table that the reconciler
	// must see, of the cluster network's family (routes of the other
	// family are ignored), while one consistent dump is read: at least
	// every route tagged with backend.RouteProtocol, every kernel
	// (connected) route and every route to a destination inside the
	// cluster network. r is only valid during the call. start (nil: none)
	// is called before the dump and again before each repetition of it,
	// so that the caller can drop what fn gathered.
	Walk(start func(), fn func(r *nl.Route)) error
	// ReplaceAll installs each route, tagged with backend.RouteProtocol,
	// replacing any route with the same destination and the default metric
	// (see Metric) in the main table, and returns one error (or nil) per
	// route.
	ReplaceAll(ws []nl.RouteSpec) []error
	// Delete removes the listed route r, of which the reconciler sets
	// the fields a delete request names: destination, table, metric,
	// protocol and scope. Removing a route that is already gone is not an
	// error the reconciler cares about.
	Delete(r *nl.Route) error
}

// Metric6 is the metric the kernel gives an IPv6 route installed without
// one (IP6_RT_PRIO_USER); an IPv4 route keeps 0.
const Metric6 = 1024

// Metric returns the metric of a route to dst installed without one: what
// the reconciler's routes carry.
func Metric(dst netip.Prefix) int {
	if dst.Addr().Is6() && !dst.Addr().Is4In6() {
		return Metric6
	}
	return 0
}

// matches reports whether the kernel route r is exactly w.
func matches(w nl.RouteSpec, r *nl.Route) bool {
	if r.Priority != Metric(w.Dst) || r.MultiPath || r.LinkIndex != w.LinkIndex {
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
// table match a wanted set, in the family of its network. It remembers what
// it installed so that it can tell a repair from a first-time install. It
// is not safe for concurrent use.
//
// Why sorted slices and a streamed dump. A pass used to list the whole
// table into a slice and index it and the wanted routes in maps; at 20000
// peers those were most of weftd's peak heap, which sets its GC goal and
// so its RSS. A pass now sorts an index of the wanted routes (which the
// caller may compute on demand, see ReconcileFunc), finds each listed
// route among them by binary search while the dump is read, keeps only the
// routes it must delete or overwrite, and holds what it installed as a
// sorted slice of packed routes.
type Reconciler struct {
	table   Table
	network netip.Prefix
	v6      bool // network is IPv6: the Reconciler sees IPv6 routes only
	// installed is what this Reconciler installed, sorted by
	// destination: everything it installed or found in place in the last
	// pass, and what it installed earlier that is neither wanted nor in
	// the table any more (so that installing it again is a repair).
	installed []installedRoute
	// known is true when the table holds exactly the routes of installed
	// marked live, as far as the Reconciler knows: its last pass read the
	// table, or trusted the one before that did, and failed nowhere.
	// connected are the connected networks the last read found.
	known     bool
	connected map[netip.Prefix]int
}

// New returns a Reconciler that installs only routes inside network, an
// IPv4 or an IPv6 prefix. t may be nil until SetTable.
func New(t Table, network netip.Prefix) *Reconciler {
	v6 := network.IsValid() && network.Addr().Is6() && !network.Addr().Is4In6()
	return &Reconciler{table: t, network: network.Masked(), v6: v6}
}

// SetTable swaps the table (for example after reopening a connection),
// keeping what the Reconciler knows it installed; the next pass reads the
// table.
func (rc *Reconciler) SetTable(t Table) { rc.table, rc.known = t, false }

// Reconcile makes the table match want. Later entries for the same
// destination win. It keeps going after individual failures, which are
// returned joined and listed in Result.Failed.
func (rc *Reconciler) Reconcile(want []nl.RouteSpec) (Result, error) {
	return rc.ReconcileFunc(len(want), func(i int) nl.RouteSpec { return want[i] })
}

// ReconcileFunc is Reconcile of the n routes want(0), ..., want(n-1), for a
// caller that can compute each wanted route from what it holds anyway
// instead of building a list of them all. want must return the same route
// for the same i throughout the call; it is called O(n log n) times.
func (rc *Reconciler) ReconcileFunc(n int, want func(i int) nl.RouteSpec) (Result, error) {
	return rc.reconcile(n, want, false)
}

// ReconcileTrustedFunc is ReconcileFunc for a pass that may take the
// table to hold what the last pass left there (backend.Loop's trusted
// pass): when the Reconciler knows what that is, it compares want with it
// instead of reading the table, and installs and deletes the difference.
// Otherwise it reads the table as ReconcileFunc does.
func (rc *Reconciler) ReconcileTrustedFunc(n int, want func(i int) nl.RouteSpec) (Result, error) {
	return rc.reconcile(n, want, rc.known)
}

func (rc *Reconciler) reconcile(n int, want func(i int) nl.RouteSpec, trusted bool) (Result, error) {
	p := &pass{
		rc: rc, want: want, order: make([]int32, n), state: make([]wantState, n),
		res: Result{Refused: map[netip.Prefix]string{}, Failed: map[netip.Prefix]error{}},
	}
	rc.known = false
	p.sortWant()
	if trusted {
		p.recall()
	} else if err := p.walk(); err != nil {
		return p.res, fmt.Errorf("list routes: %w", err)
	}
	rc.connected = p.connected
	p.refuse()
	p.deleteShadows()
	p.replace()
	p.deleteExtra()
	rc.installed = p.installedAfter()
	rc.known = len(p.errs) == 0
	return p.res, errors.Join(p.errs...)
}

// pass is the state of one Reconcile call.
type pass struct {
	rc *Reconciler
	// want is the caller's; order sorts it by masked destination (an
	// index is a fraction of a route's size), and state is per entry in
	// that order. Of a run of entries for the same destination only the
	// last counts.
	want  func(i int) nl.RouteSpec
	order []int32
	state []wantState
	// ours holds the routes of ours the dump showed that are not the
	// wanted route of their destination: deleted, or overwritten by a
	// replace. Most destinations have exactly the wanted route, which is
	// not kept.
	ours []ourRoute
	// connected maps the connected networks to their interface index.
	connected map[netip.Prefix]int
	res       Result
	errs      []error
}

// wantState is what a pass learnt about one wanted route.
type wantState struct {
	flags uint8
	// scope is the scope of the route that matched (flagMatched), which
	// deleting it takes (see matchedRoute).
	scope uint8
}

const (
	flagSuperseded = 1 << iota // a later entry has the same destination
	flagMatched                // the table holds exactly this route
	flagHadOurs                // the table holds a route of ours to it
	flagRefused                // refused, in Result.Refused
	flagReplaced               // installed by this pass's replace
)

// ourRoute is a route of ours the dump showed, reduced to what deleting it
// names (see route), and the position of the wanted route to its
// destination in the pass's order, or -1. A leave of thousands of peers
// keeps one per peer.
type ourRoute struct {
	dst      netip.Prefix
	priority int32
	table    uint32
	scope    uint8
	i        int32
}

// ourRouteOf reduces r, a route of ours.
func ourRouteOf(r *nl.Route, i int) ourRoute {
	return ourRoute{dst: r.Dst, priority: int32(r.Priority), table: r.Table, scope: r.Scope, i: int32(i)}
}

// route returns the route to delete: destination, table, metric, protocol
// and scope, the fields a delete request names.
func (o *ourRoute) route() nl.Route {
	return nl.Route{Dst: o.dst, Priority: int(o.priority), Table: o.table, Protocol: backend.RouteProtocol, Scope: o.scope}
}

// at returns the wanted route at position i of the pass's order.
func (p *pass) at(i int) nl.RouteSpec { return p.want(int(p.order[i])) }

// dstOf returns the masked destination of the wanted route at position i.
func (p *pass) dstOf(i int) netip.Prefix { return p.at(i).Dst.Masked() }

// sortWant orders want by destination, entries for the same destination in
// the caller's order, and marks all but the last of each as superseded.
func (p *pass) sortWant() {
	for i := range p.order {
		p.order[i] = int32(i)
	}
	slices.SortFunc(p.order, func(a, b int32) int {
		return cmp.Or(p.want(int(a)).Dst.Masked().Compare(p.want(int(b)).Dst.Masked()), cmp.Compare(a, b))
	})
	for i := 0; i+1 < len(p.order); i++ {
		if p.dstOf(i) == p.dstOf(i+1) {
			p.state[i].flags |= flagSuperseded
		}
	}
}

// lookup returns the index of the wanted route to dst (masked), or -1.
func (p *pass) lookup(dst netip.Prefix) int {
	// The first entry after dst; the one before it is the last for dst.
	lo, hi := 0, len(p.order)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if p.dstOf(m).Compare(dst) <= 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo > 0 && p.dstOf(lo-1) == dst {
		return lo - 1
	}
	return -1
}

// walk reads the table: which wanted routes it holds exactly, the other
// routes of ours, and the connected networks.
func (p *pass) walk() error {
	return p.rc.table.Walk(func() {
		for i := range p.state {
			p.state[i].flags &= flagSuperseded
		}
		p.ours = p.ours[:0]
		p.connected = map[netip.Prefix]int{}
	}, p.see)
}

// recall is walk for a table known to hold what the last pass left: the
// live routes of installed, and the connected networks the last read
// found.
func (p *pass) recall() {
	p.connected = p.rc.connected
	for k := range p.rc.installed {
		if ir := &p.rc.installed[k]; ir.flags&installedLive != 0 {
			r := ir.route()
			p.see(&r)
		}
	}
}

// see takes in one route of the table.
func (p *pass) see(r *nl.Route) {
	dst := r.Dst
	if !dst.IsValid() || dst.Addr().Is4() == p.rc.v6 {
		return
	}
	switch {
	case r.Table != 0 && r.Table != unix.RT_TABLE_MAIN:
	case r.Protocol == backend.RouteProtocol:
		i := p.lookup(dst)
		if i >= 0 {
			st := &p.state[i]
			st.flags |= flagHadOurs
			if st.flags&flagMatched == 0 && matches(p.at(i), r) {
				st.flags |= flagMatched
				st.scope = r.Scope
				return
			}
		}
		p.ours = append(p.ours, ourRouteOf(r, i))
	case IsConnected(r):
		p.connected[dst] = r.LinkIndex
	}
}

// refuse marks as refused every wanted destination outside the network or
// overlapping a connected route. Overlap is found with map lookups of every
// shorter prefix, so the cost is O(33·(routes+connected)) for IPv4,
// O(129·(routes+connected)) for IPv6, and lookups of the wanted routes.
func (p *pass) refuse() {
	rc := p.rc
	for i := range p.order {
		if p.state[i].flags&flagSuperseded != 0 {
			continue
		}
		dst := p.dstOf(i)
		if !rc.network.IsValid() || dst.Addr().BitLen() != rc.network.Addr().BitLen() || dst.Bits() < rc.network.Bits() || !rc.network.Contains(dst.Addr()) {
			p.refuseOne(i, fmt.Sprintf("route %s is outside the cluster network %s", dst, rc.network))
			continue
		}
		for bits := dst.Bits(); bits >= 0; bits-- {
			c, _ := dst.Addr().Prefix(bits)
			if idx, ok := p.connected[c]; ok {
				p.refuseOne(i, fmt.Sprintf("route %s would cover the connected network %s on interface index %d", dst, c, idx))
				break
			}
		}
	}
	// A connected network inside a wanted destination.
	for c, idx := range p.connected {
		for bits := c.Bits() - 1; bits >= 0; bits-- {
			dst, _ := c.Addr().Prefix(bits)
			if i := p.lookup(dst); i >= 0 && p.state[i].flags&flagRefused == 0 {
				p.refuseOne(i, fmt.Sprintf("route %s would cover the connected network %s on interface index %d", dst, c, idx))
			}
		}
	}
}

func (p *pass) refuseOne(i int, why string) {
	p.state[i].flags |= flagRefused
	p.res.Refused[p.dstOf(i)] = why
}

// deleteShadows deletes the routes of ours to a wanted destination that
// are not its wanted route (another metric, another shape) and that the
// replace will not overwrite: before the replace, as deleting a route can
// take its destination's nexthop object along.
func (p *pass) deleteShadows() {
	for k := range p.ours {
		o := &p.ours[k]
		if o.i < 0 || p.state[o.i].flags&flagRefused != 0 {
			continue // deleted by deleteExtra
		}
		if p.state[o.i].flags&flagMatched == 0 && int(o.priority) == Metric(o.dst) {
			continue // about to be overwritten by the replace
		}
		r := o.route()
		p.del(&r)
	}
}

// replaceChunk is how many routes a pass hands ReplaceAll at once: the
// requests of a join of thousands of peers are built and sent a chunk at a
// time, without a list of them all.
const replaceChunk = 256

// replace installs every wanted route the table does not hold exactly,
// counting each as added, updated or repaired.
func (p *pass) replace() {
	chunk := make([]nl.RouteSpec, 0, replaceChunk)
	var idx [replaceChunk]int
	flush := func() {
		if len(chunk) == 0 {
			return
		}
		for k, err := range p.rc.table.ReplaceAll(chunk) {
			p.replaced(idx[k], chunk[k], err)
		}
		chunk = chunk[:0]
	}
	for i := range p.order {
		if p.state[i].flags&(flagSuperseded|flagRefused|flagMatched) != 0 {
			continue
		}
		w := p.at(i)
		w.Dst = w.Dst.Masked()
		idx[len(chunk)] = i
		if chunk = append(chunk, w); len(chunk) == replaceChunk {
			flush()
		}
	}
	flush()
}

// replaced records the outcome of installing w, the wanted route at
// position i.
func (p *pass) replaced(i int, w nl.RouteSpec, err error) {
	if err != nil {
		err = fmt.Errorf("install route %s via %s: %w", w.Dst, w.Gw, err)
		p.res.Failed[w.Dst] = err
		p.errs = append(p.errs, err)
		return
	}
	p.state[i].flags |= flagReplaced
	prev, had := p.rc.lookupInstalled(w.Dst)
	prev.flags &^= installedLive
	switch {
	case had && prev == packRoute(w):
		p.res.Repaired++
	case had || p.state[i].flags&flagHadOurs != 0:
		p.res.Updated++
	default:
		p.res.Added++
	}
}

// deleteExtra deletes the routes of ours to destinations that are not
// wanted or refused.
func (p *pass) deleteExtra() {
	for k := range p.ours {
		if o := &p.ours[k]; o.i < 0 || p.state[o.i].flags&flagRefused != 0 {
			r := o.route()
			p.del(&r)
		}
	}
	for i := range p.order {
		if st := p.state[i]; st.flags&flagRefused != 0 && st.flags&flagMatched != 0 {
			r := p.matchedRoute(i)
			p.del(&r)
		}
	}
}

// matchedRoute rebuilds the route of ours that matched the wanted route at
// position i exactly, for deleting it after its destination was refused:
// matching pinned every field a delete names but the scope, which the pass
// kept (the pass keeps no copy of routes that are right).
func (p *pass) matchedRoute(i int) nl.Route {
	w := p.at(i)
	r := nl.Route{
		Dst: w.Dst.Masked(), Gw: w.Gw, LinkIndex: w.LinkIndex, Priority: Metric(w.Dst.Masked()),
		Table: unix.RT_TABLE_MAIN, Protocol: backend.RouteProtocol, Scope: p.state[i].scope, Type: unix.RTN_UNICAST,
	}
	if w.OnLink {
		r.Flags = unix.RTNH_F_ONLINK
	}
	return r
}

func (p *pass) del(r *nl.Route) {
	if err := p.rc.table.Delete(r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
		p.errs = append(p.errs, fmt.Errorf("delete route %s: %w", r.Dst, err))
	} else {
		p.res.Removed++
	}
}

// lookupInstalled returns what the Reconciler had installed to dst.
func (rc *Reconciler) lookupInstalled(dst netip.Prefix) (installedRoute, bool) {
	i, ok := slices.BinarySearchFunc(rc.installed, dst, func(ir installedRoute, dst netip.Prefix) int { return ir.Dst().Compare(dst) })
	if !ok {
		return installedRoute{}, false
	}
	return rc.installed[i], true
}

// installedAfter returns what the Reconciler has installed after the
// pass, sized to its entries.
func (p *pass) installedAfter() []installedRoute {
	n := 0
	p.mergeInstalled(func(installedRoute) { n++ })
	out := make([]installedRoute, 0, n)
	p.mergeInstalled(func(ir installedRoute) { out = append(out, ir) })
	return out
}

// mergeInstalled calls emit, in order of destination, with each route the
// Reconciler has installed after the pass: the wanted routes the table
// held or the pass installed, and what it had installed before to
// destinations that are not wanted and the table showed no route of ours
// to.
func (p *pass) mergeInstalled(emit func(installedRoute)) {
	// The destinations of ours that are not wanted: their routes were
	// deleted.
	var gone []netip.Prefix
	for k := range p.ours {
		if p.ours[k].i < 0 {
			gone = append(gone, p.ours[k].dst)
		}
	}
	slices.SortFunc(gone, netip.Prefix.Compare)
	keep := func(ir installedRoute) {
		if _, deleted := slices.BinarySearchFunc(gone, ir.Dst(), netip.Prefix.Compare); !deleted {
			ir.flags &^= installedLive // the pass saw no route of ours to it
			emit(ir)
		}
	}
	old := p.rc.installed
	j := 0
	for i := range p.order {
		st := p.state[i]
		if st.flags&flagSuperseded != 0 {
			continue
		}
		dst := p.dstOf(i)
		for ; j < len(old) && old[j].Dst().Compare(dst) < 0; j++ {
			keep(old[j])
		}
		if j < len(old) && old[j].Dst() == dst {
			j++ // wanted: what the pass did decides
		}
		if st.flags&flagRefused == 0 && st.flags&(flagMatched|flagReplaced) != 0 {
			w := p.at(i)
			w.Dst = dst
			ir := packRoute(w)
			ir.flags |= installedLive
			emit(ir)
		}
	}
	for ; j < len(old); j++ {
		keep(old[j])
	}
}
