package vxlan

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/backend/routes"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/subnet"
)

// pass is the backend.PassFunc: one reconcile pass under kmu.
func (b *Backend) pass(own subnet.Lease, peers []subnet.Lease) backend.Pass {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	return b.apply(own, peers)
}

// peerPlan is one peer after validation.
type peerPlan struct {
	lease  *subnet.Lease // in the pass's peers
	mac    string        // VtepMAC, raw bytes
	direct bool
}

// apply makes the kernel match own and peers. Caller holds kmu.
func (b *Backend) apply(own subnet.Lease, peers []subnet.Lease) (p backend.Pass) {
	p.Refused, p.Repairs = map[netip.Prefix]string{}, map[string]uint64{}
	if err := b.prepare(); err != nil {
		p.Err = err
		return p
	}
	repaired, err := b.ensureDevice()
	if err != nil {
		p.Err = err
		return p
	}
	if repaired {
		p.Repairs["device"]++
	}
	linkIndex := int(b.linkIndex.Load())
	var errs []error
	if own.Subnet.IsValid() {
		if rep, err := b.ensureAddr(linkIndex, netip.PrefixFrom(own.Subnet.Addr(), 32)); err != nil {
			errs = append(errs, err)
		} else if rep {
			p.Repairs["addr"]++
		}
	}

	var onLink []netip.Prefix
	if b.opts.DirectRouting {
		if onLink, err = routes.OnLink(b.k, b.cfg.Ext); err != nil {
			errs = append(errs, err)
		}
	}

	plans := make([]peerPlan, 0, len(peers))
	want := make([]nl.RouteSpec, 0, len(peers))
	for i := range peers {
		l := &peers[i]
		mac, err := PeerData(l.Attrs) // FilterPeers judged it already; cheap
		if err != nil {
			p.Refused[l.Subnet] = err.Error()
			continue
		}
		pp := peerPlan{lease: l, mac: mac}
		for _, c := range onLink {
			if c.Contains(l.Attrs.PublicIP) {
				pp.direct = true
				break
			}
		}
		plans = append(plans, pp)
		if pp.direct {
			// onlink is redundant here (the gateway is on-link anyway) but
			// marks the route as ours rather than host-gw's for Cleanup.
			want = append(want, nl.RouteSpec{Dst: l.Subnet, Gw: l.Attrs.PublicIP, LinkIndex: b.cfg.Ext.Index, OnLink: true})
		} else {
			want = append(want, nl.RouteSpec{Dst: l.Subnet, Gw: l.Subnet.Addr(), LinkIndex: linkIndex, OnLink: true})
		}
	}
	t0 := time.Now()
	rres, err := b.kern.Routes.Reconcile(want)
	p.Details = append(p.Details, "routes", time.Since(t0))
	if err != nil {
		errs = append(errs, err)
	}
	p.Repairs["route"] += uint64(rres.Repaired)
	for dst, why := range rres.Refused {
		p.Refused[dst] = why
	}

	neighWant := make(map[netip.Addr]string, len(plans))
	fdbWant := make(map[string]netip.Addr, len(plans))
	for _, pp := range plans {
		if _, bad := p.Refused[pp.lease.Subnet]; bad || pp.direct {
			continue
		}
		neighWant[pp.lease.Subnet.Addr()] = pp.mac
		fdbWant[pp.mac] = pp.lease.Attrs.PublicIP
	}
	t0 = time.Now()
	neighFailed, rep, err := b.neighs.sync(b, linkIndex, neighWant)
	p.Details = append(p.Details, "neigh", time.Since(t0))
	if err != nil {
		errs = append(errs, err)
	}
	p.Repairs["neigh"] += uint64(rep)
	t0 = time.Now()
	fdbFailed, rep, err := b.fdb.sync(b, linkIndex, fdbWant)
	p.Details = append(p.Details, "fdb", time.Since(t0))
	if err != nil {
		errs = append(errs, err)
	}
	p.Repairs["fdb"] += uint64(rep)

	p.Failed = map[netip.Prefix]error{}
	for _, pp := range plans {
		sn := pp.lease.Subnet
		if _, bad := p.Refused[sn]; bad {
			continue
		}
		if err, failed := rres.Failed[sn]; failed {
			p.Failed[sn] = err
			continue
		}
		if !pp.direct {
			if err := cmp.Or(neighFailed[sn.Addr()], fdbFailed[pp.mac]); err != nil {
				p.Failed[sn] = err
				continue
			}
		}
		p.Programmed++
	}
	p.Err = errors.Join(errs...)
	return p
}

// ensureAddr makes want the only IPv4 address of the device.
func (b *Backend) ensureAddr(linkIndex int, want netip.Prefix) (repaired bool, err error) {
	addrs, err := b.k.AddrList(linkIndex, nl.FamilyV4)
	if err != nil {
		return false, fmt.Errorf("list addresses of %s: %w", b.name, err)
	}
	found := false
	for _, a := range addrs {
		if a.Prefix == want {
			found = true
			continue
		}
		if err := b.k.DelAddr(a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return false, fmt.Errorf("remove stale address %s from %s: %w", a.Prefix, b.name, err)
		}
	}
	if found {
		b.installedAddr = want
		return false, nil
	}
	if err := b.k.AddAddr(linkIndex, want); err != nil && !errors.Is(err, unix.EEXIST) {
		return false, fmt.Errorf("add address %s to %s: %w", want, b.name, err)
	}
	repaired = b.installedAddr == want
	b.installedAddr = want
	return repaired, nil
}

// peerEntries is one of the two kinds of entry the backend keeps on its
// device for every peer. To the kernel both are neighbour objects: a
// neighbour entry maps the peer's VTEP address to its VtepMAC (K is the
// address, V the MAC), an FDB entry maps the VtepMAC to the peer's
// PublicIP (K is the MAC, V the address). MACs are raw bytes in a string.
type peerEntries[K, V comparable] struct {
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
	peak      int
}

// neighEntries returns the neighbour entries: peer VTEP address -> MAC.
func neighEntries() *peerEntries[netip.Addr, string] {
	return &peerEntries[netip.Addr, string]{
		kind: "neighbour", family: nl.FamilyV4,
		key: func(n *nl.Neigh) (netip.Addr, bool) {
			// The kernel's own (not permanent) entries age out by
			// themselves.
			return n.IP, n.IP.IsValid() && n.State&unix.NUD_PERMANENT != 0
		},
		says: func(n *nl.Neigh, mac string) bool { return n.HardwareAddrIs(net.HardwareAddr(mac)) },
		spec: func(linkIndex int, ip netip.Addr, mac string) nl.NeighSpec {
			return nl.NeighSpec{LinkIndex: linkIndex, Family: nl.FamilyV4, State: unix.NUD_PERMANENT, Type: unix.RTN_UNICAST,
				IP: ip, MAC: net.HardwareAddr(mac)}
		},
		installed: map[netip.Addr]string{},
	}
}

// fdbEntries returns the FDB entries: MAC -> remote VTEP (PublicIP).
func fdbEntries() *peerEntries[string, netip.Addr] {
	return &peerEntries[string, netip.Addr]{
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
func (e *peerEntries[K, V]) describe(ip netip.Addr, mac net.HardwareAddr) string {
	if e.family == nl.FamilyBridge {
		return fmt.Sprintf("%s -> %s", mac, ip)
	}
	return fmt.Sprintf("%s -> %s", ip, mac)
}

// sync makes the entries of this kind on the device exactly want. It
// returns the keys that failed and how many entries were repairs. Caller
// holds kmu.
func (e *peerEntries[K, V]) sync(b *Backend, linkIndex int, want map[K]V) (map[K]error, int, error) {
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
		err = fmt.Errorf("list %s entries of %s: %w", e.kind, b.name, err)
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
	e.installed = routes.Shrink(e.installed, &e.peak)
	return failed, repairs, errors.Join(errs...)
}
