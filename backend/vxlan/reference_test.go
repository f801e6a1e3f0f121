package vxlan

// The neighbour and FDB entry sync as it was before it kept sorted slices
// (commit 770c039), kept as the reference that TestEntriesMatchReference
// compares the current one with.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/nl"
)

// refPeerEntries is one of the two kinds of entry the backend keeps on its
// device for every peer. To the kernel both are neighbour objects: a
// neighbour entry maps the peer's VTEP address to its VtepMAC (K is the
// address, V the MAC), an FDB entry maps the VtepMAC to the peer's
// PublicIP (K is the MAC, V the address). MACs are raw bytes in a string.
type refPeerEntries[K, V comparable] struct {
	kind   string // "neighbour" or "FDB", for messages
	family nl.Family
	// key returns the key of a listed entry that is the backend's to
	// manage; false leaves the entry alone.
	key func(n *nl.Neigh) (K, bool)
	// says reports whether the listed entry n maps its key to v.
	says func(n *nl.Neigh, v V) bool
	// spec is the request that makes k -> v a permanent entry.
	spec func(linkIndex int, k K, v V) nl.NeighSpec
	// installed is what this backend installed and the kernel still
	// held at the last pass; peak the most entries it has held.
	installed map[K]V
}

// neighEntries returns the neighbour entries of family (ARP for IPv4, NDP
// for IPv6): peer VTEP address -> MAC.
func refNeighEntries(family nl.Family) *refPeerEntries[netip.Addr, string] {
	return &refPeerEntries[netip.Addr, string]{
		kind: "neighbour", family: family,
		key: func(n *nl.Neigh) (netip.Addr, bool) {
			// The kernel's own (not permanent) entries age out by
			// themselves.
			return n.IP, n.IP.IsValid() && n.State&unix.NUD_PERMANENT != 0
		},
		says: func(n *nl.Neigh, mac string) bool { return n.HardwareAddrIs(net.HardwareAddr(mac)) },
		spec: func(linkIndex int, ip netip.Addr, mac string) nl.NeighSpec {
			return nl.NeighSpec{LinkIndex: linkIndex, Family: family, State: unix.NUD_PERMANENT, Type: unix.RTN_UNICAST,
				IP: ip, MAC: net.HardwareAddr(mac)}
		},
		installed: map[netip.Addr]string{},
	}
}

// fdbEntries returns the FDB entries: MAC -> remote VTEP (PublicIP, or
// PublicIPv6 on the IPv6 device).
func refFdbEntries() *refPeerEntries[string, netip.Addr] {
	return &refPeerEntries[string, netip.Addr]{
		kind: "FDB", family: nl.FamilyBridge,
		key: func(n *nl.Neigh) (string, bool) {
			if n.Flags&unix.NTF_SELF == 0 {
				return "", false
			}
			return string(n.HardwareAddr()), true
		},
		says: func(n *nl.Neigh, dst netip.Addr) bool { return n.IP == dst },
		spec: func(linkIndex int, mac string, dst netip.Addr) nl.NeighSpec {
			return nl.NeighSpec{LinkIndex: linkIndex, Family: nl.FamilyBridge, State: unix.NUD_PERMANENT, Flags: unix.NTF_SELF,
				IP: dst, MAC: net.HardwareAddr(mac)}
		},
		installed: map[string]netip.Addr{},
	}
}

// describe renders an entry for messages the way ip(8) and bridge(8) list
// it: "address -> MAC" for a neighbour, "MAC -> remote" for FDB.
func (e *refPeerEntries[K, V]) describe(ip netip.Addr, mac net.HardwareAddr) string {
	if e.family == nl.FamilyBridge {
		return fmt.Sprintf("%s -> %s", mac, ip)
	}
	return fmt.Sprintf("%s -> %s", ip, mac)
}

// sync makes the entries of this kind on the device exactly want. It
// returns the keys that failed and how many entries were repairs. Caller
// holds kmu.
func (e *refPeerEntries[K, V]) sync(v *vtep, linkIndex int, want map[K]V) (map[K]error, int, error) {
	b := v.b
	failed := map[K]error{}
	// The entries on the device, as they are read (no list of them is
	// kept): whether the entry of each wanted key already says what is
	// wanted (the last one read counts), and the stale rest, deleted
	// afterwards. (A wanted FDB key is a peer's VtepMAC, which is unicast,
	// and the kernel keeps one remote per unicast MAC; only the all-zeros
	// and multicast entries have several.)
	right := make(map[K]bool, len(e.installed))
	var stale []nl.Neigh
	err := b.k.NeighWalk(linkIndex, e.family, func() { clear(right); stale = stale[:0] }, func(n *nl.Neigh) {
		if n.LinkIndex != linkIndex {
			return
		}
		k, ok := e.key(n)
		if !ok {
			return
		}
		if v, wanted := want[k]; wanted {
			right[k] = n.State&unix.NUD_PERMANENT != 0 && e.says(n, v)
		} else {
			stale = append(stale, *n)
		}
	})
	if err != nil {
		err = fmt.Errorf("list %s entries of %s: %w", e.kind, v.name, err)
		for k := range want {
			failed[k] = err
		}
		return failed, 0, err
	}

	var errs []error
	repairs := 0
	type set struct {
		k K
		v V
	}
	var sets []set
	var specs []nl.NeighSpec
	if n := len(want) - len(e.installed); n > 16 {
		sets, specs = make([]set, 0, n), make([]nl.NeighSpec, 0, n) // first pass: most are new
	}
	for k, v := range want {
		if right[k] {
			e.installed[k] = v
			continue
		}
		// Missing or wrong: a replace rewrites a wrong entry in place.
		sets = append(sets, set{k, v})
		specs = append(specs, e.spec(linkIndex, k, v))
	}
	for i, err := range b.k.SetNeighs(specs) {
		st := sets[i]
		if err != nil {
			err = fmt.Errorf("set %s entry %s: %w", e.kind, e.describe(specs[i].IP, specs[i].MAC), err)
			failed[st.k] = err
			errs = append(errs, err)
			continue
		}
		if prev, had := e.installed[st.k]; had && prev == st.v {
			repairs++
		}
		e.installed[st.k] = st.v
	}
	for i := range stale {
		n := &stale[i]
		if err := b.k.DelNeigh(n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete %s entry %s: %w", e.kind, e.describe(n.IP, n.HardwareAddr()), err))
		}
	}
	for k := range e.installed {
		if _, ok := want[k]; !ok {
			delete(e.installed, k)
		}
	}
	return failed, repairs, errors.Join(errs...)
}
