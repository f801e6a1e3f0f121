package routes

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

func TestEvents(t *testing.T) {
	ev := Events(netip.MustParsePrefix("198.18.0.0/16"), netip.MustParsePrefix("2001:db8:100::/48"), netip.Prefix{})
	route := func(deleted bool, proto uint8, d string, table uint32) nl.RouteEvent {
		return nl.RouteEvent{Deleted: deleted, Route: nl.Route{Protocol: proto, Dst: netip.MustParsePrefix(d), Table: table}}
	}
	connected := func(d string) nl.RouteEvent {
		e := route(false, unix.RTPROT_KERNEL, d, unix.RT_TABLE_MAIN)
		e.Scope, e.LinkIndex = unix.RT_SCOPE_LINK, 3
		return e
	}
	tests := []struct {
		name string
		e    nl.RouteEvent
		want bool
	}{
		{"our route deleted", route(true, backend.RouteProtocol, "198.18.2.0/24", unix.RT_TABLE_MAIN), true},
		{"our route added", route(false, backend.RouteProtocol, "198.18.2.0/24", unix.RT_TABLE_MAIN), false},
		{"foreign route into the network", route(false, unix.RTPROT_BOOT, "198.18.2.0/24", unix.RT_TABLE_MAIN), true},
		{"foreign route elsewhere", route(false, unix.RTPROT_BOOT, "203.0.113.0/24", unix.RT_TABLE_MAIN), false},
		{"foreign route in another table", route(false, unix.RTPROT_BOOT, "198.18.2.0/24", 100), false},
		{"foreign route deleted", route(true, unix.RTPROT_BOOT, "198.18.2.0/24", unix.RT_TABLE_MAIN), false},
		{"default route", route(false, unix.RTPROT_BOOT, "0.0.0.0/0", unix.RT_TABLE_MAIN), false},
		{"connected route over the network", connected("198.0.0.0/8"), true},
		{"connected route inside the network", connected("198.18.7.0/24"), true},
		{"connected route elsewhere", connected("192.0.2.0/24"), false},
		{"foreign route into the IPv6 network", route(false, unix.RTPROT_BOOT, "2001:db8:100:2::/64", unix.RT_TABLE_MAIN), true},
		{"our IPv6 route deleted", route(true, backend.RouteProtocol, "2001:db8:100:2::/64", unix.RT_TABLE_MAIN), true},
		{"foreign IPv6 route elsewhere", route(false, unix.RTPROT_BOOT, "2001:db8:200::/64", unix.RT_TABLE_MAIN), false},
		{"IPv6 default route", route(false, unix.RTPROT_BOOT, "::/0", unix.RT_TABLE_MAIN), false},
		{"no destination", nl.RouteEvent{Route: nl.Route{Table: unix.RT_TABLE_MAIN}}, false},
	}
	for _, tt := range tests {
		if got := ev.Route(tt.e); got != tt.want {
			t.Errorf("%s: Route = %v, want %v", tt.name, got, tt.want)
		}
	}
	if !ev.Nexthop(nl.NexthopEvent{Deleted: true, Protocol: backend.RouteProtocol}) {
		t.Error("deleting our nexthop object must trigger a pass")
	}
	if ev.Nexthop(nl.NexthopEvent{Deleted: true, Protocol: unix.RTPROT_BOOT}) {
		t.Error("someone else's nexthop object is not ours to repair")
	}
	if ev.Nexthop(nl.NexthopEvent{Protocol: backend.RouteProtocol}) {
		t.Error("creating our own nexthop objects must not trigger another pass")
	}
	if !ev.Nexthop(nl.NexthopEvent{Protocol: unix.RTPROT_BOOT}) {
		t.Error("someone else's new nexthop object may take an id of ours: the next pass must read them")
	}
	if ev.Link != nil || ev.Addr != nil || ev.Neigh != nil {
		t.Error("route events subscribe to more than routes and nexthop objects")
	}
}
