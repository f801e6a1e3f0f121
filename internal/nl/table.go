package nl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"
)

// Why nexthop objects. The kernel shares one fib_info between routes with
// identical next hops, and finds candidates in a hash keyed by the output
// device but not by the gateway. Thousands of routes through one device,
// each via its own gateway (one per peer), all land in one bucket, so each
// insert scans every earlier one: 5000 peers took 1.5 s even with
// "ip -batch". A route that points at a nexthop object (RTA_NH_ID) is
// hashed by the object's id instead, which brings 5000 peers down to a
// fraction of that. So each gatewayed route gets its own nexthop object
// (tagged with the table's protocol, id derived from the destination) and a
// route that refers to it. Kernels without nexthop objects (< 5.3) get
// plain routes. Route dumps still show gateway and device (the kernel's
// nexthop_compat_mode, on by default), which is what the reconciler
// compares.

// nhIDBase marks nexthop ids chosen by weft: 0x40000000 | bits<<24 | index.
const nhIDBase = 0x40000000

// RouteTable is the main table of a Conn's namespace, for the family of
// its cluster network, as a route reconciler sees it: the routes tagged
// with one protocol, installed in batches through per-route nexthop
// objects (IPv4 only: IPv6 routes are plain routes, one request each). It
// shares the Conn's sockets and is not safe for concurrent use.
type RouteTable struct {
	c        *Conn
	network  netip.Prefix
	family   Family // of network: FamilyV4, or FamilyV6
	protocol uint8
	// nhSupported: the kernel has nexthop objects. useNH: we install
	// routes through them (off when route dumps would not show their
	// gateway, i.e. net.ipv4.nexthop_compat_mode=0).
	nhSupported bool
	useNH       bool
	// foreignNH holds nexthop ids that exist and are not ours, from the
	// last Walk; their destinations get plain routes.
	foreignNH map[uint32]bool
}

// RouteTable returns the main table for routes tagged with protocol inside
// network, the cluster network: nexthop ids are derived from a
// destination's place in it. An IPv6 network gives the IPv6 table, which
// lists IPv6 routes and neither uses nor cleans up nexthop objects (those
// belong to the IPv4 table of the same protocol); any other network, an
// invalid one included, the IPv4 table.
func (c *Conn) RouteTable(network netip.Prefix, protocol uint8) *RouteTable {
	t := &RouteTable{c: c, network: network.Masked(), family: FamilyV4, protocol: protocol, foreignNH: map[uint32]bool{}}
	if network.IsValid() && network.Addr().Is6() && !network.Addr().Is4In6() {
		t.family = FamilyV6
		return t
	}
	// Probe for nexthop object support with a harmless dump.
	if err := c.nexthops(func(nexthop) {}); err == nil {
		t.nhSupported, t.useNH = true, true
	}
	return t
}

// UsesNexthops reports whether the table installs routes through nexthop
// objects.
func (t *RouteTable) UsesNexthops() bool { return t.useNH }

// nhID returns the nexthop id for dst, or 0 if dst has none.
func (t *RouteTable) nhID(dst netip.Prefix) uint32 {
	if !t.useNH {
		return 0
	}
	return t.idFor(dst)
}

// idFor returns the nexthop id for dst when routes go through nexthop
// objects, or 0 if dst would have none.
func (t *RouteTable) idFor(dst netip.Prefix) uint32 {
	if !t.network.IsValid() || !t.network.Addr().Is4() || !t.network.Contains(dst.Addr()) || dst.Bits() < t.network.Bits() {
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

// List returns the routes Walk shows, as a slice that is the caller's.
func (t *RouteTable) List() ([]Route, error) {
	var rs []Route
	err := t.Walk(func() { rs = rs[:0] }, func(r *Route) { rs = append(rs, *r) })
	if err != nil {
		return nil, err
	}
	return rs, nil
}

// Walk calls fn with each route of the table's family in the main table
// that a reconciler must see: every route tagged with the table's
// protocol, every route the kernel added (connected routes among them) and
// every route to a destination that overlaps the network; the rest is
// dropped while parsing. fn sees each route while the dump is parsed, so
// no list of the table is built (a table of thousands of routes would
// cost memory for each): r is only valid during the call. start (nil:
// none) is called before the dump and again before each repetition of an
// interrupted one, so that the caller can drop what fn gathered. With
// nexthop objects it then deletes the table's nexthop objects that no
// route uses any more (left behind when somebody deleted a route by hand),
// so that they cannot pile up.
func (t *RouteTable) Walk(start func(), fn func(r *Route)) error {
	// The nexthop ids our routes use, as if we installed through nexthop
	// objects: whether we still do is only known after the dump.
	var used []uint32
	err := t.c.RouteWalk(t.family, unix.RT_TABLE_MAIN, func() {
		used = used[:0]
		if start != nil {
			start()
		}
	}, func(r *Route) {
		if r.Protocol != t.protocol && r.Protocol != unix.RTPROT_KERNEL &&
			(!t.network.IsValid() || !t.network.Overlaps(r.Dst)) {
			return
		}
		if t.nhSupported && r.Protocol == t.protocol {
			if t.useNH && !r.Gw.IsValid() && r.LinkIndex == 0 && !r.MultiPath {
				// A route through a nexthop object dumped without its
				// gateway: nexthop_compat_mode is off, so the reconciler
				// could never see that the route is right. Use plain
				// routes.
				t.useNH = false
			}
			if id := t.idFor(r.Dst); id != 0 {
				used = append(used, id)
			}
		}
		fn(r)
	})
	if err != nil || !t.nhSupported {
		return err
	}
	if !t.useNH {
		used = used[:0] // none of our nexthop objects is wanted any more
	}
	slices.Sort(used)
	// Every nexthop object, as the dump is parsed: ours that no route
	// uses are deleted after the dump, others' remembered.
	clear(t.foreignNH)
	var unused []uint32
	if err := t.c.nexthops(func(nh nexthop) {
		switch {
		case nh.protocol != t.protocol:
			t.foreignNH[nh.id] = true
		default:
			if _, inUse := slices.BinarySearch(used, nh.id); !inUse {
				unused = append(unused, nh.id)
			}
		}
	}); err != nil {
		return fmt.Errorf("list nexthop objects: %w", err)
	}
	for _, id := range unused {
		_ = t.c.delNexthop(id) // best effort; retried on the next Walk
	}
	return nil
}

// nhRequestsFor reports whether w gets a nexthop object.
func (t *RouteTable) nhRequestsFor(w RouteSpec) bool {
	return w.Gw.Unmap().Is4() && t.nhID(w.Dst.Masked()) != 0
}

// ReplaceAll installs every route, replacing any route with the same
// destination and metric 0 in the main table, and returns one error (or
// nil) per route. Routes that get a nexthop object are sent in batches
// (nexthop, then route), built one batch at a time so that the memory the
// requests take does not grow with the number of routes; others go one by
// one.
func (t *RouteTable) ReplaceAll(ws []RouteSpec) []error {
	errs := make([]error, len(ws))
	c := t.c
	// ops[2k] and ops[2k+1] are the requests of ws[idx[k]] (nexthop,
	// route), for the batch being built.
	ops := &c.opBuf
	var idx [batchChunk / 2]int
	n := 0
	flush := func() {
		if n == 0 {
			return
		}
		c.batch(c.ops) // per-op errors below cover a socket failure too
		for k := range n {
			if nh := &ops[2*k]; nh.err != nil {
				errs[idx[k]] = fmt.Errorf("nexthop object for %s: %w", ws[idx[k]].Dst, nh.err)
			} else {
				errs[idx[k]] = ops[2*k+1].err
			}
		}
		n = 0
		c.arena, c.ops = c.arena[:0], c.ops[:0]
	}
	c.arena, c.ops = c.arena[:0], c.ops[:0]
	for i, w := range ws {
		if !t.nhRequestsFor(w) {
			if c.h == nil {
				errs[i] = errClosed
			} else {
				errs[i] = c.h.RouteReplace(w.netlink(t.protocol))
			}
			continue
		}
		var nh, route []byte
		c.arena, nh, route = t.nhRequests(c.arena, w)
		ops[2*n], ops[2*n+1], idx[n] = op{msg: nh}, op{msg: route}, i
		c.ops = append(c.ops, &ops[2*n], &ops[2*n+1])
		if n++; n == len(idx) {
			flush()
		}
	}
	flush()
	return errs
}

// nhRequests appends to arena the nexthop and route requests for w, which
// must have a nexthop object (nhRequestsFor), and returns them.
func (t *RouteTable) nhRequests(arena []byte, w RouteSpec) (out, nh, route []byte) {
	dst := w.Dst.Masked()
	id := t.nhID(dst)
	gw4 := w.Gw.Unmap().As4()
	var flags uint32
	if w.OnLink {
		flags |= unix.RTNH_F_ONLINK
	}
	const create = unix.NLM_F_REQUEST | unix.NLM_F_CREATE | unix.NLM_F_REPLACE | unix.NLM_F_ACK
	arena, start := appendMsg(arena, unix.RTM_NEWNEXTHOP, create)
	arena = append(arena, unix.AF_INET, 0, t.protocol, 0) // struct nhmsg
	arena = binary.NativeEndian.AppendUint32(arena, flags)
	arena = appendAttrU32(arena, unix.NHA_ID, id)
	arena = appendAttrU32(arena, unix.NHA_OIF, uint32(w.LinkIndex))
	arena = appendAttr(arena, unix.NHA_GATEWAY, gw4[:])
	arena, nh = finishMsg(arena, start)

	arena, start = appendMsg(arena, unix.RTM_NEWROUTE, create)
	arena = append(arena, unix.AF_INET, uint8(dst.Bits()), 0, 0, // struct rtmsg
		unix.RT_TABLE_MAIN, t.protocol, unix.RT_SCOPE_UNIVERSE, unix.RTN_UNICAST, 0, 0, 0, 0)
	d4 := dst.Addr().As4()
	arena = appendAttr(arena, unix.RTA_DST, d4[:])
	arena = appendAttrU32(arena, rtaNHID, id)
	arena, route = finishMsg(arena, start)
	return arena, nh, route
}

// Delete removes the route r as List showed it; deleting the table's
// nexthop object for r's destination removes the route that uses it too.
func (t *RouteTable) Delete(r *Route) error {
	err := t.c.DelRoute(r)
	if dst := r.Dst; dst.IsValid() && r.Protocol == t.protocol {
		if id := t.nhID(dst); id != 0 {
			if nerr := t.c.delNexthop(id); nerr != nil && !errors.Is(nerr, unix.ENOENT) {
				return errors.Join(err, nerr)
			}
		}
	}
	return err
}
