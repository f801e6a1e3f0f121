package routes

import (
	"fmt"
	"math/rand"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
)

var network = netip.MustParsePrefix("198.18.0.0/16")

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

// ownedState returns our routes in the fake as a map dst -> Want.
func ownedState(t *testing.T, f *FakeTable) map[netip.Prefix]Want {
	t.Helper()
	got := map[netip.Prefix]Want{}
	for _, r := range f.Sorted() {
		if r.Protocol != backend.RouteProtocol {
			continue
		}
		dst, _ := ipNetToPrefix(r.Dst)
		if _, dup := got[dst]; dup {
			t.Fatalf("two routes of ours for %s", dst)
		}
		gw, _ := netip.AddrFromSlice(r.Gw)
		if r.Priority != 0 {
			t.Fatalf("route %s has metric %d", dst, r.Priority)
		}
		got[dst] = Want{Dst: dst, Gw: gw.Unmap(), LinkIndex: r.LinkIndex, OnLink: r.Flags&int(netlink.FLAG_ONLINK) != 0}
	}
	return got
}

func assertState(t *testing.T, f *FakeTable, want []Want) {
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
	f := NewFakeTable()
	rc := New(f, network)
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
	before := f.Replaces + f.Deletes
	res, err = rc.Reconcile([]Want{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if f.Replaces+f.Deletes != before || res.Added+res.Updated+res.Repaired+res.Removed != 0 {
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
	f.Remove(a2.Dst)
	res, err = rc.Reconcile([]Want{a2})
	if err != nil {
		t.Fatal(err)
	}
	if res.Repaired != 1 || res.Added != 0 {
		t.Fatalf("repair: %+v", res)
	}
	assertState(t, f, []Want{a2})

	// Modified behind our back (device changed): a repair too.
	r := a2.Route()
	r.LinkIndex = 9
	f.Put(*r)
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
	f := NewFakeTable()
	dst := pfx("198.18.7.0/24")
	foreign := Want{Dst: dst, Gw: addr("198.18.7.0"), LinkIndex: 4, OnLink: true}.Route()
	foreign.Protocol = unix.RTPROT_BOOT // what "ip route add" leaves
	f.Put(*foreign)
	other := Want{Dst: pfx("198.18.8.0/24"), Gw: addr("192.0.2.99"), LinkIndex: 2}.Route()
	other.Protocol = unix.RTPROT_STATIC
	f.Put(*other)

	rc := New(f, network)
	w := Want{Dst: dst, Gw: addr("198.18.7.0"), LinkIndex: 6, OnLink: true}
	if _, err := rc.Reconcile([]Want{w}); err != nil {
		t.Fatal(err)
	}
	assertState(t, f, []Want{w})
	// The unrelated foreign route is untouched.
	found := false
	for _, r := range f.Sorted() {
		if r.Protocol == unix.RTPROT_STATIC {
			found = true
		}
	}
	if !found {
		t.Fatal("foreign route without our protocol was deleted")
	}
}

func TestRefusesUnderlayAndOutside(t *testing.T) {
	f := NewFakeTable()
	// The host's underlay and a pod bridge, as the kernel lists them.
	for _, c := range []struct {
		dst string
		idx int
	}{{"192.0.2.0/24", 2}, {"198.18.40.0/26", 3}} {
		f.Put(netlink.Route{Dst: prefixToIPNet(pfx(c.dst)), LinkIndex: c.idx, Protocol: unix.RTPROT_KERNEL, Scope: netlink.SCOPE_LINK})
	}
	wide := netip.MustParsePrefix("192.0.0.0/8")
	rc := New(f, wide)
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
	rc = New(f, network)
	res, _ = rc.Reconcile([]Want{{Dst: pfx("198.18.40.0/24"), Gw: addr("192.0.2.5"), LinkIndex: 2}})
	if len(res.Refused) != 1 {
		t.Fatalf("want the route over 198.18.40.0/26 refused: %+v", res)
	}
	assertState(t, f, nil)
}

func TestExtraMetricRemoved(t *testing.T) {
	f := NewFakeTable()
	w := Want{Dst: pfx("198.18.3.0/24"), Gw: addr("192.0.2.3"), LinkIndex: 2}
	r := w.Route()
	r.Priority = 100
	f.Put(*r)
	rc := New(f, network)
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
	f := NewFakeTable()
	f.Put(netlink.Route{Dst: prefixToIPNet(pfx("192.0.2.0/24")), LinkIndex: 2, Protocol: unix.RTPROT_KERNEL, Scope: netlink.SCOPE_LINK})
	rc := New(f, network)
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
					f.Remove(p)
				case 1:
					r := Want{Dst: p, Gw: gws[rng.Intn(len(gws))], LinkIndex: 7}.Route()
					r.Protocol = unix.RTPROT_BOOT
					f.Put(*r)
				case 2:
					r := Want{Dst: p, Gw: gws[0], LinkIndex: 2}.Route()
					r.Priority = 10 + rng.Intn(3)
					f.Put(*r)
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
		before := f.Replaces + f.Deletes
		if _, err := rc.Reconcile(want); err != nil {
			t.Fatal(err)
		}
		if f.Replaces+f.Deletes != before {
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
	f := NewFakeTable()
	rc := New(f, netip.MustParsePrefix("198.18.0.0/15"))
	want := peers(5000, 1)
	if _, err := rc.Reconcile(want); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Every pass: one dump, a full diff, and 50 drifted routes fixed.
		for j := 0; j < 50; j++ {
			f.Remove(want[(i*50+j)%len(want)].Dst)
		}
		res, err := rc.Reconcile(want)
		if err != nil || res.Repaired != 50 {
			b.Fatal(fmt.Sprint(res.Repaired), err)
		}
	}
}
