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

// TestManagerInNamespace installs, checks, repairs and removes the rules in
// a throwaway namespace, with the real iptables command.
func TestManagerInNamespace(t *testing.T) {
	ns := nltest.NewNS(t, "ipt")
	network := netip.MustParsePrefix("198.18.0.0/16")
	lease := netip.MustParsePrefix("198.18.4.0/24")
	var m *Manager
	var ipt IPTables
	in := func(fn func() error) {
		t.Helper()
		if err := nl.Do(ns.Handle, fn); err != nil {
			t.Fatal(err)
		}
	}
	in(func() error {
		var err error
		ipt, err = New()
		if err != nil {
			return err
		}
		m = NewManager(ipt, true, true, slog.New(slog.NewTextHandler(io.Discard, nil)))
		return m.Set(network, lease)
	})
	nat, _ := ns.Exec("iptables", "-t", "nat", "-S")
	for _, want := range []string{
		"-A POSTROUTING -m comment --comment weft -j WEFT-POSTRTG",
		"-A WEFT-POSTRTG -s 198.18.0.0/16 -d 198.18.0.0/16",
		"-A WEFT-POSTRTG ! -s 198.18.0.0/16 -d 198.18.4.0/24",
		"MASQUERADE --random-fully",
	} {
		if !strings.Contains(nat, want) {
			t.Errorf("nat table lacks %q:\n%s", want, nat)
		}
	}
	filter, _ := ns.Exec("iptables", "-S")
	if !strings.Contains(filter, "-A FORWARD -m comment --comment weft -j WEFT-FWD") || !strings.Contains(filter, "-A WEFT-FWD -s 198.18.0.0/16") {
		t.Errorf("filter table lacks the forward rules:\n%s", filter)
	}

	// Nothing to do on a second pass.
	in(func() error {
		n, err := m.Ensure()
		if n != 0 {
			t.Errorf("second Ensure fixed %d chains, want 0", n)
		}
		return err
	})
	var problems []string
	in(func() error { var err error; problems, err = Check(ipt, network, lease, true, true, true); return err })
	if len(problems) != 0 {
		t.Errorf("Check on a healthy namespace: %v", problems)
	}

	// Delete one rule and the forward jump by hand; both come back.
	nltest.Cmd(t, "ip", "netns", "exec", ns.Name, "iptables", "-t", "nat", "-D", "WEFT-POSTRTG", "2")
	nltest.Cmd(t, "ip", "netns", "exec", ns.Name, "iptables", "-D", "FORWARD", "-m", "comment", "--comment", "weft", "-j", "WEFT-FWD")
	in(func() error { var err error; problems, err = Check(ipt, network, lease, true, true, true); return err })
	if len(problems) != 2 {
		t.Errorf("Check after damage: got %v, want 2 problems", problems)
	}
	in(func() error {
		n, err := m.Ensure()
		if n != 2 {
			t.Errorf("Ensure after damage fixed %d chains, want 2", n)
		}
		return err
	})
	if m.Repairs() != 2 {
		t.Errorf("Repairs() = %d, want 2", m.Repairs())
	}
	after, _ := ns.Exec("iptables", "-t", "nat", "-S")
	if after != nat {
		t.Errorf("restored nat table differs:\n%s\nwant\n%s", after, nat)
	}

	// Switching the network rewrites the rules for the new one.
	in(func() error {
		return m.Set(netip.MustParsePrefix("198.19.0.0/16"), netip.MustParsePrefix("198.19.1.0/24"))
	})
	nat2, _ := ns.Exec("iptables", "-t", "nat", "-S", "WEFT-POSTRTG")
	if strings.Contains(nat2, "198.18.") || !strings.Contains(nat2, "198.19.0.0/16") {
		t.Errorf("after a network change:\n%s", nat2)
	}

	in(func() error { return Remove(ipt) })
	for _, table := range []string{"nat", "filter"} {
		out, _ := ns.Exec("iptables", "-t", table, "-S")
		if strings.Contains(out, "WEFT") {
			t.Errorf("%s table still has weft rules after Remove:\n%s", table, out)
		}
	}
}

// TestRemoveWithoutChains must be a quiet no-op: weftd without --ip-masq
// calls it at every start.
func TestRemoveWithoutChains(t *testing.T) {
	ns := nltest.NewNS(t, "ipt")
	err := nl.Do(ns.Handle, func() error {
		ipt, err := New()
		if err != nil {
			return err
		}
		if err := Remove(ipt); err != nil {
			return err
		}
		m := NewManager(ipt, false, true, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err := m.Set(netip.MustParsePrefix("198.18.0.0/16"), netip.MustParsePrefix("198.18.1.0/24")); err != nil {
			return err
		}
		_, err = m.Ensure()
		return err
	})
	if err != nil {
		t.Fatalf("no masquerade chain present: %v", err)
	}
}

// TestManagerWithoutFullyRandom: with --ip-masq-fully-random-disable the
// masquerade rules are plain MASQUERADE, Check holds them against that
// setting, and a rule with --random-fully is drift.
func TestManagerWithoutFullyRandom(t *testing.T) {
	ns := nltest.NewNS(t, "ipt")
	network := netip.MustParsePrefix("198.18.0.0/16")
	lease := netip.MustParsePrefix("198.18.4.0/24")
	var m *Manager
	var ipt IPTables
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
		m = NewManager(ipt, true, false, slog.New(slog.NewTextHandler(io.Discard, nil))).DisableFullyRandom()
		return m.Set(network, lease)
	})
	nat, _ := ns.Exec("iptables", "-t", "nat", "-S", MasqChain)
	if strings.Contains(nat, "random-fully") || strings.Count(nat, "-j MASQUERADE") != 2 {
		t.Errorf("masquerade rules with fully random disabled:\n%s", nat)
	}
	var plain, random []string
	in(func() error {
		var err error
		if plain, err = Check(ipt, network, lease, true, false, false); err != nil {
			return err
		}
		random, err = Check(ipt, network, lease, true, false, true)
		return err
	})
	if len(plain) != 0 || len(random) != 1 {
		t.Errorf("Check: plain %v (want none), fully random %v (want one problem)", plain, random)
	}
	// A fully random rule put in by hand is changed back.
	nltest.Cmd(t, "ip", "netns", "exec", ns.Name, "iptables", "-t", "nat", "-R", MasqChain, "4",
		"-s", "198.18.0.0/16", "!", "-d", "224.0.0.0/4", "-m", "comment", "--comment", "weft: pods to outside", "-j", "MASQUERADE", "--random-fully")
	in(func() error {
		n, err := m.Ensure()
		if n != 1 {
			t.Errorf("Ensure after a fully random rule appeared fixed %d chains, want 1", n)
		}
		return err
	})
	if after, _ := ns.Exec("iptables", "-t", "nat", "-S", MasqChain); after != nat {
		t.Errorf("restored chain:\n%s\nwant\n%s", after, nat)
	}
}
