package plugin

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weftnet/weft/cni-plugin/ipam"
)

// fakeNAT is a nat table in memory that fails where iptables fails: a rule
// in or to a missing chain, deleting a rule that is not there, deleting a
// chain that is still jumped to.
type fakeNAT struct {
	chains  map[string][][]string
	custom  []string // user chains, in creation order
	changes int
}

var _ natTable = (*fakeNAT)(nil)

var builtinChains = []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}

func newFakeNAT() *fakeNAT {
	f := &fakeNAT{chains: map[string][][]string{}}
	for _, c := range builtinChains {
		f.chains[c] = nil
	}
	return f
}

func (f *fakeNAT) Rules() ([]string, error) {
	var out []string
	for _, c := range builtinChains {
		out = append(out, "-P "+c+" ACCEPT")
	}
	for _, c := range f.custom {
		out = append(out, "-N "+c)
	}
	for _, c := range append(slices.Clone(builtinChains), f.custom...) {
		for _, r := range f.chains[c] {
			words := make([]string, len(r))
			for i, w := range r {
				if strings.Contains(w, " ") {
					w = `"` + w + `"`
				}
				words[i] = w
			}
			out = append(out, "-A "+c+" "+strings.Join(words, " "))
		}
	}
	return append(out, ""), nil
}

func (f *fakeNAT) ClearChain(c string) error {
	f.changes++
	if _, ok := f.chains[c]; !ok {
		f.custom = append(f.custom, c)
	}
	f.chains[c] = nil
	return nil
}

func (f *fakeNAT) Append(c string, rule ...string) error {
	f.changes++
	if _, ok := f.chains[c]; !ok {
		return fmt.Errorf("append to %s: no such chain", c)
	}
	if t := ruleArg(rule, "-j"); len(t) == 1 && strings.HasPrefix(t[0], "WEFT-") {
		if _, ok := f.chains[t[0]]; !ok {
			return fmt.Errorf("append to %s: no chain/target %s", c, t[0])
		}
	}
	f.chains[c] = append(f.chains[c], slices.Clone(rule))
	return nil
}

func (f *fakeNAT) Delete(c string, rule ...string) error {
	f.changes++
	i := slices.IndexFunc(f.chains[c], func(r []string) bool { return slices.Equal(r, rule) })
	if i < 0 {
		return fmt.Errorf("delete from %s: bad rule (does a matching rule exist in that chain?)", c)
	}
	f.chains[c] = slices.Delete(f.chains[c], i, i+1)
	return nil
}

func (f *fakeNAT) DeleteChain(c string) error {
	f.changes++
	for _, rules := range f.chains {
		for _, r := range rules {
			if slices.Equal(ruleArg(r, "-j"), []string{c}) {
				return fmt.Errorf("delete chain %s: still referenced", c)
			}
		}
	}
	delete(f.chains, c)
	f.custom = slices.DeleteFunc(f.custom, func(s string) bool { return s == c })
	return nil
}

// reload is what a firewall reload does: flush every chain and delete the
// user chains (iptables -t nat -F; iptables -t nat -X).
func (f *fakeNAT) reload() {
	for c := range f.chains {
		f.chains[c] = nil
	}
	for _, c := range f.custom {
		delete(f.chains, c)
	}
	f.custom = nil
}

func newTestMasq(t *testing.T) (*masq, *fakeNAT, *ipam.Store) {
	t.Helper()
	store, err := ipam.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	nat := newFakeNAT()
	return &masq{nat: nat, randomFully: func() bool { return true }, network: "weft", chain: MasqChain("weft")}, nat, store
}

var (
	cluster = netip.MustParsePrefix("198.18.0.0/16")
	lease1  = netip.MustParsePrefix("198.18.5.0/24")
	lease2  = netip.MustParsePrefix("198.18.7.0/24")
)

// assertRules checks that the table holds the chain with exactly its rules
// and exactly one jump for each of subs, and nothing else of ours.
func assertRules(t *testing.T, m *masq, nat *fakeNAT, subs ...netip.Prefix) {
	t.Helper()
	if got, want := nat.chains[m.chain], m.chainRules(cluster, true); !slices.EqualFunc(got, want, slices.Equal[[]string]) {
		t.Errorf("chain %s holds %q, want %q", m.chain, got, want)
	}
	var want [][]string
	for _, s := range subs {
		want = append(want, m.jump(s.String()))
	}
	got := nat.chains["POSTROUTING"]
	slices.SortFunc(got, func(a, b []string) int { return strings.Compare(strings.Join(a, " "), strings.Join(b, " ")) })
	if !slices.EqualFunc(got, want, slices.Equal[[]string]) {
		t.Errorf("POSTROUTING holds %q, want %q", got, want)
	}
}

// TestMasqRestoresRemovedRules: whatever removed or changed the rules
// after the first ADD, the next ADD (or CHECK) puts back exactly the
// wanted rules, says it restored them, and a further call changes nothing.
func TestMasqRestoresRemovedRules(t *testing.T) {
	damages := []struct {
		name   string
		damage func(m *masq, nat *fakeNAT)
	}{
		{"firewall reload", func(m *masq, nat *fakeNAT) { nat.reload() }},
		{"POSTROUTING flushed", func(m *masq, nat *fakeNAT) { nat.chains["POSTROUTING"] = nil }},
		{"chain flushed", func(m *masq, nat *fakeNAT) { nat.chains[m.chain] = nil }},
		{"jump duplicated", func(m *masq, nat *fakeNAT) { nat.Append("POSTROUTING", m.jump(lease1.String())...) }},
		{"chain rule changed", func(m *masq, nat *fakeNAT) { nat.chains[m.chain][0] = []string{"-d", "192.0.2.0/24", "-j", "RETURN"} }},
		{"jump without source", func(m *masq, nat *fakeNAT) { nat.Append("POSTROUTING", "-j", m.chain) }},
	}
	for _, d := range damages {
		t.Run(d.name, func(t *testing.T) {
			m, nat, store := newTestMasq(t)
			fixed, err := ensureMasq(store, m, cluster, lease1)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range fixed {
				if f.Restored {
					t.Errorf("first ADD reports %q as restored", f.What)
				}
			}
			assertRules(t, m, nat, lease1)
			d.damage(m, nat)
			if ok, err := m.inPlace(store, cluster, lease1); ok || err != nil {
				t.Fatalf("inPlace after %s: %v %v, want false", d.name, ok, err)
			}
			fixed, err = ensureMasq(store, m, cluster, lease1)
			if err != nil {
				t.Fatal(err)
			}
			if len(fixed) == 0 || !slices.ContainsFunc(fixed, func(f masqFix) bool { return f.Restored }) {
				t.Errorf("repair after %s reported %v, want a restoration", d.name, fixed)
			}
			assertRules(t, m, nat, lease1)
			// Idempotent: nothing left to do, and nothing done.
			before := nat.changes
			fixed, err = ensureMasq(store, m, cluster, lease1)
			if err != nil || len(fixed) != 0 || nat.changes != before {
				t.Fatalf("second repair: fixed %v err %v, %d changes", fixed, err, nat.changes-before)
			}
			assertRules(t, m, nat, lease1)
		})
	}
}

// TestMasqRestoresEarlierSubnets: after a lease change, pods of the old
// subnet remain, so a reload restores the old subnet's jump as well.
func TestMasqRestoresEarlierSubnets(t *testing.T) {
	m, nat, store := newTestMasq(t)
	for _, l := range []netip.Prefix{lease1, lease2} {
		if _, err := ensureMasq(store, m, cluster, l); err != nil {
			t.Fatal(err)
		}
	}
	assertRules(t, m, nat, lease1, lease2)
	nat.reload()
	if _, err := ensureMasq(store, m, cluster, lease2); err != nil {
		t.Fatal(err)
	}
	assertRules(t, m, nat, lease1, lease2)
	// The last DEL removes every jump, even a duplicate, and the chain.
	nat.Append("POSTROUTING", m.jump(lease2.String())...)
	if err := store.Do(func(*ipam.Tx) error { return m.remove(store) }); err != nil {
		t.Fatal(err)
	}
	if len(nat.chains["POSTROUTING"]) != 0 || slices.Contains(nat.custom, m.chain) {
		t.Fatalf("after remove: POSTROUTING %q, chains %q", nat.chains["POSTROUTING"], nat.custom)
	}
	if _, ok := readMasqState(store, "weft", false); ok {
		t.Fatal("marker left after remove")
	}
}

func TestSplitRule(t *testing.T) {
	got := splitRule(`-A POSTROUTING -s 198.18.5.0/24 -m comment --comment "weft my net" -j WEFT-MASQ-0A1B2C3D`)
	want := []string{"-A", "POSTROUTING", "-s", "198.18.5.0/24", "-m", "comment", "--comment", "weft my net", "-j", "WEFT-MASQ-0A1B2C3D"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if got := splitRule(`-A X -m comment --comment "a \"b\" c"`); got[len(got)-1] != `a "b" c` {
		t.Fatalf("escaped quotes: %q", got)
	}
}
