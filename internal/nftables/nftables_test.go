package nftables

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	nft "github.com/google/nftables"
	"github.com/google/nftables/expr"
)

var (
	network = netip.MustParsePrefix("198.18.0.0/16")
	lease   = netip.MustParsePrefix("198.18.4.0/24")
)

// fakeKernel holds tables in memory. Replace stores a copy, so that a test
// changing the stored table (drift) does not change what Manager built.
type fakeKernel struct {
	tables   map[string]Table
	replaces int
	// refuseFullyRandom makes Replace fail for fully-random masquerade,
	// as an old kernel would.
	refuseFullyRandom bool
	drops             []string
}

func newFakeKernel() *fakeKernel { return &fakeKernel{tables: map[string]Table{}} }

func fkey(f nft.TableFamily, name string) string { return fmt.Sprint(f, "/", name) }

func (k *fakeKernel) Read(f nft.TableFamily, name string) (Table, bool, error) {
	t, ok := k.tables[fkey(f, name)]
	return clone(t), ok, nil
}

func (k *fakeKernel) Replace(t Table) error {
	if k.refuseFullyRandom {
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				if strings.Contains(Text(t.Family, r.Exprs), "fully-random") {
					return errors.New("netlink receive: operation not supported")
				}
			}
		}
	}
	k.replaces++
	k.tables[fkey(t.Family, t.Name)] = clone(t)
	return nil
}

func (k *fakeKernel) Delete(f nft.TableFamily, name string) error {
	delete(k.tables, fkey(f, name))
	return nil
}

func (k *fakeKernel) ForwardDrops(nft.TableFamily) ([]string, error) { return k.drops, nil }

func clone(t Table) Table {
	t.Chains = slices.Clone(t.Chains)
	for i := range t.Chains {
		t.Chains[i].Rules = slices.Clone(t.Chains[i].Rules)
	}
	return t
}

// fakeFallback is iptables' FORWARD chain: a policy and whether WEFT-FWD
// is there.
type fakeFallback struct {
	drop      bool
	installed netip.Prefix
}

func (f *fakeFallback) ForwardDrops() (bool, error) { return f.drop, nil }
func (f *fakeFallback) EnsureForward(n netip.Prefix) (bool, error) {
	if f.installed == n {
		return false, nil
	}
	f.installed = n
	return true, nil
}
func (f *fakeFallback) RemoveForward() error { f.installed = netip.Prefix{}; return nil }

func ruleTexts(t Table) map[string][]string {
	out := map[string][]string{}
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			out[c.Name] = append(out[c.Name], Text(t.Family, r.Exprs))
		}
	}
	return out
}

// TestDesired pins the policy: the rules of each chain, in nft's syntax,
// for each combination of rule sets and both families.
func TestDesired(t *testing.T) {
	masq4 := []string{
		"meta mark & 0x00004000 == 0x00004000 counter return",
		"ip saddr 198.18.0.0/16 ip daddr 198.18.0.0/16 counter return",
		"ip saddr != 198.18.0.0/16 ip daddr 198.18.4.0/24 counter return",
		"ip saddr 198.18.0.0/16 ip daddr != 224.0.0.0/4 counter masquerade fully-random",
		"ip saddr != 198.18.0.0/16 ip daddr 198.18.0.0/16 counter masquerade fully-random",
	}
	fwd4 := []string{"ip saddr 198.18.0.0/16 counter accept", "ip daddr 198.18.0.0/16 counter accept"}
	tests := []struct {
		name           string
		p              Policy
		family         nft.TableFamily
		postrtg, fwd   []string
		postrtgPresent bool
	}{
		{"both", Policy{Network: network, Lease: lease, Masq: true, Forward: true, FullyRandom: true}, nft.TableFamilyIPv4, masq4, fwd4, true},
		{"masq only", Policy{Network: network, Lease: lease, Masq: true, FullyRandom: true}, nft.TableFamilyIPv4, masq4, nil, true},
		{"forward only", Policy{Network: network, Lease: lease, Forward: true}, nft.TableFamilyIPv4, nil, fwd4, false},
		{"host bits ignored", Policy{Network: netip.MustParsePrefix("198.18.7.9/16"), Lease: netip.MustParsePrefix("198.18.4.1/24"), Forward: true}, nft.TableFamilyIPv4, nil, fwd4, false},
		{"plain masquerade", Policy{Network: network, Lease: lease, Masq: true}, nft.TableFamilyIPv4, []string{
			masq4[0], masq4[1], masq4[2],
			"ip saddr 198.18.0.0/16 ip daddr != 224.0.0.0/4 counter masquerade",
			"ip saddr != 198.18.0.0/16 ip daddr 198.18.0.0/16 counter masquerade",
		}, nil, true},
		{"ipv6", Policy{Network: netip.MustParsePrefix("2001:db8:100::/56"), Lease: netip.MustParsePrefix("2001:db8:100:5::/64"), Masq: true, Forward: true, FullyRandom: true}, nft.TableFamilyIPv6, []string{
			masq4[0],
			"ip6 saddr 2001:db8:100::/56 ip6 daddr 2001:db8:100::/56 counter return",
			"ip6 saddr != 2001:db8:100::/56 ip6 daddr 2001:db8:100:5::/64 counter return",
			"ip6 saddr 2001:db8:100::/56 ip6 daddr != ff00::/8 counter masquerade fully-random",
			"ip6 saddr != 2001:db8:100::/56 ip6 daddr 2001:db8:100::/56 counter masquerade fully-random",
		}, []string{"ip6 saddr 2001:db8:100::/56 counter accept", "ip6 daddr 2001:db8:100::/56 counter accept"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := Desired(tt.p)
			if tab.Family != tt.family || tab.Name != "weft" {
				t.Errorf("table %v %q, want family %v weft", tab.Family, tab.Name, tt.family)
			}
			got := ruleTexts(tab)
			if !slices.Equal(got[MasqChain], tt.postrtg) {
				t.Errorf("postrouting:\n%s\nwant\n%s", strings.Join(got[MasqChain], "\n"), strings.Join(tt.postrtg, "\n"))
			}
			if !slices.Equal(got[ForwardChain], tt.fwd) {
				t.Errorf("forward:\n%s\nwant\n%s", strings.Join(got[ForwardChain], "\n"), strings.Join(tt.fwd, "\n"))
			}
			if c, ok := tab.chain(MasqChain); ok != tt.postrtgPresent || ok && (*c.Hook != *nft.ChainHookPostrouting || *c.Priority != 100 || c.Type != nft.ChainTypeNAT) {
				t.Errorf("postrouting chain present %v, want %v; %+v", ok, tt.postrtgPresent, c)
			}
			if c, ok := tab.chain(ForwardChain); ok != (tt.fwd != nil) || ok && (*c.Hook != *nft.ChainHookForward || *c.Priority != 0 || c.Type != nft.ChainTypeFilter || *c.Policy != nft.ChainPolicyAccept) {
				t.Errorf("forward chain present %v, want %v; %+v", ok, tt.fwd != nil, c)
			}
		})
	}
}

// TestEqual: every difference that changes what the table does makes it
// unequal; chain order and counter values do not.
func TestEqual(t *testing.T) {
	base := func() Table {
		return Desired(Policy{Network: network, Lease: lease, Masq: true, Forward: true, FullyRandom: true})
	}
	drop := nft.ChainPolicyDrop
	prio := nft.ChainPriority(-5)
	tests := []struct {
		name  string
		edit  func(*Table)
		equal bool
	}{
		{"same", func(*Table) {}, true},
		{"chains swapped", func(t *Table) { t.Chains[0], t.Chains[1] = t.Chains[1], t.Chains[0] }, true},
		{"counter values", func(t *Table) { t.Chains[1].Rules[0].Exprs[3] = &expr.Counter{Packets: 7, Bytes: 700} }, true},
		{"rule removed", func(t *Table) { t.Chains[0].Rules = t.Chains[0].Rules[1:] }, false},
		{"rules reordered", func(t *Table) { r := t.Chains[1].Rules; r[0], r[1] = r[1], r[0] }, false},
		{"chain removed", func(t *Table) { t.Chains = t.Chains[:1] }, false},
		{"policy drop", func(t *Table) { t.Chains[1].Policy = &drop }, false},
		{"priority", func(t *Table) { t.Chains[1].Priority = &prio }, false},
		{"comment", func(t *Table) { t.Chains[1].Rules[0].Comment = "x" }, false},
		{"other prefix", func(t *Table) {
			t.Chains[1].Rules[0].Exprs = cat(addrMatch(nft.TableFamilyIPv4, src, netip.MustParsePrefix("198.18.0.0/15"), false), counted(verdict(expr.VerdictAccept)))
		}, false},
		{"verdict", func(t *Table) {
			t.Chains[1].Rules[0].Exprs[len(t.Chains[1].Rules[0].Exprs)-1] = verdict(expr.VerdictDrop)
		}, false},
		{"foreign expression", func(t *Table) {
			t.Chains[1].Rules[0].Exprs = append(t.Chains[1].Rules[0].Exprs[:0:0], append([]expr.Any{&expr.Log{}}, t.Chains[1].Rules[0].Exprs...)...)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := base(), clone(base())
			tt.edit(&b)
			if got := Equal(a, b); got != tt.equal {
				t.Errorf("Equal = %v, want %v\n%s\n%s", got, tt.equal, a, b)
			}
		})
	}
}

func TestText(t *testing.T) {
	fam := nft.TableFamilyIPv4
	tests := []struct {
		exprs []expr.Any
		want  string
	}{
		{addrMatch(fam, dst, netip.MustParsePrefix("192.0.2.7/32"), true), "ip daddr != 192.0.2.7"},
		{[]expr.Any{&expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, &expr.Bitwise{Len: 4, Mask: []byte{255, 0, 255, 0}, Xor: make([]byte, 4)}, &expr.Cmp{Data: []byte{10, 0, 1, 0}}}, "ip saddr & ff00ff00 10.0.1.0"},
		{[]expr.Any{&expr.Payload{Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}, &expr.Cmp{Data: []byte{0, 53}}}, "@base2,16,16 0035"},
		{[]expr.Any{verdict(expr.VerdictJump)}, "jump "},
		{[]expr.Any{&expr.Masq{Random: true, Persistent: true}}, "masquerade random persistent"},
	}
	for _, tt := range tests {
		if got := Text(fam, tt.exprs); got != tt.want {
			t.Errorf("Text = %q, want %q", got, tt.want)
		}
	}
}

// TestManagerFake drives the manager against the fake kernel: install,
// idempotence, drift of each kind counted as one repair, a network change
// not counted, and removal.
func TestManagerFake(t *testing.T) {
	k := newFakeKernel()
	m := NewManager(k, Config{Masq: true, Forward: true})
	if n, err := m.Ensure(); n != 0 || err != nil || k.replaces != 0 {
		t.Fatalf("Ensure before Set: %d %v, %d replaces", n, err, k.replaces)
	}
	if err := m.Set(network, lease); err != nil {
		t.Fatal(err)
	}
	want, _ := m.Want()
	key := fkey(nft.TableFamilyIPv4, "weft")
	if !Equal(k.tables[key], want) || k.replaces != 1 {
		t.Fatalf("after Set (%d replaces):\n%s", k.replaces, k.tables[key])
	}
	if n, err := m.Ensure(); n != 0 || err != nil || k.replaces != 1 {
		t.Fatalf("second Ensure: fixed %d, err %v, %d replaces", n, err, k.replaces)
	}
	damages := []struct {
		name string
		do   func()
	}{
		{"table deleted", func() { delete(k.tables, key) }},
		{"rule deleted", func() { tab := k.tables[key]; tab.Chains[0].Rules = tab.Chains[0].Rules[1:]; k.tables[key] = tab }},
		{"chain deleted", func() { tab := k.tables[key]; tab.Chains = tab.Chains[1:]; k.tables[key] = tab }},
		{"rule added", func() {
			tab := k.tables[key]
			tab.Chains[1].Rules = append(tab.Chains[1].Rules, Rule{Exprs: counted(verdict(expr.VerdictDrop))})
			k.tables[key] = tab
		}},
	}
	for i, d := range damages {
		d.do()
		if n, err := m.Ensure(); n != 1 || err != nil {
			t.Errorf("%s: Ensure fixed %d, err %v", d.name, n, err)
		}
		if !Equal(k.tables[key], want) {
			t.Errorf("%s: not restored:\n%s", d.name, k.tables[key])
		}
		if m.Repairs() != uint64(i+1) {
			t.Errorf("%s: Repairs() = %d, want %d", d.name, m.Repairs(), i+1)
		}
	}
	// A new network replaces the table without counting a repair.
	before := m.Repairs()
	if err := m.Set(netip.MustParsePrefix("198.19.0.0/16"), netip.MustParsePrefix("198.19.1.0/24")); err != nil {
		t.Fatal(err)
	}
	if got := k.tables[key].String(); strings.Contains(got, "198.18.") || !strings.Contains(got, "198.19.0.0/16") || m.Repairs() != before {
		t.Errorf("after a network change (repairs %d, was %d):\n%s", m.Repairs(), before, got)
	}
	if err := Remove(k); err != nil {
		t.Fatal(err)
	}
	if ok, _ := Present(k); ok || len(k.tables) != 0 {
		t.Errorf("tables left after Remove: %v", k.tables)
	}
}

// TestManagerPlainMasquerade: a kernel that refuses fully-random
// masquerade gets plain masquerade, and the table is then stable.
func TestManagerPlainMasquerade(t *testing.T) {
	k := newFakeKernel()
	k.refuseFullyRandom = true
	m := NewManager(k, Config{Masq: true})
	if err := m.Set(network, lease); err != nil {
		t.Fatalf("Set: %v", err)
	}
	got := k.tables[fkey(nft.TableFamilyIPv4, "weft")].String()
	if !strings.Contains(got, "masquerade comment") || strings.Contains(got, "fully-random") {
		t.Errorf("table:\n%s", got)
	}
	if n, err := m.Ensure(); n != 0 || err != nil {
		t.Errorf("Ensure after the fallback: fixed %d, err %v", n, err)
	}
}

// TestManagerForwardFallback: iptables' forward rules exist exactly while
// iptables' FORWARD policy drops; their installation is no repair, their
// restoration is.
func TestManagerForwardFallback(t *testing.T) {
	k := newFakeKernel()
	fb := &fakeFallback{}
	m := NewManager(k, Config{Forward: true, Fallback: fb})
	if err := m.Set(network, lease); err != nil {
		t.Fatal(err)
	}
	if fb.installed.IsValid() {
		t.Fatal("fallback installed while FORWARD accepts")
	}
	fb.drop = true
	if n, err := m.Ensure(); n != 0 || err != nil || fb.installed != network {
		t.Fatalf("FORWARD DROP appeared: fixed %d err %v installed %v", n, err, fb.installed)
	}
	fb.installed = netip.Prefix{} // flushed by hand
	if n, err := m.Ensure(); n != 1 || err != nil || fb.installed != network || m.Repairs() != 1 {
		t.Fatalf("fallback flushed: fixed %d err %v installed %v repairs %d", n, err, fb.installed, m.Repairs())
	}
	fb.drop = false
	if _, err := m.Ensure(); err != nil || fb.installed.IsValid() {
		t.Fatalf("FORWARD back to ACCEPT: err %v installed %v", err, fb.installed)
	}
	// Without forward rules the fallback is never consulted.
	fb.drop = true
	m2 := NewManager(newFakeKernel(), Config{Masq: true, Fallback: fb})
	if err := m2.Set(network, lease); err != nil || fb.installed.IsValid() {
		t.Fatalf("masq-only manager touched the fallback: %v %v", err, fb.installed)
	}
}

// TestManagerFullyRandomDisabled: Config.PlainMasq
// (--ip-masq-fully-random-disable) masquerades without fully random ports
// on a kernel that supports them, and the table is then stable.
func TestManagerFullyRandomDisabled(t *testing.T) {
	k := newFakeKernel()
	m := NewManager(k, Config{Masq: true, Forward: true, PlainMasq: true})
	if err := m.Set(network, lease); err != nil {
		t.Fatalf("Set: %v", err)
	}
	got := k.tables[fkey(nft.TableFamilyIPv4, "weft")].String()
	if strings.Count(got, "masquerade comment") != 2 || strings.Contains(got, "fully-random") {
		t.Errorf("table:\n%s", got)
	}
	if n, err := m.Ensure(); n != 0 || err != nil {
		t.Errorf("second Ensure: fixed %d, err %v", n, err)
	}
	// The default stays fully random.
	k2 := newFakeKernel()
	if err := NewManager(k2, Config{Masq: true}).Set(network, lease); err != nil {
		t.Fatal(err)
	}
	if got := k2.tables[fkey(nft.TableFamilyIPv4, "weft")].String(); strings.Count(got, "masquerade fully-random") != 2 {
		t.Errorf("default table:\n%s", got)
	}
}
