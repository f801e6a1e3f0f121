package iptables

import (
	"net/netip"
	"slices"
)

// ForwardFallback keeps only the WEFT-FWD chain, for weft's nftables mode:
// an accept in weft's own nftables table cannot override a DROP policy of
// iptables' FORWARD chain (Docker sets one), so while that policy is in
// force the forward accept rules must live in iptables' chain as well.
// It implements internal/nftables.ForwardFallback.
type ForwardFallback struct {
	ipt IPTables
}

// NewForwardFallback returns a fallback using ipt.
func NewForwardFallback(ipt IPTables) *ForwardFallback { return &ForwardFallback{ipt: ipt} }

// ForwardDrops reports whether the filter table's FORWARD chain has a DROP
// policy.
func (f *ForwardFallback) ForwardDrops() (bool, error) {
	lines, err := f.ipt.List("filter", "FORWARD")
	if err != nil {
		return false, err
	}
	return slices.Contains(lines, "-P FORWARD DROP"), nil
}

// EnsureForward installs WEFT-FWD and its jump for network, fixing only
// what differs, and reports whether it changed anything.
func (f *ForwardFallback) EnsureForward(network netip.Prefix) (bool, error) {
	return ensureChain(f.ipt, desired(network, network, false, true, true)[0])
}

// RemoveForward removes WEFT-FWD and its jump, if present.
func (f *ForwardFallback) RemoveForward() error {
	return removeChain(f.ipt, "filter", ForwardChain, "FORWARD")
}

// RemoveMasq deletes WEFT-POSTRTG and its jump, leaving WEFT-FWD: what
// weft's nftables mode removes at start when a ForwardFallback manages
// WEFT-FWD.
func RemoveMasq(ipt IPTables) error {
	return removeChain(ipt, "nat", MasqChain, "POSTROUTING")
}
