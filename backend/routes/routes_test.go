package routes

import (
	"fmt"
	"math/rand"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nlfake"
)

var (
	_ Table = (*nl.RouteTable)(nil)
	_ Table = (*nlfake.Table)(nil)
)

// Want is one wanted route, in this file's shorter words.
type Want = nl.RouteSpec

// fakeTable returns an empty fake namespace and its main table.
func fakeTable() (*nlfake.NS, Table) {
	f := nlfake.New()
	return f, f.RouteTable(network, backend.RouteProtocol)
}

// route is the route the table holds for w, tagged with proto.
func route(w Want, proto uint8) nl.Route {
	r := nl.Route{Dst: w.Dst, Gw: w.Gw, LinkIndex: w.LinkIndex, Protocol: proto, Type: unix.RTN_UNICAST}
	if w.OnLink {
		r.Flags = unix.RTNH_F_ONLINK
	}
	return r
}

var network = netip.MustParsePrefix("198.18.0.0/16")

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

// ownedState returns our routes in the fake as a map dst -> Want.
func ownedState(t *testing.T, f *nlfake.NS) map[netip.Prefix]Want {
	t.Helper()
	got := map[netip.Prefix]Want{}
	all, _ := f.RouteList(nl.FamilyAll, 0, nil, nil)
	for _, r := range all {
		if r.Protocol != backend.RouteProtocol {
			continue
		}
		if _, dup := got[r.Dst]; dup {
			t.Fatalf("two routes of ours for %s", r.Dst)
		}
		if r.Priority != 0 {
			t.Fatalf("route %s has metric %d", r.Dst, r.Priority)
		}
		got[r.Dst] = Want{Dst: r.Dst, Gw: r.Gw, LinkIndex: r.LinkIndex, OnLink: r.Flags&unix.RTNH_F_ONLINK != 0}
	}
	return got
}

func assertState(t *testing.T, f *nlfake.NS, want []Want) {
	t.Helper()
	got := ownedState(t, f)
	wm := map[netip.Prefix]Want{}
	for _, w := range want {
		wm[w.Dst] = w
	}
	if len(got) != len(wm) {
		t.Fatalf("table holds %d routes of ours, want %d:\n got %v\nwant %v", len(got), len(wm), got, wm)
	}
	for dst, w := range wm {
		if got[dst] != w {
			t.Fatalf("route %s = %+v, want %+v", dst, got[dst], w)
		}
	}
}

func TestAddRemoveReplace(t *testing.T) {
	f, tbl := fakeTable()
	rc := New(tbl, network)
	a := Want{Dst: pfx("198.18.1.0/24"), Gw: addr("192.0.2.11"), LinkIndex: 2}
	b := Want{Dst: pfx("198.18.2.0/24"), Gw: addr("198.18.2.0"), LinkIndex: 5, OnLink: true}

	res, err := rc.Reconcile([]Want{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if res.Added != 2 || res.Repaired+res.Updated+res.Removed != 0 {
		t.Fatalf("first pass: %+v", res)
	}
	assertState(t, f, []Want{a, b})

	// Idempotent.
	before := f.Writes()
	res, err = rc.Reconcile([]Want{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if f.Writes() != before || res.Added+res.Updated+res.Repaired+res.Removed != 0 {
		t.Fatalf("second pass changed something: %+v", res)
	}

	// Changed gateway: an update, not a repair.
	a2 := a
	a2.Gw = addr("192.0.2.12")
	res, err = rc.Reconcile([]Want{a2, b})
	if err != nil {
		t.Fatal(err)
	}
	if res.Updated != 1 || res.Added+res.Repaired+res.Removed != 0 {
		t.Fatalf("gateway change: %+v", res)
	}
	assertState(t, f, []Want{a2, b})

	// Removed peer.
	res, err = rc.Reconcile([]Want{a2})
	if err != nil {
		t.Fatal(err)
	}
	if res.Removed != 1 {
		t.Fatalf("removal: %+v", res)
	}
	assertState(t, f, []Want{a2})

	// Deleted behind our back: a repair.
	f.RemoveRoute(a2.Dst)
	res, err = rc.Reconcile([]Want{a2})
	if err != nil {
		t.Fatal(err)
	}
	if res.Repaired != 1 || res.Added != 0 {
		t.Fatalf("repair: %+v", res)
	}
	assertState(t, f, []Want{a2})

	// Modified behind our back (device changed): a repair too.
	r := route(a2, backend.RouteProtocol)
	r.LinkIndex = 9
	f.PutRoute(r)
	res, err = rc.Reconcile([]Want{a2})
	if err != nil {
		t.Fatal(err)
	}
	if res.Repaired != 1 {
		t.Fatalf("repair of modified route: %+v", res)
	}
	assertState(t, f, []Want{a2})
}

func TestForeignRouteTakenOver(t *testing.T) {
	f, tbl := fakeTable()
	dst := pfx("198.18.7.0/24")
	// What "ip route add" leaves.
	f.PutRoute(route(Want{Dst: dst, Gw: addr("198.18.7.0"), LinkIndex: 4, OnLink: true}, unix.RTPROT_BOOT))
	f.PutRoute(route(Want{Dst: pfx("198.18.8.0/24"), Gw: addr("192.0.2.99"), LinkIndex: 2}, unix.RTPROT_STATIC))

	rc := New(tbl, network)
	w := Want{Dst: dst, Gw: addr("198.18.7.0"), LinkIndex: 6, OnLink: true}
	if _, err := rc.Reconcile([]Want{w}); err != nil {
		t.Fatal(err)
	}
	assertState(t, f, []Want{w})
	// The unrelated foreign route is untouched.
	found := false
	all, _ := f.RouteList(nl.FamilyAll, 0, nil, nil)
	for _, r := range all {
		if r.Protocol == unix.RTPROT_STATIC {
			found = true
		}
	}
	if !found {
		t.Fatal("foreign route without our protocol was deleted")
	}
}

func TestRefusesUnderlayAndOutside(t *testing.T) {
	f, tbl := fakeTable()
	// The host's underlay and a pod bridge, with their connected routes.
	f.AddDevice("eth0", 1500, pfx("192.0.2.11/24"))
	f.AddDevice("cni0", 1500, pfx("198.18.40.1/26"))
	wide := netip.MustParsePrefix("192.0.0.0/8")
	rc := New(tbl, wide)
	good := Want{Dst: pfx("192.0.3.0/24"), Gw: addr("192.0.2.20"), LinkIndex: 2}
	over := Want{Dst: pfx("192.0.2.0/24"), Gw: addr("192.0.2.21"), LinkIndex: 2}
	super := Want{Dst: pfx("192.0.0.0/16"), Gw: addr("192.0.2.22"), LinkIndex: 2}
	outside := Want{Dst: pfx("198.18.40.0/24"), Gw: addr("192.0.2.23"), LinkIndex: 2}
	res, err := rc.Reconcile([]Want{good, over, super, outside})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []Want{over, super, outside} {
		if _, ok := res.Refused[w.Dst]; !ok {
			t.Errorf("%s not refused: %v", w.Dst, res.Refused)
		}
	}
	if !strings.Contains(res.Refused[outside.Dst], "outside the cluster network") {
		t.Errorf("reason for %s: %q", outside.Dst, res.Refused[outside.Dst])
	}
	if !strings.Contains(res.Refused[over.Dst], "connected network 192.0.2.0/24") {
		t.Errorf("reason for %s: %q", over.Dst, res.Refused[over.Dst])
	}
	assertState(t, f, []Want{good})

	// A pod network overlapping a connected route inside the cluster
	// network is refused too.
	rc = New(tbl, network)
	res, _ = rc.Reconcile([]Want{{Dst: pfx("198.18.40.0/24"), Gw: addr("192.0.2.5"), LinkIndex: 2}})
	if len(res.Refused) != 1 {
		t.Fatalf("want the route over 198.18.40.0/26 refused: %+v", res)
	}
	assertState(t, f, nil)
}

func TestExtraMetricRemoved(t *testing.T) {
	f, tbl := fakeTable()
	w := Want{Dst: pfx("198.18.3.0/24"), Gw: addr("192.0.2.3"), LinkIndex: 2}
	r := route(w, backend.RouteProtocol)
	r.Priority = 100
	f.PutRoute(r)
	rc := New(tbl, network)
	if _, err := rc.Reconcile([]Want{w}); err != nil {
		t.Fatal(err)
	}
	assertState(t, f, []Want{w})
}

// TestRandomTransitions applies random transitions between peer sets, with
// random drift in between, and checks that every pass ends in exactly the
// wanted state.
func TestRandomTransitions(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	f, tbl := fakeTable()
	f.AddDevice("eth0", 1500, pfx("192.0.2.11/24"))
	rc := New(tbl, network)
	var pool []netip.Prefix
	for i := 0; i < 64; i++ {
		pool = append(pool, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), 0}), 24))
	}
	gws := []netip.Addr{addr("192.0.2.1"), addr("192.0.2.2"), addr("192.0.2.3")}
	var want []Want
	for step := 0; step < 2000; step++ {
		switch rng.Intn(4) {
		case 0: // a whole new random set
			want = nil
			for _, p := range pool {
				if rng.Intn(2) == 0 {
					want = append(want, Want{Dst: p, Gw: gws[rng.Intn(len(gws))], LinkIndex: 2 + rng.Intn(2), OnLink: rng.Intn(2) == 0})
				}
			}
		case 1: // drift: delete, modify or add foreign routes
			for i := 0; i < 5; i++ {
				p := pool[rng.Intn(len(pool))]
				switch rng.Intn(3) {
				case 0:
					f.RemoveRoute(p)
				case 1:
					f.PutRoute(route(Want{Dst: p, Gw: gws[rng.Intn(len(gws))], LinkIndex: 7}, unix.RTPROT_BOOT))
				case 2:
					r := route(Want{Dst: p, Gw: gws[0], LinkIndex: 2}, backend.RouteProtocol)
					r.Priority = 10 + rng.Intn(3)
					f.PutRoute(r)
				}
			}
		case 2: // change a few
			for i := range want {
				if rng.Intn(8) == 0 {
					want[i].Gw = gws[rng.Intn(len(gws))]
				}
			}
		case 3: // nothing
		}
		res, err := rc.Reconcile(want)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if len(res.Refused) != 0 {
			t.Fatalf("step %d: refused %v", step, res.Refused)
		}
		assertState(t, f, want)
		// Ours is now exactly want; a second pass must do nothing.
		before := f.Writes()
		if _, err := rc.Reconcile(want); err != nil {
			t.Fatal(err)
		}
		if f.Writes() != before {
			t.Fatalf("step %d: second pass was not a no-op", step)
		}
	}
}

func peers(n int, gwLast byte) []Want {
	w := make([]Want, n)
	for i := range w {
		w[i] = Want{
			Dst:       netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)}), 32),
			Gw:        netip.AddrFrom4([4]byte{192, 0, 2, gwLast}),
			LinkIndex: 2,
		}
	}
	return w
}

func BenchmarkDiff5000(b *testing.B) {
	f, tbl := fakeTable()
	rc := New(tbl, netip.MustParsePrefix("198.18.0.0/15"))
	want := peers(5000, 1)
	if _, err := rc.Reconcile(want); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Every pass: one dump, a full diff, and 50 drifted routes fixed.
		for j := 0; j < 50; j++ {
			f.RemoveRoute(want[(i*50+j)%len(want)].Dst)
		}
		res, err := rc.Reconcile(want)
		if err != nil || res.Repaired != 50 {
			b.Fatal(fmt.Sprint(res.Repaired), err)
		}
	}
}
