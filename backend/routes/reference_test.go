package routes

// The reconciler as it was before it streamed the dump and kept sorted
// slices (commit 770c039), kept as the reference that TestMatchesReference
// compares the current one with.

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

// listTable is the table the reference reconciler reads: a list per pass.
type listTable interface {
	List() ([]nl.Route, error)
	ReplaceAll(ws []nl.RouteSpec) []error
	Delete(r *nl.Route) error
}

// refReconciler makes the routes tagged with backend.RouteProtocol in the main
// table match a wanted set, in the family of its network. It remembers what
// it installed so that it can tell a repair from a first-time install. It
// is not safe for concurrent use.
type refReconciler struct {
	table     listTable
	network   netip.Prefix
	v6        bool // network is IPv6: the refReconciler sees IPv6 routes only
	installed map[netip.Prefix]nl.RouteSpec
}

// New returns a refReconciler that installs only routes inside network, an
// IPv4 or an IPv6 prefix. t may be nil until SetTable.
func newRef(t listTable, network netip.Prefix) *refReconciler {
	v6 := network.IsValid() && network.Addr().Is6() && !network.Addr().Is4In6()
	return &refReconciler{table: t, network: network.Masked(), v6: v6, installed: map[netip.Prefix]nl.RouteSpec{}}
}

// SetTable swaps the table (for example after reopening a connection),
// keeping what the refReconciler knows it installed.

// Reconcile makes the table match want. Later entries for the same
// destination win. It keeps going after individual failures, which are
// returned joined and listed in Result.Failed.
func (rc *refReconciler) Reconcile(want []nl.RouteSpec) (Result, error) {
	res := Result{Refused: map[netip.Prefix]string{}, Failed: map[netip.Prefix]error{}}
	existing, err := rc.table.List()
	if err != nil {
		return res, fmt.Errorf("list routes: %w", err)
	}

	ours := make(map[netip.Prefix][]*nl.Route, len(want))
	connected := map[netip.Prefix]int{}
	for i := range existing {
		r := &existing[i]
		dst := r.Dst
		if !dst.IsValid() || dst.Addr().Is4() == rc.v6 {
			continue
		}
		switch {
		case r.Table != 0 && r.Table != unix.RT_TABLE_MAIN:
		case r.Protocol == backend.RouteProtocol:
			ours[dst] = append(ours[dst], r)
		case IsConnected(r):
			connected[dst] = r.LinkIndex
		}
	}

	wanted := make(map[netip.Prefix]nl.RouteSpec, len(want))
	for _, w := range want {
		w.Dst = w.Dst.Masked()
		wanted[w.Dst] = w
	}
	rc.refuse(wanted, connected, res.Refused)

	var errs []error
	type pendingReplace struct {
		w       nl.RouteSpec
		hadOurs bool
	}
	var pending []pendingReplace
	if n := len(wanted) - len(rc.installed); n > 16 {
		pending = make([]pendingReplace, 0, n) // first pass: most are new
	}
	if len(rc.installed) == 0 {
		rc.installed = make(map[netip.Prefix]nl.RouteSpec, len(wanted))
	}
	for dst, w := range wanted {
		have := ours[dst]
		delete(ours, dst) // what is left in ours at the end is extra
		match := -1
		for i, r := range have {
			if matches(w, r) {
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
			if i == match || (match < 0 && r.Priority == Metric(dst)) {
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
	if len(pending) > 0 {
		ws := make([]nl.RouteSpec, len(pending))
		for i, p := range pending {
			ws[i] = p.w
		}
		results = rc.table.ReplaceAll(ws)
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

func (rc *refReconciler) del(r *nl.Route) error {
	err := rc.table.Delete(r)
	if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete route %s: %w", r.Dst, err)
	}
	return nil
}

// refuse moves from wanted to refused every destination outside the
// network or overlapping a connected route. Overlap is found with map
// lookups of every shorter prefix, so the cost is O(33·(routes+connected))
// for IPv4, O(129·(routes+connected)) for IPv6.
func (rc *refReconciler) refuse(wanted map[netip.Prefix]nl.RouteSpec, connected map[netip.Prefix]int, refused map[netip.Prefix]string) {
	for dst := range wanted {
		if !rc.network.IsValid() || dst.Addr().BitLen() != rc.network.Addr().BitLen() || dst.Bits() < rc.network.Bits() || !rc.network.Contains(dst.Addr()) {
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
