package plugin

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"

	"github.com/weftnet/weft/cni-plugin/ipam"
)

// Masquerading, in the nat table of the plugin's (host) namespace:
//
//	POSTROUTING:      -s <lease subnet> -m comment --comment "weft <net>" -j WEFT-MASQ-<hash>
//	WEFT-MASQ-<hash>: -d <FLANNEL_NETWORK> -j RETURN
//	                  -d 224.0.0.0/4 -j RETURN
//	                  -j MASQUERADE [--random-fully]
//
// Pods only ever get addresses of the node's lease, so one jump per lease
// subnet covers every pod, and the steady-state ADD and DEL run no iptables
// command at all (each costs two process executions, the bulk of an ADD).
// A marker file in the store directory records the cluster network the chain
// was built for and the subnets that have a jump; an ADD whose network or
// subnet is not in it (first pod, weftd re-leased) builds the missing part
// under the IPAM lock. The DEL or GC that releases the network's last
// address removes the jumps and the chain, also under the lock. CHECK
// verifies that the chain and the jump exist.
//
//	no chain --first ADD--> chain + jump(subnet) --subnet change ADD--> + jump(new subnet)
//	    ^                                                                     |
//	    +------------------------- last DEL / GC ----------------------------+

// MasqChain is the nat chain holding the masquerade rules of a network.
func MasqChain(network string) string {
	h := sha256.Sum256([]byte(network))
	return "WEFT-MASQ-" + strings.ToUpper(hex.EncodeToString(h[:])[:8])
}

type masqState struct {
	Network string   `json:"network"`
	Subnets []string `json:"subnets"`
}

func readMasqState(store *ipam.Store, network string) (masqState, bool) {
	var st masqState
	b, err := os.ReadFile(store.MarkerPath("masq", network))
	if err != nil || json.Unmarshal(b, &st) != nil {
		return masqState{}, false
	}
	return st, true
}

func writeMasqState(store *ipam.Store, network string, st masqState) error {
	b, _ := json.Marshal(st)
	p := store.MarkerPath("masq", network)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// masqCurrent reports, without running iptables, whether the marker says
// the rules for cluster and sub are in place.
func masqCurrent(store *ipam.Store, network string, cluster, sub netip.Prefix) bool {
	st, ok := readMasqState(store, network)
	return ok && st.Network == cluster.String() && slices.Contains(st.Subnets, sub.String())
}

type masq struct {
	ipt     *iptables.IPTables
	network string // CNI network name
	chain   string
}

func newMasq(network string) (*masq, error) {
	ipt, err := iptables.New()
	if err != nil {
		return nil, fmt.Errorf("iptables: %w", err)
	}
	return &masq{ipt: ipt, network: network, chain: MasqChain(network)}, nil
}

func (m *masq) jump(sub string) []string {
	return []string{"-s", sub, "-m", "comment", "--comment", "weft " + m.network, "-j", m.chain}
}

// ensure builds the chain (for cluster) and the jump for sub. The caller
// holds the store lock.
func (m *masq) ensure(store *ipam.Store, cluster, sub netip.Prefix) error {
	st, ok := readMasqState(store, m.network)
	exists, err := m.ipt.ChainExists("nat", m.chain)
	if err != nil {
		return fmt.Errorf("look up chain %s: %w", m.chain, err)
	}
	if !ok || !exists || st.Network != cluster.String() {
		if err := m.buildChain(cluster); err != nil {
			return err
		}
		if !exists {
			st.Subnets = nil // the jumps went with the chain
		}
		st.Network = cluster.String()
	}
	if err := m.ipt.AppendUnique("nat", "POSTROUTING", m.jump(sub.String())...); err != nil {
		return fmt.Errorf("add masquerade jump for %s: %w", sub, err)
	}
	if !slices.Contains(st.Subnets, sub.String()) {
		st.Subnets = append(st.Subnets, sub.String())
	}
	return writeMasqState(store, m.network, st)
}

func (m *masq) buildChain(cluster netip.Prefix) error {
	if err := m.ipt.ClearChain("nat", m.chain); err != nil {
		return fmt.Errorf("create chain %s: %w", m.chain, err)
	}
	masqRule := []string{"-j", "MASQUERADE"}
	if m.ipt.HasRandomFully() {
		masqRule = append(masqRule, "--random-fully")
	}
	rules := [][]string{
		{"-d", cluster.String(), "-j", "RETURN"},
		{"-d", "224.0.0.0/4", "-j", "RETURN"},
		masqRule,
	}
	for _, r := range rules {
		if err := m.ipt.Append("nat", m.chain, r...); err != nil {
			return fmt.Errorf("fill chain %s: %w", m.chain, err)
		}
	}
	return nil
}

// check verifies the chain and the jump for sub.
func (m *masq) check(cluster, sub netip.Prefix) error {
	ok, err := m.ipt.Exists("nat", "POSTROUTING", m.jump(sub.String())...)
	if err != nil {
		return fmt.Errorf("look up masquerade jump: %w", err)
	}
	if !ok {
		return fmt.Errorf("masquerade jump for %s missing from nat POSTROUTING", sub)
	}
	ok, err = m.ipt.Exists("nat", m.chain, "-d", cluster.String(), "-j", "RETURN")
	if err != nil || !ok {
		return fmt.Errorf("masquerade chain %s does not exempt %s (err %v)", m.chain, cluster, err)
	}
	return nil
}

// remove deletes every jump and the chain. The caller holds the store lock
// and has seen that no address is reserved any more.
func (m *masq) remove(store *ipam.Store) error {
	st, _ := readMasqState(store, m.network)
	var errs []error
	for _, sub := range st.Subnets {
		err := m.ipt.Delete("nat", "POSTROUTING", m.jump(sub)...)
		var ie *iptables.Error
		if err != nil && !(errors.As(err, &ie) && ie.IsNotExist()) {
			errs = append(errs, fmt.Errorf("remove masquerade jump for %s: %w", sub, err))
		}
	}
	if ok, err := m.ipt.ChainExists("nat", m.chain); err == nil && ok {
		if err := m.ipt.ClearAndDeleteChain("nat", m.chain); err != nil {
			errs = append(errs, fmt.Errorf("remove chain %s: %w", m.chain, err))
		}
	}
	if len(errs) == 0 {
		os.Remove(store.MarkerPath("masq", m.network))
	}
	return errors.Join(errs...)
}
