package doctor

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/nl/nltest"
	"github.com/weftnet/weft/subnet"
)

func vxLease(t *testing.T, sn, ip, mac string) subnet.Lease {
	t.Helper()
	return subnet.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: subnet.LeaseAttrs{
		PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan",
		BackendData: []byte(`{"VNI":1,"VtepMAC":"` + mac + `"}`),
	}}
}

// TestDoctorVXLAN builds by hand, in a throwaway namespace, exactly what
// weftd would program for two peers, then damages it piece by piece and
// checks that the doctor reports exactly each damage.
func TestDoctorVXLAN(t *testing.T) {
	ns := nltest.NewNS(t, "doc")
	ns.IP(t, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	ns.IP(t, "link", "set", "eth0p", "up")
	ns.IP(t, "addr", "add", "192.0.2.11/24", "dev", "eth0")
	ns.IP(t, "link", "set", "eth0", "up")
	ns.IP(t, "link", "add", "weft.1", "type", "vxlan", "id", "1", "dstport", "8472", "nolearning", "local", "192.0.2.11", "dev", "eth0")
	ns.IP(t, "link", "set", "weft.1", "mtu", "1450", "up")
	ns.IP(t, "addr", "add", "198.18.1.0/32", "dev", "weft.1")
	peers := []subnet.Lease{
		vxLease(t, "198.18.2.0/24", "192.0.2.12", "aa:bb:cc:00:00:02"),
		vxLease(t, "198.18.3.0/24", "192.0.2.13", "aa:bb:cc:00:00:03"),
	}
	for _, p := range peers {
		_, mac, _ := subnet.ParseVXLANData(p.Attrs.BackendData)
		na := p.Subnet.Addr().String()
		ns.IP(t, "neigh", "replace", na, "lladdr", mac.String(), "dev", "weft.1", "nud", "permanent")
		nltest.Cmd(t, "bridge", "-n", ns.Name, "fdb", "replace", mac.String(), "dev", "weft.1", "dst", p.Attrs.PublicIP.String(), "self", "permanent")
		ns.IP(t, "route", "replace", p.Subnet.String(), "via", na, "dev", "weft.1", "onlink", "proto", "87")
	}
	file := filepath.Join(t.TempDir(), "subnet.env")
	cfg, _ := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan"}}`))
	if err := subnet.WriteEnvFile(file, subnet.Env{Network: cfg.Network, Subnet: netip.MustParsePrefix("198.18.1.1/24"), MTU: 1450}); err != nil {
		t.Fatal(err)
	}
	own := vxLease(t, "198.18.1.0/24", "192.0.2.11", "aa:bb:cc:00:00:01")
	garbage := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.9.0/24"), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("127.0.0.1"), BackendType: "vxlan"}}
	in := Input{Config: cfg, Leases: subnet.Pointers(append([]subnet.Lease{own, garbage}, peers...)), Netns: ns.Handle, SubnetFile: file}

	check := func() Report {
		t.Helper()
		rep, err := Check(in)
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return rep
	}
	expect := func(step string, wantAreas ...string) {
		t.Helper()
		rep := check()
		var got []string
		for _, p := range rep.Problems {
			got = append(got, p.Area)
		}
		if strings.Join(got, ",") != strings.Join(wantAreas, ",") {
			t.Fatalf("%s: problems %v, want areas %v\n%s", step, got, wantAreas, rep.Format())
		}
	}

	rep := check()
	if !rep.OK() || rep.Lease != "198.18.1.0/24" || rep.Peers != 2 || rep.Interface != "eth0" {
		t.Fatalf("healthy host:\n%s", rep.Format())
	}
	if len(rep.Refused) != 1 || rep.Refused[0].Key != "198.18.9.0-24" || rep.Refused[0].Reason != subnet.RefusedInvalid {
		t.Fatalf("the broken lease is not listed as refused: %+v", rep.Refused)
	}

	// A lease that copies a peer's VtepMAC: weftd keeps the older lease
	// and refuses this one; the doctor says so as a problem, and checks
	// the kernel for the winner only.
	thief := vxLease(t, "198.18.4.0/24", "192.0.2.14", "aa:bb:cc:00:00:02")
	thief.CreateRevision = 100
	in.Leases = append(in.Leases, &thief)
	rep = check()
	if len(rep.Problems) != 1 || rep.Problems[0].Area != "lease" || !strings.Contains(rep.Problems[0].What, "198.18.4.0-24") ||
		!strings.Contains(rep.Problems[0].What, subnet.RefusedDuplicateMAC) || rep.Peers != 2 {
		t.Fatalf("duplicate VtepMAC:\n%s", rep.Format())
	}
	in.Leases = in.Leases[:len(in.Leases)-1]

	ns.IP(t, "route", "del", "198.18.3.0/24")
	rep = check()
	if len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0].What, "198.18.3.0/24 via 198.18.3.0 dev weft.1 onlink is missing") {
		t.Fatalf("after deleting one route:\n%s", rep.Format())
	}
	ns.IP(t, "route", "replace", "198.18.3.0/24", "via", "198.18.3.0", "dev", "weft.1", "onlink", "proto", "87")

	ns.IP(t, "neigh", "replace", "198.18.2.0", "lladdr", "aa:bb:cc:00:00:99", "dev", "weft.1", "nud", "permanent")
	expect("stale neighbour MAC", "neigh")
	ns.IP(t, "neigh", "replace", "198.18.2.0", "lladdr", "aa:bb:cc:00:00:02", "dev", "weft.1", "nud", "permanent")

	nltest.Cmd(t, "bridge", "-n", ns.Name, "fdb", "del", "aa:bb:cc:00:00:03", "dev", "weft.1", "self")
	expect("missing fdb", "fdb")
	nltest.Cmd(t, "bridge", "-n", ns.Name, "fdb", "replace", "aa:bb:cc:00:00:03", "dev", "weft.1", "dst", "192.0.2.13", "self", "permanent")

	ns.IP(t, "route", "replace", "198.18.77.0/24", "via", "198.18.77.0", "dev", "weft.1", "onlink", "proto", "87")
	expect("stale route", "route")
	ns.IP(t, "route", "del", "198.18.77.0/24")

	ns.IP(t, "link", "set", "weft.1", "mtu", "1400")
	expect("wrong MTU", "device")
	ns.IP(t, "link", "set", "weft.1", "mtu", "1450")

	if err := subnet.WriteEnvFile(file, subnet.Env{Network: cfg.Network, Subnet: netip.MustParsePrefix("198.18.5.1/24"), MTU: 1450}); err != nil {
		t.Fatal(err)
	}
	expect("subnet file for another lease", "subnet-file")

	ns.IP(t, "link", "del", "weft.1")
	expect("device deleted", "subnet-file", "device")
}

func TestDoctorNoLease(t *testing.T) {
	ns := nltest.NewNS(t, "doc")
	cfg, _ := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16"}`))
	rep, err := Check(Input{Config: cfg, Leases: subnet.Pointers([]subnet.Lease{vxLease(t, "198.18.2.0/24", "192.0.2.12", "aa:bb:cc:00:00:02")}), Netns: ns.Handle})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || rep.Problems[0].Area != "lease" {
		t.Fatalf("host without a lease:\n%s", rep.Format())
	}
}
