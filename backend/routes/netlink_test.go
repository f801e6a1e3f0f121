package routes

import (
	"strings"
	"testing"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nltest"
)

// kernelTable connects to h's namespace and returns its main table.
func kernelTable(t *testing.T, h *nltest.Host) (*nl.Conn, *nl.RouteTable) {
	t.Helper()
	c, err := nl.Open(h.Handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, c.RouteTable(network, backend.RouteProtocol)
}

// TestKernelTable runs the reconciler against a real kernel table.
func TestKernelTable(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	c, tbl := kernelTable(t, h)
	if !tbl.UsesNexthops() {
		t.Log("kernel without nexthop objects: plain routes")
	}
	// flanneld's route to a peer, without our protocol.
	h.IP(t, "route", "add", "198.18.2.0/24", "via", "192.0.2.99", "dev", "eth0")
	rc := New(tbl, network)
	want := []Want{
		{Dst: pfx("198.18.2.0/24"), Gw: addr("192.0.2.20"), LinkIndex: h.ExtIndex},
		{Dst: pfx("198.18.3.0/24"), Gw: addr("192.0.2.30"), LinkIndex: h.ExtIndex},
		{Dst: pfx("192.0.2.0/25"), Gw: addr("192.0.2.31"), LinkIndex: h.ExtIndex}, // over the underlay
	}
	res, err := rc.Reconcile(want)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Refused) != 1 || res.Added != 2 {
		t.Fatalf("result: %+v", res)
	}
	out := h.IP(t, "route", "show", "198.18.2.0/24")
	if !strings.Contains(out, "192.0.2.20") || strings.Contains(out, "192.0.2.99") || !strings.Contains(out, "proto 87") {
		t.Fatalf("flanneld route not taken over: %q", out)
	}
	if out := h.IP(t, "route", "show", "192.0.2.0/24"); !strings.Contains(out, "proto kernel") {
		t.Fatalf("underlay route touched: %q", out)
	}
	// Idempotent.
	if res, err = rc.Reconcile(want[:2]); err != nil || res.Added+res.Updated+res.Repaired+res.Removed != 0 {
		t.Fatalf("second pass: %+v %v", res, err)
	}
	// Hand-deleted route comes back and counts as a repair.
	h.IP(t, "route", "del", "198.18.3.0/24")
	if res, err = rc.Reconcile(want[:2]); err != nil || res.Repaired != 1 {
		t.Fatalf("repair: %+v %v", res, err)
	}
	// Gateway change and removal.
	want[0].Gw = addr("192.0.2.21")
	if res, err = rc.Reconcile(want[:1]); err != nil || res.Updated != 1 || res.Removed != 1 {
		t.Fatalf("change and removal: %+v %v", res, err)
	}
	if out := strings.TrimSpace(h.IP(t, "route", "show", "proto", "87")); !strings.HasPrefix(out, "198.18.2.0/24") || strings.Count(out, "\n") != 0 || !strings.Contains(out, "192.0.2.21") {
		t.Fatalf("routes: %q", out)
	}
	if tbl.UsesNexthops() {
		if out := strings.TrimSpace(h.IP(t, "nexthop", "show", "protocol", "87")); strings.Count(out, "\n") != 0 || !strings.Contains(out, "192.0.2.21") {
			t.Fatalf("nexthop objects: %q", out)
		}
	}
	if _, err := c.DelOwnedRoutes(backend.RouteProtocol, nil); err != nil {
		t.Fatal(err)
	}
	if out := strings.TrimSpace(h.IP(t, "route", "show", "proto", "87") + h.IP(t, "nexthop", "show", "protocol", "87")); out != "" {
		t.Fatalf("left after DelOwnedRoutes: %q", out)
	}
}

// TestKernelTableCompatModeOff checks the fallback to plain routes when
// route dumps do not show the gateway of a nexthop object.
func TestKernelTableCompatModeOff(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	if _, err := h.Exec("sysctl", "-qw", "net.ipv4.nexthop_compat_mode=0"); err != nil {
		t.Skip("kernel without net.ipv4.nexthop_compat_mode")
	}
	_, tbl := kernelTable(t, h)
	rc := New(tbl, network)
	want := []Want{{Dst: pfx("198.18.2.0/24"), Gw: addr("192.0.2.20"), LinkIndex: h.ExtIndex}}
	for i := 0; i < 2; i++ {
		if _, err := rc.Reconcile(want); err != nil {
			t.Fatal(err)
		}
	}
	res, err := rc.Reconcile(want)
	if err != nil || res.Added+res.Updated+res.Repaired+res.Removed != 0 {
		t.Fatalf("pass after fallback not idle: %+v %v", res, err)
	}
	out := h.IP(t, "route", "show", "proto", "87")
	if !strings.Contains(out, "198.18.2.0/24 via 192.0.2.20 dev eth0") || strings.Contains(out, "nhid") {
		t.Fatalf("routes: %q", out)
	}
	if out := strings.TrimSpace(h.IP(t, "nexthop", "show", "protocol", "87")); out != "" {
		t.Fatalf("orphan nexthop objects: %q", out)
	}
}
