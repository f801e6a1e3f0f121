package vxlan

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
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
	mac    net.HardwareAddr
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
		if onLink, err = b.extPrefixes(); err != nil {
			errs = append(errs, err)
		}
	}

	plans := make([]peerPlan, 0, len(peers))
	want := make([]routes.Want, 0, len(peers))
	b.macGen++
	for i := range peers {
		l := &peers[i]
		mac, err := b.peerMAC(l)
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
			want = append(want, routes.Want{Dst: l.Subnet, Gw: l.Attrs.PublicIP, LinkIndex: b.cfg.Ext.Index, OnLink: true})
		} else {
			want = append(want, routes.Want{Dst: l.Subnet, Gw: l.Subnet.Addr(), LinkIndex: linkIndex, OnLink: true})
		}
	}
	t0 := time.Now()
	rres, err := b.routes.Reconcile(want)
	p.Details = append(p.Details, "routes", time.Since(t0))
	if err != nil {
		errs = append(errs, err)
	}
	p.Repairs["route"] += uint64(rres.Repaired)
	for dst, why := range rres.Refused {
		p.Refused[dst] = why
	}

	neighWant := make(map[netip.Addr]net.HardwareAddr, len(plans))
	fdbWant := make(map[string]netip.Addr, len(plans))
	for _, pp := range plans {
		if _, bad := p.Refused[pp.lease.Subnet]; bad || pp.direct {
			continue
		}
		neighWant[pp.lease.Subnet.Addr()] = pp.mac
		fdbWant[pp.mac.String()] = pp.lease.Attrs.PublicIP
	}
	t0 = time.Now()
	neighFailed, rep, err := b.syncNeigh(linkIndex, neighWant)
	p.Details = append(p.Details, "neigh", time.Since(t0))
	if err != nil {
		errs = append(errs, err)
	}
	p.Repairs["neigh"] += uint64(rep)
	t0 = time.Now()
	fdbFailed, rep, err := b.syncFDB(linkIndex, fdbWant)
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
			if err := cmp.Or(neighFailed[sn.Addr()], fdbFailed[pp.mac.String()]); err != nil {
				p.Failed[sn] = err
				continue
			}
		}
		p.Programmed++
	}
	for sn, e := range b.macs {
		if e.gen != b.macGen {
			delete(b.macs, sn)
		}
	}
	p.Err = errors.Join(errs...)
	return p
}

// macEntry caches one peer's parsed VtepMAC, keyed by its BackendData, so
// a pass over thousands of unchanged peers parses no JSON.
type macEntry struct {
	data string
	mac  net.HardwareAddr
	err  error
	gen  uint64
}

// peerMAC returns l's VtepMAC, parsing BackendData only when it changed.
// Caller holds kmu.
func (b *Backend) peerMAC(l *subnet.Lease) (net.HardwareAddr, error) {
	e, ok := b.macs[l.Subnet]
	if !ok || e.data != string(l.Attrs.BackendData) {
		_, mac, err := subnet.ParseVXLANData(l.Attrs.BackendData)
		e = macEntry{data: string(l.Attrs.BackendData), mac: mac, err: err}
	}
	e.gen = b.macGen
	b.macs[l.Subnet] = e
	return e.mac, e.err
}

// extPrefixes lists the IPv4 prefixes configured on the external interface.
func (b *Backend) extPrefixes() ([]netip.Prefix, error) {
	l, err := b.h.LinkByIndex(b.cfg.Ext.Index)
	if err != nil {
		return nil, fmt.Errorf("look up external interface %s: %w", b.cfg.Ext.Name, err)
	}
	addrs, err := nl.Dump(func() ([]netlink.Addr, error) { return b.h.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", b.cfg.Ext.Name, err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.IPNet == nil {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones).Masked())
	}
	return out, nil
}

// ensureAddr makes want the only IPv4 address of the device.
func (b *Backend) ensureAddr(linkIndex int, want netip.Prefix) (repaired bool, err error) {
	link := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: linkIndex}}
	addrs, err := nl.Dump(func() ([]netlink.Addr, error) { return b.h.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return false, fmt.Errorf("list addresses of %s: %w", b.name, err)
	}
	found := false
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if netip.PrefixFrom(ip.Unmap(), ones) == want {
			found = true
			continue
		}
		if err := b.h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return false, fmt.Errorf("remove stale address %s from %s: %w", a.IPNet, b.name, err)
		}
	}
	if found {
		b.installedAddr = want
		return false, nil
	}
	ipn := &net.IPNet{IP: net.IP(want.Addr().AsSlice()), Mask: net.CIDRMask(want.Bits(), 32)}
	if err := b.h.AddrAdd(link, &netlink.Addr{IPNet: ipn}); err != nil && !errors.Is(err, unix.EEXIST) {
		return false, fmt.Errorf("add address %s to %s: %w", want, b.name, err)
	}
	repaired = b.installedAddr == want
	b.installedAddr = want
	return repaired, nil
}

// syncNeigh makes the permanent IPv4 neighbours of the device exactly want.
// It returns the addresses that failed and how many entries were repairs.
func (b *Backend) syncNeigh(linkIndex int, want map[netip.Addr]net.HardwareAddr) (map[netip.Addr]error, int, error) {
	failed := map[netip.Addr]error{}
	list, err := b.dump.NeighList(linkIndex, unix.AF_INET, b.neighBuf)
	b.neighBuf = list
	if err != nil {
		err = fmt.Errorf("list neighbours of %s: %w", b.name, err)
		for ip := range want {
			failed[ip] = err
		}
		return failed, 0, err
	}
	have := make(map[netip.Addr]*nl.Neigh, len(list))
	for i := range list {
		n := &list[i]
		if n.LinkIndex != linkIndex || !n.IP.IsValid() {
			continue
		}
		have[n.IP] = n
	}
	var errs []error
	repairs := 0
	type set struct {
		ip  netip.Addr
		mac net.HardwareAddr
		op  nl.Op
	}
	var sets []set
	if n := len(want) - len(b.installedNeigh); n > 16 {
		sets = make([]set, 0, n) // first pass: most are new
	}
	arena := b.reqBuf[:0] // the requests, back to back
	defer func() { b.reqBuf = arena[:0] }()
	for ip, mac := range want {
		n := have[ip]
		delete(have, ip)
		if n != nil && n.State&netlink.NUD_PERMANENT != 0 && n.HardwareAddrIs(mac) {
			if b.installedNeigh[ip] != string(mac) {
				b.installedNeigh[ip] = string(mac)
			}
			continue
		}
		var msg []byte
		arena, msg = nl.AppendNeighSet(arena, linkIndex, unix.AF_INET, netlink.NUD_PERMANENT, unix.RTN_UNICAST, 0, ip, mac)
		sets = append(sets, set{ip, mac, nl.Op{Msg: msg}})
	}
	ops := make([]*nl.Op, len(sets))
	for i := range sets {
		ops[i] = &sets[i].op
	}
	_ = b.batch.Do(ops) // a socket failure shows in every op's Err
	for _, st := range sets {
		if st.op.Err != nil {
			err := fmt.Errorf("set neighbour %s -> %s: %w", st.ip, st.mac, st.op.Err)
			failed[st.ip] = err
			errs = append(errs, err)
			continue
		}
		if b.installedNeigh[st.ip] == string(st.mac) {
			repairs++
		}
		b.installedNeigh[st.ip] = string(st.mac)
	}
	for ip, n := range have {
		delete(b.installedNeigh, ip)
		if n.State&netlink.NUD_PERMANENT == 0 {
			continue // the kernel's own entries age out by themselves
		}
		if err := b.h.NeighDel(n.Netlink()); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete neighbour %s: %w", ip, err))
		}
	}
	for ip := range b.installedNeigh {
		if _, ok := want[ip]; !ok {
			delete(b.installedNeigh, ip)
		}
	}
	return failed, repairs, errors.Join(errs...)
}

// syncFDB makes the device's FDB exactly want (MAC -> remote VTEP).
// It returns the MACs that failed and how many entries were repairs.
func (b *Backend) syncFDB(linkIndex int, want map[string]netip.Addr) (map[string]error, int, error) {
	failed := map[string]error{}
	list, err := b.dump.NeighList(linkIndex, unix.AF_BRIDGE, b.neighBuf)
	b.neighBuf = list
	if err != nil {
		err = fmt.Errorf("list FDB of %s: %w", b.name, err)
		for m := range want {
			failed[m] = err
		}
		return failed, 0, err
	}
	have := make(map[string][]*nl.Neigh, len(list))
	for i := range list {
		n := &list[i]
		if n.LinkIndex != linkIndex || n.Flags&netlink.NTF_SELF == 0 {
			continue
		}
		k := n.HardwareAddr().String()
		have[k] = append(have[k], n)
	}
	var errs []error
	repairs := 0
	type set struct {
		mac string
		dst netip.Addr
		op  nl.Op
	}
	var sets []set
	if n := len(want) - len(b.installedFDB); n > 16 {
		sets = make([]set, 0, n) // first pass: most are new
	}
	arena := b.reqBuf[:0] // the requests, back to back
	defer func() { b.reqBuf = arena[:0] }()
	for m, dst := range want {
		entries := have[m]
		delete(have, m)
		ok := false
		for _, n := range entries {
			if n.IP == dst && n.State&netlink.NUD_PERMANENT != 0 {
				ok = true
			}
		}
		if ok {
			b.installedFDB[m] = dst
		} else {
			mac, _ := net.ParseMAC(m)
			var msg []byte
			arena, msg = nl.AppendNeighSet(arena, linkIndex, unix.AF_BRIDGE, netlink.NUD_PERMANENT, 0, netlink.NTF_SELF, dst, mac)
			sets = append(sets, set{m, dst, nl.Op{Msg: msg}})
		}
		// Other remotes for the same MAC (a peer that moved): drop them.
		// The replace above rewrites the first remote; a stale one that
		// is already gone by then fails with ENOENT, which is fine.
		for _, n := range entries {
			if n.IP == dst || (!ok && len(entries) == 1) {
				continue
			}
			if err := b.h.NeighDel(n.Netlink()); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete FDB entry %s -> %s: %w", m, n.IP, err))
			}
		}
	}
	ops := make([]*nl.Op, len(sets))
	for i := range sets {
		ops[i] = &sets[i].op
	}
	_ = b.batch.Do(ops) // a socket failure shows in every op's Err
	for _, st := range sets {
		if st.op.Err != nil {
			err := fmt.Errorf("set FDB entry %s -> %s: %w", st.mac, st.dst, st.op.Err)
			failed[st.mac] = err
			errs = append(errs, err)
			continue
		}
		if b.installedFDB[st.mac] == st.dst {
			repairs++
		}
		b.installedFDB[st.mac] = st.dst
	}
	for m, entries := range have {
		for _, n := range entries {
			if err := b.h.NeighDel(n.Netlink()); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete FDB entry %s -> %s: %w", m, n.IP, err))
			}
		}
	}
	for m := range b.installedFDB {
		if _, ok := want[m]; !ok {
			delete(b.installedFDB, m)
		}
	}
	return failed, repairs, errors.Join(errs...)
}
