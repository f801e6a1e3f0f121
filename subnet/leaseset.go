package subnet

import (
	"errors"
	"net/netip"
)

// ErrNoConfig is returned by a lease store that holds no network config.
var ErrNoConfig = errors.New("no network config")

// LeaseSet is every lease a store holds at one moment (ours included):
// the keys that parsed and the ones that did not. It is the input of
// FilterPeers.
type LeaseSet struct {
	// Leases are the keys that parsed, sorted by subnet. They are shared
	// (a store hands the same lease to every set it appears in, and
	// FilterPeers hands it on to the backend): nobody modifies them.
	Leases []*Lease
	// Invalid are the keys whose name or value did not parse.
	Invalid []InvalidLease
	// Revision orders sets from one store (the etcd revision); zero when
	// the store has none.
	Revision int64
}

// HoldSpec is what a lease store needs to claim this host's lease.
type HoldSpec struct {
	// Network is the config weftd runs; the lease must lie in it.
	Network *Config
	// Attrs is what the lease publishes: PublicIP, BackendType, BackendData.
	Attrs LeaseAttrs
	// Previous is the subnet this host held before (from its subnet file),
	// which a store that allocates should prefer; zero if unknown.
	Previous netip.Prefix
	// Previous6 is the IPv6 subnet of the subnet file, preferred likewise
	// on a dual-stack network; zero if unknown.
	Previous6 netip.Prefix
}
