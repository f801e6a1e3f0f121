package subnet

import "errors"

// ErrNoConfig is returned by a lease store that holds no network config.
var ErrNoConfig = errors.New("no network config")

// LeaseSet is every lease a store holds at one moment (ours included):
// the keys that parsed and the ones that did not. It is the input of
// FilterPeers.
type LeaseSet struct {
	// Leases are the keys that parsed, sorted by subnet.
	Leases []Lease
	// Invalid are the keys whose name or value did not parse.
	Invalid []InvalidLease
	// Revision orders sets from one store (the etcd revision); zero when
	// the store has none.
	Revision int64
}
