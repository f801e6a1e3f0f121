package plugin

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/coreos/go-iptables/iptables"

	"github.com/weftnet/weft/cni-plugin/ipam"
)

// Masquerading, in the nat table of the plugin's (host) namespace:
//
//	POSTROUTING: -s <pod>/32 -m comment --comment "weft <net> <id>" -j WEFT-MASQ-<hash>   (one per pod)
//	WEFT-MASQ-<hash>: -d <FLANNEL_NETWORK> -j RETURN
//	                  -d 224.0.0.0/4 -j RETURN
//	                  -j MASQUERADE [--random-fully]
//
// The shared chain is built once (under the IPAM lock) and removed by the
// DEL or GC that releases the network's last address; ADD and DEL of a pod
// cost one iptables call each. A marker file in the store directory records
// the cluster network the chain was built for, so a changed FLANNEL_NETWORK
// rebuilds it.

const masqMarker = "masq-network"

// MasqChain is the nat chain holding the masquerade rules of a network.
func MasqChain(network string) string {
	h := sha256.Sum256([]byte(network))
	return "WEFT-MASQ-" + strings.ToUpper(hex.EncodeToString(h[:])[:8])
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

func (m *masq) podRule(ip netip.Addr, containerID string) []string {
	comment := "weft " + m.network + " " + containerID
	if len(comment) > 255 {
		comment = comment[:255]
	}
	return []string{"-s", ip.String() + "/32", "-m", "comment", "--comment", comment, "-j", m.chain}
}

// addPod installs the pod's rule, building the shared chain first when it
// is missing or was built for another cluster network.
func (m *masq) addPod(store *ipam.Store, cluster netip.Prefix, ip netip.Addr, containerID string) error {
	rule := m.podRule(ip, containerID)
	marker := filepath.Join(store.Dir(), masqMarker)
	if b, err := os.ReadFile(marker); err == nil && string(b) == cluster.String() {
		if err := m.ipt.Append("nat", "POSTROUTING", rule...); err == nil {
			return nil
		}
		// The chain vanished behind our back: rebuild below.
	}
	err := store.Do(func(*ipam.Tx) error {
		if err := m.buildChain(cluster); err != nil {
			return err
		}
		return os.WriteFile(marker, []byte(cluster.String()), 0o600)
	})
	if err != nil {
		return err
	}
	if err := m.ipt.Append("nat", "POSTROUTING", rule...); err != nil {
		return fmt.Errorf("add masquerade rule for %s: %w", ip, err)
	}
	return nil
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

// delPod removes the pod's rule; a rule or chain that is already gone is
// not an error.
func (m *masq) delPod(ip netip.Addr, containerID string) error {
	err := m.ipt.Delete("nat", "POSTROUTING", m.podRule(ip, containerID)...)
	if err == nil {
		return nil
	}
	var ie *iptables.Error
	if errors.As(err, &ie) && ie.IsNotExist() {
		return nil
	}
	if ok, cerr := m.ipt.ChainExists("nat", m.chain); cerr == nil && !ok {
		return nil // without the chain the rule cannot exist
	}
	return fmt.Errorf("remove masquerade rule for %s: %w", ip, err)
}

// hasPod reports whether the pod's rule is installed.
func (m *masq) hasPod(ip netip.Addr, containerID string) (bool, error) {
	return m.ipt.Exists("nat", "POSTROUTING", m.podRule(ip, containerID)...)
}

// removeChain deletes the shared chain; the caller holds the store lock and
// has seen that no address is reserved any more.
func (m *masq) removeChain(store *ipam.Store) error {
	os.Remove(filepath.Join(store.Dir(), masqMarker))
	ok, err := m.ipt.ChainExists("nat", m.chain)
	if err != nil || !ok {
		return err
	}
	if err := m.ipt.ClearAndDeleteChain("nat", m.chain); err != nil {
		return fmt.Errorf("remove chain %s: %w", m.chain, err)
	}
	return nil
}
