package doctor

import (
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
	in := Input{Config: cfg, Leases: append([]subnet.Lease{own}, peers...), SubnetFile: file}
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
