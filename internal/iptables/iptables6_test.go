package iptables

import (
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nltest"
)

// TestDesiredIPv6: the IPv6 rules are the IPv4 ones for the IPv6 network
// and lease, with ff00::/8 as the multicast range.
func TestDesiredIPv6(t *testing.T) {
	nw := netip.MustParsePrefix("2001:db8:100::/48")
	ls := netip.MustParsePrefix("2001:db8:100:59::/64")
	specs := desired(nw, ls, true, true, true)
	if len(specs) != 2 {
		t.Fatalf("%d chains", len(specs))
	}
	text := ""
	for _, cs := range specs {
		for _, r := range cs.rules {
			text += strings.Join(r, " ") + "\n"
		}
	}
	for _, want := range []string{
		"-s 2001:db8:100::/48 -d 2001:db8:100::/48 ",
		"! -s 2001:db8:100::/48 -d 2001:db8:100:59::/64 ",
		"-s 2001:db8:100::/48 ! -d ff00::/8 ",
		"-d 2001:db8:100::/48 -m comment --comment weft: to pods -j ACCEPT",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("IPv6 rules lack %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "224.0.0.0/4") {
		t.Errorf("IPv6 rules name the IPv4 multicast range:\n%s", text)
	}
	if !sameRule("-A WEFT-FWD -s 2001:db8::1/128 -j ACCEPT", []string{"-s", "2001:db8::1", "-j", "ACCEPT"}) {
		t.Error("a single IPv6 address rendered with /128 is the same rule")
	}
}

// TestManagerIPv6InNamespace installs, checks, repairs and removes the
// IPv6 rules beside the IPv4 ones in a throwaway namespace, with the real
// ip6tables command.
func TestManagerIPv6InNamespace(t *testing.T) {
	ns := nltest.NewNS(t, "ip6")
	network := netip.MustParsePrefix("198.18.0.0/16")
	lease := netip.MustParsePrefix("198.18.4.0/24")
	network6 := netip.MustParsePrefix("2001:db8:100::/48")
	lease6 := netip.MustParsePrefix("2001:db8:100:59::/64")
	var m *Manager
	var ipt, ipt6 IPTables
	in := func(fn func() error) {
		t.Helper()
		if err := nl.Do(ns.Handle, fn); err != nil {
			t.Fatal(err)
		}
	}
	in(func() error {
		var err error
		if ipt, err = New(); err != nil {
			return err
		}
		if ipt6, err = New6(); err != nil {
			return err
		}
		m = NewManager(ipt, true, true, slog.New(slog.NewTextHandler(io.Discard, nil))).EnableIPv6(ipt6)
		if err := m.Set(network, lease); err != nil {
			return err
		}
		return m.Set6(network6, lease6)
	})
	nat6, _ := ns.Exec("ip6tables", "-t", "nat", "-S")
	for _, want := range []string{
		"-A POSTROUTING -m comment --comment weft -j WEFT-POSTRTG",
		"-A WEFT-POSTRTG -s 2001:db8:100::/48 -d 2001:db8:100::/48",
		"-A WEFT-POSTRTG ! -s 2001:db8:100::/48 -d 2001:db8:100:59::/64",
		"-A WEFT-POSTRTG -s 2001:db8:100::/48 ! -d ff00::/8",
		"MASQUERADE --random-fully",
	} {
		if !strings.Contains(nat6, want) {
			t.Errorf("ip6tables nat table lacks %q:\n%s", want, nat6)
		}
	}
	filter6, _ := ns.Exec("ip6tables", "-S")
	if !strings.Contains(filter6, "-A FORWARD -m comment --comment weft -j WEFT-FWD") || !strings.Contains(filter6, "-A WEFT-FWD -d 2001:db8:100::/48") {
		t.Errorf("ip6tables filter table lacks the forward rules:\n%s", filter6)
	}
	nat4, _ := ns.Exec("iptables", "-t", "nat", "-S")
	if !strings.Contains(nat4, "-A WEFT-POSTRTG -s 198.18.0.0/16 -d 198.18.0.0/16") || strings.Contains(nat4, "2001:db8") {
		t.Errorf("iptables nat table:\n%s", nat4)
	}

	in(func() error {
		n, err := m.Ensure()
		if n != 0 {
			t.Errorf("second Ensure fixed %d chains, want 0", n)
		}
		return err
	})
	var problems []string
	in(func() error {
		var err error
		problems, err = Check(ipt6, network6, lease6, true, true, true)
		return err
	})
	if len(problems) != 0 {
		t.Errorf("Check of the IPv6 rules on a healthy namespace: %v", problems)
	}

	// An IPv6 rule deleted by hand is named by Check and restored.
	nltest.Cmd(t, "ip", "netns", "exec", ns.Name, "ip6tables", "-t", "nat", "-D", "WEFT-POSTRTG", "4")
	in(func() error {
		var err error
		problems, err = Check(ipt6, network6, lease6, true, true, true)
		return err
	})
	if len(problems) != 1 || !strings.Contains(problems[0], "ip6tables chain nat/WEFT-POSTRTG") {
		t.Errorf("Check after damage: got %v, want one ip6tables problem", problems)
	}
	in(func() error {
		n, err := m.Ensure()
		if n != 1 {
			t.Errorf("Ensure after damage fixed %d chains, want 1", n)
		}
		return err
	})
	if m.Repairs() != 1 {
		t.Errorf("Repairs() = %d, want 1", m.Repairs())
	}
	if after, _ := ns.Exec("ip6tables", "-t", "nat", "-S"); after != nat6 {
		t.Errorf("restored ip6tables nat table differs:\n%s\nwant\n%s", after, nat6)
	}

	// Dual stack turned off: the IPv6 chains go, the IPv4 ones stay.
	in(func() error { return m.Set6(netip.Prefix{}, netip.Prefix{}) })
	for _, table := range []string{"nat", "filter"} {
		if out, _ := ns.Exec("ip6tables", "-t", table, "-S"); strings.Contains(out, "WEFT") {
			t.Errorf("ip6tables %s table still has weft rules after Set6 with no network:\n%s", table, out)
		}
	}
	if out, _ := ns.Exec("iptables", "-t", "nat", "-S"); !strings.Contains(out, "WEFT-POSTRTG") {
		t.Errorf("turning IPv6 off removed the IPv4 rules:\n%s", out)
	}
	in(func() error {
		n, err := m.Ensure()
		if n != 0 {
			t.Errorf("Ensure after IPv6 was turned off fixed %d chains, want 0", n)
		}
		return err
	})
	in(func() error { return Remove(ipt) })
}

// TestSet6Refusals: Set6 without ip6tables, or with IPv4 prefixes, is an
// error rather than rules in the wrong table.
func TestSet6Refusals(t *testing.T) {
	m := NewManager(nil, true, true, slog.New(slog.DiscardHandler))
	if err := m.Set6(netip.MustParsePrefix("2001:db8:100::/48"), netip.MustParsePrefix("2001:db8:100:59::/64")); err == nil {
		t.Error("Set6 without EnableIPv6 succeeded")
	}
	if err := m.Set6(netip.Prefix{}, netip.Prefix{}); err != nil {
		t.Errorf("Set6 with no network and no ip6tables: %v, want nothing to do", err)
	}
	m6 := NewManager(nil, true, true, slog.New(slog.DiscardHandler)).EnableIPv6(fakeNoop{})
	if err := m6.Set6(netip.MustParsePrefix("198.18.0.0/16"), netip.MustParsePrefix("198.18.1.0/24")); err == nil || !strings.Contains(err.Error(), "IPv6") {
		t.Errorf("Set6 with IPv4 prefixes: %v", err)
	}
}

// fakeNoop is an IPTables that must not be called.
type fakeNoop struct{ IPTables }
