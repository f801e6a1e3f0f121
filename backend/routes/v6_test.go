package routes

import (
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nlfake"
	"github.com/weftnet/weft/internal/nl/nltest"
)

var network6 = pfx("2001:db8:100::/48")

// TestReconcile6 runs an IPv6 Reconciler beside an IPv4 one on one fake
// namespace: each installs, repairs and removes only its own family's
// routes (at the kernel's IPv6 metric, 1024), refuses what covers a
// connected IPv6 network or leaves the IPv6 network, and a second pass
// with the same routes writes nothing.
func TestReconcile6(t *testing.T) {
	f := nlfake.New()
	eth0 := f.AddDevice("eth0", 1500, pfx("192.0.2.11/24"), pfx("2001:db8::11/64"))
	f.AddDevice("cni0", 1500, pfx("2001:db8:100:1::1/64"))
	rc4 := New(f.RouteTable(network, backend.RouteProtocol), network)
	rc6 := New(f.RouteTable(network6, backend.RouteProtocol), network6)
	want4 := []Want{{Dst: pfx("198.18.2.0/24"), Gw: addr("192.0.2.12"), LinkIndex: eth0}}
	want6 := []Want{
		{Dst: pfx("2001:db8:100:2::/64"), Gw: addr("2001:db8::12"), LinkIndex: eth0},
		{Dst: pfx("2001:db8:100:3::/64"), Gw: addr("2001:db8:100:3::"), LinkIndex: eth0, OnLink: true},
		{Dst: pfx("2001:db8:100:1::/64"), Gw: addr("2001:db8::13"), LinkIndex: eth0}, // our bridge's network
		{Dst: pfx("2001:db8:200::/64"), Gw: addr("2001:db8::14"), LinkIndex: eth0},   // outside the network
		{Dst: pfx("198.18.9.0/24"), Gw: addr("192.0.2.19"), LinkIndex: eth0},         // the other family
	}
	if _, err := rc4.Reconcile(want4); err != nil {
		t.Fatal(err)
	}
	res, err := rc6.Reconcile(want6)
	if err != nil {
		t.Fatal(err)
	}
	if res.Added != 2 || len(res.Refused) != 3 {
		t.Fatalf("result %+v", res)
	}
	for _, dst := range []string{"2001:db8:100:1::/64", "2001:db8:200::/64", "198.18.9.0/24"} {
		if res.Refused[pfx(dst)] == "" {
			t.Errorf("%s not refused: %v", dst, res.Refused)
		}
	}
	check := func(what string) {
		t.Helper()
		all, _ := f.RouteList(nl.FamilyAll, unix.RT_TABLE_MAIN, func(r *nl.Route) bool { return r.Protocol == backend.RouteProtocol }, nil)
		var got []string
		for _, r := range all {
			got = append(got, r.Dst.String()+" via "+r.Gw.String()+" metric "+strconv.Itoa(r.Priority))
		}
		want := "198.18.2.0/24 via 192.0.2.12 metric 0," +
			"2001:db8:100:2::/64 via 2001:db8::12 metric 1024," +
			"2001:db8:100:3::/64 via 2001:db8:100:3:: metric 1024"
		if strings.Join(got, ",") != want {
			t.Fatalf("%s: routes %q, want %q", what, got, want)
		}
	}
	check("first pass")
	if r, _ := f.RouteList(nl.FamilyV6, unix.RT_TABLE_MAIN, nil, nil); len(r) == 0 {
		t.Fatal("no IPv6 routes")
	}

	// Idempotence, in both families.
	before := f.Writes()
	if res, err := rc6.Reconcile(want6); err != nil || res.Added+res.Updated+res.Repaired+res.Removed != 0 {
		t.Fatalf("second IPv6 pass: %+v %v", res, err)
	}
	if res, err := rc4.Reconcile(want4); err != nil || res.Added+res.Updated+res.Repaired+res.Removed != 0 {
		t.Fatalf("second IPv4 pass: %+v %v", res, err)
	}
	if w := f.Writes() - before; w != 0 {
		t.Fatalf("idle passes wrote %d times", w)
	}
	check("idle passes")

	// A route deleted by hand and one overwritten by somebody else (as
	// flanneld would) are both repairs.
	f.RemoveRoute(pfx("2001:db8:100:2::/64"))
	f.PutRoute(nl.Route{Dst: pfx("2001:db8:100:3::/64"), Gw: addr("2001:db8::99"), LinkIndex: eth0, Protocol: unix.RTPROT_BOOT, Priority: Metric6})
	res, err = rc6.Reconcile(want6)
	if err != nil || res.Repaired != 2 {
		t.Fatalf("repair pass: %+v %v", res, err)
	}
	check("repair")

	// A peer gone: only its IPv6 route goes; the IPv4 one stays.
	if res, err := rc6.Reconcile(want6[:1]); err != nil || res.Removed != 1 {
		t.Fatalf("removal: %+v %v", res, err)
	}
	all, _ := f.RouteList(nl.FamilyAll, unix.RT_TABLE_MAIN, func(r *nl.Route) bool { return r.Protocol == backend.RouteProtocol }, nil)
	if len(all) != 2 {
		t.Fatalf("after removal: %+v", all)
	}
	// The IPv4 Reconciler never touches the IPv6 routes.
	if res, err := rc4.Reconcile(nil); err != nil || res.Removed != 1 {
		t.Fatalf("IPv4 removal: %+v %v", res, err)
	}
	if r, _ := f.RouteList(nl.FamilyV6, unix.RT_TABLE_MAIN, func(r *nl.Route) bool { return r.Protocol == backend.RouteProtocol }, nil); len(r) != 1 {
		t.Fatalf("IPv6 routes after the IPv4 pass: %+v", r)
	}
}

// TestKernelTable6 runs an IPv6 Reconciler against a real kernel table:
// routes via a peer's IPv6 address and onlink ones, idempotence, a repair,
// a takeover, and refusal of a route over a connected IPv6 network.
func TestKernelTable6(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	h.IP(t, "addr", "add", "2001:db8::10/64", "dev", "eth0", "nodad")
	h.IP(t, "link", "add", "cni0", "type", "bridge")
	h.IP(t, "link", "set", "cni0", "up")
	h.IP(t, "addr", "add", "2001:db8:100:1::1/64", "dev", "cni0", "nodad")
	c, err := nl.Open(h.Handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	rc := New(c.RouteTable(network6, backend.RouteProtocol), network6)
	// flanneld's route to a peer, without our protocol.
	h.IP(t, "-6", "route", "add", "2001:db8:100:2::/64", "via", "2001:db8::99", "dev", "eth0")
	want := []Want{
		{Dst: pfx("2001:db8:100:2::/64"), Gw: addr("2001:db8::20"), LinkIndex: h.ExtIndex},
		{Dst: pfx("2001:db8:100:3::/64"), Gw: addr("2001:db8:100:3::"), LinkIndex: h.ExtIndex, OnLink: true},
		{Dst: pfx("2001:db8:100::/56"), Gw: addr("2001:db8::30"), LinkIndex: h.ExtIndex}, // over cni0's network
	}
	res, err := rc.Reconcile(want)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Refused) != 1 || res.Refused[pfx("2001:db8:100::/56")] == "" || res.Added+res.Updated != 2 {
		t.Fatalf("result: %+v", res)
	}
	out := h.IP(t, "-6", "route", "show", "2001:db8:100:2::/64")
	if !strings.Contains(out, "2001:db8::20") || strings.Contains(out, "2001:db8::99") || !strings.Contains(out, "proto 87") {
		t.Fatalf("flanneld route not taken over: %q", out)
	}
	if out := h.IP(t, "-6", "route", "show", "2001:db8:100:1::/64"); !strings.Contains(out, "proto kernel") {
		t.Fatalf("cni0's route touched: %q", out)
	}
	want = want[:2]
	if res, err = rc.Reconcile(want); err != nil || res.Added+res.Updated+res.Repaired+res.Removed != 0 {
		t.Fatalf("second pass: %+v %v", res, err)
	}
	h.IP(t, "-6", "route", "del", "2001:db8:100:3::/64")
	if res, err = rc.Reconcile(want); err != nil || res.Repaired != 1 {
		t.Fatalf("repair: %+v %v", res, err)
	}
	if out := h.IP(t, "-6", "route", "show", "2001:db8:100:3::/64"); !strings.Contains(out, "onlink") {
		t.Fatalf("onlink route: %q", out)
	}
	if res, err = rc.Reconcile(want[:1]); err != nil || res.Removed != 1 {
		t.Fatalf("removal: %+v %v", res, err)
	}
	// The IPv4 table's cleanup of nexthop objects leaves IPv6 routes alone,
	// and DelOwnedRoutes takes them.
	if _, err := New(c.RouteTable(network, backend.RouteProtocol), network).Reconcile(nil); err != nil {
		t.Fatal(err)
	}
	if out := h.IP(t, "-6", "route", "show", "proto", "87"); !strings.Contains(out, "2001:db8:100:2::/64") {
		t.Fatalf("IPv4 pass removed an IPv6 route: %q", out)
	}
	if n, err := c.DelOwnedRoutes(backend.RouteProtocol, nil); err != nil || n != 1 {
		t.Fatalf("DelOwnedRoutes: %d %v", n, err)
	}
	if out := strings.TrimSpace(h.IP(t, "-6", "route", "show", "proto", "87")); out != "" {
		t.Fatalf("left behind: %q", out)
	}
}
