package vxlan

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
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
	return b.apply(own, peers, false)
}

// trustedPass is the loop's trusted pass (see backend.Loop): routes,
// neighbour and FDB entries are compared with what the last pass left
// instead of being read back, where the backend knows what that is.
func (b *Backend) trustedPass(own subnet.Lease, peers []*subnet.Lease) backend.Pass {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	return b.apply(own, peers, true)
}

// peerPlan is one peer after validation.
type peerPlan struct {
	lease  *subnet.Lease // in the pass's peers
	mac    mac           // VtepMAC
	direct bool
	// v6 is set when the peer's IPv6 part is programmed too, through
	// mac6 (its IPv6 VtepMAC) or, with direct6, a route on the underlay.
	v6      bool
	direct6 bool
	mac6    mac
}

// peerRoute returns the route to a peer's subnet sn (of either family)
// behind its VTEP at remote: through the device dev, or with direct on the
// underlay, the external interface ext.
func peerRoute(sn netip.Prefix, remote netip.Addr, direct bool, ext, dev int) nl.RouteSpec {
	if direct {
		// onlink is redundant here (the gateway is on-link anyway) but
		// marks the route as ours rather than host-gw's for Cleanup.
		return nl.RouteSpec{Dst: sn, Gw: remote, LinkIndex: ext, OnLink: true}
	}
	return nl.RouteSpec{Dst: sn, Gw: sn.Addr(), LinkIndex: dev, OnLink: true}
}

// apply makes the kernel match own and peers. With trusted, it reads back
// only what it does not know the last pass left (a device it had to fix
// loses its entries, and loses the trust). Caller holds kmu.
func (b *Backend) apply(own subnet.Lease, peers []*subnet.Lease, trusted bool) (p backend.Pass) {
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
		trusted = false
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
			trusted = false
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
	for i := range peers {
		l := peers[i]
		mac, err := peerMAC(l.Attrs) // FilterPeers judged it already; cheap
		if err != nil {
			p.Refused[l.Subnet] = err.Error()
			continue
		}
		pp := peerPlan{lease: l, mac: mac, direct: onLinkAddr(onLink, l.Attrs.PublicIP)}
		if dual && b.cfg.Network.HasIPv6(*l) && l.Attrs.PublicIPv6.IsValid() {
			// No BackendV6Data: an IPv4-only vxlan peer. Data that does
			// not parse: FilterPeers refuses the lease, so it is not here.
			if mac6, ok, err := peerMAC6(l.Attrs); err == nil && ok {
				pp.v6, pp.mac6 = true, mac6
				pp.direct6 = onLinkAddr(onLink6, l.Attrs.PublicIPv6)
			}
		}
		plans = append(plans, pp)
	}
	// The routes are computed from the plans as the reconciler asks
	// rather than listed: a list would cost a route's size per peer.
	dev := int(b.v4.linkIndex.Load())
	t0 := time.Now()
	reconcile := b.kern.Routes.ReconcileFunc
	if trusted {
		reconcile = b.kern.Routes.ReconcileTrustedFunc
	}
	rres, err := reconcile(len(plans), func(i int) nl.RouteSpec {
		return peerRoute(plans[i].lease.Subnet, plans[i].lease.Attrs.PublicIP, plans[i].direct, b.cfg.Ext.Index, dev)
	})
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
		var with6 []int32 // the plans whose IPv6 route is wanted
		for i := range plans {
			pp := &plans[i]
			if _, bad := p.Refused[pp.lease.Subnet]; bad || !pp.v6 {
				pp.v6 = false
				continue
			}
			with6 = append(with6, int32(i))
		}
		dev6 := int(b.v6.linkIndex.Load())
		t0 = time.Now()
		reconcile6 := b.kern.Routes6.ReconcileFunc
		if trusted {
			reconcile6 = b.kern.Routes6.ReconcileTrustedFunc
		}
		rres6, err = reconcile6(len(with6), func(i int) nl.RouteSpec {
			pp := &plans[with6[i]]
			return peerRoute(pp.lease.IPv6Subnet, pp.lease.Attrs.PublicIPv6, pp.direct6, b.cfg.Ext.Index, dev6)
		})
		p.Details = append(p.Details, "routes6", time.Since(t0))
		if err != nil {
			errs = append(errs, err)
		}
		p.Repairs["route"] += uint64(rres6.Repaired)
	}

	// The wanted entries, sized for every peer: syncEntries keeps them
	// as what is installed.
	neighWant, fdbWant := make([]entry, 0, len(plans)), make([]entry, 0, len(plans))
	var neighWant6, fdbWant6 []entry
	for _, pp := range plans {
		if _, bad := p.Refused[pp.lease.Subnet]; bad {
			continue
		}
		if !pp.direct {
			neighWant = append(neighWant, entryOf(pp.lease.Subnet.Addr(), pp.mac))
			fdbWant = append(fdbWant, entryOf(pp.lease.Attrs.PublicIP, pp.mac))
		}
		if pp.v6 && !pp.direct6 {
			if _, bad := rres6.Refused[pp.lease.IPv6Subnet.Masked()]; !bad {
				neighWant6 = append(neighWant6, entryOf(pp.lease.IPv6Subnet.Addr(), pp.mac6))
				fdbWant6 = append(fdbWant6, entryOf(pp.lease.Attrs.PublicIPv6, pp.mac6))
			}
		}
	}
	neighFailed, fdbFailed := b.v4.syncEntries(&p, &errs, neighWant, fdbWant, "", trusted)
	var neighFailed6, fdbFailed6 map[entry]error
	if b.v6 != nil && err6 == nil {
		neighFailed6, fdbFailed6 = b.v6.syncEntries(&p, &errs, neighWant6, fdbWant6, "6", trusted)
	}
	if trusted {
		p.Details = append(p.Details, "trusted", true)
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
			if err := cmp.Or(neighFailed[entryOf(sn.Addr(), mac{})], fdbFailed[entry{mac: pp.mac}]); err != nil {
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
func (b *Backend) state6(pp peerPlan, err6 error, rres6 routes.Result, neighFailed, fdbFailed map[entry]error) error {
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
	return cmp.Or(neighFailed[entryOf(sn6.Addr(), mac{})], fdbFailed[entry{mac: pp.mac6}])
}

// syncEntries makes the device's neighbour and FDB entries match the
// wanted ones (in any order; of entries with the same key the last counts;
// the slices are syncEntries's to keep), adding the steps' durations,
// repairs and errors to p and errs; suffix tells the two devices'
// durations apart; trusted is as for peerEntries.sync. It returns the keys
// (see peerEntries.keyOf) of the entries that failed. Caller holds kmu.
func (v *vtep) syncEntries(p *backend.Pass, errs *[]error, neighWant, fdbWant []entry, suffix string, trusted bool) (neighFailed, fdbFailed map[entry]error) {
	linkIndex := int(v.linkIndex.Load())
	t0 := time.Now()
	neighFailed, rep, err := v.neighs.sync(v, linkIndex, neighWant, trusted)
	p.Details = append(p.Details, "neigh"+suffix, time.Since(t0))
	if err != nil {
		*errs = append(*errs, err)
	}
	p.Repairs["neigh"] += uint64(rep)
	t0 = time.Now()
	fdbFailed, rep, err = v.fdb.sync(v, linkIndex, fdbWant, trusted)
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

// entry is one neighbour or FDB entry the backend keeps on its device for
// a peer. To the kernel both are neighbour objects: a neighbour entry maps
// the peer's VTEP address (ip) to its VtepMAC, an FDB entry maps the
// VtepMAC to the peer's remote, its PublicIP or PublicIPv6 (ip). The
// address is packed (see entryOf) so that an entry takes 23 bytes and no
// pointer: the backend keeps two per peer and device.
type entry struct {
	ip     [16]byte
	family uint8 // of ip: 4, 6, or 0 for none
	mac    mac
}

// entryOf returns the entry for ip and m. An IPv6 zone is not kept:
// neighbour entries have none.
func entryOf(ip netip.Addr, m mac) entry {
	en := entry{ip: ip.As16(), mac: m}
	switch {
	case ip.Is4():
		en.family = 4
	case ip.IsValid():
		en.family = 6
	}
	return en
}

// addr returns the entry's address.
func (en *entry) addr() netip.Addr {
	switch en.family {
	case 4:
		return netip.AddrFrom16(en.ip).Unmap()
	case 6:
		return netip.AddrFrom16(en.ip)
	}
	return netip.Addr{}
}

// peerEntries is one of the two kinds of entry. Neighbour entries are
// keyed by address, FDB entries by MAC: the kernel holds one entry per key
// (one remote per unicast MAC).
//
// Why sorted slices. With thousands of peers, maps of the wanted and the
// installed entries (and of the keys found right) were a large part of a
// pass's peak heap; a slice sorted by key costs the entries alone and is
// searched in O(log n).
type peerEntries struct {
	kind   string // "neighbour" or "FDB", for messages
	family nl.Family
	byMAC  bool // FDB: keyed by MAC; neighbour: by address
	// installed is what this backend installed and the kernel still held
	// at the last pass (or failed to replace in it), sorted by key.
	installed []entry
	// knownLink, when not 0, is the device on which the entries of this
	// kind are exactly installed, as far as the backend knows: the last
	// sync read them, or trusted the one before that did, and failed
	// nowhere.
	knownLink int
}

// neighEntries returns the neighbour entries of family (ARP for IPv4, NDP
// for IPv6): peer VTEP address -> MAC.
func neighEntries(family nl.Family) *peerEntries {
	return &peerEntries{kind: "neighbour", family: family}
}

// fdbEntries returns the FDB entries: MAC -> remote VTEP (PublicIP, or
// PublicIPv6 on the IPv6 device).
func fdbEntries() *peerEntries {
	return &peerEntries{kind: "FDB", family: nl.FamilyBridge, byMAC: true}
}

// keyOf returns en with only its key: how failed entries are reported.
func (e *peerEntries) keyOf(en entry) entry {
	if e.byMAC {
		return entry{mac: en.mac}
	}
	return entry{ip: en.ip, family: en.family}
}

// compare orders entries by key.
func (e *peerEntries) compare(a, b entry) int {
	if e.byMAC {
		return bytes.Compare(a.mac[:], b.mac[:])
	}
	return cmp.Or(cmp.Compare(a.family, b.family), bytes.Compare(a.ip[:], b.ip[:]))
}

// find returns the index of the entry with en's key in the sorted es.
func (e *peerEntries) find(es []entry, en entry) (int, bool) {
	return slices.BinarySearchFunc(es, en, e.compare)
}

// listed returns the key of a listed entry as an entry, and whether the
// entry is the backend's to manage (false leaves it alone). An FDB entry
// whose link-layer address is not 6 bytes is managed but can be no
// wanted key: ok and !wantable.
func (e *peerEntries) listed(n *nl.Neigh) (key entry, ok, wantable bool) {
	if !e.byMAC {
		// The kernel's own (not permanent) entries age out by
		// themselves.
		return entryOf(n.IP, mac{}), n.IP.IsValid() && n.State&unix.NUD_PERMANENT != 0, true
	}
	if n.Flags&unix.NTF_SELF == 0 {
		return entry{}, false, false
	}
	hw := n.HardwareAddr()
	if len(hw) != len(key.mac) {
		return entry{}, true, false
	}
	return entry{mac: mac(hw)}, true, true
}

// says reports whether the listed entry n maps its key to what w does.
func (e *peerEntries) says(n *nl.Neigh, w entry) bool {
	if e.byMAC {
		return n.IP == w.addr()
	}
	return n.HardwareAddrIs(w.mac[:])
}

// neigh returns the kernel's entry for en as a dump lists it once spec
// installed it: what deleting it names.
func (e *peerEntries) neigh(linkIndex int, en *entry) nl.Neigh {
	n := nl.Neigh{LinkIndex: linkIndex, Family: e.family, State: unix.NUD_PERMANENT, IP: en.addr()}
	if e.byMAC {
		n.Flags = unix.NTF_SELF
	} else {
		n.Type = unix.RTN_UNICAST
	}
	n.SetHardwareAddr(en.mac[:])
	return n
}

// spec is the request that makes *en a permanent entry; its MAC is en's
// memory.
func (e *peerEntries) spec(linkIndex int, en *entry) nl.NeighSpec {
	s := nl.NeighSpec{LinkIndex: linkIndex, Family: e.family, State: unix.NUD_PERMANENT, IP: en.addr(), MAC: net.HardwareAddr(en.mac[:])}
	if e.byMAC {
		s.Flags = unix.NTF_SELF
	} else {
		s.Type = unix.RTN_UNICAST
	}
	return s
}

// describe renders an entry for messages the way ip(8) and bridge(8) list
// it: "address -> MAC" for a neighbour, "MAC -> remote" for FDB.
func (e *peerEntries) describe(ip netip.Addr, mac net.HardwareAddr) string {
	if e.family == nl.FamilyBridge {
		return fmt.Sprintf("%s -> %s", mac, ip)
	}
	return fmt.Sprintf("%s -> %s", ip, mac)
}

// sorted sorts want by key in place and drops all but the last of the
// entries with the same key, the one that counts.
func (e *peerEntries) sorted(want []entry) []entry {
	slices.SortStableFunc(want, e.compare)
	out := want[:0]
	for i, en := range want {
		if i+1 < len(want) && e.compare(en, want[i+1]) == 0 {
			continue
		}
		out = append(out, en)
	}
	return out
}

// What sync learnt about a wanted entry.
const (
	entryRight  = 1 << iota // the kernel holds it as wanted
	entrySet                // this pass installed it
	entryFailed             // this pass failed to install it
)

// setChunk is how many entries sync hands SetNeighs at once, so that the
// requests of a join of thousands of peers need no list of them all.
const setChunk = 256

// sync makes the entries of this kind on the device exactly want (in any
// order; of entries with the same key the last counts). want is sync's:
// it is sorted in place and may be kept as what is installed. With
// trusted, and entries known to be exactly installed on the device, it
// compares want with those instead of reading the device's entries. It
// returns the keys that failed and how many entries were repairs. Caller
// holds kmu.
func (e *peerEntries) sync(v *vtep, linkIndex int, want []entry, trusted bool) (map[entry]error, int, error) {
	want = e.sorted(want)
	failed, repairs, err := e.write(v, linkIndex, want, trusted && linkIndex != 0 && e.knownLink == linkIndex)
	e.knownLink = 0
	if err == nil {
		e.knownLink = linkIndex
	}
	return failed, repairs, err
}

// write is sync of the sorted want; known says the installed entries are
// exactly those on the device.
func (e *peerEntries) write(v *vtep, linkIndex int, want []entry, known bool) (map[entry]error, int, error) {
	b := v.b
	failed := map[entry]error{}
	var state []uint8
	var stale []nl.Neigh
	if known {
		state, stale = e.recall(linkIndex, want)
	} else {
		var err error
		if state, stale, err = e.read(v, linkIndex, want); err != nil {
			err = fmt.Errorf("list %s entries of %s: %w", e.kind, v.name, err)
			for _, w := range want {
				failed[e.keyOf(w)] = err
			}
			return failed, 0, err
		}
	}

	var errs []error
	repairs := 0
	chunk := make([]nl.NeighSpec, 0, min(len(want), setChunk))
	var idx [setChunk]int
	flush := func() {
		for k, err := range b.k.SetNeighs(chunk) {
			i := idx[k]
			if err != nil {
				err = fmt.Errorf("set %s entry %s: %w", e.kind, e.describe(chunk[k].IP, chunk[k].MAC), err)
				failed[e.keyOf(want[i])] = err
				errs = append(errs, err)
				state[i] = entryFailed
				continue
			}
			if j, had := e.find(e.installed, want[i]); had && e.installed[j] == want[i] {
				repairs++
			}
			state[i] = entrySet
		}
		chunk = chunk[:0]
	}
	for i := range want {
		if state[i] == entryRight {
			continue
		}
		// Missing or wrong: a replace rewrites a wrong entry in place.
		idx[len(chunk)] = i
		if chunk = append(chunk, e.spec(linkIndex, &want[i])); len(chunk) == setChunk {
			flush()
		}
	}
	if len(chunk) > 0 {
		flush()
	}
	for i := range stale {
		n := &stale[i]
		if err := b.k.DelNeigh(n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete %s entry %s: %w", e.kind, e.describe(n.IP, n.HardwareAddr()), err))
		}
	}
	e.installed = e.installedAfter(want, state)
	return failed, repairs, errors.Join(errs...)
}

// read reads the entries on the device, as they are read (no list of them
// is kept): whether the entry of each wanted key already says what is
// wanted (the last one read counts), and the stale rest, to be deleted.
// (A wanted FDB key is a peer's VtepMAC, which is unicast, and the kernel
// keeps one remote per unicast MAC; only the all-zeros and multicast
// entries have several.)
func (e *peerEntries) read(v *vtep, linkIndex int, want []entry) (state []uint8, stale []nl.Neigh, err error) {
	state = make([]uint8, len(want))
	err = v.b.k.NeighWalk(linkIndex, e.family, func() { clear(state); stale = stale[:0] }, func(n *nl.Neigh) {
		if n.LinkIndex != linkIndex {
			return
		}
		k, ok, wantable := e.listed(n)
		if !ok {
			return
		}
		if i, wanted := e.find(want, k); wantable && wanted {
			state[i] = 0
			if n.State&unix.NUD_PERMANENT != 0 && e.says(n, want[i]) {
				state[i] = entryRight
			}
		} else {
			stale = append(stale, *n)
		}
	})
	return state, stale, err
}

// recall is read for a device known to hold exactly the installed
// entries: the two sorted lists merged.
func (e *peerEntries) recall(linkIndex int, want []entry) (state []uint8, stale []nl.Neigh) {
	state = make([]uint8, len(want))
	j := 0
	for i := range want {
		for ; j < len(e.installed) && e.compare(e.installed[j], want[i]) < 0; j++ {
			stale = append(stale, e.neigh(linkIndex, &e.installed[j]))
		}
		if j < len(e.installed) && e.compare(e.installed[j], want[i]) == 0 {
			if e.installed[j] == want[i] {
				state[i] = entryRight
			}
			j++
		}
	}
	for ; j < len(e.installed); j++ {
		stale = append(stale, e.neigh(linkIndex, &e.installed[j]))
	}
	return state, stale
}

// installedAfter returns what is installed after a pass that wanted want
// (sorted, one entry per key) and learnt state about it: the wanted
// entries that are right or were set, and for those that failed what was
// installed before, if anything. Keys that are not wanted are gone. When
// nothing failed that is want itself, kept rather than copied (the pass
// built it for sync alone).
func (e *peerEntries) installedAfter(want []entry, state []uint8) []entry {
	if !slices.Contains(state, entryFailed) {
		if cap(want) > len(want)+len(want)/8 {
			return slices.Clone(want) // do not keep much unused room
		}
		return want
	}
	n := 0
	for i := range want {
		if state[i] != entryFailed {
			n++
		} else if _, had := e.find(e.installed, want[i]); had {
			n++
		}
	}
	out := make([]entry, 0, n)
	for i, w := range want {
		if state[i] != entryFailed {
			out = append(out, w)
		} else if j, had := e.find(e.installed, w); had {
			out = append(out, e.installed[j])
		}
	}
	return out
}
