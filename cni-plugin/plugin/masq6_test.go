package plugin

import (
	"net/netip"
	"slices"
	"testing"

	nft "github.com/google/nftables"

	"github.com/weftnet/weft/cni-plugin/ipam"
	"github.com/weftnet/weft/internal/nftables"
	"github.com/weftnet/weft/internal/nftables/nfttest"
)

var (
	cluster6 = netip.MustParsePrefix("2001:db8:100::/48")
	lease6   = netip.MustParsePrefix("2001:db8:100:59::/64")
)

// TestMasqIPv6Rules: the IPv6 chain returns for the IPv6 cluster network
// and for ff00::/8, and each family keeps its own marker, so removing one
// family's rules leaves the other's.
func TestMasqIPv6Rules(t *testing.T) {
	m4, nat4, store := newTestMasq(t)
	nat6 := newFakeNAT()
	m6 := &masq{nat: nat6, randomFully: func() bool { return true }, network: "weft", chain: MasqChain("weft"), v6: true}
	if _, err := ensureMasq(store, m4, cluster, lease1); err != nil {
		t.Fatal(err)
	}
	if _, err := ensureMasq(store, m6, cluster6, lease6); err != nil {
		t.Fatal(err)
	}
	want6 := [][]string{
		{"-d", "2001:db8:100::/48", "-j", "RETURN"},
		{"-d", "ff00::/8", "-j", "RETURN"},
		{"-j", "MASQUERADE", "--random-fully"},
	}
	if got := nat6.chains[m6.chain]; !slices.EqualFunc(got, want6, slices.Equal[[]string]) {
		t.Fatalf("IPv6 chain holds %q, want %q", got, want6)
	}
	if got := nat6.chains["POSTROUTING"]; len(got) != 1 || !slices.Equal(got[0], m6.jump(lease6.String())) {
		t.Fatalf("IPv6 POSTROUTING holds %q", got)
	}
	assertRules(t, m4, nat4, lease1)
	st4, ok4 := readMasqState(store, "weft", false)
	st6, ok6 := readMasqState(store, "weft", true)
	if !ok4 || !ok6 || st4.Network != cluster.String() || st6.Network != cluster6.String() || !slices.Equal(st6.Subnets, []string{lease6.String()}) {
		t.Fatalf("markers: %+v %v / %+v %v", st4, ok4, st6, ok6)
	}
	if err := store.Do(func(*ipam.Tx) error { return m6.remove(store) }); err != nil {
		t.Fatal(err)
	}
	if _, ok := readMasqState(store, "weft", true); ok || len(nat6.chains["POSTROUTING"]) != 0 {
		t.Fatal("IPv6 rules or marker left after remove")
	}
	if ok, err := m4.inPlace(store, cluster, lease1); !ok || err != nil {
		t.Fatalf("removing the IPv6 rules disturbed the IPv4 ones: %v %v", ok, err)
	}
}

// TestNFTMasqIPv6Table: in nftables mode the IPv6 rules are a table ip6 of
// the same name, which a deletion does not hide from the next ensure.
func TestNFTMasqIPv6Table(t *testing.T) {
	store, err := ipam.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	k := nfttest.New()
	m4, m6 := newNFTMasq("weft", k, false), newNFTMasq("weft", k, true)
	for _, c := range []struct {
		m        *nftMasq
		net, sub netip.Prefix
	}{{m4, cluster, lease1}, {m6, cluster6, lease6}} {
		if _, err := ensureMasq(store, c.m, c.net, c.sub); err != nil {
			t.Fatal(err)
		}
	}
	key6 := nfttest.Key(nft.TableFamilyIPv6, m6.table)
	want := nftables.PodMasq(m6.table, "weft weft", cluster6, []netip.Prefix{lease6}, true)
	if have, ok := k.Tables[key6]; !ok || !nftables.Equal(have, want) || have.Family != nft.TableFamilyIPv6 {
		t.Fatalf("table ip6 (present %v):\n%s\nwant\n%s", ok, have, want)
	}
	assertTable(t, m4, k, lease1)
	delete(k.Tables, key6)
	fixed, err := ensureMasq(store, m6, cluster6, lease6)
	if err != nil || len(fixed) != 1 || !fixed[0].Restored {
		t.Fatalf("repair of the deleted ip6 table: %v %v", fixed, err)
	}
	if err := store.Do(func(*ipam.Tx) error { return m6.remove(store) }); err != nil {
		t.Fatal(err)
	}
	if _, ok := k.Tables[key6]; ok {
		t.Fatal("table ip6 left after remove")
	}
	assertTable(t, m4, k, lease1)
}
