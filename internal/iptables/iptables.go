// Package iptables keeps weft's masquerade and forward rules in place.
//
// weft owns two chains, WEFT-POSTRTG (nat) and WEFT-FWD (filter), each
// reached by one jump rule at the top of POSTROUTING and FORWARD. Owning the
// chains means the full rule set can be compared and rewritten without
// touching anybody else's rules, and removed cleanly by deleting the jump
// and the chain. The rules follow flannel's semantics, so that mixed
// clusters behave alike: traffic marked 0x4000/0x4000 (kube-proxy's) is left
// alone; pod-to-pod traffic inside the network is never masqueraded; traffic
// from the network to anywhere outside it but multicast is masqueraded, and
// so is traffic from outside into the network except into our own subnet;
// forwarding is accepted for the network as source and as destination.
//
// With dual stack the same two chains, with the same rules for the IPv6
// network and our IPv6 lease (and ff00::/8 as the multicast range), live in
// ip6tables' nat and filter tables. A Manager keeps both families: Set for
// IPv4, Set6 for IPv6 once EnableIPv6 has given it an ip6tables handle.
package iptables

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
)

// Chain names owned by weft.
const (
	MasqChain    = "WEFT-POSTRTG"
	ForwardChain = "WEFT-FWD"
)

// Rule is one rule in one of weft's chains.
type Rule struct {
	Table string
	Chain string
	Spec  []string
}

// chainSpec describes one owned chain and where it is jumped to from.
type chainSpec struct {
	table, chain, parent string
	rules                [][]string
}

// Desired returns the chains and rules for a network and our lease, of
// either family (the table, iptables' or ip6tables', must match it). masq
// and forward select the two rule sets; fullyRandom asks for fully random
// source ports on the masquerade rules.
func desired(network, lease netip.Prefix, masq, forward, fullyRandom bool) []chainSpec {
	nw, ls := network.String(), lease.String()
	multicast := "224.0.0.0/4"
	if network.Addr().Is6() {
		multicast = "ff00::/8"
	}
	var out []chainSpec
	if masq {
		masquerade := []string{"-j", "MASQUERADE", "--random-fully"}
		if !fullyRandom {
			masquerade = masquerade[:2]
		}
		out = append(out, chainSpec{table: "nat", chain: MasqChain, parent: "POSTROUTING", rules: [][]string{
			{"-m", "comment", "--comment", "weft: kube-proxy marked traffic", "-m", "mark", "--mark", "0x4000/0x4000", "-j", "RETURN"},
			{"-s", nw, "-d", nw, "-m", "comment", "--comment", "weft: pod to pod", "-j", "RETURN"},
			{"!", "-s", nw, "-d", ls, "-m", "comment", "--comment", "weft: into our pods", "-j", "RETURN"},
			append(slices.Clip([]string{"-s", nw, "!", "-d", multicast, "-m", "comment", "--comment", "weft: pods to outside"}), masquerade...),
			append(slices.Clip([]string{"!", "-s", nw, "-d", nw, "-m", "comment", "--comment", "weft: outside to pods"}), masquerade...),
		}})
	}
	if forward {
		out = append(out, chainSpec{table: "filter", chain: ForwardChain, parent: "FORWARD", rules: [][]string{
			{"-s", nw, "-m", "comment", "--comment", "weft: from pods", "-j", "ACCEPT"},
			{"-d", nw, "-m", "comment", "--comment", "weft: to pods", "-j", "ACCEPT"},
		}})
	}
	return out
}

// IPTables is the part of go-iptables this package uses; a fake implements
// it in tests.
type IPTables interface {
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
	Exists(table, chain string, spec ...string) (bool, error)
	Insert(table, chain string, pos int, spec ...string) error
	Append(table, chain string, spec ...string) error
	DeleteIfExists(table, chain string, spec ...string) error
	List(table, chain string) ([]string, error)
}

var _ IPTables = (*goipt.IPTables)(nil)

// New returns the system's IPv4 iptables.
func New() (IPTables, error) {
	ipt, err := goipt.NewWithProtocol(goipt.ProtocolIPv4)
	if err != nil {
		return nil, fmt.Errorf("iptables: %w", err)
	}
	return ipt, nil
}

// New6 returns the system's ip6tables.
func New6() (IPTables, error) {
	ipt, err := goipt.NewWithProtocol(goipt.ProtocolIPv6)
	if err != nil {
		return nil, fmt.Errorf("ip6tables: %w", err)
	}
	return ipt, nil
}

// Manager keeps the rules for the current network and lease in place: the
// IPv4 ones in ipt and, with dual stack, the IPv6 ones in ipt6.
type Manager struct {
	ipt       IPTables
	ipt6      IPTables // nil: IPv4 only
	masq      bool
	forward   bool
	plainMasq bool // --ip-masq-fully-random-disable
	logger    *slog.Logger

	mu       sync.Mutex
	network  netip.Prefix
	lease    netip.Prefix
	network6 netip.Prefix // invalid until Set6 (or without dual stack)
	lease6   netip.Prefix
	repairs  uint64
	primed   bool
	primed6  bool
}

// NewManager returns a manager; nothing is installed until Set.
func NewManager(ipt IPTables, masq, forward bool, logger *slog.Logger) *Manager {
	return &Manager{ipt: ipt, masq: masq, forward: forward, logger: logger}
}

// DisableFullyRandom makes the masquerade rules plain MASQUERADE, without
// --random-fully (flanneld's --ip-masq-fully-random-disable). Call it
// before Set. It returns m.
func (m *Manager) DisableFullyRandom() *Manager {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.plainMasq = true
	return m
}

// EnableIPv6 gives the manager ip6tables (New6), where Set6 keeps the IPv6
// rules. Call it before Set6. It returns m.
func (m *Manager) EnableIPv6(ipt6 IPTables) *Manager {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ipt6 = ipt6
	return m
}

// Set records the network and lease and installs the rules now.
func (m *Manager) Set(network, lease netip.Prefix) error {
	m.mu.Lock()
	m.network, m.lease = network, lease
	m.mu.Unlock()
	_, err := m.Ensure()
	return err
}

// Set6 records the IPv6 network and our IPv6 lease and installs their
// rules in ip6tables now. Invalid prefixes (dual stack turned off) remove
// the IPv6 chains. The IPv4 rules are kept by Set; Ensure and Run keep
// both.
func (m *Manager) Set6(network, lease netip.Prefix) error {
	m.mu.Lock()
	if m.ipt6 == nil {
		m.mu.Unlock()
		if !network.IsValid() {
			return nil
		}
		return fmt.Errorf("ip6tables rules for %s: the manager has no ip6tables (EnableIPv6)", network)
	}
	if network.IsValid() && (!network.Addr().Is6() || !lease.Addr().Is6()) {
		m.mu.Unlock()
		return fmt.Errorf("ip6tables rules: %s and %s are not both IPv6", network, lease)
	}
	m.network6, m.lease6 = network, lease
	if !network.IsValid() {
		m.primed6 = false
		ipt6 := m.ipt6
		m.mu.Unlock()
		return Remove(ipt6)
	}
	m.mu.Unlock()
	_, err := m.Ensure()
	return err
}

// Repairs is the number of times rules had to be restored after the first
// installation.
func (m *Manager) Repairs() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.repairs
}

// Ensure makes the chains of both families match the desired rules,
// touching only what differs. It also removes a chain whose rule set is
// switched off. It returns how many chains it had to fix; the first
// installation of a family is not counted as a repair.
func (m *Manager) Ensure() (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.network.IsValid() && !m.network6.IsValid() {
		return 0, nil
	}
	fixed := 0
	var errs []error
	if m.network.IsValid() {
		n, err := m.ensureFamily(m.ipt, m.network, m.lease)
		errs = append(errs, err)
		if m.primed && n > 0 {
			m.repairs += uint64(n)
			m.logger.Warn("iptables rules were missing or changed; restored them", "chains", n)
		}
		m.primed = true
		fixed += n
	}
	if m.ipt6 != nil && m.network6.IsValid() {
		n, err := m.ensureFamily(m.ipt6, m.network6, m.lease6)
		errs = append(errs, err)
		if m.primed6 && n > 0 {
			m.repairs += uint64(n)
			m.logger.Warn("ip6tables rules were missing or changed; restored them", "chains", n)
		}
		m.primed6 = true
		fixed += n
	}
	return fixed, errors.Join(errs...)
}

// ensureFamily makes one family's chains match, and returns how many it
// fixed.
func (m *Manager) ensureFamily(ipt IPTables, network, lease netip.Prefix) (int, error) {
	want := desired(network, lease, m.masq, m.forward, !m.plainMasq)
	fixed := 0
	var errs []error
	for _, cs := range want {
		changed, err := ensureChain(ipt, cs)
		if err != nil {
			errs = append(errs, err)
		}
		if changed {
			fixed++
		}
	}
	// Chains for a rule set that is now off are removed.
	if !m.masq {
		if err := removeChain(ipt, "nat", MasqChain, "POSTROUTING"); err != nil {
			errs = append(errs, err)
		}
	}
	if !m.forward {
		if err := removeChain(ipt, "filter", ForwardChain, "FORWARD"); err != nil {
			errs = append(errs, err)
		}
	}
	return fixed, errors.Join(errs...)
}

// Run re-checks the rules every interval until ctx is done.
func (m *Manager) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if _, err := m.Ensure(); err != nil {
				m.logger.Error("check iptables rules", "err", err)
			}
		}
	}
}

// Remove deletes weft's chains and jump rules from ipt (iptables or
// ip6tables).
func Remove(ipt IPTables) error {
	return errors.Join(
		removeChain(ipt, "nat", MasqChain, "POSTROUTING"),
		removeChain(ipt, "filter", ForwardChain, "FORWARD"),
	)
}

func jumpSpec(chain string) []string {
	return []string{"-m", "comment", "--comment", "weft", "-j", chain}
}

func ensureChain(ipt IPTables, cs chainSpec) (bool, error) {
	changed := false
	exists, err := ipt.ChainExists(cs.table, cs.chain)
	if err != nil {
		return false, fmt.Errorf("iptables -t %s %s: %w", cs.table, cs.chain, err)
	}
	if !exists {
		if err := ipt.NewChain(cs.table, cs.chain); err != nil {
			return false, fmt.Errorf("create chain %s/%s: %w", cs.table, cs.chain, err)
		}
		changed = true
	}
	ok, err := chainMatches(ipt, cs)
	if err != nil {
		return changed, err
	}
	if !ok {
		if err := ipt.ClearChain(cs.table, cs.chain); err != nil {
			return changed, fmt.Errorf("flush chain %s/%s: %w", cs.table, cs.chain, err)
		}
		for _, r := range cs.rules {
			if err := ipt.Append(cs.table, cs.chain, r...); err != nil {
				return true, fmt.Errorf("add rule to %s/%s: %w", cs.table, cs.chain, err)
			}
		}
		changed = true
	}
	jump := jumpSpec(cs.chain)
	has, err := ipt.Exists(cs.table, cs.parent, jump...)
	if err != nil {
		return changed, fmt.Errorf("check jump %s -> %s: %w", cs.parent, cs.chain, err)
	}
	if !has {
		if err := ipt.Insert(cs.table, cs.parent, 1, jump...); err != nil {
			return changed, fmt.Errorf("add jump %s -> %s: %w", cs.parent, cs.chain, err)
		}
		changed = true
	}
	return changed, nil
}

// chainMatches compares the chain's rules with the wanted ones. Both sides
// are normalised by the kernel's own rendering: each wanted rule must exist
// and the chain must hold exactly as many rules, in the listed order.
func chainMatches(ipt IPTables, cs chainSpec) (bool, error) {
	lines, err := ipt.List(cs.table, cs.chain)
	if err != nil {
		return false, fmt.Errorf("list chain %s/%s: %w", cs.table, cs.chain, err)
	}
	var rules []string
	for _, l := range lines {
		if strings.HasPrefix(l, "-A ") {
			rules = append(rules, l)
		}
	}
	if len(rules) != len(cs.rules) {
		return false, nil
	}
	for i, want := range cs.rules {
		// iptables -S prints the comment quoted; compare the words that
		// identify a rule rather than the exact rendering.
		if !sameRule(rules[i], want) {
			return false, nil
		}
	}
	return true, nil
}

// sameRule reports whether a rendered rule line carries every word of the
// wanted spec in the same order (quotes and default masks aside), and
// exactly the wanted target and its options (so that MASQUERADE with or
// without --random-fully are different rules).
func sameRule(line string, want []string) bool {
	got := strings.Fields(strings.ReplaceAll(line, `"`, ""))
	var wantWords []string
	for _, w := range want {
		wantWords = append(wantWords, strings.Fields(w)...)
	}
	i := 0
	for _, g := range got {
		if i < len(wantWords) && (g == wantWords[i] || g == wantWords[i]+"/32" || g == wantWords[i]+"/128") {
			i++
		}
	}
	gj, wj := slices.Index(got, "-j"), slices.Index(wantWords, "-j")
	return i == len(wantWords) && gj >= 0 && wj >= 0 && slices.Equal(got[gj:], wantWords[wj:])
}

func removeChain(ipt IPTables, table, chain, parent string) error {
	exists, err := ipt.ChainExists(table, chain)
	if err != nil {
		return fmt.Errorf("iptables -t %s %s: %w", table, chain, err)
	}
	if !exists {
		// No chain, so no jump to it either: iptables refuses a jump to
		// a missing chain, and checking for one fails on nf_tables.
		return nil
	}
	if err := ipt.DeleteIfExists(table, parent, jumpSpec(chain)...); err != nil {
		return fmt.Errorf("delete jump %s -> %s: %w", parent, chain, err)
	}
	if err := ipt.ClearChain(table, chain); err != nil {
		return fmt.Errorf("flush chain %s/%s: %w", table, chain, err)
	}
	if err := ipt.DeleteChain(table, chain); err != nil {
		return fmt.Errorf("delete chain %s/%s: %w", table, chain, err)
	}
	return nil
}

// Check reports, without changing anything, what differs from the wanted
// rules: one line per problem. weftctl doctor uses it. fullyRandom is
// false for a weftd run with --ip-masq-fully-random-disable. For the IPv6
// rules pass ip6tables (New6) and the IPv6 network and lease; the lines
// then say ip6tables.
func Check(ipt IPTables, network, lease netip.Prefix, masq, forward, fullyRandom bool) ([]string, error) {
	var problems []string
	cmd := "iptables"
	if network.Addr().Is6() {
		cmd = "ip6tables"
	}
	for _, cs := range desired(network, lease, masq, forward, fullyRandom) {
		exists, err := ipt.ChainExists(cs.table, cs.chain)
		if err != nil {
			return nil, err
		}
		if !exists {
			problems = append(problems, fmt.Sprintf("%s chain %s/%s is missing", cmd, cs.table, cs.chain))
			continue
		}
		ok, err := chainMatches(ipt, cs)
		if err != nil {
			return nil, err
		}
		if !ok {
			problems = append(problems, fmt.Sprintf("%s chain %s/%s does not hold the expected rules", cmd, cs.table, cs.chain))
		}
		has, err := ipt.Exists(cs.table, cs.parent, jumpSpec(cs.chain)...)
		if err != nil {
			return nil, err
		}
		if !has {
			problems = append(problems, fmt.Sprintf("%s jump from %s/%s to %s is missing", cmd, cs.table, cs.parent, cs.chain))
		}
	}
	return problems, nil
}
