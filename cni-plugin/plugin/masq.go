package plugin

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	nft "github.com/google/nftables"

	"github.com/weftnet/weft/cni-plugin/ipam"
	"github.com/weftnet/weft/internal/nftables"
)

// Masquerading, in the nat table of the plugin's (host) namespace:
//
//	POSTROUTING:      -s <lease subnet> -m comment --comment "weft <net>" -j WEFT-MASQ-<hash>
//	WEFT-MASQ-<hash>: -d <FLANNEL_NETWORK> -j RETURN
//	                  -d 224.0.0.0/4 -j RETURN
//	                  -j MASQUERADE [--random-fully]
//
// With dual stack (subnet.env has FLANNEL_IPV6_SUBNET), the same chain
// holds the IPv6 rules in ip6tables' nat table, for the IPv6 lease and
// FLANNEL_IPV6_NETWORK, with ff00::/8 as the multicast range; each family
// has its own marker (kind "masq6" for IPv6) and is kept and repaired on
// its own.
//
// Pods only ever get addresses of the node's lease, so one jump per lease
// subnet covers every pod. A marker (ipam Store.MarkerPath("masq", network))
// records the cluster network the chain is for and the subnets that need a
// jump: the current lease and those of earlier leases whose pods remain.
//
// The marker says what is wanted, never what exists: a firewall reload
// (firewalld, iptables-restore, a flush by hand) removes rules behind the
// plugin's back. So every ADD and CHECK reads the nat table (one
// `iptables -S`) and compares it with the marker. When anything is missing,
// duplicated or changed, it takes the IPAM lock, reads the table again and
// fixes only the difference: it rebuilds a chain whose rules differ and adds
// or removes jumps until each wanted subnet has exactly one. Repeating it
// changes nothing. The DEL or GC that releases the network's last address
// removes every jump to the chain and the chain, also under the lock.
//
//	no chain --first ADD--> chain + jump(subnet) --subnet change ADD--> + jump(new subnet)
//	    ^          ^                  |                                       |
//	    |          +-- ADD/CHECK: restore what a flush removed --------------+
//	    +------------------------- last DEL / GC ----------------------------+
//
// The same rules can live in nftables instead, in a table of the network's
// own (nftMasq, below; table ip6 of the same name for IPv6). Which one is in force follows weftd: nftables when
// weftd keeps its own rules in nftables on this host (its `table ip weft`
// exists), or when there is no iptables binary; iptables otherwise. The
// marker records the backend the rules were made in, so that the first ADD
// or CHECK after a switch removes them from the other one.

// MasqChain is the nat chain holding the masquerade rules of a network.
func MasqChain(network string) string {
	h := sha256.Sum256([]byte(network))
	return "WEFT-MASQ-" + strings.ToUpper(hex.EncodeToString(h[:])[:8])
}

// natTable is the nat table of the plugin's namespace, as far as the
// masquerade rules need it.
type natTable interface {
	// Rules returns the table as `iptables -t nat -S` prints it: "-N
	// <chain>" for each chain, then "-A <chain> <rule>" lines.
	Rules() ([]string, error)
	// ClearChain creates chain, or removes its rules if it exists.
	ClearChain(chain string) error
	// Append adds rule at the end of chain.
	Append(chain string, rule ...string) error
	// Delete removes the first rule of chain that equals rule.
	Delete(chain string, rule ...string) error
	// DeleteChain removes chain and its rules; nothing may jump to it.
	DeleteChain(chain string) error
}

// iptablesNAT is the natTable of the iptables command (ip6tables for
// IPv6). Reading runs one `iptables -S`; the go-iptables handle, whose
// creation runs `iptables --version`, is made only when a rule must change.
type iptablesNAT struct {
	path  string
	proto iptables.Protocol
	ipt   *iptables.IPTables
}

var _ natTable = (*iptablesNAT)(nil)

func newIptablesNAT(v6 bool) (*iptablesNAT, error) {
	name, proto := "iptables", iptables.ProtocolIPv4
	if v6 {
		name, proto = "ip6tables", iptables.ProtocolIPv6
	}
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &iptablesNAT{path: path, proto: proto}, nil
}

func (t *iptablesNAT) Rules() ([]string, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(t.path, "-w", "-t", "nat", "-S")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -t nat -S: %w: %s", filepath.Base(t.path), err, strings.TrimSpace(stderr.String()))
	}
	return strings.Split(string(out), "\n"), nil
}

func (t *iptablesNAT) handle() (*iptables.IPTables, error) {
	if t.ipt == nil {
		ipt, err := iptables.New(iptables.Path(t.path), iptables.IPFamily(t.proto))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Base(t.path), err)
		}
		t.ipt = ipt
	}
	return t.ipt, nil
}

func (t *iptablesNAT) ClearChain(chain string) error {
	h, err := t.handle()
	if err != nil {
		return err
	}
	return h.ClearChain("nat", chain)
}

func (t *iptablesNAT) Append(chain string, rule ...string) error {
	h, err := t.handle()
	if err != nil {
		return err
	}
	return h.Append("nat", chain, rule...)
}

func (t *iptablesNAT) Delete(chain string, rule ...string) error {
	h, err := t.handle()
	if err != nil {
		return err
	}
	return h.Delete("nat", chain, rule...)
}

func (t *iptablesNAT) DeleteChain(chain string) error {
	h, err := t.handle()
	if err != nil {
		return err
	}
	return h.ClearAndDeleteChain("nat", chain)
}

// randomFully reports whether MASQUERADE takes --random-fully.
func (t *iptablesNAT) randomFully() bool {
	h, err := t.handle()
	return err == nil && h.HasRandomFully()
}

type masqState struct {
	Network string   `json:"network"`
	Subnets []string `json:"subnets"`
	// Backend is where the rules are: masqIPTables (also what markers
	// written before nftables support say) or masqNFTables.
	Backend string `json:"backend,omitempty"`
}

// Backends of the masquerade rules, as the marker records them.
const (
	masqIPTables = ""
	masqNFTables = "nftables"
)

// masquerader keeps one network's masquerade rules in one backend.
type masquerader interface {
	// inPlace reports whether the rules and the marker already match
	// what cluster and sub need, so that nothing needs the lock.
	inPlace(store *ipam.Store, cluster, sub netip.Prefix) (bool, error)
	// ensure makes the rules and the marker match and says what it
	// fixed. The caller holds the store lock.
	ensure(store *ipam.Store, cluster, sub netip.Prefix) ([]masqFix, error)
	// remove deletes the rules and the marker. The caller holds the store
	// lock and has seen that no address of the network is reserved.
	remove(store *ipam.Store) error
}

var (
	_ masquerader = (*masq)(nil)
	_ masquerader = (*nftMasq)(nil)
	_ masquerader = (*modeMasq)(nil)
)

// masqMarker is the marker kind of a family's masquerade rules.
func masqMarker(v6 bool) string {
	if v6 {
		return "masq6"
	}
	return "masq"
}

func readMasqState(store *ipam.Store, network string, v6 bool) (masqState, bool) {
	var st masqState
	b, err := os.ReadFile(store.MarkerPath(masqMarker(v6), network))
	if err != nil || json.Unmarshal(b, &st) != nil {
		return masqState{}, false
	}
	return st, true
}

func writeMasqState(store *ipam.Store, network string, v6 bool, st masqState) error {
	b, _ := json.Marshal(st)
	p := store.MarkerPath(masqMarker(v6), network)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

type masq struct {
	nat         natTable
	randomFully func() bool
	network     string // CNI network name
	chain       string
	v6          bool // ip6tables, for the IPv6 lease
}

// newMasq returns the masquerade rules of a network for one family (v6:
// IPv6) in the backend in force on this host.
func newMasq(network string, v6 bool) (masquerader, error) {
	k := nftables.NewKernel(0)
	ipt, iptErr := newIptablesMasq(network, v6)
	useNFT := iptErr != nil
	if !useNFT {
		// A kernel without nf_tables cannot be in nftables mode.
		present, err := nftables.Present(k)
		useNFT = err == nil && present
	}
	return &modeMasq{network: network, v6: v6, nft: newNFTMasq(network, k, v6), ipt: ipt, useNFT: useNFT}, nil
}

// newIptablesMasq returns the masquerade rules of a network in iptables
// (ip6tables for v6).
func newIptablesMasq(network string, v6 bool) (*masq, error) {
	nat, err := newIptablesNAT(v6)
	if err != nil {
		return nil, err
	}
	return &masq{nat: nat, randomFully: nat.randomFully, network: network, chain: MasqChain(network), v6: v6}, nil
}

// multicastRange is the range never masqueraded.
func multicastRange(v6 bool) string {
	if v6 {
		return "ff00::/8"
	}
	return "224.0.0.0/4"
}

func (m *masq) jump(sub string) []string {
	return []string{"-s", sub, "-m", "comment", "--comment", "weft " + m.network, "-j", m.chain}
}

// chainRules are the rules the chain must hold, in order.
func (m *masq) chainRules(cluster netip.Prefix, randomFully bool) [][]string {
	masqRule := []string{"-j", "MASQUERADE"}
	if randomFully {
		masqRule = append(masqRule, "--random-fully")
	}
	return [][]string{
		{"-d", cluster.String(), "-j", "RETURN"},
		{"-d", multicastRange(m.v6), "-j", "RETURN"},
		masqRule,
	}
}

// natState is what the nat table holds of one network's rules.
type natState struct {
	chainExists bool
	chain       [][]string            // the chain's rules
	jumps       map[string][][]string // POSTROUTING rules to the chain, by source
}

// readNAT parses the table into the network's part of it.
func (m *masq) readNAT() (natState, error) {
	lines, err := m.nat.Rules()
	if err != nil {
		return natState{}, err
	}
	st := natState{jumps: map[string][][]string{}}
	for _, line := range lines {
		f := splitRule(line)
		switch {
		case len(f) == 2 && f[0] == "-N" && f[1] == m.chain:
			st.chainExists = true
		case len(f) >= 2 && f[0] == "-A" && f[1] == m.chain:
			st.chain = append(st.chain, f[2:])
		case len(f) >= 2 && f[0] == "-A" && f[1] == "POSTROUTING" && slices.Equal(ruleArg(f, "-j"), []string{m.chain}):
			src := ""
			if s := ruleArg(f, "-s"); len(s) == 1 {
				src = s[0]
			}
			st.jumps[src] = append(st.jumps[src], f[2:])
		}
	}
	return st, nil
}

// ruleArg returns the value after flag in a rule, or nil.
func ruleArg(f []string, flag string) []string {
	i := slices.Index(f, flag)
	if i < 0 || i+1 >= len(f) {
		return nil
	}
	return f[i+1 : i+2]
}

// splitRule splits a line of `iptables -S` into its words, undoing the
// double quotes iptables puts around words with spaces (comments).
func splitRule(line string) []string {
	var out []string
	var w strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line):
			i++
			w.WriteByte(line[i])
		case c == '"':
			quoted = !quoted
			inWord = true
		case c == ' ' && !quoted:
			if inWord {
				out = append(out, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		out = append(out, w.String())
	}
	return out
}

// chainOK reports whether the chain holds exactly the wanted rules;
// MASQUERADE may come with or without --random-fully.
func (m *masq) chainOK(st natState, cluster netip.Prefix) bool {
	if !st.chainExists {
		return false
	}
	return slices.EqualFunc(st.chain, m.chainRules(cluster, false), slices.Equal[[]string]) ||
		slices.EqualFunc(st.chain, m.chainRules(cluster, true), slices.Equal[[]string])
}

// wanted returns the subnets that need a jump: those of the marker (if it
// is for this cluster network), sub, and any subnet the table already
// jumps from (ours, since they target our chain; adopting them lets the
// last DEL remove them).
func wanted(marker masqState, st natState, sub netip.Prefix) []string {
	var srcs []string
	for src := range st.jumps {
		if src != "" {
			srcs = append(srcs, src)
		}
	}
	return mergeSubnets(sub, marker.Subnets, srcs)
}

// inPlace reports whether the table and the marker already match what is
// wanted, so that nothing needs the lock.
func (m *masq) inPlace(store *ipam.Store, cluster, sub netip.Prefix) (bool, error) {
	marker, ok := readMasqState(store, m.network, m.v6)
	if !ok || marker.Network != cluster.String() || marker.Backend != masqIPTables || !slices.Contains(marker.Subnets, sub.String()) {
		return false, nil
	}
	st, err := m.readNAT()
	if err != nil {
		return false, err
	}
	if !m.chainOK(st, cluster) {
		return false, nil
	}
	for _, s := range wanted(marker, st, sub) {
		if len(st.jumps[s]) != 1 || !slices.Contains(marker.Subnets, s) {
			return false, nil
		}
	}
	return len(st.jumps[""]) == 0, nil
}

// masqFix is one change ensure made. Restored is set when the marker says
// the rule should have been there: something removed it.
type masqFix struct {
	What     string
	Restored bool
}

// ensure makes the table hold the chain (for cluster) and exactly one jump
// for sub and for every subnet of the marker, and returns what it had to
// fix, for the log. The caller holds the store lock.
func (m *masq) ensure(store *ipam.Store, cluster, sub netip.Prefix) (fixed []masqFix, err error) {
	marker, ok := readMasqState(store, m.network, m.v6)
	if !ok || marker.Network != cluster.String() {
		// Earlier leases of another cluster network are gone with it.
		marker, ok = masqState{Network: cluster.String()}, false
	}
	moved := marker.Backend != masqIPTables
	if moved {
		// Made in nftables until now: nothing here is a restoration.
		marker.Backend, ok = masqIPTables, false
	}
	st, err := m.readNAT()
	if err != nil {
		return nil, err
	}
	if !m.chainOK(st, cluster) {
		if err := m.nat.ClearChain(m.chain); err != nil {
			return fixed, fmt.Errorf("create chain %s: %w", m.chain, err)
		}
		for _, r := range m.chainRules(cluster, m.randomFully()) {
			if err := m.nat.Append(m.chain, r...); err != nil {
				return fixed, fmt.Errorf("fill chain %s: %w", m.chain, err)
			}
		}
		fixed = append(fixed, masqFix{"filled chain " + m.chain, ok})
	}
	subs := wanted(marker, st, sub)
	for _, s := range subs {
		have := st.jumps[s]
		if len(have) == 0 {
			if err := m.nat.Append("POSTROUTING", m.jump(s)...); err != nil {
				return fixed, fmt.Errorf("add masquerade jump for %s: %w", s, err)
			}
			fixed = append(fixed, masqFix{"added jump for " + s, slices.Contains(marker.Subnets, s)})
		}
		for _, extra := range have[min(1, len(have)):] {
			if err := m.nat.Delete("POSTROUTING", extra...); err != nil {
				return fixed, fmt.Errorf("remove duplicate masquerade jump for %s: %w", s, err)
			}
			fixed = append(fixed, masqFix{"removed a duplicate jump for " + s, true})
		}
	}
	for _, r := range st.jumps[""] { // a jump to our chain without a source
		if err := m.nat.Delete("POSTROUTING", r...); err != nil {
			return fixed, fmt.Errorf("remove masquerade jump %v: %w", r, err)
		}
		fixed = append(fixed, masqFix{"removed a jump without source", true})
	}
	if moved || !slices.Equal(marker.Subnets, subs) {
		marker.Subnets = subs
		if err := writeMasqState(store, m.network, m.v6, marker); err != nil {
			return fixed, fmt.Errorf("write masquerade marker: %w", err)
		}
	}
	return fixed, nil
}

// ensureMasq checks the network's masquerade rules against the table and
// repairs them under the store lock when they differ; fixed says what it
// repaired.
func ensureMasq(store *ipam.Store, m masquerader, cluster, sub netip.Prefix) (fixed []masqFix, err error) {
	ok, err := m.inPlace(store, cluster, sub)
	if err != nil || ok {
		return nil, err
	}
	err = store.Do(func(*ipam.Tx) error {
		var err error
		fixed, err = m.ensure(store, cluster, sub)
		return err
	})
	return fixed, err
}

// remove deletes every jump to the chain, the chain and the marker. The
// caller holds the store lock and has seen that no address of the network
// is reserved any more.
func (m *masq) remove(store *ipam.Store) error {
	if err := m.removeRules(); err != nil {
		return err
	}
	os.Remove(store.MarkerPath(masqMarker(m.v6), m.network))
	return nil
}

// removeRules deletes every jump to the chain and the chain.
func (m *masq) removeRules() error {
	st, err := m.readNAT()
	if err != nil {
		return err
	}
	var errs []error
	for src, rules := range st.jumps {
		for _, r := range rules {
			err := m.nat.Delete("POSTROUTING", r...)
			var ie *iptables.Error
			if err != nil && !(errors.As(err, &ie) && ie.IsNotExist()) {
				errs = append(errs, fmt.Errorf("remove masquerade jump for %s: %w", src, err))
			}
		}
	}
	if st.chainExists {
		if err := m.nat.DeleteChain(m.chain); err != nil {
			errs = append(errs, fmt.Errorf("remove chain %s: %w", m.chain, err))
		}
	}
	return errors.Join(errs...)
}

// MasqTable is the nftables table (family ip, and ip6 for the IPv6 rules)
// holding the masquerade rules of a network in nftables mode.
func MasqTable(network string) string {
	return "weft-cni-" + strings.ToLower(strings.TrimPrefix(MasqChain(network), "WEFT-MASQ-"))
}

// nftMasq keeps a network's masquerade rules of one family in nftables:
// the table ip (or ip6) MasqTable(network), built by nftables.PodMasq,
// holds the same chain as WEFT-MASQ-<hash> and one jump per subnet of the
// marker. Any difference is repaired by replacing the whole table in one
// transaction.
type nftMasq struct {
	k       nftables.Kernel
	network string
	table   string
	v6      bool
	// plain is set once the kernel refused fully-random masquerade.
	plain bool
}

func newNFTMasq(network string, k nftables.Kernel, v6 bool) *nftMasq {
	return &nftMasq{k: k, network: network, table: MasqTable(network), v6: v6}
}

// family is the nftables family of the table.
func (m *nftMasq) family() nft.TableFamily {
	if m.v6 {
		return nft.TableFamilyIPv6
	}
	return nft.TableFamilyIPv4
}

func (m *nftMasq) want(cluster netip.Prefix, subs []string, fullyRandom bool) nftables.Table {
	var ps []netip.Prefix
	for _, s := range subs {
		if p, err := netip.ParsePrefix(s); err == nil {
			ps = append(ps, p)
		}
	}
	return nftables.PodMasq(m.table, "weft "+m.network, cluster, ps, fullyRandom)
}

// matches reports whether the table is the wanted one, with or without
// fully-random masquerade.
func (m *nftMasq) matches(have nftables.Table, exists bool, cluster netip.Prefix, subs []string) bool {
	return exists && (nftables.Equal(have, m.want(cluster, subs, true)) || nftables.Equal(have, m.want(cluster, subs, false)))
}

func (m *nftMasq) inPlace(store *ipam.Store, cluster, sub netip.Prefix) (bool, error) {
	marker, ok := readMasqState(store, m.network, m.v6)
	if !ok || marker.Network != cluster.String() || marker.Backend != masqNFTables || !slices.Contains(marker.Subnets, sub.String()) {
		return false, nil
	}
	have, exists, err := m.k.Read(m.family(), m.table)
	if err != nil {
		return false, err
	}
	return m.matches(have, exists, cluster, marker.Subnets), nil
}

func (m *nftMasq) ensure(store *ipam.Store, cluster, sub netip.Prefix) ([]masqFix, error) {
	marker, ok := readMasqState(store, m.network, m.v6)
	if !ok || marker.Network != cluster.String() {
		marker, ok = masqState{Network: cluster.String()}, false
	}
	moved := marker.Backend != masqNFTables
	if moved {
		marker.Backend, ok = masqNFTables, false
	}
	have, exists, err := m.k.Read(m.family(), m.table)
	if err != nil {
		return nil, err
	}
	var srcs []string
	for _, p := range nftables.PodMasqSubnets(have) {
		srcs = append(srcs, p.String())
	}
	subs := mergeSubnets(sub, marker.Subnets, srcs)
	var fixed []masqFix
	if !m.matches(have, exists, cluster, subs) {
		err := m.k.Replace(m.want(cluster, subs, !m.plain))
		if err != nil && !m.plain {
			if err2 := m.k.Replace(m.want(cluster, subs, false)); err2 == nil {
				m.plain, err = true, nil
			}
		}
		if err != nil {
			return nil, fmt.Errorf("masquerade table %s: %w", m.table, err)
		}
		// Restored when what the marker recorded was not there.
		restored := ok && !m.matches(have, exists, cluster, marker.Subnets)
		fam := "ip "
		if m.v6 {
			fam = "ip6 "
		}
		fixed = append(fixed, masqFix{"rebuilt table " + fam + m.table + " for " + strings.Join(subs, ", "), restored})
	}
	if moved || !slices.Equal(marker.Subnets, subs) {
		marker.Subnets = subs
		if err := writeMasqState(store, m.network, m.v6, marker); err != nil {
			return fixed, fmt.Errorf("write masquerade marker: %w", err)
		}
	}
	return fixed, nil
}

func (m *nftMasq) remove(store *ipam.Store) error {
	if err := m.removeRules(); err != nil {
		return err
	}
	os.Remove(store.MarkerPath(masqMarker(m.v6), m.network))
	return nil
}

// removeRules deletes the network's table.
func (m *nftMasq) removeRules() error {
	return m.k.Delete(m.family(), m.table)
}

// mergeSubnets is sub, the marker's subnets and those the rules already
// jump from (ours, since they use our chain or table: adopting them lets
// the last DEL remove them), sorted, without duplicates.
func mergeSubnets(sub netip.Prefix, marker, found []string) []string {
	subs := append([]string{sub.String()}, marker...)
	subs = append(subs, found...)
	slices.Sort(subs)
	return slices.Compact(subs)
}

// modeMasq is the masquerade rules of a network in the backend in force
// (useNFT), moving them out of the other backend when the marker says
// they were made there.
type modeMasq struct {
	network string
	v6      bool
	nft     *nftMasq
	ipt     *masq // nil without an iptables binary
	useNFT  bool
}

func (m *modeMasq) active() masquerader {
	if m.useNFT {
		return m.nft
	}
	return m.ipt
}

func (m *modeMasq) inPlace(store *ipam.Store, cluster, sub netip.Prefix) (bool, error) {
	return m.active().inPlace(store, cluster, sub)
}

func (m *modeMasq) ensure(store *ipam.Store, cluster, sub netip.Prefix) ([]masqFix, error) {
	var fixed []masqFix
	if marker, ok := readMasqState(store, m.network, m.v6); ok {
		switch {
		case m.useNFT && marker.Backend != masqNFTables && m.ipt != nil:
			if err := m.ipt.removeRules(); err != nil {
				return nil, fmt.Errorf("remove the iptables masquerade rules: %w", err)
			}
			fixed = append(fixed, masqFix{"moved the masquerade rules from iptables to nftables", false})
		case !m.useNFT && marker.Backend == masqNFTables:
			if err := m.nft.removeRules(); err != nil {
				return nil, fmt.Errorf("remove the nftables masquerade rules: %w", err)
			}
			fixed = append(fixed, masqFix{"moved the masquerade rules from nftables to iptables", false})
		}
	}
	more, err := m.active().ensure(store, cluster, sub)
	return append(fixed, more...), err
}

// remove deletes the rules from both backends, and the marker.
func (m *modeMasq) remove(store *ipam.Store) error {
	errs := []error{m.nft.removeRules()}
	if m.ipt != nil {
		errs = append(errs, m.ipt.removeRules())
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	os.Remove(store.MarkerPath(masqMarker(m.v6), m.network))
	return nil
}
