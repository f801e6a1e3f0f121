package vxlan

// Plan tests: the backend against an in-memory namespace (nlfake), without
// root. They check what a pass adds, replaces and removes; the kernel
// tests in vxlan_test.go check that the kernel takes it.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"sort"
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
// eth0 (192.0.2.11/24) is the external interface.
func fakeBackend(t *testing.T, opts string) (*Backend, *nlfake.NS) {
	t.Helper()
	f := nlfake.New()
	ext := f.AddDevice("eth0", 1500, netip.MustParsePrefix("192.0.2.11/24"))
	if opts == "" {
		opts = `{"Type":"vxlan"}`
	}
	addr := netip.MustParseAddr("192.0.2.11")
	bb, err := New(backend.Config{
		Network: netConfig(t), Options: json.RawMessage(opts),
		Ext:   backend.ExternalInterface{Name: "eth0", Index: ext, Addr: addr, PublicIP: addr, MTU: 1500},
		Netns: netns.None(), Logger: testLogger(t),
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
	var network6 netip.Prefix
	if b.cfg.Network.EnableIPv6 {
		network6 = b.cfg.Network.IPv6.Network
	}
	b.kern = routes.NewKernelWith(b.cfg.Network.Network, network6, func() (kernel, routes.TableFor, error) {
		return f, func(n netip.Prefix) routes.Table { return f.RouteTable(n, backend.RouteProtocol) }, nil
	})
}

// fakeState is what the fake namespace holds for the backend, as strings
// in the form dumpState uses.
func fakeState(t *testing.T, f *nlfake.NS, dev string) kernelState {
	t.Helper()
	var ks kernelState
	l, err := f.LinkByName(dev)
	if err != nil {
		t.Fatalf("device %s: %v", dev, err)
	}
	ns, _ := f.NeighList(l.Index, nl.FamilyV4, nil)
	for _, n := range ns {
		if n.State&unix.NUD_PERMANENT != 0 {
			ks.neigh = append(ks.neigh, n.IP.String()+" "+n.HardwareAddr().String())
		}
	}
	fs, _ := f.NeighList(l.Index, nl.FamilyBridge, nil)
	for _, n := range fs {
		if n.State&unix.NUD_PERMANENT == 0 || n.Flags&unix.NTF_SELF == 0 {
			t.Errorf("FDB entry %s -> %s is not permanent and self", n.HardwareAddr(), n.IP)
		}
		ks.fdb = append(ks.fdb, n.HardwareAddr().String()+" "+n.IP.String())
	}
	rs, _ := f.RouteList(nl.FamilyV4, 0, func(r *nl.Route) bool { return r.Protocol == backend.RouteProtocol }, nil)
	for _, r := range rs {
		s := fmt.Sprintf("%s via %s dev %d", r.Dst, r.Gw, r.LinkIndex)
		if r.Flags&unix.RTNH_F_ONLINK != 0 {
			s += " onlink"
		}
		ks.routes = append(ks.routes, s)
	}
	as, _ := f.AddrList(l.Index, nl.FamilyV4)
	for _, a := range as {
		ks.addrs = append(ks.addrs, a.Prefix.String())
	}
	sort.Strings(ks.neigh)
	sort.Strings(ks.fdb)
	sort.Strings(ks.routes)
	sort.Strings(ks.addrs)
	return ks
}

// TestPlanPeers runs a sequence of desired peer sets, with drift in
// between, through the backend: after each pass the fake must hold exactly
// one neighbour entry, one FDB entry and one onlink route per peer, and a
// second identical pass must write nothing.
func TestPlanPeers(t *testing.T) {
	b, f := fakeBackend(t, "")
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dev, err := f.LinkByName("weft.1")
	if err != nil {
		t.Fatal(err)
	}
	if vx := dev.VXLAN; vx == nil || vx.VNI != 1 || vx.Port != 8472 || vx.Learning || vx.VtepDevIndex != b.cfg.Ext.Index ||
		vx.SrcAddr != b.cfg.Ext.Addr || !dev.Up || dev.MTU != 1450 || b.MTU() != 1450 {
		t.Fatalf("device %+v, vxlan %+v, MTU() %d", dev, dev.VXLAN, b.MTU())
	}
	own := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.1.0/24"), Attrs: attrs}
	a := vxLease("198.18.2.0/24", "192.0.2.12", macA)
	bPeer := vxLease("198.18.3.0/24", "203.0.113.5", macB)
	aMoved := vxLease("198.18.2.0/24", "192.0.2.14", macC) // new host, new MAC
	idx := dev.Index
	route := func(sn, gw string) string { return fmt.Sprintf("%s via %s dev %d onlink", sn, gw, idx) }
	macAddr := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }

	steps := []struct {
		name    string
		peers   []subnet.Lease
		drift   func(t *testing.T)
		neigh   []string
		fdb     []string
		routes  []string
		repairs map[string]uint64
	}{
		{name: "two peers", peers: []subnet.Lease{a, bPeer},
			neigh:  []string{"198.18.2.0 " + macA, "198.18.3.0 " + macB},
			fdb:    []string{macA + " 192.0.2.12", macB + " 203.0.113.5"},
			routes: []string{route("198.18.2.0/24", "198.18.2.0"), route("198.18.3.0/24", "198.18.3.0")}},
		{name: "peer removed", peers: []subnet.Lease{a},
			neigh:  []string{"198.18.2.0 " + macA},
			fdb:    []string{macA + " 192.0.2.12"},
			routes: []string{route("198.18.2.0/24", "198.18.2.0")}},
		{name: "entries deleted behind our back are repaired", peers: []subnet.Lease{a},
			drift: func(t *testing.T) {
				for _, fam := range []nl.Family{nl.FamilyV4, nl.FamilyBridge} {
					list, _ := f.NeighList(idx, fam, nil)
					for i := range list {
						if err := f.DelNeigh(&list[i]); err != nil {
							t.Fatal(err)
						}
					}
				}
				f.RemoveRoute(a.Subnet)
			},
			neigh:   []string{"198.18.2.0 " + macA},
			fdb:     []string{macA + " 192.0.2.12"},
			routes:  []string{route("198.18.2.0/24", "198.18.2.0")},
			repairs: map[string]uint64{"neigh": 1, "fdb": 1, "route": 1}},
		{name: "foreign entries are removed", peers: []subnet.Lease{a},
			drift: func(t *testing.T) {
				zero := make(net.HardwareAddr, 6) // a flood entry with two remotes
				f.AppendFDB(idx, zero, netip.MustParseAddr("203.0.113.98"))
				f.AppendFDB(idx, zero, netip.MustParseAddr("203.0.113.99"))
				f.AppendFDB(idx, macAddr(macB), netip.MustParseAddr("203.0.113.5"))
				errs := f.SetNeighs([]nl.NeighSpec{{LinkIndex: idx, Family: nl.FamilyV4, State: unix.NUD_PERMANENT,
					IP: netip.MustParseAddr("198.18.9.0"), MAC: macAddr(macB)}})
				if errs[0] != nil {
					t.Fatal(errs[0])
				}
			},
			neigh:  []string{"198.18.2.0 " + macA},
			fdb:    []string{macA + " 192.0.2.12"},
			routes: []string{route("198.18.2.0/24", "198.18.2.0")}},
		{name: "peer moved to a new host and MAC", peers: []subnet.Lease{aMoved, bPeer},
			neigh:  []string{"198.18.2.0 " + macC, "198.18.3.0 " + macB},
			fdb:    []string{macB + " 203.0.113.5", macC + " 192.0.2.14"},
			routes: []string{route("198.18.2.0/24", "198.18.2.0"), route("198.18.3.0/24", "198.18.3.0")}},
		{name: "no peers", peers: nil},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.drift != nil {
				st.drift(t)
			}
			p := b.pass(own, subnet.Pointers(st.peers))
			if p.Err != nil || p.Programmed != len(st.peers) || len(p.Refused) != 0 {
				t.Fatalf("pass: programmed %d of %d, refused %v, err %v", p.Programmed, len(st.peers), p.Refused, p.Err)
			}
			ks := fakeState(t, f, "weft.1")
			wantList(t, "neighbours", ks.neigh, st.neigh...)
			wantList(t, "FDB", ks.fdb, st.fdb...)
			wantList(t, "routes", ks.routes, st.routes...)
			wantList(t, "addresses", ks.addrs, "198.18.1.0/32")
			for _, kind := range []string{"device", "addr", "route", "neigh", "fdb"} {
				if p.Repairs[kind] != st.repairs[kind] {
					t.Errorf("repairs of %s: %d, want %d (all: %v)", kind, p.Repairs[kind], st.repairs[kind], p.Repairs)
				}
			}
			// The same desired state again writes nothing.
			before := f.Writes()
			if p := b.pass(own, subnet.Pointers(st.peers)); p.Err != nil || p.Programmed != len(st.peers) {
				t.Fatalf("second pass: %+v", p)
			}
			if w := f.Writes() - before; w != 0 {
				t.Fatalf("second identical pass made %d writes", w)
			}
		})
	}
}

// TestPlanDirectRouting: with DirectRouting a peer on the external
// interface's segment gets a route via its PublicIP there and no VXLAN
// entries; so does a peer at the far end of a point-to-point address.
func TestPlanDirectRouting(t *testing.T) {
	b, f := fakeBackend(t, `{"Type":"vxlan","DirectRouting":true}`)
	if err := f.AddPeerAddr(b.cfg.Ext.Index, netip.MustParseAddr("10.9.0.1"), netip.MustParsePrefix("10.9.0.2/32")); err != nil {
		t.Fatal(err)
	}
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	own := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.1.0/24"), Attrs: attrs}
	peers := []subnet.Lease{
		vxLease("198.18.2.0/24", "192.0.2.12", macA),  // same segment
		vxLease("198.18.3.0/24", "203.0.113.5", macB), // elsewhere: VXLAN
		vxLease("198.18.4.0/24", "10.9.0.2", macC),    // point-to-point peer
		vxLease("198.18.5.0/24", "10.9.0.1", macC),    // our own end of it: not on-link
	}
	p := b.pass(own, subnet.Pointers(peers))
	if p.Err != nil {
		t.Fatal(p.Err)
	}
	dev, _ := f.LinkByName("weft.1")
	ext := b.cfg.Ext.Index
	ks := fakeState(t, f, "weft.1")
	wantList(t, "routes", ks.routes,
		fmt.Sprintf("198.18.2.0/24 via 192.0.2.12 dev %d onlink", ext),
		fmt.Sprintf("198.18.3.0/24 via 198.18.3.0 dev %d onlink", dev.Index),
		fmt.Sprintf("198.18.4.0/24 via 10.9.0.2 dev %d onlink", ext),
		fmt.Sprintf("198.18.5.0/24 via 198.18.5.0 dev %d onlink", dev.Index))
	wantList(t, "neighbours", ks.neigh, "198.18.3.0 "+macB, "198.18.5.0 "+macC)
	wantList(t, "FDB", ks.fdb, macB+" 203.0.113.5", macC+" 10.9.0.1")
}

// TestPlanTakesOverFlannelDevice: flanneld's flannel.1 holds our VNI and
// port; Setup deletes it and creates weft.1 in its place.
func TestPlanTakesOverFlannelDevice(t *testing.T) {
	b, f := fakeBackend(t, "")
	err := f.AddLink(nl.Link{Name: "flannel.1", VXLAN: &nl.VXLAN{VNI: 1, Port: 8472, VtepDevIndex: b.cfg.Ext.Index}})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.AddLink(nl.Link{Name: "weft.x", VXLAN: &nl.VXLAN{VNI: 1, Port: 8472}}); err == nil {
		t.Fatal("the fake let two VXLAN devices share a VNI and port")
	}
	if _, err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.LinkByName("flannel.1"); err == nil {
		t.Fatal("flannel.1 is still there")
	}
	if _, err := f.LinkByName("weft.1"); err != nil {
		t.Fatal(err)
	}
}

// Setup lets go of the other hosts' lease attributes once the device has
// its MAC (they cost memory per peer for the backend's life), and a device
// deleted by hand afterwards comes back with the same MAC.
func TestPlanSetupDropsPeerAttrs(t *testing.T) {
	b, f := fakeBackend(t, "")
	b.cfg.PeerAttrs = []subnet.LeaseAttrs{vxLease("198.18.9.0/24", "192.0.2.99", macA).Attrs}
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if b.cfg.PeerAttrs != nil {
		t.Fatalf("PeerAttrs kept after Setup: %d", len(b.cfg.PeerAttrs))
	}
	_, mac, err := subnet.ParseVXLANData(attrs.BackendData)
	if err != nil || mac.String() == macA {
		t.Fatalf("published MAC %s (%v): it must not be another host's %s", mac, err, macA)
	}
	dev, err := f.LinkByName("weft.1")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.DelLink(dev.Index); err != nil {
		t.Fatal(err)
	}
	own := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.1.0/24"), Attrs: attrs}
	if p := b.pass(own, nil); p.Err != nil {
		t.Fatal(p.Err)
	}
	dev, err = f.LinkByName("weft.1")
	if err != nil || dev.HardwareAddr.String() != mac.String() {
		t.Fatalf("recreated device: %+v %v, want MAC %s", dev, err, mac)
	}
}
