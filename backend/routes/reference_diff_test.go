package routes

import (
	"fmt"
	"math/rand"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nlfake"
)

// flakyTable fails the writes to the destinations in failing, the same way
// for every reconciler that uses it.
type flakyTable struct {
	*nlfake.Table
	failing map[netip.Prefix]bool
}

func (t flakyTable) ReplaceAll(ws []nl.RouteSpec) []error {
	errs := make([]error, len(ws))
	var ok []nl.RouteSpec
	var at []int
	for i, w := range ws {
		if t.failing[w.Dst] {
			errs[i] = unix.EIO
			continue
		}
		ok, at = append(ok, w), append(at, i)
	}
	for k, err := range t.Table.ReplaceAll(ok) {
		errs[at[k]] = err
	}
	return errs
}

func (t flakyTable) Delete(r *nl.Route) error {
	if t.failing[r.Dst] {
		return unix.EBUSY
	}
	return t.Table.Delete(r)
}

// TestMatchesReference drives the reconciler and the reference one (the
// implementation before this one) through the same random passes, each on
// its own fake table with the same drift and the same failing writes, and
// checks that every pass reports the same and leaves the same table:
// duplicates in want, refusals (outside the network, over a connected
// network that comes and goes), routes of ours at other metrics or in
// another shape, foreign routes, failed installs and deletes, and joins of
// more routes than one ReplaceAll chunk.
func TestMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewSource(17))
	failing := map[netip.Prefix]bool{}
	fa, fb := nlfake.New(), nlfake.New()
	var cni [2]int
	for k, f := range []*nlfake.NS{fa, fb} {
		f.AddDevice("eth0", 1500, pfx("192.0.2.11/24"))
		cni[k] = f.AddDevice("cni0", 1500)
	}
	rc := New(flakyTable{fa.RouteTable(network, backend.RouteProtocol), failing}, network)
	ref := newRef(flakyTable{fb.RouteTable(network, backend.RouteProtocol), failing}, network)

	var pool []netip.Prefix
	for i := range 700 {
		pool = append(pool, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 4), byte(i << 4)}), 28))
	}
	pool = append(pool, pfx("198.18.40.0/24"), pfx("198.18.0.0/16"), pfx("10.1.0.0/24"), pfx("2001:db8::/64"))
	gws := []netip.Addr{addr("192.0.2.1"), addr("192.0.2.2"), addr("198.18.0.1")}
	random := func(p netip.Prefix) Want {
		return Want{Dst: p, Gw: gws[rng.Intn(len(gws))], LinkIndex: 2 + rng.Intn(2), OnLink: rng.Intn(2) == 0}
	}
	both := func(fn func(f *nlfake.NS, k int)) { fn(fa, 0); fn(fb, 1) }
	cniAddr := pfx("198.18.40.1/26")
	var want []Want
	for step := range 1500 {
		switch rng.Intn(6) {
		case 0: // a whole new random set, sometimes more than a chunk
			want = want[:0]
			frac := 2 + rng.Intn(6)
			for _, p := range pool {
				if rng.Intn(frac) == 0 {
					want = append(want, random(p))
				}
			}
		case 1: // drift
			for range 5 {
				p := pool[rng.Intn(len(pool))]
				w := random(p)
				switch rng.Intn(5) {
				case 0:
					both(func(f *nlfake.NS, _ int) { f.RemoveRoute(p) })
				case 1:
					both(func(f *nlfake.NS, _ int) { f.PutRoute(route(w, unix.RTPROT_BOOT)) })
				case 2:
					r := route(w, backend.RouteProtocol)
					r.Priority = 10 + rng.Intn(3)
					both(func(f *nlfake.NS, _ int) { f.PutRoute(r) })
				case 3: // ours as somebody else left it, maybe exactly right
					both(func(f *nlfake.NS, _ int) { f.PutRoute(route(w, backend.RouteProtocol)) })
				case 4:
					r := route(w, backend.RouteProtocol)
					r.Scope = unix.RT_SCOPE_LINK
					both(func(f *nlfake.NS, _ int) { f.PutRoute(r) })
				}
			}
		case 2: // change a few, duplicate a few
			for i := range want {
				switch rng.Intn(16) {
				case 0:
					want[i].Gw = gws[rng.Intn(len(gws))]
				case 1:
					want = append(want, random(want[i].Dst))
				}
			}
		case 3: // a connected network inside the cluster network comes or goes
			if rng.Intn(2) == 0 {
				both(func(f *nlfake.NS, k int) { _ = f.AddAddr(cni[k], cniAddr) })
			} else {
				both(func(f *nlfake.NS, k int) { _ = f.DelAddr(nl.Addr{LinkIndex: cni[k], Prefix: cniAddr}) })
			}
		case 4: // writes to some destinations fail
			clear(failing)
			for range rng.Intn(4) {
				failing[pool[rng.Intn(len(pool))]] = true
			}
		case 5: // nothing
		}
		wa, wb := slices.Clone(want), slices.Clone(want)
		resA, errA := rc.Reconcile(wa)
		resB, errB := ref.Reconcile(wb)
		if a, b := describePass(resA, errA), describePass(resB, errB); a != b {
			t.Fatalf("step %d: pass differs from the reference:\n got %s\nwant %s", step, a, b)
		}
		ra, _ := fa.RouteList(nl.FamilyAll, 0, nil, nil)
		rb, _ := fb.RouteList(nl.FamilyAll, 0, nil, nil)
		if !slices.Equal(ra, rb) {
			t.Fatalf("step %d: table differs from the reference's:\n got %v\nwant %v", step, ra, rb)
		}
	}
}

// describePass renders a pass's result and error in an order that does
// not depend on map iteration.
func describePass(res Result, err error) string {
	var b strings.Builder
	fmt.Fprintf(&b, "added %d updated %d repaired %d removed %d\n", res.Added, res.Updated, res.Repaired, res.Removed)
	var lines []string
	for dst, why := range res.Refused {
		lines = append(lines, fmt.Sprintf("refused %s: %s", dst, why))
	}
	for dst, err := range res.Failed {
		lines = append(lines, fmt.Sprintf("failed %s: %v", dst, err))
	}
	if err != nil {
		for _, l := range strings.Split(err.Error(), "\n") {
			lines = append(lines, "error: "+l)
		}
	}
	slices.Sort(lines)
	b.WriteString(strings.Join(lines, "\n"))
	return b.String()
}
