package udp

// Plan tests: the control path against an in-memory namespace (nlfake),
// without root. They check what a pass does to weft0, its address and the
// network route, which peers the forwarding table holds and which it
// refuses. Attaching to the TUN device is faked (the fake creates the
// link); the kernel tests (kernel_test.go, hostile_test.go,
// underlay_test.go) check the real device, socket and data path.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nlfake"
	"github.com/weftnet/weft/subnet"
)

var _ kernel = (*nlfake.NS)(nil)

func lease(sn, publicIP string) subnet.Lease {
	return subnet.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr(publicIP)}}
}

// fakeBackend returns a backend, set up, on a fresh fake namespace: eth0
// holds 192.0.2.1/24 and the default route via 192.0.2.254, cni0 (the pod
// bridge) 198.18.1.1/24 in our own subnet, and eth1 nothing yet. The
// network is 198.18.0.0/16 in /24s. Attaching creates weft0 if it does not
// exist, as opening the TUN does, and a device deleted while attached
// stays deleted until the backend attaches again.
func fakeBackend(t *testing.T) (*udpBackend, *nlfake.NS) {
	t.Helper()
	f := nlfake.New()
	eth0 := f.AddDevice("eth0", 1500, netip.MustParsePrefix("192.0.2.1/24"))
	f.AddDevice("eth1", 1500)
	f.AddDevice("cni0", 1500, netip.MustParsePrefix("198.18.1.1/24"))
	f.PutRoute(nl.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("192.0.2.254"), LinkIndex: eth0, Protocol: unix.RTPROT_DHCP})
	nw, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"}}`))
	if err != nil {
		t.Fatal(err)
	}
	bb, err := New(backend.Config{
		Network: nw, Netns: netns.None(), Logger: slog.New(slog.DiscardHandler),
		Ext: backend.ExternalInterface{Name: "eth0", Index: eth0, MTU: 1500},
	})
	if err != nil {
		t.Fatal(err)
	}
	b := bb.(*udpBackend)
	b.open = func() (kernel, error) { return f, nil }
	b.attach = func() error {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.tun != nil {
			return nil
		}
		if _, err := f.LinkByName(DeviceName); errors.Is(err, nl.ErrLinkNotFound) {
			if err := f.AddLink(nl.Link{Name: DeviceName, Kind: "tuntap"}); err != nil {
				return err
			}
		}
		b.tun = &tunFile{} // stands for the attached file
		return nil
	}
	if _, err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	return b, f
}

// weft0 renders the device and what the backend keeps on it: "mtu M up U
// addr A... route R..." with the routes tagged with backend.RouteProtocol.
func weft0(t *testing.T, f *nlfake.NS) string {
	t.Helper()
	l, err := f.LinkByName(DeviceName)
	if err != nil {
		return "no " + DeviceName
	}
	out := []string{fmt.Sprintf("mtu %d up %v", l.MTU, l.Up)}
	as, _ := f.AddrList(l.Index, nl.FamilyV4)
	for _, a := range as {
		out = append(out, "addr "+a.Prefix.String())
	}
	rs, _ := f.RouteList(nl.FamilyV4, 0, func(r *nl.Route) bool { return r.Protocol == backend.RouteProtocol }, nil)
	for _, r := range rs {
		s := fmt.Sprintf("route %s scope %d", r.Dst, r.Scope)
		if r.LinkIndex != l.Index || r.Gw.IsValid() || r.Table != unix.RT_TABLE_MAIN {
			s += fmt.Sprintf(" (via %s dev %d table %d)", r.Gw, r.LinkIndex, r.Table)
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}

// tablePeers renders the forwarding table's peers, "subnet@PublicIP",
// sorted.
func tablePeers(b *udpBackend) string {
	st := b.fwd.Load()
	if st == nil {
		return "no table"
	}
	var out []string
	for sn, pub := range st.peers {
		var a, p [4]byte
		binary.BigEndian.PutUint32(a[:], sn)
		binary.BigEndian.PutUint32(p[:], pub)
		out = append(out, fmt.Sprintf("%s@%s", netip.AddrFrom4(a), netip.AddrFrom4(p)))
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// TestPlan runs a sequence of desired states and drifts through the pass:
// after each, weft0 holds our address and the network route (or not, when
// the route would cover the underlay), the forwarding table holds exactly
// the valid peers, the others are refused, repairs are counted once, and a
// second identical pass writes nothing and keeps the same table.
func TestPlan(t *testing.T) {
	b, f := fakeBackend(t)
	if b.MTU() != 1472 {
		t.Fatalf("MTU %d, want 1500-28", b.MTU())
	}
	if got, want := weft0(t, f), "mtu 1472 up true"; got != want {
		t.Fatalf("after Setup: %s, want %s", got, want)
	}
	own := lease("198.18.1.0/24", "192.0.2.1")
	a, c := lease("198.18.2.0/24", "192.0.2.2"), lease("198.18.3.0/24", "192.0.2.3")
	bad := lease("198.18.4.0/25", "192.0.2.4")  // not a /24
	v6 := lease("198.18.5.0/24", "2001:db8::5") // PublicIP not IPv4
	mine := lease("198.18.1.0/24", "192.0.2.9") // our own subnet
	const routed = "mtu 1472 up true, addr 198.18.1.0/32, route 198.18.0.0/16 scope 253"
	const unrouted = "mtu 1472 up true, addr 198.18.1.0/32"
	idx := func() int {
		l, err := f.LinkByName(DeviceName)
		if err != nil {
			t.Fatal(err)
		}
		return l.Index
	}
	eth1 := func() int { l, _ := f.LinkByName("eth1"); return l.Index }
	steps := []struct {
		name       string
		own        subnet.Lease
		peers      []subnet.Lease
		drift      func()
		kernel     string
		table      string
		programmed int
		refused    []string
		underlay   string // a word of the refusal; "" when routed
		repairs    map[string]uint64
		noWrites   bool // the pass itself writes nothing
	}{
		{name: "route and address installed, invalid peers refused", own: own, peers: []subnet.Lease{a, c, bad, v6, mine},
			kernel: routed, table: "198.18.2.0@192.0.2.2 198.18.3.0@192.0.2.3", programmed: 2,
			refused: []string{"198.18.1.0/24", "198.18.4.0/25", "198.18.5.0/24"}},
		{name: "a peer leaves: only the table changes", own: own, peers: []subnet.Lease{a},
			kernel: routed, table: "198.18.2.0@192.0.2.2", programmed: 1, noWrites: true},
		{name: "a peer moves to another PublicIP", own: own, peers: []subnet.Lease{lease("198.18.2.0/24", "192.0.2.22")},
			kernel: routed, table: "198.18.2.0@192.0.2.22", programmed: 1, noWrites: true},
		{name: "route deleted behind our back", own: own, peers: []subnet.Lease{a},
			drift:  func() { f.RemoveRoute(b.cfg.Network.Network) },
			kernel: routed, table: "198.18.2.0@192.0.2.2", programmed: 1, repairs: map[string]uint64{"route": 1}},
		{name: "route changed behind our back", own: own, peers: []subnet.Lease{a},
			drift: func() {
				f.PutRoute(nl.Route{Dst: b.cfg.Network.Network, Gw: netip.MustParseAddr("198.18.9.9"), LinkIndex: idx(), Protocol: backend.RouteProtocol})
			},
			kernel: routed, table: "198.18.2.0@192.0.2.2", programmed: 1, repairs: map[string]uint64{"route": 1}},
		{name: "address deleted and a stranger's added", own: own, peers: []subnet.Lease{a},
			drift: func() {
				if err := f.DelAddr(nl.Addr{LinkIndex: idx(), Prefix: netip.MustParsePrefix("198.18.1.0/32")}); err != nil {
					t.Fatal(err)
				}
				if err := f.AddAddr(idx(), netip.MustParsePrefix("10.0.0.1/32")); err != nil {
					t.Fatal(err)
				}
			},
			kernel: routed, table: "198.18.2.0@192.0.2.2", programmed: 1, repairs: map[string]uint64{"addr": 1}},
		{name: "device set down and its MTU changed", own: own, peers: []subnet.Lease{a},
			drift: func() {
				if err := f.SetLinkDown(idx()); err != nil {
					t.Fatal(err)
				}
				if err := f.SetLinkMTU(idx(), 1400); err != nil {
					t.Fatal(err)
				}
			},
			kernel: routed, table: "198.18.2.0@192.0.2.2", programmed: 1, repairs: map[string]uint64{"device": 1}},
		{name: "device deleted: re-created once, with address and route", own: own, peers: []subnet.Lease{a},
			drift: func() {
				if err := f.DelLink(idx()); err != nil {
					t.Fatal(err)
				}
			},
			kernel: routed, table: "198.18.2.0@192.0.2.2", programmed: 1, repairs: map[string]uint64{"device": 1, "addr": 1, "route": 1}},
		{name: "a connected network inside the network on eth1: route refused and removed", own: own, peers: []subnet.Lease{a},
			drift: func() {
				if err := f.AddAddr(eth1(), netip.MustParsePrefix("198.18.200.1/24")); err != nil {
					t.Fatal(err)
				}
			},
			kernel: unrouted, table: "198.18.2.0@192.0.2.2", underlay: "connected network 198.18.200.0/24"},
		{name: "peers change while refused", own: own, peers: []subnet.Lease{a, c},
			kernel: unrouted, table: "198.18.2.0@192.0.2.2 198.18.3.0@192.0.2.3", underlay: "connected network 198.18.200.0/24", noWrites: true},
		{name: "it goes: routed again, not a repair", own: own, peers: []subnet.Lease{a, c},
			drift: func() {
				if err := f.DelAddr(nl.Addr{LinkIndex: eth1(), Prefix: netip.MustParsePrefix("198.18.200.1/24")}); err != nil {
					t.Fatal(err)
				}
			},
			kernel: routed, table: "198.18.2.0@192.0.2.2 198.18.3.0@192.0.2.3", programmed: 2},
		{name: "no peers: the route stays", own: own, peers: nil,
			kernel: routed, table: "", noWrites: true},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.drift != nil {
				st.drift()
			}
			before := f.Writes()
			peers := subnet.Pointers(st.peers)
			p := b.pass(st.own, peers)
			if st.noWrites && f.Writes() != before {
				t.Errorf("the pass made %d writes, want none", f.Writes()-before)
			}
			check := func(when string, p backend.Pass) {
				t.Helper()
				switch {
				case st.underlay == "" && p.Err != nil:
					t.Fatalf("%s: %v", when, p.Err)
				case st.underlay != "" && (!errors.Is(p.Err, ErrUnderlayRoute) || !strings.Contains(p.Err.Error(), st.underlay)):
					t.Fatalf("%s: error %v, want the route refused for %q", when, p.Err, st.underlay)
				}
				if got := weft0(t, f); got != st.kernel {
					t.Fatalf("%s: weft0 is\n  %s\nwant\n  %s", when, got, st.kernel)
				}
				if got := tablePeers(b); got != st.table {
					t.Fatalf("%s: forwarding table %q, want %q", when, got, st.table)
				}
				var refused []string
				for sn := range p.Refused {
					refused = append(refused, sn.String())
				}
				slices.Sort(refused)
				if p.Programmed != st.programmed || !slices.Equal(refused, st.refused) {
					t.Fatalf("%s: programmed %d, refused %v; want %d, %v", when, p.Programmed, p.Refused, st.programmed, st.refused)
				}
			}
			check("pass", p)
			for k, v := range p.Repairs {
				if v != st.repairs[k] {
					t.Errorf("repairs %v, want %v", p.Repairs, st.repairs)
					break
				}
			}
			for k, v := range st.repairs {
				if p.Repairs[k] != v {
					t.Errorf("repairs %v, want %v", p.Repairs, st.repairs)
					break
				}
			}
			table := b.fwd.Load()
			before = f.Writes()
			p = b.pass(st.own, peers)
			if w := f.Writes() - before; w != 0 {
				t.Fatalf("second identical pass made %d writes", w)
			}
			if b.fwd.Load() != table {
				t.Error("second identical pass built a new forwarding table")
			}
			for k, v := range p.Repairs {
				if v != 0 {
					t.Errorf("second identical pass repaired %d %s", v, k)
				}
			}
			check("second pass", p)
		})
	}
}

// TestPlanStatus drives the pass through the Loop, as Run does: Status
// reports the refusals, the programmed peers, readiness, the underlay
// error and the data path's counters, and OnReconcile sees the error.
func TestPlanStatus(t *testing.T) {
	b, f := fakeBackend(t)
	var lastErr error
	b.loop = backend.NewLoop(backend.Config{
		Logger:      b.logger,
		OnReconcile: func(_ time.Duration, err error) { lastErr = err },
	}, DeviceName, b.pass)
	st := b.Status()
	if st.Device != DeviceName || st.DataPath == nil || st.Ready() {
		t.Fatalf("status before any pass: %+v", st)
	}
	b.SetDesired(lease("198.18.1.0/24", "192.0.2.1"), subnet.Pointers([]subnet.Lease{lease("198.18.2.0/24", "192.0.2.2"), lease("198.18.4.0/25", "192.0.2.4")}))
	b.loop.Reconcile()
	st = b.Status()
	if st.PeersWanted != 2 || st.PeersProgrammed != 1 || len(st.Refused) != 1 || !st.Ready() || st.LastError != "" || lastErr != nil {
		t.Fatalf("status: %+v (err %v)", st, lastErr)
	}
	eth1, _ := f.LinkByName("eth1")
	if err := f.AddAddr(eth1.Index, netip.MustParsePrefix("198.18.200.1/24")); err != nil {
		t.Fatal(err)
	}
	b.loop.Reconcile()
	st = b.Status()
	if st.PeersProgrammed != 0 || st.Ready() || !strings.Contains(st.LastError, "198.18.200.0/24") || !errors.Is(lastErr, ErrUnderlayRoute) {
		t.Fatalf("status with the route refused: %+v (err %v)", st, lastErr)
	}
	b.stats.drops[dropUnknownPeer].Add(3)
	if d := b.Status().DataPath.Drops["unknown-peer"]; d != 3 {
		t.Fatalf("unknown-peer drops %d in Status, want 3", d)
	}
}

// TestEvents checks which netlink events call for a pass.
func TestEvents(t *testing.T) {
	b, _ := fakeBackend(t)
	ev := b.events()
	pfx := netip.MustParsePrefix
	for _, c := range []struct {
		name string
		got  bool
		want bool
	}{
		{"weft0 changed", ev.Link(nl.LinkEvent{Name: DeviceName, Up: true}), true},
		{"weft0 deleted", ev.Link(nl.LinkEvent{Name: DeviceName, Deleted: true}), true},
		{"another device", ev.Link(nl.LinkEvent{Name: "eth0"}), false},
		{"an address deleted", ev.Addr(nl.AddrEvent{Deleted: true, Prefix: pfx("192.0.2.7/24")}), true},
		{"an address added in the network", ev.Addr(nl.AddrEvent{Prefix: pfx("198.18.200.1/24")}), true},
		{"an address added elsewhere", ev.Addr(nl.AddrEvent{Prefix: pfx("192.0.2.7/24")}), false},
		{"our route deleted", ev.Route(nl.RouteEvent{Deleted: true, Route: nl.Route{Dst: pfx("198.18.0.0/16"), Protocol: backend.RouteProtocol}}), true},
		{"our route added", ev.Route(nl.RouteEvent{Route: nl.Route{Dst: pfx("198.18.0.0/16"), Protocol: backend.RouteProtocol}}), false},
		{"a default route added", ev.Route(nl.RouteEvent{Route: nl.Route{Dst: pfx("0.0.0.0/0"), Table: unix.RT_TABLE_MAIN}}), true},
		{"a route inside the network deleted", ev.Route(nl.RouteEvent{Deleted: true, Route: nl.Route{Dst: pfx("198.18.7.0/24"), Table: unix.RT_TABLE_MAIN}}), true},
		{"a route elsewhere", ev.Route(nl.RouteEvent{Route: nl.Route{Dst: pfx("192.0.2.0/24"), Table: unix.RT_TABLE_MAIN}}), false},
		{"a route in another table", ev.Route(nl.RouteEvent{Route: nl.Route{Dst: pfx("198.18.7.0/24"), Table: 100}}), false},
	} {
		if c.got != c.want {
			t.Errorf("%s: pass %v, want %v", c.name, c.got, c.want)
		}
	}
}
