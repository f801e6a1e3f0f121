package subnet

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Why a lease is not programmed as a peer. Each refusal carries one of these
// classes; the log, /status, the metrics and weftctl doctor all use them.
const (
	// RefusedUnparsable: the key or the value does not parse.
	RefusedUnparsable = "unparsable"
	// RefusedInvalid: the lease parses but can never be a peer here (outside
	// the network, wrong length, overlapping our subnet, unusable PublicIP).
	RefusedInvalid = "invalid"
	// RefusedBackendData: the lease was written by another backend type, or
	// its backend data is malformed.
	RefusedBackendData = "backend-data"
	// RefusedDuplicateSubnet: an older key names the same subnet (a plain
	// key and a dual-stack "&" key).
	RefusedDuplicateSubnet = "duplicate-subnet"
	// RefusedDuplicateMAC: an older lease carries the same backend identity
	// (vxlan: the VtepMAC), or the identity is our own.
	RefusedDuplicateMAC = "duplicate-mac"
)

// Conflict reports whether a refusal class is a conflict between leases
// that each look valid on their own, as opposed to a broken lease.
func Conflict(reason string) bool {
	return reason == RefusedDuplicateSubnet || reason == RefusedDuplicateMAC
}

// InvalidLease is a key under <prefix>/subnets/ whose name or value does not
// parse. It is reported, never programmed.
type InvalidLease struct {
	Key   string
	Value []byte
	Err   error
}

// Refusal is one lease that will not be programmed, and why.
type Refusal struct {
	// Key is the lease's key suffix as stored. It comes from etcd: quote it
	// before printing it to a terminal.
	Key string
	// Subnet is the lease's IPv4 subnet; invalid when the key did not parse.
	Subnet netip.Prefix
	// Reason is one of the Refused* classes.
	Reason string
	// Err says what is wrong, naming the lease or the lease it lost to.
	Err error
}

// PeerRules is what FilterPeers needs to know of the backend in use; each
// backend describes it once (backend.Descriptor.PeerRules).
type PeerRules struct {
	// LeaseType is the BackendType the backend's leases carry ("" for udp).
	LeaseType string
	// PeerData judges a peer's BackendData: it returns the identity two
	// hosts must never share (vxlan: the VTEP MAC), "" if none, or an
	// error when the data is unusable. Nil: the backend carries no data.
	PeerData func(LeaseAttrs) (identity string, err error)
	// PeerData6 judges BackendV6Data the same way, for leases with an
	// IPv6 subnet on a dual-stack network. Nil: the backend carries no
	// IPv6 data.
	PeerData6 func(LeaseAttrs) (identity string, err error)
}

// FilterPeers is the one place where peer leases are judged. From the
// network config, our own lease (with the PublicIP we publish) and the
// current set of leases, it returns the peers a backend may program, sorted
// by subnet, and a refusal for every other lease, sorted by key. It is pure:
// the same input always gives the same output, whatever order it came in.
// The peers point into leases, which are shared, not copied: neither may be
// modified afterwards. (A copy cost some 230 bytes per peer for as long as
// the backend held it, next to the lease set it came from.)
//
// The rules, in order:
//   - our own key is neither a peer nor a refusal;
//   - a lease that does not parse, lies outside the network, overlaps our
//     subnet, has an unusable or our own PublicIP (on a dual-stack network
//     likewise its IPv6 subnet and PublicIPv6), or carries another
//     backend's data or data rules.PeerData refuses is refused;
//   - a reservation nobody has taken up yet (no backend data of ours) is
//     neither a peer nor a refusal: it is somebody's future lease;
//   - of two keys for one subnet, the older lease (lower CreateRevision,
//     then the smaller key) wins and the other is refused; likewise for two
//     keys with one IPv6 subnet on a dual-stack network;
//   - of two leases with one backend identity (vxlan: the VtepMAC, as the
//     kernel's FDB holds one remote per MAC) the older wins and the other
//     is refused, and a peer with our own identity is refused.
//
// The older lease wins so that a peer that is already working is never
// displaced by a key written after it, whoever wrote it. Renewals keep a
// lease's CreateRevision, so a live host stays the older. The honest way
// to meet a conflict, a host whose PublicIP changed while its old lease
// lives on with the same VtepMAC, is resolved on that host: weftd never
// publishes a VtepMAC that another host's lease already carries (see
// backend.Config.PeerAttrs).
//
// Its cost is O(n log n) in the number of leases: conflicts are found by
// sorting.
func FilterPeers(c *Config, rules PeerRules, own Lease, leases []*Lease, invalid []InvalidLease) (peers []*Lease, refused []Refusal) {
	for _, inv := range invalid {
		refused = append(refused, Refusal{Key: inv.Key, Reason: RefusedUnparsable, Err: inv.Err})
	}

	// Per-lease checks.
	cands := make([]peerCand, 0, len(leases))
	for i := range leases {
		l := leases[i]
		if l.Subnet == own.Subnet && l.IPv6Subnet == own.IPv6Subnet {
			continue // our own key
		}
		if err := c.ValidatePeer(*l, own.Subnet, own.Attrs.PublicIP); err != nil {
			refused = append(refused, Refusal{Key: l.Key(), Subnet: l.Subnet, Reason: RefusedInvalid, Err: err})
			continue
		}
		if err := c.ValidatePeer6(*l, own.IPv6Subnet, own.Attrs.PublicIPv6); err != nil {
			refused = append(refused, Refusal{Key: l.Key(), Subnet: l.Subnet, Reason: RefusedInvalid, Err: err})
			continue
		}
		if got := l.Attrs.BackendType; got != rules.LeaseType {
			if l.Reservation {
				continue // reserved for a host that has not started yet
			}
			refused = append(refused, Refusal{Key: l.Key(), Subnet: l.Subnet, Reason: RefusedBackendData,
				Err: fmt.Errorf("peer runs backend %s, this network runs %s", backendName(got), c.BackendType)})
			continue
		}
		cd := peerCand{l: l}
		if rules.PeerData != nil {
			id, err := rules.PeerData(l.Attrs)
			if err != nil {
				refused = append(refused, Refusal{Key: l.Key(), Subnet: l.Subnet, Reason: RefusedBackendData, Err: err})
				continue
			}
			cd.id[0] = id
		}
		if rules.PeerData6 != nil && c.HasIPv6(*l) {
			id, err := rules.PeerData6(l.Attrs)
			if err != nil {
				refused = append(refused, Refusal{Key: l.Key(), Subnet: l.Subnet, Reason: RefusedBackendData, Err: err})
				continue
			}
			cd.id[1] = id
		}
		cands = append(cands, cd)
	}

	lost := make([]bool, len(cands))
	// One lease per subnet, and on a dual-stack network per IPv6 subnet.
	keepOlder(cands, lost, func(i int) (netip.Prefix, bool) { return cands[i].l.Subnet, true }, comparePrefix,
		func(lose, win *Lease, _ netip.Prefix) {
			refused = append(refused, Refusal{Key: lose.Key(), Subnet: lose.Subnet, Reason: RefusedDuplicateSubnet,
				Err: fmt.Errorf("subnet %s is also claimed by the older key %s", lose.Subnet, win.Key())})
		})
	if c.EnableIPv6 {
		keepOlder(cands, lost, func(i int) (netip.Prefix, bool) {
			sn := cands[i].l.IPv6Subnet
			return sn, sn.IsValid()
		}, comparePrefix, func(lose, win *Lease, _ netip.Prefix) {
			refused = append(refused, Refusal{Key: lose.Key(), Subnet: lose.Subnet, Reason: RefusedDuplicateSubnet,
				Err: fmt.Errorf("IPv6 subnet %s is also claimed by the older key %s", lose.IPv6Subnet, win.Key())})
		})
	}

	// One lease per backend identity, in each family; a peer with our own
	// identity is refused first.
	for fam, judge := range [2]func(LeaseAttrs) (string, error){rules.PeerData, rules.PeerData6} {
		if judge == nil {
			continue
		}
		if ownID, err := judge(own.Attrs); err == nil && ownID != "" {
			for i, cd := range cands {
				if !lost[i] && cd.id[fam] == ownID {
					lost[i] = true
					refused = append(refused, Refusal{Key: cd.l.Key(), Subnet: cd.l.Subnet, Reason: RefusedDuplicateMAC,
						Err: fmt.Errorf("its %s is our own", describeID(ownID, fam))})
				}
			}
		}
		keepOlder(cands, lost, func(i int) (string, bool) { id := cands[i].id[fam]; return id, id != "" }, strings.Compare,
			func(lose, win *Lease, id string) {
				refused = append(refused, Refusal{Key: lose.Key(), Subnet: lose.Subnet, Reason: RefusedDuplicateMAC,
					Err: fmt.Errorf("its %s is also used by the older lease %s", describeID(id, fam), win.Key())})
			})
	}

	peers = make([]*Lease, 0, len(cands))
	for i, cd := range cands {
		if !lost[i] {
			peers = append(peers, cd.l)
		}
	}
	slices.SortFunc(peers, func(a, b *Lease) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	slices.SortFunc(refused, func(a, b Refusal) int {
		return cmp.Or(cmp.Compare(a.Key, b.Key), cmp.Compare(a.Reason, b.Reason))
	})
	return peers, refused
}

// olderLease orders the winner of a conflict first: the lower
// CreateRevision, then the smaller key.
func olderLease(a, b *Lease) int {
	if c := cmp.Compare(a.CreateRevision, b.CreateRevision); c != 0 {
		return c
	}
	return cmp.Compare(a.Key(), b.Key())
}

// peerCand is a lease that passed the per-lease checks, with its backend
// identity per family (IPv4, IPv6), "" if none.
type peerCand struct {
	l  *Lease
	id [2]string
}

// keepOlder keeps, of the candidates not yet lost that share a key, the
// older lease (olderLease) and marks the others lost, reporting each with
// refuse(loser, winner, k). key returns ok=false for a candidate without
// one; compare orders keys. The result does not depend on the candidates'
// order. It sorts indices rather than building a map of every key: a map
// of thousands of peers cost more memory, for as long as the call ran,
// than the lease set itself.
func keepOlder[K any](cands []peerCand, lost []bool, key func(i int) (k K, ok bool), compare func(a, b K) int, refuse func(lose, win *Lease, k K)) {
	idx := make([]int32, 0, len(cands))
	for i := range cands {
		if _, ok := key(i); ok && !lost[i] {
			idx = append(idx, int32(i))
		}
	}
	keyOf := func(i int32) K { k, _ := key(int(i)); return k }
	slices.SortFunc(idx, func(a, b int32) int {
		return cmp.Or(compare(keyOf(a), keyOf(b)), olderLease(cands[a].l, cands[b].l))
	})
	// Each run of one key starts with its winner.
	for start := 0; start < len(idx); {
		win := idx[start]
		k := keyOf(win)
		end := start + 1
		for ; end < len(idx) && compare(keyOf(idx[end]), k) == 0; end++ {
			lost[idx[end]] = true
			refuse(cands[idx[end]].l, cands[win].l, k)
		}
		start = end
	}
}

// comparePrefix orders prefixes by address, then length.
func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

func macString(m [6]byte) string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// backendName names a lease's BackendType for messages: flannel's udp
// leases carry none.
func backendName(leaseType string) string {
	if leaseType == "" {
		return "udp (no BackendType)"
	}
	return strconv.Quote(leaseType)
}

// describeID names a backend identity for messages: a 6-byte identity is
// a MAC address. fam is 0 for the IPv4 data, 1 for BackendV6Data.
func describeID(id string, fam int) string {
	v6 := ""
	if fam == 1 {
		v6 = "IPv6 "
	}
	if len(id) == 6 {
		return v6 + "VtepMAC " + net.HardwareAddr(id).String()
	}
	return v6 + "identity " + strconv.Quote(id)
}
