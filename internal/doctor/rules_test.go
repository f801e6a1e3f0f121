package doctor

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	nft "github.com/google/nftables"

	"github.com/weftnet/weft/internal/nftables"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nlfake"
	"github.com/weftnet/weft/subnet"
)

// fakeNFT holds tables as nftables.Kernel does, in memory.
type fakeNFT struct{ tables map[string]nftables.Table }

func (k *fakeNFT) Read(f nft.TableFamily, name string) (nftables.Table, bool, error) {
	t, ok := k.tables[name]
	return t, ok, nil
}
func (k *fakeNFT) Replace(t nftables.Table) error                 { k.tables[t.Name] = t; return nil }
func (k *fakeNFT) Delete(nft.TableFamily, string) error           { return nil }
func (k *fakeNFT) ForwardDrops(nft.TableFamily) ([]string, error) { return nil, nil }

// hostGWHost is a healthy host-gw host in a fake namespace, without rules.
func hostGWHost(t *testing.T) (Input, *nlfake.NS) {
	f := nlfake.New()
	eth0 := f.AddDevice("eth0", 1500, netip.MustParsePrefix("192.0.2.11/24"))
	peer := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.2.0/24"), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.12"), BackendType: "host-gw"}}
	if err := f.RouteTable(netip.Prefix{}, 87).ReplaceAll([]nl.RouteSpec{{Dst: peer.Subnet, Gw: peer.Attrs.PublicIP, LinkIndex: eth0}})[0]; err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "subnet.env")
	cfg, _ := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","Backend":{"Type":"host-gw"}}`))
	if err := subnet.WriteEnvFile(file, subnet.Env{Network: cfg.Network, Subnet: netip.MustParsePrefix("198.18.1.1/24"), MTU: 1500}); err != nil {
		t.Fatal(err)
	}
	own := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.1.0/24"), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.11"), BackendType: "host-gw"}}
	return Input{Config: cfg, Leases: []*subnet.Lease{&own, &peer}, SubnetFile: file, Forward: true}, f
}

// TestDoctorNFTablesMode: on a host in nftables mode the doctor reads
// table ip weft, not the iptables chains: weftd's table is healthy (with or
// without fully random masquerade), a missing or changed table is a problem.
func TestDoctorNFTablesMode(t *testing.T) {
	in, f := hostGWHost(t)
	masq := true
	in.Masq = &masq
	in.Rules = "nftables"
	k := &fakeNFT{tables: map[string]nftables.Table{}}
	in.NFTables = k
	pol := nftables.Policy{Network: netip.MustParsePrefix("198.18.0.0/16"), Lease: netip.MustParsePrefix("198.18.1.0/24"), Masq: true, Forward: true, FullyRandom: true}

	rep, err := check(in, f)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 1 || rep.Problems[0].Area != "nftables" || !strings.Contains(rep.Problems[0].What, "table ip weft is missing") {
		t.Fatalf("without the table:\n%s", rep.Format())
	}
	for _, random := range []bool{true, false} {
		pol.FullyRandom = random
		k.Replace(nftables.Desired(pol))
		if rep, _ = check(in, f); !rep.OK() {
			t.Fatalf("weftd's table (fully random %v):\n%s", random, rep.Format())
		}
	}
	pol.Forward = false // the forward chain gone
	k.Replace(nftables.Desired(pol))
	if rep, _ = check(in, f); len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0].What, "does not hold the expected rules") {
		t.Fatalf("table without its forward chain:\n%s", rep.Format())
	}
	// --ip-masq-fully-random-disable: a fully random table is wrong.
	in.PlainMasq = true
	pol.Forward, pol.FullyRandom = true, true
	k.Replace(nftables.Desired(pol))
	if rep, _ = check(in, f); rep.OK() {
		t.Fatalf("a fully random table with fully random disabled passed:\n%s", rep.Format())
	}
}

// TestDoctorWeftdDown: when weftd does not answer, the report says so
// first, and no fix promises that weftd restores anything.
func TestDoctorWeftdDown(t *testing.T) {
	in, f := hostGWHost(t)
	f.RemoveRoute(netip.MustParsePrefix("198.18.2.0/24"))
	in.Rules = "nftables"
	in.NFTables = &fakeNFT{tables: map[string]nftables.Table{}}
	rep, err := check(in, f)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 2 || !strings.Contains(rep.Format(), "weftd restores") {
		t.Fatalf("weftd up:\n%s", rep.Format())
	}
	in.WeftdDown = "connection refused"
	rep, _ = check(in, f)
	out := rep.Format()
	if len(rep.Problems) != 2 || !strings.HasPrefix(out, "weftd is not answering (connection refused)") || strings.Contains(out, "weftd restores") {
		t.Fatalf("weftd down:\n%s", out)
	}
	for _, p := range rep.Problems {
		if !strings.HasPrefix(p.Fix, "weftd is not answering, so nothing restores this") {
			t.Errorf("fix %q", p.Fix)
		}
	}
}
