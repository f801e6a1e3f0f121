package routes

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

func TestFilter(t *testing.T) {
	f := Filter(netip.MustParsePrefix("198.18.0.0/16"))
	dst := func(s string) *net.IPNet { _, n, _ := net.ParseCIDR(s); return n }
	route := func(typ uint16, proto netlink.RouteProtocol, d string, table int) netlink.RouteUpdate {
		return netlink.RouteUpdate{Type: typ, Route: netlink.Route{Protocol: proto, Dst: dst(d), Table: table}}
	}
	tests := []struct {
		name string
		u    netlink.RouteUpdate
		want bool
	}{
		{"our route deleted", route(unix.RTM_DELROUTE, backend.RouteProtocol, "198.18.2.0/24", unix.RT_TABLE_MAIN), true},
		{"our route added", route(unix.RTM_NEWROUTE, backend.RouteProtocol, "198.18.2.0/24", unix.RT_TABLE_MAIN), false},
		{"foreign route into the network", route(unix.RTM_NEWROUTE, unix.RTPROT_BOOT, "198.18.2.0/24", unix.RT_TABLE_MAIN), true},
		{"foreign route elsewhere", route(unix.RTM_NEWROUTE, unix.RTPROT_BOOT, "203.0.113.0/24", unix.RT_TABLE_MAIN), false},
		{"foreign route in another table", route(unix.RTM_NEWROUTE, unix.RTPROT_BOOT, "198.18.2.0/24", 100), false},
		{"foreign route deleted", route(unix.RTM_DELROUTE, unix.RTPROT_BOOT, "198.18.2.0/24", unix.RT_TABLE_MAIN), false},
		{"default route", netlink.RouteUpdate{Type: unix.RTM_NEWROUTE, Route: netlink.Route{Table: unix.RT_TABLE_MAIN}}, false},
	}
	for _, tt := range tests {
		if got := f.Route(tt.u); got != tt.want {
			t.Errorf("%s: Route = %v, want %v", tt.name, got, tt.want)
		}
	}
	if !f.Nexthop(nl.NexthopUpdate{Type: unix.RTM_DELNEXTHOP, Protocol: backend.RouteProtocol}) {
		t.Error("deleting our nexthop object must trigger a pass")
	}
	if f.Nexthop(nl.NexthopUpdate{Type: unix.RTM_DELNEXTHOP, Protocol: unix.RTPROT_BOOT}) {
		t.Error("someone else's nexthop object is not ours to repair")
	}
}
