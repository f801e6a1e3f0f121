package routes

import (
	"net/netip"
	"sort"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// FakeTable is an in-memory Table that behaves like the kernel's main table
// for the operations the reconciler uses: a route is identified by its
// destination and metric, Replace overwrites whatever holds that key, and
// Delete of a missing route fails with ESRCH. Safe for concurrent use.
type FakeTable struct {
	mu     sync.Mutex
	routes map[fakeKey]netlink.Route
	// Calls counts Replace and Delete calls.
	Replaces, Deletes int
}

type fakeKey struct {
	dst      netip.Prefix
	priority int
}

var _ Table = (*FakeTable)(nil)

// NewFakeTable returns an empty table.
func NewFakeTable() *FakeTable { return &FakeTable{routes: map[fakeKey]netlink.Route{}} }

func keyOf(r *netlink.Route) fakeKey {
	dst, _ := ipNetToPrefix(r.Dst)
	return fakeKey{dst: dst, priority: r.Priority}
}

// List implements Table.
func (f *FakeTable) List() ([]Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Route, 0, len(f.routes))
	for _, r := range f.routes {
		out = append(out, RouteOf(&r))
	}
	return out, nil
}

func (f *FakeTable) all() []netlink.Route {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]netlink.Route, 0, len(f.routes))
	for _, r := range f.routes {
		out = append(out, r)
	}
	return out
}

// Replace implements Table.
func (f *FakeTable) Replace(r *netlink.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Replaces++
	c := *r
	if c.Table == 0 {
		c.Table = unix.RT_TABLE_MAIN
	}
	f.routes[keyOf(r)] = c
	return nil
}

// Delete implements Table.
func (f *FakeTable) Delete(r *Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Deletes++
	k := fakeKey{dst: r.Dst, priority: r.Priority}
	if _, ok := f.routes[k]; !ok {
		return unix.ESRCH
	}
	delete(f.routes, k)
	return nil
}

// Put stores r as is, as somebody other than the reconciler would.
func (f *FakeTable) Put(r netlink.Route) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Table == 0 {
		r.Table = unix.RT_TABLE_MAIN
	}
	f.routes[keyOf(&r)] = r
}

// Remove deletes the route with destination dst and metric 0, as somebody
// other than the reconciler would.
func (f *FakeTable) Remove(dst netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.routes, fakeKey{dst: dst})
}

// Sorted returns the routes ordered by destination, then metric.
func (f *FakeTable) Sorted() []netlink.Route {
	rs := f.all()
	sort.Slice(rs, func(i, j int) bool {
		a, b := keyOf(&rs[i]), keyOf(&rs[j])
		if a.dst != b.dst {
			return a.dst.Addr().Less(b.dst.Addr()) || (a.dst.Addr() == b.dst.Addr() && a.dst.Bits() < b.dst.Bits())
		}
		return a.priority < b.priority
	})
	return rs
}
