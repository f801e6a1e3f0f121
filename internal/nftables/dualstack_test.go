package nftables

import (
	"net/netip"
	"strings"
	"testing"

	nft "github.com/google/nftables"
)

var (
	network6 = netip.MustParsePrefix("2001:db8:100::/48")
	lease6   = netip.MustParsePrefix("2001:db8:100:4::/64")
)

// TestManagerDualStackFake: Set6 adds table ip6 weft beside table ip weft,
// each family is repaired on its own and counted, and Set6 with no network
// removes only the IPv6 table and ip6tables' fallback rules.
func TestManagerDualStackFake(t *testing.T) {
	k := newFakeKernel()
	fb4, fb6 := &fakeFallback{drop: true}, &fakeFallback{drop: true}
	m := NewManager(k, Config{Masq: true, Forward: true, Fallback: fb4, Fallback6: fb6})
	if err := m.Set(network, lease); err != nil {
		t.Fatal(err)
	}
	if err := m.Set6(network6, lease6); err != nil {
		t.Fatal(err)
	}
	key4, key6 := fkey(nft.TableFamilyIPv4, TableName), fkey(nft.TableFamilyIPv6, TableName)
	want6, ok := m.Want6()
	if !ok || want6.Family != nft.TableFamilyIPv6 || !Equal(k.tables[key6], want6) {
		t.Fatalf("table ip6 weft (want6 %v):\n%s\nwant\n%s", ok, k.tables[key6], want6)
	}
	text := k.tables[key6].String()
	for _, w := range []string{"ip6 saddr 2001:db8:100::/48 ip6 daddr != ff00::/8", "ip6 saddr != 2001:db8:100::/48 ip6 daddr 2001:db8:100:4::/64", "ip6 daddr 2001:db8:100::/48 counter accept"} {
		if !strings.Contains(text, w) {
			t.Errorf("table ip6 weft lacks %q:\n%s", w, text)
		}
	}
	if want4, _ := m.Want(); !Equal(k.tables[key4], want4) {
		t.Fatalf("table ip weft:\n%s", k.tables[key4])
	}
	if fb4.installed != network || fb6.installed != network6 {
		t.Fatalf("fallbacks: iptables %v, ip6tables %v", fb4.installed, fb6.installed)
	}
	if n, err := m.Ensure(); n != 0 || err != nil || m.Repairs() != 0 {
		t.Fatalf("second Ensure: fixed %d err %v repairs %d", n, err, m.Repairs())
	}
	// Drift in the IPv6 table alone is one repair, and the IPv4 table is
	// not rewritten.
	tab := k.tables[key6]
	tab.Chains[0].Rules = tab.Chains[0].Rules[1:]
	k.tables[key6] = tab
	replaces := k.replaces
	if n, err := m.Ensure(); n != 1 || err != nil || m.Repairs() != 1 || k.replaces != replaces+1 || !Equal(k.tables[key6], want6) {
		t.Fatalf("IPv6 drift: fixed %d err %v repairs %d replaces %d", n, err, m.Repairs(), k.replaces-replaces)
	}
	fb6.installed = netip.Prefix{} // ip6tables flushed by hand
	if n, err := m.Ensure(); n != 1 || err != nil || fb6.installed != network6 {
		t.Fatalf("ip6tables fallback flushed: fixed %d err %v installed %v", n, err, fb6.installed)
	}
	// Dual stack off.
	if err := m.Set6(netip.Prefix{}, netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := k.tables[key6]; ok || fb6.installed.IsValid() {
		t.Fatalf("IPv6 rules left after Set6 with no network: table %v, fallback %v", ok, fb6.installed)
	}
	if _, ok := k.tables[key4]; !ok || fb4.installed != network {
		t.Fatal("turning IPv6 off removed the IPv4 rules")
	}
	if _, ok := m.Want6(); ok {
		t.Fatal("Want6 after IPv6 was turned off")
	}
	if err := m.Set6(network, lease); err == nil {
		t.Fatal("Set6 took IPv4 prefixes")
	}
}

// TestKernelDualStackMasquerade: in a namespace, table ip6 weft
// masquerades pod traffic to an outside network that has no route back to
// the pods, so a ping gets its answer only while the rules are in place.
func TestKernelDualStackMasquerade(t *testing.T) {
	needTool(t, "nft")
	tp := newTopo(t)
	r := tp.router
	r.run(t, "ip", "addr", "add", "2001:db8:100:4::1/64", "dev", "rp", "nodad")
	r.run(t, "ip", "addr", "add", "2001:db8:ffff::1/64", "dev", "ro", "nodad")
	r.run(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	tp.pod.run(t, "ip", "addr", "add", "2001:db8:100:4::2/64", "dev", "eth0", "nodad")
	tp.pod.run(t, "ip", "-6", "route", "add", "default", "via", "2001:db8:100:4::1")
	tp.outside.run(t, "ip", "addr", "add", "2001:db8:ffff::2/64", "dev", "eth0", "nodad")
	ping6 := func() (bool, string) {
		out, err := tp.pod.exec("ping", "-c", "2", "-i", "0.2", "-W", "1", "2001:db8:ffff::2")
		return err == nil, out
	}
	if ok, out := ping6(); ok {
		t.Fatalf("the outside answered without masquerade; the test cannot tell:\n%s", out)
	}
	m := NewManager(r.Kernel(), Config{Masq: true, Forward: true})
	if err := m.Set(network, lease); err != nil {
		t.Fatal(err)
	}
	if err := m.Set6(network6, lease6); err != nil {
		t.Fatal(err)
	}
	have, ok, err := r.Kernel().Read(nft.TableFamilyIPv6, TableName)
	want, _ := m.Want6()
	if err != nil || !ok || !Equal(have, want) {
		t.Fatalf("read back table ip6 weft (ok %v, err %v):\n%s\nwant\n%s", ok, err, have, want)
	}
	if ok, out := ping6(); !ok {
		t.Fatalf("IPv6 ping through table ip6 weft failed:\n%s\n%s", out, r.run(t, "nft", "list", "table", "ip6", TableName))
	}
	if ok, out := tp.ping(); !ok {
		t.Fatalf("IPv4 ping beside it failed:\n%s", out)
	}
	if n, err := m.Ensure(); n != 0 || err != nil {
		t.Fatalf("Ensure on a healthy namespace: fixed %d err %v", n, err)
	}
	// Deleted by hand, restored by the next pass.
	r.run(t, "nft", "delete", "table", "ip6", TableName)
	if n, err := m.Ensure(); n != 1 || err != nil {
		t.Fatalf("Ensure after table ip6 weft was deleted: fixed %d err %v", n, err)
	}
	if ok, out := ping6(); !ok {
		t.Fatalf("IPv6 ping after the repair failed:\n%s", out)
	}
	if err := m.Set6(netip.Prefix{}, netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	if out := r.run(t, "nft", "list", "tables"); strings.Contains(out, "ip6 "+TableName) || !strings.Contains(out, "ip "+TableName) {
		t.Fatalf("tables after IPv6 was turned off:\n%s", out)
	}
	if ok, _ := ping6(); ok {
		t.Fatal("IPv6 ping still answered after table ip6 weft was removed")
	}
	if err := Remove(r.Kernel()); err != nil {
		t.Fatal(err)
	}
}
