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
			b.SetDesired(subnet.Lease{Subnet: netip.MustParsePrefix("198.18.1.0/24")}, subnet.Pointers([]subnet.Lease{
				{Subnet: netip.MustParsePrefix("198.18.2.0/24"), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.2")}},
			}))
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
