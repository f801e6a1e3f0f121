package routes

import (
	"math/rand"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nlfake"
)

// walkCounter counts the reads of a table.
type walkCounter struct {
	flakyTable
	walks *int
}

func (t walkCounter) Walk(start func(), fn func(r *nl.Route)) error {
	*t.walks++
	return t.flakyTable.Walk(start, fn)
}

// TestTrustedMatchesFull drives one reconciler with trusted passes, except
// after drift (which the kernel would announce with an event), and another
// with full passes through the same random steps, each on its own fake
// table with the same failing writes: every pass must report the same and
// leave the same table, and a trusted pass after a clean one must not read
// the table.
func TestTrustedMatchesFull(t *testing.T) {
	rng := rand.New(rand.NewSource(23))
	failing := map[netip.Prefix]bool{}
	fa, fb := nlfake.New(), nlfake.New()
	var cni [2]int
	for k, f := range []*nlfake.NS{fa, fb} {
		f.AddDevice("eth0", 1500, pfx("192.0.2.11/24"))
		cni[k] = f.AddDevice("cni0", 1500)
	}
	walks := 0
	trusted := New(walkCounter{flakyTable{fa.RouteTable(network, backend.RouteProtocol), failing}, &walks}, network)
	full := New(flakyTable{fb.RouteTable(network, backend.RouteProtocol), failing}, network)

	var pool []netip.Prefix
	for i := range 700 {
		pool = append(pool, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 4), byte(i << 4)}), 28))
	}
	pool = append(pool, pfx("198.18.40.0/24"), pfx("10.1.0.0/24"))
	gws := []netip.Addr{addr("192.0.2.1"), addr("192.0.2.2"), addr("198.18.0.1")}
	random := func(p netip.Prefix) Want {
		return Want{Dst: p, Gw: gws[rng.Intn(len(gws))], LinkIndex: 2 + rng.Intn(2), OnLink: rng.Intn(2) == 0}
	}
	both := func(fn func(f *nlfake.NS, k int)) { fn(fa, 0); fn(fb, 1) }
	cniAddr := pfx("198.18.40.1/26")
	var want []Want
	untouched, readAnyway := 0, 0
	for step := range 1500 {
		drift := false
		switch rng.Intn(7) {
		case 0, 1: // a whole new random set: a join or a leave
			want = want[:0]
			frac := 2 + rng.Intn(6)
			for _, p := range pool {
				if rng.Intn(frac) == 0 {
					want = append(want, random(p))
				}
			}
		case 2: // drift, announced by an event
			drift = true
			for range 5 {
				p := pool[rng.Intn(len(pool))]
				w := random(p)
				switch rng.Intn(3) {
				case 0:
					both(func(f *nlfake.NS, _ int) { f.RemoveRoute(p) })
				case 1:
					both(func(f *nlfake.NS, _ int) { f.PutRoute(route(w, unix.RTPROT_BOOT)) })
				case 2:
					r := route(w, backend.RouteProtocol)
					r.Priority = 10 + rng.Intn(3)
					both(func(f *nlfake.NS, _ int) { f.PutRoute(r) })
				}
			}
			// Leases changed as well: routes deleted by hand that are
			// no longer wanted stay known to the reconciler, not live.
			want = slices.DeleteFunc(want, func(Want) bool { return rng.Intn(3) == 0 })
		case 3: // change a few, duplicate a few
			for i := range want {
				switch rng.Intn(16) {
				case 0:
					want[i].Gw = gws[rng.Intn(len(gws))]
				case 1:
					want = append(want, random(want[i].Dst))
				}
			}
		case 4: // a connected network inside the cluster network comes or goes
			drift = true
			if rng.Intn(2) == 0 {
				both(func(f *nlfake.NS, k int) { _ = f.AddAddr(cni[k], cniAddr) })
			} else {
				both(func(f *nlfake.NS, k int) { _ = f.DelAddr(nl.Addr{LinkIndex: cni[k], Prefix: cniAddr}) })
			}
		case 5: // writes to some destinations fail
			clear(failing)
			for range rng.Intn(4) {
				failing[pool[rng.Intn(len(pool))]] = true
			}
		case 6: // nothing
		}
		wa, wb := slices.Clone(want), slices.Clone(want)
		known := trusted.known
		before := walks
		var resA Result
		var errA error
		if drift {
			resA, errA = trusted.Reconcile(wa)
		} else {
			resA, errA = trusted.ReconcileTrustedFunc(len(wa), func(i int) nl.RouteSpec { return wa[i] })
			if known && walks != before {
				t.Fatalf("step %d: a trusted pass after a clean one read the table", step)
			}
			if known {
				untouched++
			} else {
				readAnyway++
			}
		}
		resB, errB := full.Reconcile(wb)
		if a, b := describePass(resA, errA), describePass(resB, errB); a != b {
			t.Fatalf("step %d: trusted pass differs from a full one:\n got %s\nwant %s", step, a, b)
		}
		ra, _ := fa.RouteList(nl.FamilyAll, 0, nil, nil)
		rb, _ := fb.RouteList(nl.FamilyAll, 0, nil, nil)
		if !slices.Equal(ra, rb) {
			t.Fatalf("step %d: table differs from the full passes':\n got %v\nwant %v", step, ra, rb)
		}
	}
	if untouched < 100 || readAnyway < 20 {
		t.Errorf("%d trusted passes without a read and %d after a failed pass: the steps do not cover both", untouched, readAnyway)
	}
}

// TestTrustedAfterSetTable: a new table (a new connection) is read before
// it is trusted.
func TestTrustedAfterSetTable(t *testing.T) {
	f := nlfake.New()
	f.AddDevice("eth0", 1500, pfx("192.0.2.11/24"))
	walks := 0
	table := walkCounter{flakyTable{f.RouteTable(network, backend.RouteProtocol), nil}, &walks}
	rc := New(table, network)
	want := []Want{{Dst: pfx("198.18.1.0/24"), Gw: addr("192.0.2.1"), LinkIndex: 1}}
	trusted := func() { rc.ReconcileTrustedFunc(len(want), func(i int) nl.RouteSpec { return want[i] }) }
	trusted()
	if walks != 1 {
		t.Fatalf("first pass read the table %d times, want once", walks)
	}
	trusted()
	if walks != 1 {
		t.Fatal("a trusted pass after a clean one read the table")
	}
	rc.SetTable(table)
	trusted()
	if walks != 2 {
		t.Fatal("a trusted pass on a new table did not read it")
	}
}
