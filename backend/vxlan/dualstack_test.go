package vxlan

// Dual-stack tests: the IPv6 device weft-v6.<VNI> beside weft.<VNI>, first
// against the fake namespace (plans, no root), then in the kernel.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nlfake"
	"github.com/weftnet/weft/internal/nl/nltest"
	"github.com/weftnet/weft/subnet"
)

const (
	mac6A = "02:a6:00:00:00:01"
	mac6B = "02:b6:00:00:00:02"
	mac6C = "02:c6:00:00:00:03"
)

func netConfig6(t testing.TB) *subnet.Config {
	t.Helper()
	c, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// vxLease6 is a dual-stack vxlan lease; an empty pub6 or mac6 leaves
// PublicIPv6 or BackendV6Data out.
func vxLease6(sn, pub, mac, sn6, pub6, mac6 string) subnet.Lease {
	l := vxLease(sn, pub, mac)
	l.IPv6Subnet = netip.MustParsePrefix(sn6)
	if pub6 != "" {
		l.Attrs.PublicIPv6 = netip.MustParseAddr(pub6)
	}
	if mac6 != "" {
		l.Attrs.BackendV6Data, _ = json.Marshal(subnet.VXLANData{VNI: 1, VtepMAC: mac6})
	}
	return l
}

// fakeBackend6 is fakeBackend on a dual-stack network: eth0 also holds
// 2001:db8::11/64, our IPv6 underlay address.
func fakeBackend6(t *testing.T, opts string, prev subnet.LeaseAttrs, peerAttrs ...subnet.LeaseAttrs) (*Backend, *nlfake.NS) {
	t.Helper()
	f := nlfake.New()
	ext := f.AddDevice("eth0", 1500, netip.MustParsePrefix("192.0.2.11/24"), netip.MustParsePrefix("2001:db8::11/64"))
	if opts == "" {
		opts = `{"Type":"vxlan"}`
	}
	addr, addr6 := netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("2001:db8::11")
	bb, err := New(backend.Config{
		Network: netConfig6(t), Options: json.RawMessage(opts),
		Ext: backend.ExternalInterface{Name: "eth0", Index: ext, Addr: addr, PublicIP: addr,
			Addr6: addr6, PublicIPv6: addr6, MTU: 1500},
		Netns: netns.None(), Logger: testLogger(t), Previous: prev, PeerAttrs: peerAttrs,
	})
	if err != nil {
		t.Fatal(err)
	}
	b := bb.(*Backend)
	useFake(b, f)
	return b, f
}

// fakeState6 is what the fake holds on the IPv6 device, as fakeState
// renders it for the IPv4 one.
func fakeState6(t *testing.T, f *nlfake.NS, dev string) kernelState {
	t.Helper()
	var ks kernelState
	l, err := f.LinkByName(dev)
	if err != nil {
		t.Fatalf("device %s: %v", dev, err)
	}
	ns, _ := f.NeighList(l.Index, nl.FamilyV6, nil)
	for _, n := range ns {
		if n.State&unix.NUD_PERMANENT != 0 {
			ks.neigh = append(ks.neigh, n.IP.String()+" "+n.HardwareAddr().String())
		}
	}
	fs, _ := f.NeighList(l.Index, nl.FamilyBridge, nil)
	for _, n := range fs {
		ks.fdb = append(ks.fdb, n.HardwareAddr().String()+" "+n.IP.String())
	}
	rs, _ := f.RouteList(nl.FamilyV6, 0, func(r *nl.Route) bool { return r.Protocol == backend.RouteProtocol }, nil)
	for _, r := range rs {
		s := fmt.Sprintf("%s via %s dev %d", r.Dst, r.Gw, r.LinkIndex)
		if r.Flags&unix.RTNH_F_ONLINK != 0 {
			s += " onlink"
		}
		ks.routes = append(ks.routes, s)
	}
	as, _ := f.AddrList(l.Index, nl.FamilyV6)
	for _, a := range as {
		ks.addrs = append(ks.addrs, a.Prefix.String())
	}
	sort.Strings(ks.neigh)
	sort.Strings(ks.fdb)
	sort.Strings(ks.routes)
	sort.Strings(ks.addrs)
	return ks
}

// TestPlanDualStack runs desired states with dual-stack and IPv4-only
// peers through a dual-stack backend: the IPv6 device gets one NDP entry,
// one FDB entry and one onlink route per peer with an IPv6 subnet,
// PublicIPv6 and BackendV6Data, and nothing for the others, which still
// get their IPv4 objects; drift is repaired, a second identical pass
// writes nothing, and a peer counts as programmed when all its families
// are.
func TestPlanDualStack(t *testing.T) {
	b, f := fakeBackend6(t, "", subnet.LeaseAttrs{})
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dev6, err := f.LinkByName("weft-v6.1")
	if err != nil {
		t.Fatal(err)
	}
	if vx := dev6.VXLAN; vx == nil || vx.VNI != 1 || vx.Port != 8472 || vx.Learning || vx.VtepDevIndex != b.cfg.Ext.Index ||
		vx.SrcAddr != netip.MustParseAddr("2001:db8::11") || !dev6.Up || dev6.MTU != 1430 || b.MTU() != 1450 {
		t.Fatalf("device %+v, vxlan %+v, MTU() %d", dev6, dev6.VXLAN, b.MTU())
	}
	d6, mac6, err := subnet.ParseVXLANData(attrs.BackendV6Data)
	if err != nil || d6.VNI != 1 || mac6.String() != dev6.HardwareAddr.String() {
		t.Fatalf("BackendV6Data %s (%v), device MAC %s", attrs.BackendV6Data, err, dev6.HardwareAddr)
	}
	if _, mac4, _ := subnet.ParseVXLANData(attrs.BackendData); mac4.String() == mac6.String() {
		t.Fatalf("both devices got MAC %s", mac4)
	}
	own := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.1.0/24"), IPv6Subnet: netip.MustParsePrefix("2001:db8:100:1::/64"), Attrs: attrs}
	own.Attrs.PublicIPv6 = netip.MustParseAddr("2001:db8::11")

	dual := vxLease6("198.18.2.0/24", "192.0.2.12", macA, "2001:db8:100:2::/64", "2001:db8::12", mac6A)
	dualFar := vxLease6("198.18.3.0/24", "203.0.113.5", macB, "2001:db8:100:3::/64", "2001:db8:ff::5", mac6B)
	v4only := vxLease("198.18.4.0/24", "192.0.2.14", macC)
	noPub6 := vxLease6("198.18.5.0/24", "192.0.2.15", "02:aa:00:00:00:05", "2001:db8:100:5::/64", "", mac6C)
	noData6 := vxLease6("198.18.6.0/24", "192.0.2.16", "02:aa:00:00:00:06", "2001:db8:100:6::/64", "2001:db8::16", "")
	dualMoved := vxLease6("198.18.2.0/24", "192.0.2.12", macA, "2001:db8:100:2::/64", "2001:db8::22", mac6C)
	idx6 := dev6.Index
	route6 := func(sn, gw string) string { return fmt.Sprintf("%s via %s dev %d onlink", sn, gw, idx6) }

	steps := []struct {
		name    string
		peers   []subnet.Lease
		drift   func(t *testing.T)
		neigh   []string
		fdb     []string
		routes  []string
		neigh4  int
		repairs map[string]uint64
	}{
		{name: "dual-stack and IPv4-only peers", peers: []subnet.Lease{dual, dualFar, v4only, noPub6, noData6},
			neigh:  []string{"2001:db8:100:2:: " + mac6A, "2001:db8:100:3:: " + mac6B},
			fdb:    []string{mac6A + " 2001:db8::12", mac6B + " 2001:db8:ff::5"},
			routes: []string{route6("2001:db8:100:2::/64", "2001:db8:100:2::"), route6("2001:db8:100:3::/64", "2001:db8:100:3::")},
			neigh4: 5},
		{name: "IPv6 entries deleted behind our back are repaired", peers: []subnet.Lease{dual, dualFar, v4only},
			drift: func(t *testing.T) {
				for _, fam := range []nl.Family{nl.FamilyV6, nl.FamilyBridge} {
					list, _ := f.NeighList(idx6, fam, nil)
					for i := range list {
						if list[i].IP == netip.MustParseAddr("2001:db8:100:2::") || list[i].IP == netip.MustParseAddr("2001:db8::12") {
							if err := f.DelNeigh(&list[i]); err != nil {
								t.Fatal(err)
							}
						}
					}
				}
				f.RemoveRoute(netip.MustParsePrefix("2001:db8:100:2::/64"))
			},
			neigh:   []string{"2001:db8:100:2:: " + mac6A, "2001:db8:100:3:: " + mac6B},
			fdb:     []string{mac6A + " 2001:db8::12", mac6B + " 2001:db8:ff::5"},
			routes:  []string{route6("2001:db8:100:2::/64", "2001:db8:100:2::"), route6("2001:db8:100:3::/64", "2001:db8:100:3::")},
			neigh4:  3,
			repairs: map[string]uint64{"neigh": 1, "fdb": 1, "route": 1}},
		{name: "peer moved to a new IPv6 address and MAC", peers: []subnet.Lease{dualMoved, v4only},
			neigh:  []string{"2001:db8:100:2:: " + mac6C},
			fdb:    []string{mac6C + " 2001:db8::22"},
			routes: []string{route6("2001:db8:100:2::/64", "2001:db8:100:2::")},
			neigh4: 2},
		{name: "dual-stack peer gone", peers: []subnet.Lease{v4only}, neigh4: 1},
		{name: "no peers", peers: nil},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.drift != nil {
				st.drift(t)
			}
			p := b.pass(own, subnet.Pointers(st.peers))
			if p.Err != nil || p.Programmed != len(st.peers) || len(p.Refused) != 0 || len(p.Failed) != 0 {
				t.Fatalf("pass: programmed %d of %d, refused %v, failed %v, err %v", p.Programmed, len(st.peers), p.Refused, p.Failed, p.Err)
			}
			ks := fakeState6(t, f, "weft-v6.1")
			wantList(t, "IPv6 neighbours", ks.neigh, st.neigh...)
			wantList(t, "IPv6 FDB", ks.fdb, st.fdb...)
			wantList(t, "IPv6 routes", ks.routes, st.routes...)
			wantList(t, "IPv6 addresses", ks.addrs, "2001:db8:100:1::/128")
			if ks4 := fakeState(t, f, "weft.1"); len(ks4.neigh) != st.neigh4 || len(ks4.fdb) != st.neigh4 || len(ks4.routes) != st.neigh4 {
				t.Fatalf("IPv4 state: %+v, want %d peers", ks4, st.neigh4)
			}
			for _, kind := range []string{"device", "addr", "route", "neigh", "fdb"} {
				if p.Repairs[kind] != st.repairs[kind] {
					t.Errorf("repairs of %s: %d, want %d (all: %v)", kind, p.Repairs[kind], st.repairs[kind], p.Repairs)
				}
			}
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

// TestPlanDualStackOwnIPv4Only: a dual-stack backend whose own lease has
// no IPv6 subnet (yet) programs no IPv6 peers, and removes IPv6 objects
// programmed before.
func TestPlanDualStackOwnIPv4Only(t *testing.T) {
	b, f := fakeBackend6(t, "", subnet.LeaseAttrs{})
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	own := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.1.0/24"), IPv6Subnet: netip.MustParsePrefix("2001:db8:100:1::/64"), Attrs: attrs}
	peers := []subnet.Lease{vxLease6("198.18.2.0/24", "192.0.2.12", macA, "2001:db8:100:2::/64", "2001:db8::12", mac6A)}
	if p := b.pass(own, subnet.Pointers(peers)); p.Err != nil || p.Programmed != 1 {
		t.Fatalf("pass: %+v", p)
	}
	own.IPv6Subnet = netip.Prefix{}
	if p := b.pass(own, subnet.Pointers(peers)); p.Err != nil || p.Programmed != 1 {
		t.Fatalf("pass without our IPv6 subnet: %+v", p)
	}
	ks := fakeState6(t, f, "weft-v6.1")
	if len(ks.neigh)+len(ks.fdb)+len(ks.routes) != 0 {
		t.Fatalf("IPv6 objects left: %+v", ks)
	}
	if ks4 := fakeState(t, f, "weft.1"); len(ks4.routes) != 1 {
		t.Fatalf("IPv4 state: %+v", ks4)
	}
}

// TestPlanDualStackDirectRouting: with DirectRouting a peer whose
// PublicIPv6 is on the external interface's IPv6 prefix gets an IPv6
// route via it there and no IPv6 VXLAN entries.
func TestPlanDualStackDirectRouting(t *testing.T) {
	b, f := fakeBackend6(t, `{"Type":"vxlan","DirectRouting":true}`, subnet.LeaseAttrs{})
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	own := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.1.0/24"), IPv6Subnet: netip.MustParsePrefix("2001:db8:100:1::/64"), Attrs: attrs}
	peers := []subnet.Lease{
		vxLease6("198.18.2.0/24", "192.0.2.12", macA, "2001:db8:100:2::/64", "2001:db8::12", mac6A),    // same segment
		vxLease6("198.18.3.0/24", "192.0.2.13", macB, "2001:db8:100:3::/64", "2001:db8:ff::13", mac6B), // IPv6 routed
	}
	if p := b.pass(own, subnet.Pointers(peers)); p.Err != nil || p.Programmed != 2 {
		t.Fatalf("pass: %+v", p)
	}
	dev6, _ := f.LinkByName("weft-v6.1")
	ks := fakeState6(t, f, "weft-v6.1")
	wantList(t, "IPv6 routes", ks.routes,
		fmt.Sprintf("2001:db8:100:2::/64 via 2001:db8::12 dev %d onlink", b.cfg.Ext.Index),
		fmt.Sprintf("2001:db8:100:3::/64 via 2001:db8:100:3:: dev %d onlink", dev6.Index))
	wantList(t, "IPv6 neighbours", ks.neigh, "2001:db8:100:3:: "+mac6B)
	wantList(t, "IPv6 FDB", ks.fdb, mac6B+" 2001:db8:ff::13")
	exp, err := Expect(backend.ExpectInput{Network: b.cfg.Network, Options: b.cfg.Options,
		Own: withPublic6(own, "2001:db8::11"), Peers: subnet.Pointers(peers), Ext: b.cfg.Ext,
		OnLink: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/64")}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range exp.Routes {
		got = append(got, fmt.Sprintf("%s via %s dev %q onlink %v", r.Dst, r.Gw, r.Dev, r.OnLink))
	}
	sort.Strings(got)
	wantList(t, "expected routes", got,
		`198.18.2.0/24 via 192.0.2.12 dev "" onlink true`,
		`198.18.3.0/24 via 192.0.2.13 dev "" onlink true`,
		`2001:db8:100:2::/64 via 2001:db8::12 dev "" onlink true`,
		`2001:db8:100:3::/64 via 2001:db8:100:3:: dev "weft-v6.1" onlink true`)
}

func withPublic6(l subnet.Lease, pub6 string) subnet.Lease {
	l.Attrs.PublicIPv6 = netip.MustParseAddr(pub6)
	return l
}

// TestPlanDualStackRefusedIPv6Part: an IPv6 subnet whose route the
// reconciler refuses (it would cover a connected IPv6 network) refuses the
// peer, with a reason that says so, while its IPv4 objects are programmed.
func TestPlanDualStackRefusedIPv6Part(t *testing.T) {
	b, f := fakeBackend6(t, "", subnet.LeaseAttrs{})
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f.AddDevice("cni9", 1500, netip.MustParsePrefix("2001:db8:100:9::1/64"))
	own := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.1.0/24"), IPv6Subnet: netip.MustParsePrefix("2001:db8:100:1::/64"), Attrs: attrs}
	clash := vxLease6("198.18.9.0/24", "192.0.2.19", macA, "2001:db8:100:9::/64", "2001:db8::19", mac6A)
	good := vxLease6("198.18.2.0/24", "192.0.2.12", macB, "2001:db8:100:2::/64", "2001:db8::12", mac6B)
	p := b.pass(own, subnet.Pointers([]subnet.Lease{clash, good}))
	if p.Programmed != 1 || !strings.Contains(p.Refused[clash.Subnet], "IPv6 subnet 2001:db8:100:9::/64") {
		t.Fatalf("pass: %+v", p)
	}
	ks := fakeState6(t, f, "weft-v6.1")
	wantList(t, "IPv6 neighbours", ks.neigh, "2001:db8:100:2:: "+mac6B)
	if ks4 := fakeState(t, f, "weft.1"); len(ks4.routes) != 2 {
		t.Fatalf("IPv4 routes: %q", ks4.routes)
	}
}

// TestPlanDualStackSetup: Setup needs a PublicIPv6; the IPv6 MAC comes from
// the previous lease's BackendV6Data unless another host's lease carries
// it; an IPv4-only network removes a weft-v6 device left behind; flanneld's
// flannel-v6.<VNI> is taken over.
func TestPlanDualStackSetup(t *testing.T) {
	t.Run("no IPv6 underlay address", func(t *testing.T) {
		b, _ := fakeBackend6(t, "", subnet.LeaseAttrs{})
		b.cfg.Ext.PublicIPv6 = netip.Addr{}
		_, err := b.Setup(context.Background())
		if err == nil || !strings.Contains(err.Error(), "eth0") || !strings.Contains(err.Error(), "--public-ipv6") {
			t.Fatalf("Setup without PublicIPv6: %v", err)
		}
	})
	prev := vxLease6("198.18.1.0/24", "192.0.2.11", macA, "2001:db8:100:1::/64", "2001:db8::11", mac6A).Attrs
	t.Run("previous IPv6 MAC reused", func(t *testing.T) {
		b, _ := fakeBackend6(t, "", prev)
		attrs, err := b.Setup(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, m, _ := subnet.ParseVXLANData(attrs.BackendV6Data); m.String() != mac6A {
			t.Fatalf("BackendV6Data %s, want MAC %s", attrs.BackendV6Data, mac6A)
		}
		if _, m, _ := subnet.ParseVXLANData(attrs.BackendData); m.String() != macA {
			t.Fatalf("BackendData %s, want MAC %s", attrs.BackendData, macA)
		}
	})
	t.Run("a MAC another host carries is not reused", func(t *testing.T) {
		other := vxLease6("198.18.7.0/24", "192.0.2.77", macC, "2001:db8:100:7::/64", "2001:db8::77", mac6A).Attrs
		b, _ := fakeBackend6(t, "", prev, other)
		attrs, err := b.Setup(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, m, err := subnet.ParseVXLANData(attrs.BackendV6Data); err != nil || m.String() == mac6A {
			t.Fatalf("BackendV6Data %s (%v)", attrs.BackendV6Data, err)
		}
	})
	t.Run("flanneld's IPv6 device taken over", func(t *testing.T) {
		b, f := fakeBackend6(t, "", subnet.LeaseAttrs{})
		if err := f.AddLink(nl.Link{Name: "flannel-v6.1", VXLAN: &nl.VXLAN{VNI: 1, Port: 8472, VtepDevIndex: b.cfg.Ext.Index,
			SrcAddr: netip.MustParseAddr("2001:db8::11")}}); err != nil {
			t.Fatal(err)
		}
		if err := f.AddLink(nl.Link{Name: "flannel.1", VXLAN: &nl.VXLAN{VNI: 1, Port: 8472, VtepDevIndex: b.cfg.Ext.Index,
			SrcAddr: netip.MustParseAddr("192.0.2.11")}}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Setup(context.Background()); err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]bool{"flannel-v6.1": false, "flannel.1": false, "weft-v6.1": true, "weft.1": true} {
			if _, err := f.LinkByName(name); (err == nil) != want {
				t.Errorf("%s exists: %v, want %v", name, err == nil, want)
			}
		}
	})
	t.Run("IPv4-only network removes the IPv6 device", func(t *testing.T) {
		b6, f := fakeBackend6(t, "", subnet.LeaseAttrs{})
		if _, err := b6.Setup(context.Background()); err != nil {
			t.Fatal(err)
		}
		b, err := New(backend.Config{Network: netConfig(t), Options: json.RawMessage(`{"Type":"vxlan"}`), Ext: b6.cfg.Ext,
			Netns: netns.None(), Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		useFake(b.(*Backend), f)
		attrs, err := b.Setup(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.LinkByName("weft-v6.1"); err == nil || attrs.BackendV6Data != nil {
			t.Fatalf("weft-v6.1 still there (%v) or BackendV6Data published (%s)", err, attrs.BackendV6Data)
		}
		if _, err := f.LinkByName("weft.1"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("underlay MTU too small for IPv6", func(t *testing.T) {
		b, _ := fakeBackend6(t, `{"Type":"vxlan","MTU":1290}`, subnet.LeaseAttrs{})
		if _, err := b.Setup(context.Background()); err == nil || !strings.Contains(err.Error(), "1280") {
			t.Fatalf("Setup: %v", err)
		}
	})
}

func TestPeerData6(t *testing.T) {
	for _, tc := range []struct {
		data    string
		want    string // MAC, "" for none
		wantErr bool
	}{
		{`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`, "c6:d2:32:6f:8f:44", false},
		{``, "", false},
		{`null`, "", false},
		{`{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}`, "", true},
		{`{"VNI":1,"VtepMAC":"junk"}`, "", true},
		{`[1,2]`, "", true},
	} {
		id, err := PeerData6(subnet.LeaseAttrs{BackendV6Data: []byte(tc.data)})
		got := ""
		if id != "" {
			got = net.HardwareAddr(id).String()
		}
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("PeerData6(%s) = %q, %v; want %q, error %v", tc.data, got, err, tc.want, tc.wantErr)
		}
	}
	if !Descriptor.DualStack || Descriptor.PeerData6 == nil {
		t.Fatal("the vxlan descriptor does not declare dual stack")
	}
}

// --- kernel tests ---

func newBackend6(t testing.TB, h *nltest.Host, opts string, addr6 netip.Addr) *Backend {
	t.Helper()
	if opts == "" {
		opts = `{"Type":"vxlan"}`
	}
	b, err := New(backend.Config{
		Network: netConfig6(t), Options: json.RawMessage(opts),
		Ext: backend.ExternalInterface{Name: h.ExtName, Index: h.ExtIndex, Addr: h.Addr, PublicIP: h.Addr,
			Addr6: addr6, PublicIPv6: addr6, MTU: h.MTU},
		Netns: h.Handle, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	vb := b.(*Backend)
	t.Cleanup(func() {
		vb.kmu.Lock()
		vb.closeHandles()
		vb.kmu.Unlock()
	})
	return vb
}

// dumpState6 is dumpState for the IPv6 device: its permanent NDP entries,
// FDB entries, our IPv6 routes and its global addresses.
func dumpState6(t testing.TB, h *nltest.Host, dev string) kernelState {
	t.Helper()
	var ks kernelState
	l, err := h.NL.LinkByName(dev)
	if err != nil {
		t.Fatalf("device %s: %v", dev, err)
	}
	idx := l.Attrs().Index
	ns, err := h.NL.NeighList(idx, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if n.State&netlink.NUD_PERMANENT != 0 {
			ks.neigh = append(ks.neigh, n.IP.String()+" "+n.HardwareAddr.String())
		}
	}
	fs, err := h.NL.NeighList(idx, unix.AF_BRIDGE)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range fs {
		if n.LinkIndex == idx {
			ks.fdb = append(ks.fdb, n.HardwareAddr.String()+" "+n.IP.String())
		}
	}
	rs, err := h.NL.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Protocol: backend.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		s := fmt.Sprintf("%s via %s dev %d", r.Dst, r.Gw, r.LinkIndex)
		if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
			s += " onlink"
		}
		ks.routes = append(ks.routes, s)
	}
	as, err := h.NL.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		if !a.IP.IsLinkLocalUnicast() {
			ks.addrs = append(ks.addrs, a.IPNet.String())
		}
	}
	sort.Strings(ks.neigh)
	sort.Strings(ks.fdb)
	sort.Strings(ks.routes)
	sort.Strings(ks.addrs)
	return ks
}

// TestDualStackKernel: in a real namespace, weft-v6.1 is created beside
// weft.1 with the IPv6 VTEP address, MTU and MAC; IPv6 NDP, FDB and route
// entries are created for dual-stack peers, repaired after being deleted
// by hand (by the netlink events alone), and removed when the peer goes;
// Cleanup removes both devices.
func TestDualStackKernel(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	addr6 := netip.MustParseAddr("2001:db8::10")
	h.AddIPv6(t, addr6)
	b := newBackend6(t, h, "", addr6)
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, mac6, err := subnet.ParseVXLANData(attrs.BackendV6Data)
	if err != nil {
		t.Fatalf("BackendV6Data %s: %v", attrs.BackendV6Data, err)
	}
	l, err := h.NL.LinkByName("weft-v6.1")
	if err != nil {
		t.Fatal(err)
	}
	vx, ok := l.(*netlink.Vxlan)
	if !ok || vx.VxlanId != 1 || vx.Port != 8472 || vx.Learning || !vx.SrcAddr.Equal(net.ParseIP("2001:db8::10")) ||
		vx.VtepDevIndex != h.ExtIndex || vx.MTU != h.MTU-70 || vx.Flags&net.FlagUp == 0 || vx.HardwareAddr.String() != mac6.String() {
		t.Fatalf("weft-v6.1 attributes wrong: %+v", l)
	}
	if _, err := h.NL.LinkByName("weft.1"); err != nil {
		t.Fatal(err)
	}
	// A restart adopts both devices and their MACs.
	if again, err := newBackend6(t, h, "", addr6).Setup(context.Background()); err != nil ||
		string(again.BackendData) != string(attrs.BackendData) || string(again.BackendV6Data) != string(attrs.BackendV6Data) {
		t.Fatalf("restart changed the backend data: %s %s -> %s %s (%v)", attrs.BackendData, attrs.BackendV6Data, again.BackendData, again.BackendV6Data, err)
	}

	b.cfg.ResyncInterval = time.Hour // only events may trigger repairs
	b.loop = backend.NewLoop(b.cfg, b.v4.name, b.pass)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(func() { cancel() })
	own := ownLease(h, "198.18.1.0/24", attrs)
	own.IPv6Subnet, own.Attrs.PublicIPv6 = netip.MustParsePrefix("2001:db8:100:1::/64"), addr6
	a := vxLease6("198.18.2.0/24", "192.0.2.20", macA, "2001:db8:100:2::/64", "2001:db8::20", mac6A)
	c := vxLease6("198.18.3.0/24", "192.0.2.30", macB, "2001:db8:100:3::/64", "2001:db8:ff::30", mac6B)
	v4only := vxLease("198.18.4.0/24", "192.0.2.40", macC)
	b.SetDesired(own, subnet.Pointers([]subnet.Lease{a, c, v4only}))
	waitFor(t, "ready", 2*time.Second, func() bool { st := b.Status(); return st.Ready() && st.PeersProgrammed == 3 })
	idx := l.Attrs().Index
	route2 := fmt.Sprintf("2001:db8:100:2::/64 via 2001:db8:100:2:: dev %d onlink", idx)
	ks := dumpState6(t, h, "weft-v6.1")
	wantList(t, "neigh", ks.neigh, "2001:db8:100:2:: "+mac6A, "2001:db8:100:3:: "+mac6B)
	wantList(t, "fdb", ks.fdb, mac6A+" 2001:db8::20", mac6B+" 2001:db8:ff::30")
	wantList(t, "routes", ks.routes, route2, fmt.Sprintf("2001:db8:100:3::/64 via 2001:db8:100:3:: dev %d onlink", idx))
	wantList(t, "addrs", ks.addrs, "2001:db8:100:1::/128")
	if st := b.Status(); st.LastError != "" || len(st.Refused) != 0 {
		t.Fatalf("status: %+v", st)
	}
	time.Sleep(100 * time.Millisecond) // let the first pass's own events settle

	steps := []struct {
		kind     string
		breakCmd []string
		back     func(ks kernelState) bool
	}{
		{"route", []string{"ip", "-n", h.Name, "-6", "route", "del", "2001:db8:100:2::/64"},
			func(ks kernelState) bool { return contains(ks.routes, route2) }},
		{"neigh", []string{"ip", "-n", h.Name, "-6", "neigh", "del", "2001:db8:100:2::", "dev", "weft-v6.1"},
			func(ks kernelState) bool { return contains(ks.neigh, "2001:db8:100:2:: "+mac6A) }},
		{"fdb", []string{"bridge", "-n", h.Name, "fdb", "del", mac6A, "dev", "weft-v6.1", "dst", "2001:db8::20", "self"},
			func(ks kernelState) bool { return contains(ks.fdb, mac6A+" 2001:db8::20") }},
		{"addr", []string{"ip", "-n", h.Name, "addr", "del", "2001:db8:100:1::/128", "dev", "weft-v6.1"},
			func(ks kernelState) bool { return contains(ks.addrs, "2001:db8:100:1::/128") }},
	}
	for _, s := range steps {
		before := b.Status().Repairs[s.kind]
		nltest.Cmd(t, s.breakCmd[0], s.breakCmd[1:]...)
		took := waitFor(t, "IPv6 "+s.kind+" repaired", time.Second, func() bool { return s.back(dumpState6(t, h, "weft-v6.1")) })
		t.Logf("IPv6 %s repaired %v after deletion", s.kind, took)
		waitFor(t, s.kind+" repair counted", time.Second, func() bool { return b.Status().Repairs[s.kind] == before+1 })
	}

	// A deleted IPv6 device is recreated, with its MAC, and repopulated.
	h.IP(t, "link", "del", "weft-v6.1")
	waitFor(t, "IPv6 device recreated and repopulated", 2*time.Second, func() bool {
		l, err := h.NL.LinkByName("weft-v6.1")
		if err != nil || l.Attrs().HardwareAddr.String() != mac6.String() {
			return false
		}
		ks := dumpState6(t, h, "weft-v6.1")
		return len(ks.routes) == 2 && len(ks.neigh) == 2 && len(ks.fdb) == 2 && len(ks.addrs) == 1
	})

	// The peer goes: its IPv6 objects go, the other's stay.
	b.SetDesired(own, subnet.Pointers([]subnet.Lease{c, v4only}))
	waitFor(t, "IPv6 objects of the departed peer removed", 2*time.Second, func() bool {
		ks := dumpState6(t, h, "weft-v6.1")
		return len(ks.routes) == 1 && len(ks.neigh) == 1 && len(ks.fdb) == 1
	})
	if ks := dumpState(t, h, "weft.1"); len(ks.routes) != 2 {
		t.Fatalf("IPv4 routes: %q", ks.routes)
	}

	// Cleanup (of a stopped backend) removes both devices and every route,
	// in both families.
	stop()
	if err := Cleanup(context.Background(), h.Handle, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"weft.1", "weft-v6.1"} {
		if _, err := h.NL.LinkByName(name); err == nil {
			t.Errorf("%s survived cleanup", name)
		}
	}
	if out := strings.TrimSpace(h.IP(t, "-6", "route", "show", "table", "all", "proto", "87")); out != "" {
		t.Fatalf("IPv6 routes survived cleanup: %s", out)
	}
}

// TestDualStackDataPath: two hosts with an IPv4 and an IPv6 underlay
// (2001:db8::/64), one pod each with an address of both families; the
// pods reach each other over weft.1 and over weft-v6.1, and the IPv6
// traffic really crossed the IPv6 device.
func TestDualStackDataPath(t *testing.T) {
	lab := nltest.NewLab(t, 2)
	subnets := []string{"198.18.1.0/24", "198.18.2.0/24"}
	subnets6 := []string{"2001:db8:100:1::/64", "2001:db8:100:2::/64"}
	var bs []*Backend
	var leases []subnet.Lease
	var pods []*nltest.NS
	var podIPs, podIPs6 []netip.Addr
	for i, h := range lab.Hosts {
		addr6 := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(0x10 + i)})
		h.AddIPv6(t, addr6)
		pod, ip := h.AddPod(t, netip.MustParsePrefix(subnets[i]))
		ip6 := h.AddPod6(t, pod, netip.MustParsePrefix(subnets6[i]))
		pods, podIPs, podIPs6 = append(pods, pod), append(podIPs, ip), append(podIPs6, ip6)
		b := newBackend6(t, h, "", addr6)
		attrs, err := b.Setup(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
		l := ownLease(h, subnets[i], attrs)
		l.IPv6Subnet, l.Attrs.PublicIPv6 = netip.MustParsePrefix(subnets6[i]), addr6
		leases = append(leases, l)
		startRun(t, b)
	}
	var wg sync.WaitGroup
	for i, b := range bs {
		b.SetDesired(leases[i], subnet.Pointers([]subnet.Lease{leases[1-i]}))
		wg.Add(1)
		go func() {
			defer wg.Done()
			waitFor(t, "ready", 2*time.Second, func() bool { return b.Status().Ready() })
		}()
	}
	wg.Wait()
	nltest.WaitDAD(t, lab.Hosts[0].NS, lab.Hosts[1].NS, pods[0], pods[1])
	for i := range pods {
		if out, err := pods[i].Ping(podIPs[1-i]); err != nil {
			t.Fatalf("pod %d cannot reach %s over IPv4: %v\n%s", i, podIPs[1-i], err, out)
		}
		if out, err := pods[i].Ping(podIPs6[1-i]); err != nil {
			for _, h := range lab.Hosts {
				for _, args := range [][]string{{"-6", "route"}, {"-6", "neigh"}, {"-6", "addr"}, {"-s", "link", "show", "weft-v6.1"}} {
					t.Logf("%s: ip %s:\n%s", h.Name, strings.Join(args, " "), h.IP(t, args...))
				}
				out, _ := h.Exec("bridge", "fdb", "show", "dev", "weft-v6.1")
				t.Logf("%s: fdb:\n%s", h.Name, out)
				out, _ = h.Exec("sysctl", "net.ipv6.conf.all.forwarding", "net.ipv6.conf.weft-v6/1.disable_ipv6")
				t.Logf("%s: %s", h.Name, out)
			}
			t.Fatalf("pod %d cannot reach %s over IPv6: %v\n%s", i, podIPs6[1-i], err, out)
		}
	}
	l, _ := lab.Hosts[0].NL.LinkByName("weft-v6.1")
	if s := l.Attrs().Statistics; s == nil || s.TxPackets == 0 || s.RxPackets == 0 {
		t.Fatalf("weft-v6.1 statistics show no traffic: %+v", s)
	}
}
