package routes

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	vnl "github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

// Why nexthop objects. The kernel shares one fib_info between routes with
// identical next hops, and finds candidates in a hash keyed by the output
// device but not by the gateway. Thousands of routes through one device,
// each via its own gateway (one per peer), all land in one bucket, so each
// insert scans every earlier one: 5000 peers took 1.5 s even with
// "ip -batch". A route that points at a nexthop object (RTA_NH_ID) is
// hashed by the object's id instead, which brings 5000 peers down to a
// fraction of that. So each gatewayed route gets its own nexthop object
// (protocol backend.RouteProtocol, id derived from the destination) and a
// route that refers to it. Kernels without nexthop objects (< 5.3) get
// plain routes. Route dumps still show gateway and device (the kernel's
// nexthop_compat_mode, on by default), which is what the reconciler
// compares.

// rtaNHID is RTA_NH_ID from linux/rtnetlink.h.
const rtaNHID = 30

// nhIDBase marks nexthop ids chosen by weft: 0x40000000 | bits<<24 | index.
const nhIDBase = 0x40000000

// NetlinkTable is the main IPv4 table of one namespace.
type NetlinkTable struct {
	h       *netlink.Handle
	sock    *vnl.SocketHandle
	batch   *nl.Batcher
	dump    *nl.Dumper
	network netip.Prefix
	// list is List's result, reused by the next List; nhs and used are
	// List's scratch maps, kept so that a pass allocates nothing new.
	list   []Route
	reqBuf []byte
	nhs    map[uint32]uint8
	used   map[uint32]bool
	// nhSupported: the kernel has nexthop objects. useNH: we install
	// routes through them (off when route dumps would not show their
	// gateway, i.e. net.ipv4.nexthop_compat_mode=0).
	nhSupported bool
	useNH       bool
	// foreignNH holds nexthop ids that exist and are not ours, from the
	// last List; their destinations get plain routes.
	foreignNH map[uint32]bool
}

var _ BatchTable = (*NetlinkTable)(nil)

// NewNetlinkTable returns the main table of ns (netns.None(): the current
// namespace), using h for ordinary requests. network is the cluster network;
// nexthop ids are derived from a destination's index inside it.
func NewNetlinkTable(ns netns.NsHandle, h *netlink.Handle, network netip.Prefix) (*NetlinkTable, error) {
	t := &NetlinkTable{h: h, network: network.Masked(), foreignNH: map[uint32]bool{}}
	s, err := vnl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open route socket: %w", err)
	}
	t.sock = &vnl.SocketHandle{Socket: s}
	if t.batch, err = nl.NewBatcher(ns); err != nil {
		t.Close()
		return nil, err
	}
	if t.dump, err = nl.NewDumper(ns); err != nil {
		t.Close()
		return nil, err
	}
	// Probe for nexthop object support with a harmless dump.
	if err := t.listNexthops(func(uint32, uint8) {}); err == nil {
		t.nhSupported, t.useNH = true, true
	}
	return t, nil
}

// Close releases the table's own socket (not h).
func (t *NetlinkTable) Close() {
	if t.batch != nil {
		t.batch.Close()
		t.batch = nil
	}
	if t.dump != nil {
		t.dump.Close()
		t.dump = nil
	}
	if t.sock != nil {
		t.sock.Close()
		t.sock = nil
	}
}

func (t *NetlinkTable) request(typ, flags int) *vnl.NetlinkRequest {
	req := vnl.NewNetlinkRequest(typ, flags)
	req.Sockets = map[int]*vnl.SocketHandle{unix.NETLINK_ROUTE: t.sock}
	return req
}

// nhID returns the nexthop id for dst, or 0 if dst has none.
func (t *NetlinkTable) nhID(dst netip.Prefix) uint32 {
	if !t.useNH || !t.network.IsValid() || !t.network.Contains(dst.Addr()) || dst.Bits() < t.network.Bits() {
		return 0
	}
	hostBits := dst.Bits() - t.network.Bits()
	if hostBits > 24 {
		return 0
	}
	off := u32(dst.Addr()) - u32(t.network.Addr())
	var index uint32
	if dst.Bits() < 32 {
		index = off >> (32 - dst.Bits())
	} else {
		index = off
	}
	id := uint32(nhIDBase) | uint32(dst.Bits())<<24 | index
	if t.foreignNH[id] {
		return 0
	}
	return id
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// nhmsg is struct nhmsg from linux/nexthop.h.
type nhmsg struct {
	family, scope, protocol uint8
	flags                   uint32
}

func (m nhmsg) Len() int { return 8 }
func (m nhmsg) Serialize() []byte {
	b := make([]byte, 8)
	b[0], b[1], b[2] = m.family, m.scope, m.protocol
	vnl.NativeEndian().PutUint32(b[4:], m.flags)
	return b
}

// listNexthops calls fn with the id and protocol of every nexthop object.
func (t *NetlinkTable) listNexthops(fn func(id uint32, proto uint8)) error {
	var body [8]byte // struct nhmsg, family AF_UNSPEC
	_, err := nl.Dump(func() ([]struct{}, error) {
		return nil, t.dump.Dump(unix.RTM_GETNEXTHOP, body[:], unix.RTM_NEWNEXTHOP, func(p []byte) error {
			if len(p) < 8 {
				return nil
			}
			proto := p[2]
			nl.Attrs(p[8:], func(typ uint16, v []byte) {
				if typ == unix.NHA_ID && len(v) >= 4 {
					fn(binary.NativeEndian.Uint32(v), proto)
				}
			})
			return nil
		})
	})
	return err
}

func dumpMap[K comparable, V any](fn func() (map[K]V, error)) (map[K]V, error) {
	var m map[K]V
	_, err := nl.Dump(func() ([]struct{}, error) {
		var err error
		m, err = fn()
		return nil, err
	})
	return m, err
}

// ParseRoute decodes the payload of an RTM_NEWROUTE message (struct rtmsg
// and attributes). ok is false for a message too short to be a route.
func ParseRoute(p []byte) (r Route, family uint8, ok bool) {
	const rtmsgLen = 12
	if len(p) < rtmsgLen {
		return Route{}, 0, false
	}
	family = p[0]
	dstLen := int(p[1])
	r = Route{
		Table: uint32(p[4]), Protocol: p[5], Scope: p[6], Type: p[7],
		Flags: binary.NativeEndian.Uint32(p[8:12]),
	}
	ne := binary.NativeEndian
	nl.Attrs(p[rtmsgLen:], func(typ uint16, v []byte) {
		switch typ {
		case unix.RTA_DST:
			if a, ok := netip.AddrFromSlice(v); ok {
				if pf, err := a.Unmap().Prefix(dstLen); err == nil {
					r.Dst = pf
				}
			}
		case unix.RTA_GATEWAY:
			if a, ok := netip.AddrFromSlice(v); ok {
				r.Gw = a.Unmap()
			}
		case unix.RTA_OIF:
			if len(v) >= 4 {
				r.LinkIndex = int(int32(ne.Uint32(v)))
			}
		case unix.RTA_PRIORITY:
			if len(v) >= 4 {
				r.Priority = int(int32(ne.Uint32(v)))
			}
		case unix.RTA_TABLE:
			if len(v) >= 4 {
				r.Table = ne.Uint32(v)
			}
		case rtaNHID:
			if len(v) >= 4 {
				r.NHID = ne.Uint32(v)
			}
		case unix.RTA_MULTIPATH:
			r.MultiPath = len(v) >= unix.SizeofRtNexthop
		}
	})
	if !r.Dst.IsValid() && family == unix.AF_INET {
		// No RTA_DST: a default route (as iproute2 and netlink show it).
		r.Dst, _ = netip.IPv4Unspecified().Prefix(dstLen)
	}
	return r, family, true
}

// List implements Table. It keeps the routes the reconciler looks at (see
// Table) and drops the rest while parsing. The slice is reused by the next
// List. With nexthop objects it also deletes our nexthop objects that no
// route of ours uses any more (left behind when somebody deleted a route by
// hand), so that they cannot pile up.
func (t *NetlinkTable) List() ([]Route, error) {
	body := [12]byte{0: unix.AF_INET, 4: unix.RT_TABLE_MAIN} // struct rtmsg
	rs, err := nl.Dump(func() ([]Route, error) {
		rs := t.list[:0]
		err := t.dump.Dump(unix.RTM_GETROUTE, body[:], unix.RTM_NEWROUTE, func(p []byte) error {
			if len(p) >= 12 && binary.NativeEndian.Uint32(p[8:12])&unix.RTM_F_CLONED != 0 {
				return nil // cached clones, as netlink.RouteList skips them
			}
			r, family, ok := ParseRoute(p)
			if !ok || family != unix.AF_INET || r.Table != unix.RT_TABLE_MAIN {
				return nil
			}
			if r.Protocol == backend.RouteProtocol || (r.Protocol == unix.RTPROT_KERNEL && r.Scope == unix.RT_SCOPE_LINK) ||
				(t.network.IsValid() && t.network.Overlaps(r.Dst)) {
				rs = append(rs, r)
			}
			return nil
		})
		t.list = rs
		return rs, err
	})
	if err != nil || !t.nhSupported {
		return rs, err
	}
	for i := range rs {
		r := &rs[i]
		if t.useNH && r.Protocol == backend.RouteProtocol && !r.Gw.IsValid() && r.LinkIndex == 0 && !r.MultiPath {
			// A route through a nexthop object dumped without its
			// gateway: nexthop_compat_mode is off, so the reconciler
			// could never see that the route is right. Use plain routes.
			t.useNH = false
		}
	}
	if t.nhs == nil {
		t.nhs, t.used = map[uint32]uint8{}, map[uint32]bool{}
	}
	clear(t.nhs)
	if err := t.listNexthops(func(id uint32, proto uint8) { t.nhs[id] = proto }); err != nil {
		return nil, fmt.Errorf("list nexthop objects: %w", err)
	}
	clear(t.foreignNH)
	clear(t.used)
	for i := range rs {
		if rs[i].Protocol != backend.RouteProtocol {
			continue
		}
		if id := t.nhID(rs[i].Dst); id != 0 {
			t.used[id] = true
		}
	}
	for id, proto := range t.nhs {
		if proto != backend.RouteProtocol {
			t.foreignNH[id] = true
			continue
		}
		if !t.used[id] {
			_ = t.delNexthop(id) // best effort; retried on the next List
		}
	}
	return rs, nil
}

// Replace implements Table.
func (t *NetlinkTable) Replace(r *netlink.Route) error {
	dst, ok := ipNetToPrefix(r.Dst)
	gw, gok := netip.AddrFromSlice(r.Gw)
	if !ok || !gok || len(r.MultiPath) > 0 || r.Table != unix.RT_TABLE_MAIN || r.Priority != 0 {
		return t.h.RouteReplace(r)
	}
	w := Want{Dst: dst, Gw: gw.Unmap(), LinkIndex: r.LinkIndex, OnLink: r.Flags&int(netlink.FLAG_ONLINK) != 0}
	if t.nhRequestsFor(w) {
		return t.ReplaceAll([]Want{w})[0]
	}
	return t.h.RouteReplace(r)
}

// nhRequestsFor reports whether w gets a nexthop object.
func (t *NetlinkTable) nhRequestsFor(w Want) bool {
	return w.Gw.Unmap().Is4() && t.nhID(w.Dst.Masked()) != 0
}

// ReplaceAll implements BatchTable: routes that get a nexthop object are
// sent in batches (nexthop, then route); others go one by one.
func (t *NetlinkTable) ReplaceAll(ws []Want) []error {
	errs := make([]error, len(ws))
	type pair struct{ nh, route nl.Op }
	pairs := make([]pair, len(ws))
	n := 0
	arena := t.reqBuf[:0] // the requests, back to back
	defer func() { t.reqBuf = arena[:0] }()
	for i, w := range ws {
		if !t.nhRequestsFor(w) {
			errs[i] = t.h.RouteReplace(w.Route())
			continue
		}
		var nh, route []byte
		arena, nh, route = t.nhRequests(arena, w)
		pairs[i] = pair{nl.Op{Msg: nh}, nl.Op{Msg: route}}
		n += 2
	}
	if n == 0 {
		return errs
	}
	ops := make([]*nl.Op, 0, n)
	for i := range pairs {
		if pairs[i].nh.Msg != nil {
			ops = append(ops, &pairs[i].nh, &pairs[i].route)
		}
	}
	_ = t.batch.Do(ops) // per-op errors below cover a socket failure too
	for i, p := range pairs {
		if p.nh.Msg == nil {
			continue
		}
		if p.nh.Err != nil {
			errs[i] = fmt.Errorf("nexthop object for %s: %w", ws[i].Dst, p.nh.Err)
		} else {
			errs[i] = p.route.Err
		}
	}
	return errs
}

// nhRequests appends to arena the nexthop and route requests for w, which
// must have a nexthop object (nhRequestsFor), and returns them.
func (t *NetlinkTable) nhRequests(arena []byte, w Want) (out, nh, route []byte) {
	dst := w.Dst.Masked()
	id := t.nhID(dst)
	gw4 := w.Gw.Unmap().As4()
	var flags uint32
	if w.OnLink {
		flags |= unix.RTNH_F_ONLINK
	}
	const create = unix.NLM_F_REQUEST | unix.NLM_F_CREATE | unix.NLM_F_REPLACE | unix.NLM_F_ACK
	arena, start := nl.AppendMsg(arena, unix.RTM_NEWNEXTHOP, create)
	arena = append(arena, unix.AF_INET, 0, backend.RouteProtocol, 0) // struct nhmsg
	arena = binary.NativeEndian.AppendUint32(arena, flags)
	arena = nl.AppendAttrU32(arena, unix.NHA_ID, id)
	arena = nl.AppendAttrU32(arena, unix.NHA_OIF, uint32(w.LinkIndex))
	arena = nl.AppendAttr(arena, unix.NHA_GATEWAY, gw4[:])
	arena, nh = nl.FinishMsg(arena, start)

	arena, start = nl.AppendMsg(arena, unix.RTM_NEWROUTE, create)
	arena = append(arena, unix.AF_INET, uint8(dst.Bits()), 0, 0, // struct rtmsg
		unix.RT_TABLE_MAIN, backend.RouteProtocol, unix.RT_SCOPE_UNIVERSE, unix.RTN_UNICAST, 0, 0, 0, 0)
	d4 := dst.Addr().As4()
	arena = nl.AppendAttr(arena, unix.RTA_DST, d4[:])
	arena = nl.AppendAttrU32(arena, rtaNHID, id)
	arena, route = nl.FinishMsg(arena, start)
	return arena, nh, route
}

func (t *NetlinkTable) delNexthop(id uint32) error {
	req := t.request(unix.RTM_DELNEXTHOP, unix.NLM_F_ACK)
	req.AddData(nhmsg{family: unix.AF_UNSPEC})
	req.AddData(vnl.NewRtAttr(unix.NHA_ID, vnl.Uint32Attr(id)))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// Delete implements Table. Deleting our nexthop object removes the route
// that uses it; a plain route is deleted directly.
func (t *NetlinkTable) Delete(r *Route) error {
	// Match on destination, metric and protocol only: a route that uses a
	// nexthop object does not match a request that names a gateway.
	err := t.h.RouteDel(&netlink.Route{
		Family: netlink.FAMILY_V4, Dst: prefixToIPNet(r.Dst), Table: int(r.Table), Priority: r.Priority,
		Protocol: netlink.RouteProtocol(r.Protocol),
	})
	if dst := r.Dst; dst.IsValid() && r.Protocol == backend.RouteProtocol {
		if id := t.nhID(dst); id != 0 {
			if nerr := t.delNexthop(id); nerr != nil && !errors.Is(nerr, unix.ENOENT) {
				return errors.Join(err, nerr)
			}
		}
	}
	return err
}

// deleteOwnedNexthops removes the nexthop objects tagged with
// backend.RouteProtocol that sel selects (with the routes using them).
func deleteOwnedNexthops(ns netns.NsHandle, sel func(Owned) bool) error {
	t := &NetlinkTable{foreignNH: map[uint32]bool{}}
	s, err := vnl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open route socket: %w", err)
	}
	t.sock = &vnl.SocketHandle{Socket: s}
	defer t.Close()
	nhs, err := t.listNexthopDetails()
	if err != nil {
		return nil // no nexthop objects in this kernel
	}
	var errs []error
	for id, o := range nhs {
		if !sel(o) {
			continue
		}
		if err := t.delNexthop(id); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete nexthop %d: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// listNexthopDetails returns our nexthop objects by id.
func (t *NetlinkTable) listNexthopDetails() (map[uint32]Owned, error) {
	return dumpMap(func() (map[uint32]Owned, error) {
		req := t.request(unix.RTM_GETNEXTHOP, unix.NLM_F_DUMP)
		req.AddData(nhmsg{family: unix.AF_UNSPEC})
		msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWNEXTHOP)
		if err != nil {
			return nil, err
		}
		out := map[uint32]Owned{}
		for _, m := range msgs {
			if len(m) < 8 || m[2] != backend.RouteProtocol {
				continue
			}
			attrs, err := vnl.ParseRouteAttr(m[8:])
			if err != nil {
				continue
			}
			o := Owned{OnLink: vnl.NativeEndian().Uint32(m[4:8])&unix.RTNH_F_ONLINK != 0}
			var id uint32
			for _, a := range attrs {
				switch {
				case a.Attr.Type == unix.NHA_ID && len(a.Value) >= 4:
					id = vnl.NativeEndian().Uint32(a.Value)
				case a.Attr.Type == unix.NHA_OIF && len(a.Value) >= 4:
					o.LinkIndex = int(vnl.NativeEndian().Uint32(a.Value))
				case a.Attr.Type == unix.NHA_GATEWAY:
					if gw, ok := netip.AddrFromSlice(a.Value); ok {
						o.Gw = gw.Unmap()
					}
				}
			}
			if id != 0 {
				out[id] = o
			}
		}
		return out, nil
	})
}
