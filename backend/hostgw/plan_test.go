package hostgw

// Plan tests: the backend against an in-memory namespace (nlfake), without
// root. They check which routes a pass adds and removes and which peers it
// refuses; the kernel tests in hostgw_test.go check that the kernel takes
// the routes.

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/backend/routes"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nlfake"
	"github.com/weftnet/weft/subnet"
)

var _ kernel = (*nlfake.NS)(nil)

// fakeBackend returns a backend working on a fresh fake namespace whose
// eth0 (192.0.2.11/24, and the point-to-point 10.9.0.1 peer 10.9.0.2) is
// the external interface.
func fakeBackend(t *testing.T) (*Backend, *nlfake.NS) {
	t.Helper()
	f := nlfake.New()
	ext := f.AddDevice("eth0", 1500, netip.MustParsePrefix("192.0.2.11/24"))
	if err := f.AddPeerAddr(ext, netip.MustParseAddr("10.9.0.1"), netip.MustParsePrefix("10.9.0.2/32")); err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("192.0.2.11")
	bb, err := New(backend.Config{
		Network: netConfig(t),
		Ext:     backend.ExternalInterface{Name: "eth0", Index: ext, Addr: addr, PublicIP: addr},
		Netns:   netns.None(), Logger: slog.New(baseHandler()),
	})
	if err != nil {
		t.Fatal(err)
	}
	b := bb.(*Backend)
	useFake(b, f)
	return b, f
}

// useFake points b's kernel connection at the fake namespace f.
func useFake(b *Backend, f *nlfake.NS) {
	b.kern = routes.NewKernelWith(b.cfg.Network.Network, b.network6(), func() (kernel, routes.TableFor, error) {
		return f, func(n netip.Prefix) routes.Table { return f.RouteTable(n, backend.RouteProtocol) }, nil
	})
}

// fakeRoutes lists the routes tagged with backend.RouteProtocol in the
// fake, one "dst via gw dev N" per line, sorted.
func fakeRoutes(f *nlfake.NS) string {
	rs, _ := f.RouteList(nl.FamilyV4, 0, func(r *nl.Route) bool { return r.Protocol == backend.RouteProtocol }, nil)
	var lines []string
	for _, r := range rs {
		s := fmt.Sprintf("%s via %s dev %d", r.Dst, r.Gw, r.LinkIndex)
		if r.Flags&unix.RTNH_F_ONLINK != 0 || r.Table != unix.RT_TABLE_MAIN {
			s += " (unexpected flags or table)"
		}
		lines = append(lines, s)
	}
	return strings.Join(lines, "\n")
}

// TestPlanRoutes runs a sequence of desired peer sets through the backend:
// after each pass the fake holds exactly one route per on-link peer, the
// others are refused, and a second identical pass writes nothing.
func TestPlanRoutes(t *testing.T) {
	b, f := fakeBackend(t)
	if _, err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b.MTU() != 1500 {
		t.Fatalf("MTU %d, want the external interface's 1500", b.MTU())
	}
	ext := b.cfg.Ext.Index
	route := func(sn, gw string) string { return fmt.Sprintf("%s via %s dev %d", sn, gw, ext) }
	a := lease("198.18.2.0/24", "192.0.2.12")
	c := lease("198.18.3.0/24", "192.0.2.13")
	far := lease("198.18.4.0/24", "203.0.113.5") // not on-link
	p2p := lease("198.18.5.0/24", "10.9.0.2")    // the point-to-point peer
	self := lease("198.18.6.0/24", "10.9.0.1")   // our own end of it: not on-link
	steps := []struct {
		name    string
		peers   []subnet.Lease
		drift   func()
		routes  []string
		refused []string
		repairs uint64
	}{
		{name: "peers, some not on-link", peers: []subnet.Lease{a, c, far, p2p, self},
			routes:  []string{route("198.18.2.0/24", "192.0.2.12"), route("198.18.3.0/24", "192.0.2.13"), route("198.18.5.0/24", "10.9.0.2")},
			refused: []string{"198.18.4.0/24", "198.18.6.0/24"}},
		{name: "peers removed", peers: []subnet.Lease{a},
			routes: []string{route("198.18.2.0/24", "192.0.2.12")}},
		{name: "route deleted behind our back is repaired", peers: []subnet.Lease{a},
			drift:   func() { f.RemoveRoute(a.Subnet) },
			routes:  []string{route("198.18.2.0/24", "192.0.2.12")},
			repairs: 1},
		{name: "foreign route to a peer subnet is taken over", peers: []subnet.Lease{a, c},
			drift: func() {
				f.PutRoute(nl.Route{Dst: c.Subnet, Gw: netip.MustParseAddr("192.0.2.99"), LinkIndex: ext, Protocol: unix.RTPROT_BOOT})
			},
			routes: []string{route("198.18.2.0/24", "192.0.2.12"), route("198.18.3.0/24", "192.0.2.13")}},
		{name: "peer moved to another host", peers: []subnet.Lease{lease("198.18.2.0/24", "192.0.2.14"), c},
			routes: []string{route("198.18.2.0/24", "192.0.2.14"), route("198.18.3.0/24", "192.0.2.13")}},
		{name: "no peers", peers: nil},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.drift != nil {
				st.drift()
			}
			p := b.pass(subnet.Lease{}, subnet.Pointers(st.peers))
			if p.Err != nil || p.Programmed != len(st.routes) || len(p.Refused) != len(st.refused) {
				t.Fatalf("pass: programmed %d, refused %v, err %v; want %d programmed, %v refused", p.Programmed, p.Refused, p.Err, len(st.routes), st.refused)
			}
			for _, sn := range st.refused {
				if why := p.Refused[netip.MustParsePrefix(sn)]; !strings.Contains(why, "not on-link") {
					t.Errorf("%s refused for %q", sn, why)
				}
			}
			if got, want := fakeRoutes(f), strings.Join(st.routes, "\n"); got != want {
				t.Fatalf("routes:\n got %s\nwant %s", got, want)
			}
			if p.Repairs["route"] != st.repairs {
				t.Errorf("route repairs %d, want %d", p.Repairs["route"], st.repairs)
			}
			before := f.Writes()
			if p := b.pass(subnet.Lease{}, subnet.Pointers(st.peers)); p.Err != nil || p.Programmed != len(st.routes) {
				t.Fatalf("second pass: %+v", p)
			}
			if w := f.Writes() - before; w != 0 {
				t.Fatalf("second identical pass made %d writes", w)
			}
		})
	}
}
