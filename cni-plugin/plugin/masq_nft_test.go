package plugin

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	nft "github.com/google/nftables"

	"github.com/weftnet/weft/cni-plugin/ipam"
	"github.com/weftnet/weft/internal/nftables"
	"github.com/weftnet/weft/internal/nftables/nfttest"
)

func newTestNFTMasq(t *testing.T) (*nftMasq, *nfttest.Kernel, *ipam.Store) {
	t.Helper()
	store, err := ipam.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	k := nfttest.New()
	return newNFTMasq("weft", k, false), k, store
}

func tableKey(m *nftMasq) string { return nfttest.Key(nft.TableFamilyIPv4, m.table) }

// assertTable checks that the network's table is exactly the masquerade
// chain and one jump for each of subs.
func assertTable(t *testing.T, m *nftMasq, k *nfttest.Kernel, subs ...netip.Prefix) {
	t.Helper()
	have, ok := k.Tables[tableKey(m)]
	want := nftables.PodMasq(m.table, "weft weft", cluster, subs, true)
	if !ok || !nftables.Equal(have, want) {
		t.Errorf("table (present %v):\n%s\nwant\n%s", ok, have, want)
	}
}

func TestMasqTableName(t *testing.T) {
	if got := MasqTable("weft"); got != "weft-cni-"+strings.ToLower(MasqChain("weft")[len("WEFT-MASQ-"):]) || len(got) != len("weft-cni-")+8 {
		t.Errorf("MasqTable = %q", got)
	}
	if MasqTable("a") == MasqTable("b") {
		t.Error("two networks share a table")
	}
}

// TestNFTMasqRestoresRemovedRules: whatever removed or changed the table
// after the first ADD, the next ADD (or CHECK) rebuilds exactly the wanted
// table, says it restored it, and a further call changes nothing.
func TestNFTMasqRestoresRemovedRules(t *testing.T) {
	damages := []struct {
		name   string
		damage func(m *nftMasq, k *nfttest.Kernel)
	}{
		{"table deleted", func(m *nftMasq, k *nfttest.Kernel) { delete(k.Tables, tableKey(m)) }},
		{"jump deleted", func(m *nftMasq, k *nfttest.Kernel) {
			tab := k.Tables[tableKey(m)]
			tab.Chains[1].Rules = nil
			k.Tables[tableKey(m)] = tab
		}},
		{"masquerade chain flushed", func(m *nftMasq, k *nfttest.Kernel) {
			tab := k.Tables[tableKey(m)]
			tab.Chains[0].Rules = nil
			k.Tables[tableKey(m)] = tab
		}},
		{"return rule changed", func(m *nftMasq, k *nfttest.Kernel) {
			tab := k.Tables[tableKey(m)]
			other := nftables.PodMasq(m.table, "weft weft", netip.MustParsePrefix("192.0.2.0/24"), nil, true)
			tab.Chains[0].Rules[0] = other.Chains[0].Rules[0]
			k.Tables[tableKey(m)] = tab
		}},
	}
	for _, d := range damages {
		t.Run(d.name, func(t *testing.T) {
			m, k, store := newTestNFTMasq(t)
			fixed, err := ensureMasq(store, m, cluster, lease1)
			if err != nil {
				t.Fatal(err)
			}
			if len(fixed) != 1 || fixed[0].Restored {
				t.Errorf("first ADD reported %v", fixed)
			}
			assertTable(t, m, k, lease1)
			if st, ok := readMasqState(store, "weft", false); !ok || st.Backend != masqNFTables {
				t.Errorf("marker %+v", st)
			}
			d.damage(m, k)
			if ok, err := m.inPlace(store, cluster, lease1); ok || err != nil {
				t.Fatalf("inPlace after %s: %v %v, want false", d.name, ok, err)
			}
			fixed, err = ensureMasq(store, m, cluster, lease1)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(fixed, func(f masqFix) bool { return f.Restored }) {
				t.Errorf("repair after %s reported %v, want a restoration", d.name, fixed)
			}
			assertTable(t, m, k, lease1)
			before := k.Replaces
			fixed, err = ensureMasq(store, m, cluster, lease1)
			if err != nil || len(fixed) != 0 || k.Replaces != before {
				t.Fatalf("second repair: fixed %v err %v, %d replaces", fixed, err, k.Replaces-before)
			}
		})
	}
}

// TestNFTMasqSubnets: a subnet change adds a jump (no restoration), a lost
// table comes back with both, a subnet found in the table is adopted, and
// the last DEL removes the table and the marker.
func TestNFTMasqSubnets(t *testing.T) {
	m, k, store := newTestNFTMasq(t)
	for _, l := range []netip.Prefix{lease1, lease2} {
		fixed, err := ensureMasq(store, m, cluster, l)
		if err != nil || len(fixed) != 1 || fixed[0].Restored {
			t.Fatalf("ADD for %s: %v %v", l, fixed, err)
		}
	}
	assertTable(t, m, k, lease1, lease2)
	delete(k.Tables, tableKey(m))
	if _, err := ensureMasq(store, m, cluster, lease2); err != nil {
		t.Fatal(err)
	}
	assertTable(t, m, k, lease1, lease2)

	lease3 := netip.MustParsePrefix("198.18.9.0/24")
	k.Tables[tableKey(m)] = nftables.PodMasq(m.table, "weft weft", cluster, []netip.Prefix{lease1, lease2, lease3}, true)
	if _, err := ensureMasq(store, m, cluster, lease2); err != nil {
		t.Fatal(err)
	}
	if st, _ := readMasqState(store, "weft", false); !slices.Contains(st.Subnets, lease3.String()) {
		t.Errorf("subnet found in the table not adopted: %v", st.Subnets)
	}
	if err := store.Do(func(*ipam.Tx) error { return m.remove(store) }); err != nil {
		t.Fatal(err)
	}
	if len(k.Tables) != 0 {
		t.Errorf("tables left after remove: %v", k.Tables)
	}
	if _, ok := readMasqState(store, "weft", false); ok {
		t.Error("marker left after remove")
	}
}

// TestNFTMasqPlain: a kernel without fully-random masquerade gets plain
// masquerade, which then counts as in place.
func TestNFTMasqPlain(t *testing.T) {
	m, k, store := newTestNFTMasq(t)
	k.RefuseFullyRandom = true
	if _, err := ensureMasq(store, m, cluster, lease1); err != nil {
		t.Fatal(err)
	}
	if got := k.Tables[tableKey(m)].String(); strings.Contains(got, "fully-random") || !strings.Contains(got, "masquerade") {
		t.Errorf("table:\n%s", got)
	}
	if ok, err := m.inPlace(store, cluster, lease1); !ok || err != nil {
		t.Errorf("inPlace with plain masquerade: %v %v", ok, err)
	}
}

// TestMasqModeSwitch: when weftd's mode changes, the next ADD moves the
// network's rules to the other backend and leaves none behind in the old
// one; the last DEL cleans both.
func TestMasqModeSwitch(t *testing.T) {
	ipt, nat, store := newTestMasq(t)
	k := nfttest.New()
	mm := &modeMasq{network: "weft", nft: newNFTMasq("weft", k, false), ipt: ipt}

	if _, err := ensureMasq(store, mm, cluster, lease1); err != nil {
		t.Fatal(err)
	}
	assertRules(t, ipt, nat, lease1)
	if len(k.Tables) != 0 {
		t.Fatalf("iptables mode made a table: %v", k.Tables)
	}

	mm.useNFT = true
	if ok, _ := mm.inPlace(store, cluster, lease1); ok {
		t.Fatal("inPlace right after the switch to nftables")
	}
	fixed, err := ensureMasq(store, mm, cluster, lease1)
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(fixed, func(f masqFix) bool { return f.Restored }) || !strings.Contains(fixed[0].What, "from iptables to nftables") {
		t.Errorf("switch reported %v", fixed)
	}
	assertTable(t, mm.nft, k, lease1)
	if len(nat.chains["POSTROUTING"]) != 0 || slices.Contains(nat.custom, ipt.chain) {
		t.Errorf("iptables rules left after the switch: POSTROUTING %q, chains %q", nat.chains["POSTROUTING"], nat.custom)
	}
	if ok, err := mm.inPlace(store, cluster, lease1); !ok || err != nil {
		t.Errorf("inPlace after the switch: %v %v", ok, err)
	}

	mm.useNFT = false
	if _, err := ensureMasq(store, mm, cluster, lease1); err != nil {
		t.Fatal(err)
	}
	assertRules(t, ipt, nat, lease1)
	if len(k.Tables) != 0 {
		t.Errorf("table left after the switch back: %v", k.Tables)
	}

	// Rules in both (a switch that failed halfway): the last DEL removes both.
	k.Tables[tableKey(mm.nft)] = nftables.PodMasq(mm.nft.table, "weft weft", cluster, []netip.Prefix{lease1}, true)
	if err := store.Do(func(*ipam.Tx) error { return mm.remove(store) }); err != nil {
		t.Fatal(err)
	}
	if len(k.Tables) != 0 || len(nat.chains["POSTROUTING"]) != 0 || slices.Contains(nat.custom, ipt.chain) {
		t.Errorf("after remove: tables %v, POSTROUTING %q, chains %q", k.Tables, nat.chains["POSTROUTING"], nat.custom)
	}
}
