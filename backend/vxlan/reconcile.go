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
func (b *Backend) pass(own subnet.Lease, peers []*subnet.Lease) backend.Pass {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	return b.apply(own, peers)
}

// peerPlan is one peer after validation.
type peerPlan struct {
	lease  *subnet.Lease // in the pass's peers
	mac    string        // VtepMAC, raw bytes
	direct bool
	// v6 is set when the peer's IPv6 part is programmed too, through
	// mac6 (its IPv6 VtepMAC) or, with direct6, a route on the underlay.
	v6      bool
	mac6    string
	direct6 bool
}

// apply makes the kernel match own and peers. Caller holds kmu.
func (b *Backend) apply(own subnet.Lease, peers []*subnet.Lease) (p backend.Pass) {
	p.Refused, p.Repairs = map[netip.Prefix]string{}, map[string]uint64{}
	if err := b.prepare(); err != nil {
		p.Err = err
		return p
	}
	repaired, err := b.v4.ensureDevice()
	if err != nil {
		p.Err = err
		return p
	}
	if repaired {
		p.Repairs["device"]++
	}
	var errs []error
	// IPv6 is programmed when both ends have it: the network (b.v6), our
	// lease and the peer's. An IPv6 device that cannot be set up holds
	// back the IPv6 part of every peer, not the IPv4 one.
	var err6 error
	if b.v6 != nil {
		if repaired, err6 = b.v6.ensureDevice(); err6 != nil {
			errs = append(errs, err6)
		} else if repaired {
			p.Repairs["device"]++
		}
	}
	dual := b.v6 != nil && own.IPv6Subnet.IsValid()
	if own.Subnet.IsValid() {
		if rep, err := b.v4.ensureAddr(netip.PrefixFrom(own.Subnet.Addr(), 32)); err != nil {
			errs = append(errs, err)
		} else if rep {
			p.Repairs["addr"]++
		}
	}
	if dual && err6 == nil {
		if rep, err := b.v6.ensureAddr(netip.PrefixFrom(own.IPv6Subnet.Addr(), 128)); err != nil {
			errs = append(errs, err)
			err6 = err
		} else if rep {
			p.Repairs["addr"]++
		}
	}

	var onLink, onLink6 []netip.Prefix
	if b.opts.DirectRouting {
		if onLink, err = routes.OnLink(b.k, b.cfg.Ext); err != nil {
			errs = append(errs, err)
		}
		if dual {
			if onLink6, err = routes.OnLink6(b.k, b.cfg.Ext); err != nil {
				errs = append(errs, err)
			}
		}
	}

	plans := make([]peerPlan, 0, len(peers))
	want := make([]nl.RouteSpec, 0, len(peers))
	for i := range peers {
		l := peers[i]
		mac, err := PeerData(l.Attrs) // FilterPeers judged it already; cheap
		if err != nil {
			p.Refused[l.Subnet] = err.Error()
			continue
		}
		pp := peerPlan{lease: l, mac: mac, direct: onLinkAddr(onLink, l.Attrs.PublicIP)}
		if dual && b.cfg.Network.HasIPv6(*l) && l.Attrs.PublicIPv6.IsValid() {
			// No BackendV6Data: an IPv4-only vxlan peer. Data that does
			// not parse: FilterPeers refuses the lease, so it is not here.
			if mac6, err := PeerData6(l.Attrs); err == nil && mac6 != "" {
				pp.v6, pp.mac6 = true, mac6
				pp.direct6 = onLinkAddr(onLink6, l.Attrs.PublicIPv6)
			}
		}
		plans = append(plans, pp)
		if pp.direct {
			// onlink is redundant here (the gateway is on-link anyway) but
			// marks the route as ours rather than host-gw's for Cleanup.
			want = append(want, nl.RouteSpec{Dst: l.Subnet, Gw: l.Attrs.PublicIP, LinkIndex: b.cfg.Ext.Index, OnLink: true})
		} else {
			want = append(want, nl.RouteSpec{Dst: l.Subnet, Gw: l.Subnet.Addr(), LinkIndex: int(b.v4.linkIndex.Load()), OnLink: true})
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

	// IPv6 routes, for the peers whose IPv4 part is not refused. With
	// the IPv6 device broken they are left as they are until it is back.
	rres6 := routes.Result{Refused: map[netip.Prefix]string{}, Failed: map[netip.Prefix]error{}}
	if b.kern.Routes6 != nil && err6 == nil {
		var want6 []nl.RouteSpec
		for i := range plans {
			pp := &plans[i]
			if _, bad := p.Refused[pp.lease.Subnet]; bad || !pp.v6 {
				pp.v6 = false
				continue
			}
			l := pp.lease
			if pp.direct6 {
				want6 = append(want6, nl.RouteSpec{Dst: l.IPv6Subnet, Gw: l.Attrs.PublicIPv6, LinkIndex: b.cfg.Ext.Index, OnLink: true})
			} else {
				want6 = append(want6, nl.RouteSpec{Dst: l.IPv6Subnet, Gw: l.IPv6Subnet.Addr(), LinkIndex: int(b.v6.linkIndex.Load()), OnLink: true})
			}
		}
		t0 = time.Now()
		rres6, err = b.kern.Routes6.Reconcile(want6)
		p.Details = append(p.Details, "routes6", time.Since(t0))
		if err != nil {
			errs = append(errs, err)
		}
		p.Repairs["route"] += uint64(rres6.Repaired)
	}

	neighWant := make(map[netip.Addr]string, len(plans))
	fdbWant := make(map[string]netip.Addr, len(plans))
	var neighWant6 map[netip.Addr]string
	var fdbWant6 map[string]netip.Addr
	if b.v6 != nil {
		neighWant6, fdbWant6 = map[netip.Addr]string{}, map[string]netip.Addr{}
	}
	for _, pp := range plans {
		if _, bad := p.Refused[pp.lease.Subnet]; bad {
			continue
		}
		if !pp.direct {
			neighWant[pp.lease.Subnet.Addr()] = pp.mac
			fdbWant[pp.mac] = pp.lease.Attrs.PublicIP
		}
		if _, bad := rres6.Refused[pp.lease.IPv6Subnet.Masked()]; pp.v6 && !pp.direct6 && !bad {
			neighWant6[pp.lease.IPv6Subnet.Addr()] = pp.mac6
			fdbWant6[pp.mac6] = pp.lease.Attrs.PublicIPv6
		}
	}
	neighFailed, fdbFailed := b.v4.syncEntries(&p, &errs, neighWant, fdbWant, "")
	var neighFailed6 map[netip.Addr]error
	var fdbFailed6 map[string]error
	if b.v6 != nil && err6 == nil {
		neighFailed6, fdbFailed6 = b.v6.syncEntries(&p, &errs, neighWant6, fdbWant6, "6")
	}

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
		if pp.v6 {
			if err := b.state6(pp, err6, rres6, neighFailed6, fdbFailed6); err != nil {
				p.Failed[sn] = err
				continue
			}
			sn6 := pp.lease.IPv6Subnet.Masked()
			if why, bad := rres6.Refused[sn6]; bad {
				p.Refused[sn] = fmt.Sprintf("IPv6 subnet %s: %s (its IPv4 part is programmed)", sn6, why)
				continue
			}
		}
		p.Programmed++
	}
	p.Err = errors.Join(errs...)
	return p
}

// state6 returns the error that keeps a peer's IPv6 part from being
// programmed in this pass, or nil.
func (b *Backend) state6(pp peerPlan, err6 error, rres6 routes.Result, neighFailed map[netip.Addr]error, fdbFailed map[string]error) error {
	if err6 != nil {
		return fmt.Errorf("IPv6 device %s: %w", b.v6.name, err6)
	}
	sn6 := pp.lease.IPv6Subnet.Masked()
	if err, failed := rres6.Failed[sn6]; failed {
		return err
	}
	if pp.direct6 {
		return nil
	}
	return cmp.Or(neighFailed[sn6.Addr()], fdbFailed[pp.mac6])
}

// syncEntries makes the device's neighbour and FDB entries match the
// wanted ones, adding the steps' durations, repairs and errors to p and
// errs; suffix tells the two devices' durations apart. It returns the
// entries that failed. Caller holds kmu.
func (v *vtep) syncEntries(p *backend.Pass, errs *[]error, neighWant map[netip.Addr]string, fdbWant map[string]netip.Addr, suffix string) (map[netip.Addr]error, map[string]error) {
	linkIndex := int(v.linkIndex.Load())
	t0 := time.Now()
	neighFailed, rep, err := v.neighs.sync(v, linkIndex, neighWant)
	p.Details = append(p.Details, "neigh"+suffix, time.Since(t0))
	if err != nil {
		*errs = append(*errs, err)
	}
	p.Repairs["neigh"] += uint64(rep)
	t0 = time.Now()
	fdbFailed, rep, err := v.fdb.sync(v, linkIndex, fdbWant)
	p.Details = append(p.Details, "fdb"+suffix, time.Since(t0))
	if err != nil {
		*errs = append(*errs, err)
	}
	p.Repairs["fdb"] += uint64(rep)
	return neighFailed, fdbFailed
}

func onLinkAddr(prefixes []netip.Prefix, ip netip.Addr) bool {
	for _, c := range prefixes {
		if c.Contains(ip) {
			return true
		}
	}
	return false
}

// ensureAddr makes want the only address of the device's family (for
// IPv6: the only global one; the kernel's link-local address stays).
func (v *vtep) ensureAddr(want netip.Prefix) (repaired bool, err error) {
	k := v.b.k
	linkIndex := int(v.linkIndex.Load())
	addrs, err := k.AddrList(linkIndex, v.family)
	if err != nil {
		return false, fmt.Errorf("list addresses of %s: %w", v.name, err)
	}
	found := false
	for _, a := range addrs {
		if a.Prefix == want {
			found = true
			continue
		}
		if ip := a.Prefix.Addr(); ip.Is6() && (ip.IsLinkLocalUnicast() || ip.IsMulticast()) {
			continue
		}
		if err := k.DelAddr(a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return false, fmt.Errorf("remove stale address %s from %s: %w", a.Prefix, v.name, err)
		}
	}
	if found {
		v.installedAddr = want
		return false, nil
	}
	if err := k.AddAddr(linkIndex, want); err != nil && !errors.Is(err, unix.EEXIST) {
		return false, fmt.Errorf("add address %s to %s: %w", want, v.name, err)
	}
	repaired = v.installedAddr == want
	v.installedAddr = want
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

// neighEntries returns the neighbour entries of family (ARP for IPv4, NDP
// for IPv6): peer VTEP address -> MAC.
func neighEntries(family nl.Family) *peerEntries[netip.Addr, string] {
	return &peerEntries[netip.Addr, string]{
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
func (e *peerEntries[K, V]) sync(v *vtep, linkIndex int, want map[K]V) (map[K]error, int, error) {
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
	e.installed = routes.Shrink(e.installed, &e.peak)
	return failed, repairs, errors.Join(errs...)
}
