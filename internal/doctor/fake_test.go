package doctor

import (
	"encoding/base64"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nlfake"
	"github.com/weftnet/weft/subnet"
)

var _ kernel = (*nlfake.NS)(nil)

// TestDoctorHostGWFake checks a host-gw host without root: the routes the
// backend would program, in a fake namespace, are found healthy; a peer
// reached over a point-to-point address counts as on-link, as it does for
// weftd; and a route behind NAT's default route is found.
func TestDoctorHostGWFake(t *testing.T) {
	f := nlfake.New()
	eth0 := f.AddDevice("eth0", 1500, netip.MustParsePrefix("192.0.2.11/24"))
	if err := f.AddPeerAddr(eth0, netip.MustParseAddr("10.9.0.1"), netip.MustParsePrefix("10.9.0.2/32")); err != nil {
		t.Fatal(err)
	}
	tbl := f.RouteTable(netip.Prefix{}, 87)
	lease := func(sn, ip string) subnet.Lease {
		return subnet.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr(ip), BackendType: "host-gw"}}
	}
	peers := []subnet.Lease{lease("198.18.2.0/24", "192.0.2.12"), lease("198.18.3.0/24", "10.9.0.2")}
	for _, p := range peers {
		if err := tbl.ReplaceAll([]nl.RouteSpec{{Dst: p.Subnet, Gw: p.Attrs.PublicIP, LinkIndex: eth0}})[0]; err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(t.TempDir(), "subnet.env")
	cfg, _ := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","Backend":{"Type":"host-gw"}}`))
	if err := subnet.WriteEnvFile(file, subnet.Env{Network: cfg.Network, Subnet: netip.MustParsePrefix("198.18.1.1/24"), MTU: 1500}); err != nil {
		t.Fatal(err)
	}
	own := lease("198.18.1.0/24", "192.0.2.11")
	in := Input{Config: cfg, Leases: subnet.Pointers(append([]subnet.Lease{own}, peers...)), SubnetFile: file}
	rep, err := check(in, f)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Interface != "eth0" || rep.Peers != 2 {
		t.Fatalf("healthy host:\n%s", rep.Format())
	}

	f.RemoveRoute(peers[1].Subnet)
	rep, _ = check(in, f)
	if len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0].What, "198.18.3.0/24 via 10.9.0.2 dev eth0 is missing") {
		t.Fatalf("after deleting the route to the point-to-point peer:\n%s", rep.Format())
	}

	// Behind NAT our PublicIP is no address of the host: the doctor takes
	// the interface of the default route.
	f.PutRoute(nl.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("192.0.2.1"), LinkIndex: eth0,
		Protocol: unix.RTPROT_BOOT, Type: unix.RTN_UNICAST})
	in.PublicIP = netip.MustParseAddr("203.0.113.7")
	in.Leases[0].Attrs.PublicIP = in.PublicIP
	rep, _ = check(in, f)
	if rep.Interface != "eth0" {
		t.Fatalf("behind NAT:\n%s", rep.Format())
	}
}

// TestDoctorWireGuardFake: the wireguard device's peers are compared with
// the leases: a missing peer, a stale (rotated) key, a wrong endpoint and
// wrong allowed IPs are each one problem; a healthy device none.
func TestDoctorWireGuardFake(t *testing.T) {
	f := nlfake.New()
	f.AddDevice("eth0", 1500, netip.MustParsePrefix("192.0.2.11/24"))
	wg := f.AddDevice("weft-wg", 1420, netip.MustParsePrefix("198.18.1.0/32"))
	if err := f.ReplaceRoute(nl.RouteSpec{Dst: netip.MustParsePrefix("198.18.0.0/16"), LinkIndex: wg}, 87); err != nil {
		t.Fatal(err)
	}
	key := func(b byte) [32]byte { var k [32]byte; k[0] = b; k[31] = 1; return k }
	lease := func(sn, ip string, k [32]byte) subnet.Lease {
		return subnet.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr(ip), BackendType: "wireguard",
			BackendData: []byte(`{"PublicKey":"` + base64.StdEncoding.EncodeToString(k[:]) + `","Port":51820}`)}}
	}
	peers := []subnet.Lease{lease("198.18.2.0/24", "192.0.2.12", key(2)), lease("198.18.3.0/24", "192.0.2.13", key(3))}
	file := filepath.Join(t.TempDir(), "subnet.env")
	cfg, _ := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","Backend":{"Type":"wireguard"}}`))
	if err := subnet.WriteEnvFile(file, subnet.Env{Network: cfg.Network, Subnet: netip.MustParsePrefix("198.18.1.1/24"), MTU: 1420}); err != nil {
		t.Fatal(err)
	}
	device := []WireGuardPeer{
		{PublicKey: key(2), Endpoint: netip.MustParseAddrPort("192.0.2.12:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}},
		{PublicKey: key(3), Endpoint: netip.MustParseAddrPort("192.0.2.13:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("198.18.3.0/24")}},
	}
	in := Input{Config: cfg, Leases: subnet.Pointers(append([]subnet.Lease{lease("198.18.1.0/24", "192.0.2.11", key(1))}, peers...)), SubnetFile: file,
		WireGuardPeers: func(dev string) ([]WireGuardPeer, error) {
			if dev != "weft-wg" {
				t.Errorf("read peers of %q", dev)
			}
			return device, nil
		}}
	rep, err := check(in, f)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Peers != 2 {
		t.Fatalf("healthy host:\n%s", rep.Format())
	}
	good := append([]WireGuardPeer(nil), device...)
	for _, tc := range []struct {
		name   string
		damage func()
		want   string
	}{
		{"peer missing", func() { device = device[:1] }, "is missing from weft-wg"},
		{"key rotated, old key left", func() { device[1].PublicKey = key(9) }, "belongs to no valid lease"},
		{"wrong endpoint", func() { device[0].Endpoint = netip.MustParseAddrPort("192.0.2.99:51820") }, "has endpoint 192.0.2.99:51820"},
		{"wrong allowed IPs", func() { device[0].AllowedIPs = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")} }, "allows [198.18.0.0/16]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			device = append([]WireGuardPeer(nil), good...)
			for i := range device {
				device[i].AllowedIPs = append([]netip.Prefix(nil), good[i].AllowedIPs...)
			}
			tc.damage()
			rep, err := check(in, f)
			if err != nil {
				t.Fatal(err)
			}
			var found bool
			for _, p := range rep.Problems {
				found = found || (p.Area == "wireguard" && strings.Contains(p.What, tc.want))
			}
			if !found {
				t.Fatalf("no wireguard problem saying %q:\n%s", tc.want, rep.Format())
			}
		})
	}
}
