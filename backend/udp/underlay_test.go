package udp

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/subnet"
)

// Interface indexes of the host in TestUnderlayConflict.
const (
	ixEth0 = 2
	ixEth1 = 3
	ixCNI  = 5
	ixWeft = 9
)

func connected(dst string, link int) nl.Route {
	return nl.Route{Dst: netip.MustParsePrefix(dst), LinkIndex: link, Protocol: unix.RTPROT_KERNEL, Scope: unix.RT_SCOPE_LINK, Table: unix.RT_TABLE_MAIN}
}

func via(dst, gw string, link int, proto uint8) nl.Route {
	return nl.Route{Dst: netip.MustParsePrefix(dst), Gw: netip.MustParseAddr(gw), LinkIndex: link, Protocol: proto, Table: unix.RT_TABLE_MAIN}
}

func addr(a string, link int) nl.Addr {
	return nl.Addr{Prefix: netip.MustParsePrefix(a), LinkIndex: link}
}

// TestUnderlayConflict checks which cluster networks the udp backend
// refuses to route into weft0, on a host with eth0 192.0.2.1/24 (default
// route via 192.0.2.254), a pod bridge holding our subnet 198.18.1.0/24,
// and weft0 with its address and route.
func TestUnderlayConflict(t *testing.T) {
	own := netip.MustParsePrefix("198.18.1.0/24")
	host := []nl.Route{
		connected("192.0.2.0/24", ixEth0),
		via("0.0.0.0/0", "192.0.2.254", ixEth0, unix.RTPROT_DHCP),
		connected("198.18.1.0/24", ixCNI),
		{Dst: netip.MustParsePrefix("198.18.0.0/16"), LinkIndex: ixWeft, Protocol: backend.RouteProtocol, Scope: unix.RT_SCOPE_LINK, Table: unix.RT_TABLE_MAIN},
	}
	hostAddrs := []nl.Addr{addr("192.0.2.1/24", ixEth0), addr("198.18.1.1/24", ixCNI), addr("198.18.1.0/32", ixWeft)}
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
		{"same-as-static-route", "198.51.100.0/24", []nl.Route{via("198.51.100.0/24", "192.0.2.254", ixEth0, unix.RTPROT_STATIC)}, nil,
			"shadow the route to 198.51.100.0/24 via 192.0.2.254"},
		{"covers-onlink-gateway", "203.0.113.0/24", []nl.Route{via("198.51.100.0/24", "203.0.113.1", ixEth1, unix.RTPROT_STATIC)}, nil,
			"203.0.113.1, the gateway of the route to 198.51.100.0/24"},
		{"covers-a-32-address", "203.0.113.0/24", nil, []nl.Addr{addr("203.0.113.5/32", ixEth1)}, "host's address 203.0.113.5"},
		{"stale-bridge-outside-our-subnet", "198.18.0.0/16", []nl.Route{connected("198.18.7.0/24", ixCNI)}, nil,
			"connected network 198.18.7.0/24"},
		// Overlay leftovers inside the network are not underlay.
		{"flannel-vxlan-leftover", "198.18.0.0/16", []nl.Route{via("198.18.2.0/24", "198.18.2.0", 7, unix.RTPROT_BOOT)},
			[]nl.Addr{addr("198.18.1.0/32", 7)}, ""},
		{"weft-route-elsewhere", "198.18.0.0/16", []nl.Route{via("198.18.3.0/24", "192.0.2.3", ixEth0, backend.RouteProtocol)}, nil, ""},
		// Routes more specific than the network, to outside it, are fine.
		{"corporate-supernet", "198.18.0.0/16", []nl.Route{via("198.0.0.0/8", "192.0.2.254", ixEth0, unix.RTPROT_STATIC)}, nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			rs := append(append([]nl.Route(nil), host...), c.routes...)
			as := append(append([]nl.Addr(nil), hostAddrs...), c.addrs...)
			got := underlayConflict(netip.MustParsePrefix(c.network), own, ixWeft, rs, as)
			if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
				t.Fatalf("route %s: %q, want %q", c.network, got, c.want)
			}
		})
	}
}

// TestKernelUnderlayRouteRefused runs the udp backend's reconcile pass in
// a namespace whose underlay is eth0 192.0.2.1/24 with a default route via
// 192.0.2.254. With Network 0.0.0.0/0 the network route must not be
// installed, the default route must survive, and the status must say why,
// with no peer programmed. A network that does not touch the underlay is
// routed; when a connected network inside it appears on another
// interface, the route is taken out again, and put back when it goes.
func TestKernelUnderlayRouteRefused(t *testing.T) {
	for _, c := range []struct {
		network string
		want    string
	}{
		{"0.0.0.0/0", "default route via 192.0.2.254"},
		// Covering a connected network: the second half of this case,
		// with pod subnets inside 198.18.0.0/15 as everywhere here.
		{"198.18.0.0/15", ""},
	} {
		t.Run(strings.ReplaceAll(c.network, "/", "_"), func(t *testing.T) {
			n := newTestNS(t)
			n.ip(t, "route", "add", "default", "via", "192.0.2.254", "dev", "eth0")
			nw := netip.MustParsePrefix(c.network)
			cfg := backendConfig(&subnet.Config{Network: nw, SubnetLen: 24, BackendType: Type}, nil)
			cfg.Netns = n.h
			var lastErr error
			cfg.OnReconcile = func(_ time.Duration, err error) { lastErr = err }
			b := startWith(t, cfg)
			b.SetDesired(subnet.Lease{Subnet: netip.MustParsePrefix("198.18.1.0/24")}, []subnet.Lease{
				{Subnet: netip.MustParsePrefix("198.18.2.0/24"), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.2")}},
			})
			k, err := nl.Open(n.h)
			if err != nil {
				t.Fatal(err)
			}
			defer k.Close()
			// state reports whether the default route via eth0 is intact
			// and whether our network route is installed.
			state := func() (defaultOK, routed bool) {
				rs, err := k.RouteList(nl.FamilyV4, unix.RT_TABLE_MAIN, nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range rs {
					if r.Dst.Bits() == 0 && r.Gw == netip.MustParseAddr("192.0.2.254") && r.Protocol != backend.RouteProtocol {
						defaultOK = true
					}
					if r.Protocol == backend.RouteProtocol && r.Dst == nw {
						routed = true
					}
				}
				return defaultOK, routed
			}
			b.loop.Reconcile()
			defaultOK, routed := state()
			st := b.Status()
			if !defaultOK {
				t.Fatal("the host's default route is gone")
			}
			if c.want != "" {
				if routed || !errors.Is(lastErr, ErrUnderlayRoute) || !strings.Contains(st.LastError, c.want) {
					t.Fatalf("routed %v, err %v, status error %q; want the route refused for %q", routed, lastErr, st.LastError, c.want)
				}
				if st.PeersProgrammed != 0 || st.Ready() {
					t.Fatalf("peers programmed %d, ready %v, with the network route refused", st.PeersProgrammed, st.Ready())
				}
				return
			}
			if !routed || lastErr != nil || st.PeersProgrammed != 1 {
				t.Fatalf("routed %v, err %v, programmed %d", routed, lastErr, st.PeersProgrammed)
			}
			// An address inside the network appears on eth1 (say a
			// bridge left with an old subnet): refused, route removed.
			n.ip(t, "addr", "add", "198.18.200.1/24", "dev", "eth1")
			b.loop.Reconcile()
			if _, routed := state(); routed || !errors.Is(lastErr, ErrUnderlayRoute) || b.Status().PeersProgrammed != 0 {
				t.Fatalf("after 198.18.200.1/24 appeared: routed %v, err %v", routed, lastErr)
			}
			n.ip(t, "addr", "del", "198.18.200.1/24", "dev", "eth1")
			b.loop.Reconcile()
			if _, routed := state(); !routed || lastErr != nil || b.Status().LastError != "" || b.Status().PeersProgrammed != 1 {
				t.Fatalf("after 198.18.200.1/24 went: routed %v, err %v", routed, lastErr)
			}
		})
	}
}
