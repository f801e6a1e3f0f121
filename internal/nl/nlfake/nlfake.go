// Package nlfake is an in-memory network namespace with the methods of
// nl.Conn that weft's backends use, so that a backend's plan (what a pass
// adds, replaces and removes) can be tested without root and without a
// kernel.
//
// It keeps what the backends compare and behaves like the kernel where the
// backends depend on it:
//
//   - links have unique names and indexes; a VXLAN device's underlay device
//     must exist, and two VXLAN devices of one family (IPv4 or IPv6 local
//     address) may not share a VNI and port (EEXIST); deleting a device
//     takes its addresses, neighbour and FDB entries and routes with it;
//   - an address adds its connected route to the main table: protocol
//     kernel, scope link for an IPv4 address other than a host address;
//     scope universe and metric 256 for every IPv6 address, a /128 too
//     (link-local addresses are not modelled);
//   - a route is identified by table, destination and metric; a replace
//     overwrites whatever holds that key; an IPv6 route without a metric
//     gets 1024, as the kernel gives it; a delete that names a protocol
//     only removes a route of that protocol, one that names another scope
//     (universe for a device route, say) removes nothing, and a missing
//     route fails with ESRCH;
//   - an IP neighbour is identified by device and address; a VXLAN FDB entry
//     by device and MAC, with its remote VTEPs: a replace rewrites the
//     first remote (as the kernel's vxlan_fdb_replace does), a delete
//     removes one remote (ENOENT only if the MAC has none), and only the
//     all-zeros and multicast MACs take more than one remote (AppendFDB);
//   - requests on a device that does not exist fail with ENODEV.
//
// It does not check that a route's gateway is reachable, nor that the
// device of a route installed through a Table exists (ReplaceRoute does),
// and it sends no events. Kernel behaviour beyond this is what the
// kernel tests (internal/nl/nltest) are for.
package nlfake

import (
	"cmp"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/nl"
)

// NS is one fake namespace. Its methods are safe for concurrent use. The
// zero value is not usable; call New.
type NS struct {
	mu        sync.Mutex
	links     map[int]*nl.Link
	nextIndex int
	addrs     []nl.Addr
	routes    map[routeKey]nl.Route
	neighs    map[neighKey]nl.Neigh
	fdb       map[fdbKey][]nl.Neigh // remotes in order, first first
	writes    int
}

type routeKey struct {
	table    uint32
	dst      netip.Prefix
	priority int
}

type neighKey struct {
	link int
	ip   netip.Addr
}

type fdbKey struct {
	link int
	mac  string
}

// New returns an empty namespace.
func New() *NS {
	return &NS{
		links: map[int]*nl.Link{}, nextIndex: 1,
		routes: map[routeKey]nl.Route{}, neighs: map[neighKey]nl.Neigh{}, fdb: map[fdbKey][]nl.Neigh{},
	}
}

// Close does nothing: the namespace outlives a connection to it, as a real
// one does, so that a test can look at it after the backend closed its
// connection.
func (f *NS) Close() {}

// Writes counts every request that asked for a change (link, address,
// route, neighbour and FDB writes and deletes), whether or not it
// succeeded. A pass that wrote nothing leaves it unchanged.
func (f *NS) Writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// AddDevice creates an up device of kind "device" (a NIC) with the given
// addresses and returns its index: the underlay of a test.
func (f *NS) AddDevice(name string, mtu int, addrs ...netip.Prefix) int {
	if err := f.AddLink(nl.Link{Name: name, Kind: "device", MTU: mtu}); err != nil {
		panic(err)
	}
	l, _ := f.LinkByName(name)
	if err := f.SetLinkUp(l.Index); err != nil {
		panic(err)
	}
	for _, a := range addrs {
		if err := f.AddAddr(l.Index, a); err != nil {
			panic(err)
		}
	}
	return l.Index
}

func copyLink(l *nl.Link) nl.Link {
	out := *l
	out.HardwareAddr = slices.Clone(l.HardwareAddr)
	if l.VXLAN != nil {
		vx := *l.VXLAN
		out.VXLAN = &vx
	}
	return out
}

// LinkByName implements the nl.Conn method.
func (f *NS) LinkByName(name string) (nl.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.links {
		if l.Name == name {
			return copyLink(l), nil
		}
	}
	return nl.Link{}, fmt.Errorf("%s: %w", name, nl.ErrLinkNotFound)
}

// LinkByIndex implements the nl.Conn method.
func (f *NS) LinkByIndex(index int) (nl.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.links[index]; ok {
		return copyLink(l), nil
	}
	return nl.Link{}, fmt.Errorf("interface index %d: %w", index, nl.ErrLinkNotFound)
}

// LinkList implements the nl.Conn method; links come in index order.
func (f *NS) LinkList() ([]nl.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]nl.Link, 0, len(f.links))
	for _, l := range f.links {
		out = append(out, copyLink(l))
	}
	slices.SortFunc(out, func(a, b nl.Link) int { return cmp.Compare(a.Index, b.Index) })
	return out, nil
}

// AddLink implements the nl.Conn method, for a link of any kind (a VXLAN
// device when l.VXLAN is set). The new link is down and gets a random MAC
// address when l has none.
func (f *NS) AddLink(l nl.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	for _, o := range f.links {
		if o.Name == l.Name {
			return unix.EEXIST
		}
		if l.VXLAN != nil && o.VXLAN != nil && o.VXLAN.VNI == l.VXLAN.VNI && o.VXLAN.Port == l.VXLAN.Port &&
			vxlan6(o.VXLAN) == vxlan6(l.VXLAN) {
			return unix.EEXIST
		}
	}
	if l.VXLAN != nil {
		l.Kind = "vxlan"
		if dev := l.VXLAN.VtepDevIndex; dev != 0 && f.links[dev] == nil {
			return unix.ENODEV
		}
	}
	if l.Name == "" || l.Kind == "" {
		return unix.EINVAL
	}
	l = copyLink(&l)
	if l.HardwareAddr == nil {
		l.HardwareAddr = make(net.HardwareAddr, 6)
		_, _ = rand.Read(l.HardwareAddr)
		l.HardwareAddr[0] = l.HardwareAddr[0]&^1 | 2
	}
	if l.MTU == 0 {
		l.MTU = 1500
	}
	l.Index, l.Up = f.nextIndex, false
	f.nextIndex++
	f.links[l.Index] = &l
	return nil
}

// vxlan6 reports whether a VXLAN device is an IPv6 one (the kernel's
// VXLAN_F_IPV6): its local address or group is IPv6.
func vxlan6(vx *nl.VXLAN) bool {
	is6 := func(a netip.Addr) bool { return a.IsValid() && a.Is6() && !a.Is4In6() }
	return is6(vx.SrcAddr) || is6(vx.Group)
}

// DelLink implements the nl.Conn method.
func (f *NS) DelLink(index int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	if f.links[index] == nil {
		return unix.ENODEV
	}
	delete(f.links, index)
	f.addrs = slices.DeleteFunc(f.addrs, func(a nl.Addr) bool { return a.LinkIndex == index })
	for k, r := range f.routes {
		if r.LinkIndex == index {
			delete(f.routes, k)
		}
	}
	for k := range f.neighs {
		if k.link == index {
			delete(f.neighs, k)
		}
	}
	for k := range f.fdb {
		if k.link == index {
			delete(f.fdb, k)
		}
	}
	return nil
}

func (f *NS) setLink(index int, fn func(l *nl.Link)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	l := f.links[index]
	if l == nil {
		return unix.ENODEV
	}
	fn(l)
	return nil
}

// SetLinkUp implements the nl.Conn method.
func (f *NS) SetLinkUp(index int) error {
	return f.setLink(index, func(l *nl.Link) { l.Up = true })
}

// SetLinkDown sets the device down, as somebody other than weft would.
func (f *NS) SetLinkDown(index int) error {
	return f.setLink(index, func(l *nl.Link) { l.Up = false })
}

// SetLinkMTU implements the nl.Conn method.
func (f *NS) SetLinkMTU(index, mtu int) error {
	return f.setLink(index, func(l *nl.Link) { l.MTU = mtu })
}

// SetLinkHardwareAddr implements the nl.Conn method.
func (f *NS) SetLinkHardwareAddr(index int, mac net.HardwareAddr) error {
	return f.setLink(index, func(l *nl.Link) { l.HardwareAddr = slices.Clone(mac) })
}

// AddrList implements the nl.Conn method.
func (f *NS) AddrList(linkIndex int, family nl.Family) ([]nl.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []nl.Addr
	for _, a := range f.addrs {
		if (linkIndex == 0 || a.LinkIndex == linkIndex) && (family == nl.FamilyAll || nl.FamilyOf(a.Prefix.Addr()) == family) {
			out = append(out, a)
		}
	}
	return out, nil
}

// connectedRoute is the route the kernel adds for a, if any.
func connectedRoute(a nl.Addr) (nl.Route, bool) {
	p := a.OnLink()
	if !p.IsValid() || (!a.Peer.IsValid() && p.Addr().Is4() && p.Bits() == 32) {
		return nl.Route{}, false
	}
	r := nl.Route{
		Dst: p, LinkIndex: a.LinkIndex, Table: unix.RT_TABLE_MAIN, Protocol: unix.RTPROT_KERNEL,
		Scope: unix.RT_SCOPE_LINK, Type: unix.RTN_UNICAST,
	}
	if p.Addr().Is6() {
		r.Scope, r.Priority = unix.RT_SCOPE_UNIVERSE, 256
	}
	return r, true
}

// AddAddr implements the nl.Conn method.
func (f *NS) AddAddr(linkIndex int, p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	if f.links[linkIndex] == nil {
		return unix.ENODEV
	}
	for _, a := range f.addrs {
		if a.LinkIndex == linkIndex && a.Prefix == p {
			return unix.EEXIST
		}
	}
	a := nl.Addr{LinkIndex: linkIndex, Prefix: p, Scope: unix.RT_SCOPE_UNIVERSE}
	f.addrs = append(f.addrs, a)
	if r, ok := connectedRoute(a); ok {
		f.routes[keyOf(&r)] = r
	}
	return nil
}

// AddPeerAddr adds a point-to-point address: local, with the other end
// peer on-link (as "ip addr add LOCAL peer PEER" does).
func (f *NS) AddPeerAddr(linkIndex int, local netip.Addr, peer netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	if f.links[linkIndex] == nil {
		return unix.ENODEV
	}
	a := nl.Addr{LinkIndex: linkIndex, Prefix: netip.PrefixFrom(local, local.BitLen()), Peer: peer, Scope: unix.RT_SCOPE_UNIVERSE}
	f.addrs = append(f.addrs, a)
	if r, ok := connectedRoute(a); ok {
		f.routes[keyOf(&r)] = r
	}
	return nil
}

// DelAddr implements the nl.Conn method.
func (f *NS) DelAddr(a nl.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	i := slices.IndexFunc(f.addrs, func(b nl.Addr) bool { return b.LinkIndex == a.LinkIndex && b.Prefix == a.Prefix })
	if i < 0 {
		return unix.EADDRNOTAVAIL
	}
	if r, ok := connectedRoute(f.addrs[i]); ok {
		delete(f.routes, keyOf(&r))
	}
	f.addrs = slices.Delete(f.addrs, i, i+1)
	return nil
}

func keyOf(r *nl.Route) routeKey {
	t := r.Table
	if t == 0 {
		t = unix.RT_TABLE_MAIN
	}
	return routeKey{table: t, dst: r.Dst.Masked(), priority: r.Priority}
}

func compareRoutes(a, b nl.Route) int {
	return cmp.Or(cmp.Compare(a.Table, b.Table), a.Dst.Addr().Compare(b.Dst.Addr()),
		cmp.Compare(a.Dst.Bits(), b.Dst.Bits()), cmp.Compare(a.Priority, b.Priority))
}

// RouteList implements the nl.Conn method; routes come sorted by table,
// destination and metric.
func (f *NS) RouteList(family nl.Family, table uint32, keep func(*nl.Route) bool, out []nl.Route) ([]nl.Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out = out[:0]
	for _, r := range f.routes {
		if (family != nl.FamilyAll && nl.FamilyOf(r.Dst.Addr()) != family) || (table != 0 && r.Table != table) {
			continue
		}
		if keep == nil || keep(&r) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, compareRoutes)
	return out, nil
}

// routeOf is the route the kernel installs for w, tagged with protocol.
func routeOf(w nl.RouteSpec, protocol uint8) nl.Route {
	r := nl.Route{
		Dst: w.Dst.Masked(), Gw: w.Gw, LinkIndex: w.LinkIndex, Table: unix.RT_TABLE_MAIN,
		Protocol: protocol, Scope: unix.RT_SCOPE_UNIVERSE, Type: unix.RTN_UNICAST,
	}
	if !w.Gw.IsValid() {
		r.Scope = unix.RT_SCOPE_LINK
	}
	if w.OnLink {
		r.Flags = unix.RTNH_F_ONLINK
	}
	if r.Dst.Addr().Is6() {
		r.Priority = metric6
	}
	return r
}

// metric6 is the metric the kernel gives an IPv6 route installed without
// one (IP6_RT_PRIO_USER).
const metric6 = 1024

// ReplaceRoute implements the nl.Conn method. A route out of a device that
// does not exist fails with ENODEV.
func (f *NS) ReplaceRoute(w nl.RouteSpec, protocol uint8) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	if w.LinkIndex != 0 && f.links[w.LinkIndex] == nil {
		return unix.ENODEV
	}
	r := routeOf(w, protocol)
	f.routes[keyOf(&r)] = r
	return nil
}

// DelRoute implements the nl.Conn method: it removes the route with r's
// table, destination and metric, if it has r's protocol (any, if r names
// none) and r's scope, as the kernel does.
func (f *NS) DelRoute(r *nl.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	return f.delRoute(r)
}

func (f *NS) delRoute(r *nl.Route) error {
	k := keyOf(r)
	have, ok := f.routes[k]
	if !ok || (r.Protocol != 0 && have.Protocol != r.Protocol) || (r.Scope != unix.RT_SCOPE_NOWHERE && have.Scope != r.Scope) {
		return unix.ESRCH
	}
	delete(f.routes, k)
	return nil
}

// PutRoute stores r as is (in the main table if r names none), replacing
// the route with its table, destination and metric, as somebody other than
// weft would.
func (f *NS) PutRoute(r nl.Route) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Table == 0 {
		r.Table = unix.RT_TABLE_MAIN
	}
	r.Dst = r.Dst.Masked()
	f.routes[keyOf(&r)] = r
}

// RemoveRoute deletes the main table's route to dst with the metric a route
// installed without one has (0 for IPv4, 1024 for IPv6), as somebody other
// than weft would.
func (f *NS) RemoveRoute(dst netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := routeKey{table: unix.RT_TABLE_MAIN, dst: dst.Masked()}
	if dst.Addr().Is6() {
		k.priority = metric6
	}
	delete(f.routes, k)
}

// RouteTable implements the nl.Conn method: the main table of network's
// family (IPv4 when network is invalid), writing routes tagged with
// protocol. Otherwise network only matters to the kernel's nexthop
// objects, which the fake does not model.
func (f *NS) RouteTable(network netip.Prefix, protocol uint8) *Table {
	fam := nl.FamilyV4
	if network.IsValid() && network.Addr().Is6() && !network.Addr().Is4In6() {
		fam = nl.FamilyV6
	}
	return &Table{f: f, protocol: protocol, family: fam}
}

// Table is the fake's nl.RouteTable.
type Table struct {
	f        *NS
	protocol uint8
	family   nl.Family
}

// List implements nl.RouteTable's method: the routes of the table's family
// in the main table.
func (t *Table) List() ([]nl.Route, error) {
	return t.f.RouteList(t.family, unix.RT_TABLE_MAIN, nil, nil)
}

// Walk implements nl.RouteTable's method: fn sees the routes List
// returns, in order.
func (t *Table) Walk(start func(), fn func(r *nl.Route)) error {
	rs, err := t.List()
	if start != nil {
		start()
	}
	for i := range rs {
		fn(&rs[i])
	}
	return err
}

// ReplaceAll implements nl.RouteTable's method.
func (t *Table) ReplaceAll(ws []nl.RouteSpec) []error {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	for _, w := range ws {
		t.f.writes++
		r := routeOf(w, t.protocol)
		t.f.routes[keyOf(&r)] = r
	}
	return make([]error, len(ws))
}

// Delete implements nl.RouteTable's method.
func (t *Table) Delete(r *nl.Route) error {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	t.f.writes++
	return t.f.delRoute(r)
}

// NeighList implements the nl.Conn method; entries come sorted by device
// and address (FDB: MAC, then remote in order).
func (f *NS) NeighList(linkIndex int, family nl.Family, out []nl.Neigh) ([]nl.Neigh, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out = out[:0]
	if family == nl.FamilyBridge || family == nl.FamilyAll {
		var keys []fdbKey
		for k := range f.fdb {
			if linkIndex == 0 || k.link == linkIndex {
				keys = append(keys, k)
			}
		}
		slices.SortFunc(keys, func(a, b fdbKey) int { return cmp.Or(cmp.Compare(a.link, b.link), cmp.Compare(a.mac, b.mac)) })
		for _, k := range keys {
			out = append(out, f.fdb[k]...)
		}
	}
	if family != nl.FamilyBridge {
		start := len(out)
		for k, n := range f.neighs {
			if (linkIndex == 0 || k.link == linkIndex) && (family == nl.FamilyAll || n.Family == family) {
				out = append(out, n)
			}
		}
		slices.SortFunc(out[start:], func(a, b nl.Neigh) int {
			return cmp.Or(cmp.Compare(a.LinkIndex, b.LinkIndex), a.IP.Compare(b.IP))
		})
	}
	return out, nil
}

// NeighWalk implements the nl.Conn method over NeighList's entries (the
// fake's dumps are never interrupted).
func (f *NS) NeighWalk(linkIndex int, family nl.Family, start func(), fn func(n *nl.Neigh)) error {
	list, err := f.NeighList(linkIndex, family, nil)
	if start != nil {
		start()
	}
	for i := range list {
		fn(&list[i])
	}
	return err
}

// SetNeighs implements the nl.Conn method.
func (f *NS) SetNeighs(specs []nl.NeighSpec) []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	errs := make([]error, len(specs))
	for i := range specs {
		f.writes++
		errs[i] = f.setNeigh(&specs[i])
	}
	return errs
}

func (f *NS) setNeigh(s *nl.NeighSpec) error {
	l := f.links[s.LinkIndex]
	if l == nil {
		return unix.ENODEV
	}
	n := nl.Neigh{LinkIndex: s.LinkIndex, Family: s.Family, State: s.State, Type: s.Type, Flags: s.Flags, IP: s.IP.Unmap()}
	n.SetHardwareAddr(s.MAC)
	if s.Family != nl.FamilyBridge {
		if n.Family == nl.FamilyAll {
			n.Family = nl.FamilyOf(n.IP)
		}
		if !n.IP.IsValid() {
			return unix.EINVAL
		}
		f.neighs[neighKey{s.LinkIndex, n.IP}] = n
		return nil
	}
	if l.VXLAN == nil || len(s.MAC) != 6 {
		return unix.EINVAL
	}
	k := fdbKey{s.LinkIndex, string(s.MAC)}
	if rs := f.fdb[k]; len(rs) > 0 {
		rs[0] = n // the kernel rewrites the first remote
		return nil
	}
	f.fdb[k] = []nl.Neigh{n}
	return nil
}

// DelNeigh implements the nl.Conn method.
func (f *NS) DelNeigh(n *nl.Neigh) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	if f.links[n.LinkIndex] == nil {
		return unix.ENODEV
	}
	if n.Family != nl.FamilyBridge {
		k := neighKey{n.LinkIndex, n.IP}
		if _, ok := f.neighs[k]; !ok {
			return unix.ENOENT
		}
		delete(f.neighs, k)
		return nil
	}
	k := fdbKey{n.LinkIndex, string(n.HardwareAddr())}
	rs := f.fdb[k]
	if len(rs) == 0 {
		return unix.ENOENT
	}
	i := slices.IndexFunc(rs, func(r nl.Neigh) bool { return r.IP == n.IP })
	if i < 0 {
		return nil // the kernel does not mind a remote that is not there
	}
	if rs = slices.Delete(rs, i, i+1); len(rs) == 0 {
		delete(f.fdb, k)
	} else {
		f.fdb[k] = rs
	}
	return nil
}

// AppendFDB adds a remote VTEP to the FDB entry of mac on the device, as
// "bridge fdb append" by somebody other than weft would. Like the kernel,
// it adds nothing to an existing entry of a unicast MAC (other than all
// zeros).
func (f *NS) AppendFDB(linkIndex int, mac net.HardwareAddr, remote netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := nl.Neigh{LinkIndex: linkIndex, Family: nl.FamilyBridge, State: unix.NUD_PERMANENT, Flags: unix.NTF_SELF, IP: remote}
	n.SetHardwareAddr(mac)
	k := fdbKey{linkIndex, string(mac)}
	multi := len(mac) > 0 && (mac[0]&1 != 0 || slices.Equal(mac, make(net.HardwareAddr, len(mac))))
	if rs := f.fdb[k]; len(rs) > 0 && (!multi || slices.ContainsFunc(rs, func(r nl.Neigh) bool { return r.IP == remote })) {
		return
	}
	f.fdb[k] = append(f.fdb[k], n)
}
