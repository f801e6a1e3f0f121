package routes

import (
	"fmt"
	"math/rand"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nlfake"
)

// randomWorld is two fake namespaces that random steps change alike, for
// the tests that run two reconcilers side by side and compare every pass:
// new wanted sets (joins and leaves, sometimes more than one ReplaceAll
// chunk), wanted routes changed or duplicated, drift in the tables, a
// connected network inside the cluster network that comes and goes, and
// writes that fail for some destinations.
type randomWorld struct {
	rng     *rand.Rand
	failing map[netip.Prefix]bool
	fa, fb  *nlfake.NS
	cni     [2]int
	pool    []netip.Prefix
	gws     []netip.Addr
	cniAddr netip.Prefix
	want    []Want
	steps   stepMix
}

// stepMix is how a test draws its steps.
type stepMix struct {
	newSets int // weight of a whole new wanted set (every other kind weighs 1)
	// allDrift adds the drift that leaves routes of ours as someone
	// else wrote them (right or in another scope) to the three kinds
	// every test has: deleted, a foreign route, ours at another metric.
	allDrift bool
	// pruneOnDrift drops some wanted routes along with drift: leases
	// that changed while the kernel did.
	pruneOnDrift bool
}

func newRandomWorld(seed int64, mix stepMix, extraPool ...netip.Prefix) *randomWorld {
	w := &randomWorld{rng: rand.New(rand.NewSource(seed)), failing: map[netip.Prefix]bool{}, fa: nlfake.New(), fb: nlfake.New(),
		gws: []netip.Addr{addr("192.0.2.1"), addr("192.0.2.2"), addr("198.18.0.1")}, cniAddr: pfx("198.18.40.1/26"), steps: mix}
	for k, f := range []*nlfake.NS{w.fa, w.fb} {
		f.AddDevice("eth0", 1500, pfx("192.0.2.11/24"))
		w.cni[k] = f.AddDevice("cni0", 1500)
	}
	for i := range 700 {
		w.pool = append(w.pool, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 4), byte(i << 4)}), 28))
	}
	w.pool = append(w.pool, extraPool...)
	return w
}

// tables returns the two route tables, failing the same writes.
func (w *randomWorld) tables() (a, b flakyTable) {
	return flakyTable{w.fa.RouteTable(network, backend.RouteProtocol), w.failing},
		flakyTable{w.fb.RouteTable(network, backend.RouteProtocol), w.failing}
}

func (w *randomWorld) random(p netip.Prefix) Want {
	return Want{Dst: p, Gw: w.gws[w.rng.Intn(len(w.gws))], LinkIndex: 2 + w.rng.Intn(2), OnLink: w.rng.Intn(2) == 0}
}

func (w *randomWorld) both(fn func(f *nlfake.NS, k int)) { fn(w.fa, 0); fn(w.fb, 1) }

// step changes the world once. drift says whether the tables changed in a
// way the kernel would announce with an event.
func (w *randomWorld) step() (drift bool) {
	rng := w.rng
	k := rng.Intn(w.steps.newSets + 5)
	switch {
	case k < w.steps.newSets: // a whole new random set: a join or a leave
		w.want = w.want[:0]
		frac := 2 + rng.Intn(6)
		for _, p := range w.pool {
			if rng.Intn(frac) == 0 {
				w.want = append(w.want, w.random(p))
			}
		}
		return false
	}
	switch k - w.steps.newSets {
	case 0: // drift
		kinds := 3
		if w.steps.allDrift {
			kinds = 5
		}
		for range 5 {
			p := w.pool[rng.Intn(len(w.pool))]
			r := w.random(p)
			switch rng.Intn(kinds) {
			case 0:
				w.both(func(f *nlfake.NS, _ int) { f.RemoveRoute(p) })
			case 1:
				w.both(func(f *nlfake.NS, _ int) { f.PutRoute(route(r, unix.RTPROT_BOOT)) })
			case 2:
				x := route(r, backend.RouteProtocol)
				x.Priority = 10 + rng.Intn(3)
				w.both(func(f *nlfake.NS, _ int) { f.PutRoute(x) })
			case 3: // ours as somebody else left it, maybe exactly right
				w.both(func(f *nlfake.NS, _ int) { f.PutRoute(route(r, backend.RouteProtocol)) })
			case 4:
				x := route(r, backend.RouteProtocol)
				x.Scope = unix.RT_SCOPE_LINK
				w.both(func(f *nlfake.NS, _ int) { f.PutRoute(x) })
			}
		}
		if w.steps.pruneOnDrift {
			// Leases changed as well: routes deleted by hand that are
			// no longer wanted stay known to the reconciler, not live.
			w.want = slices.DeleteFunc(w.want, func(Want) bool { return rng.Intn(3) == 0 })
		}
		return true
	case 1: // change a few, duplicate a few
		for i := range w.want {
			switch rng.Intn(16) {
			case 0:
				w.want[i].Gw = w.gws[rng.Intn(len(w.gws))]
			case 1:
				w.want = append(w.want, w.random(w.want[i].Dst))
			}
		}
	case 2: // a connected network inside the cluster network comes or goes
		if rng.Intn(2) == 0 {
			w.both(func(f *nlfake.NS, k int) { _ = f.AddAddr(w.cni[k], w.cniAddr) })
		} else {
			w.both(func(f *nlfake.NS, k int) { _ = f.DelAddr(nl.Addr{LinkIndex: w.cni[k], Prefix: w.cniAddr}) })
		}
		return true
	case 3: // writes to some destinations fail
		clear(w.failing)
		for range rng.Intn(4) {
			w.failing[w.pool[rng.Intn(len(w.pool))]] = true
		}
	case 4: // nothing
	}
	return false
}

// compare checks that two passes reported the same and left the same
// tables; what names the second reconciler in a failure.
func (w *randomWorld) compare(what string, resA Result, errA error, resB Result, errB error) string {
	if a, b := describePass(resA, errA), describePass(resB, errB); a != b {
		return fmt.Sprintf("pass differs from %s:\n got %s\nwant %s", what, a, b)
	}
	ra, _ := w.fa.RouteList(nl.FamilyAll, 0, nil, nil)
	rb, _ := w.fb.RouteList(nl.FamilyAll, 0, nil, nil)
	if !slices.Equal(ra, rb) {
		return fmt.Sprintf("table differs from %s's:\n got %v\nwant %v", what, ra, rb)
	}
	return ""
}
