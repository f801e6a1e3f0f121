package routes

import (
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

// Interface indexes of the host in TestDeviceUnderlayConflict.
const (
	ixEth0 = 2
	ixEth1 = 3
	ixCNI  = 5
	ixWeft = 9
)

func connectedRoute(dst string, link int) nl.Route {
	return nl.Route{Dst: netip.MustParsePrefix(dst), LinkIndex: link, Protocol: unix.RTPROT_KERNEL, Scope: unix.RT_SCOPE_LINK, Table: unix.RT_TABLE_MAIN}
}

func viaRoute(dst, gw string, link int, proto uint8) nl.Route {
	return nl.Route{Dst: netip.MustParsePrefix(dst), Gw: netip.MustParseAddr(gw), LinkIndex: link, Protocol: proto, Table: unix.RT_TABLE_MAIN}
}

func hostAddr(a string, link int) nl.Addr {
	return nl.Addr{Prefix: netip.MustParsePrefix(a), LinkIndex: link}
}

// TestDeviceUnderlayConflict checks which cluster networks DeviceNet
// refuses to route into a backend's device (udp's weft0 here), on a host with eth0 192.0.2.1/24 (default
// route via 192.0.2.254), a pod bridge holding our subnet 198.18.1.0/24,
// and weft0 with its address and route.
func TestDeviceUnderlayConflict(t *testing.T) {
	own := netip.MustParsePrefix("198.18.1.0/24")
	host := []nl.Route{
		connectedRoute("192.0.2.0/24", ixEth0),
		viaRoute("0.0.0.0/0", "192.0.2.254", ixEth0, unix.RTPROT_DHCP),
		connectedRoute("198.18.1.0/24", ixCNI),
		{Dst: netip.MustParsePrefix("198.18.0.0/16"), LinkIndex: ixWeft, Protocol: backend.RouteProtocol, Scope: unix.RT_SCOPE_LINK, Table: unix.RT_TABLE_MAIN},
	}
	hostAddrs := []nl.Addr{hostAddr("192.0.2.1/24", ixEth0), hostAddr("198.18.1.1/24", ixCNI), hostAddr("198.18.1.0/32", ixWeft)}
	for _, c := range []struct {
		name    string
		network string
		routes  []nl.Route // on top of host's
		addrs   []nl.Addr  // on top of hostAddrs
		want    string     // "" = allowed, else a word of the reason
	}{
		{"pod-network", "198.18.0.0/16", nil, nil, ""},
		{"everything", "0.0.0.0/0", nil, nil, "default route via 192.0.2.254"},
		{"covers-underlay", "192.0.0.0/16", nil, nil, "cover the connected network 192.0.2.0/24"},
		{"inside-underlay", "192.0.2.128/25", nil, nil, "inside the connected network 192.0.2.0/24"},
		{"same-as-static-route", "198.51.100.0/24", []nl.Route{viaRoute("198.51.100.0/24", "192.0.2.254", ixEth0, unix.RTPROT_STATIC)}, nil,
			"shadow the route to 198.51.100.0/24 via 192.0.2.254"},
		{"covers-onlink-gateway", "203.0.113.0/24", []nl.Route{viaRoute("198.51.100.0/24", "203.0.113.1", ixEth1, unix.RTPROT_STATIC)}, nil,
			"203.0.113.1, the gateway of the route to 198.51.100.0/24"},
		{"covers-a-32-address", "203.0.113.0/24", nil, []nl.Addr{hostAddr("203.0.113.5/32", ixEth1)}, "host's address 203.0.113.5"},
		{"stale-bridge-outside-our-subnet", "198.18.0.0/16", []nl.Route{connectedRoute("198.18.7.0/24", ixCNI)}, nil,
			"connected network 198.18.7.0/24"},
		// Overlay leftovers inside the network are not underlay.
		{"flannel-vxlan-leftover", "198.18.0.0/16", []nl.Route{viaRoute("198.18.2.0/24", "198.18.2.0", 7, unix.RTPROT_BOOT)},
			[]nl.Addr{hostAddr("198.18.1.0/32", 7)}, ""},
		{"weft-route-elsewhere", "198.18.0.0/16", []nl.Route{viaRoute("198.18.3.0/24", "192.0.2.3", ixEth0, backend.RouteProtocol)}, nil, ""},
		// Routes more specific than the network, to outside it, are fine.
		{"corporate-supernet", "198.18.0.0/16", []nl.Route{viaRoute("198.0.0.0/8", "192.0.2.254", ixEth0, unix.RTPROT_STATIC)}, nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			rs := append(append([]nl.Route(nil), host...), c.routes...)
			as := append(append([]nl.Addr(nil), hostAddrs...), c.addrs...)
			got := deviceUnderlayConflict(netip.MustParsePrefix(c.network), own, ixWeft, rs, as)
			if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
				t.Fatalf("route %s: %q, want %q", c.network, got, c.want)
			}
		})
	}
}
