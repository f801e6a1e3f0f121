package nl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// rtaNHID is RTA_NH_ID from linux/rtnetlink.h.
const rtaNHID = 30

// Route is a route as a dump shows it, reduced to the fields weft compares
// (a netlink.Route is ten times the size and a dump of thousands of them
// was most of each reconcile pass's garbage).
type Route struct {
	// Dst is the destination, masked; 0.0.0.0/0 or ::/0 for a default
	// route.
	Dst netip.Prefix
	// Gw is RTA_GATEWAY (invalid if none), unmapped.
	Gw netip.Addr
	// LinkIndex is RTA_OIF.
	LinkIndex int
	// Priority is the metric (RTA_PRIORITY).
	Priority int
	// Table is RTA_TABLE, or rtm_table without it.
	Table uint32
	// Flags is rtm_flags (RTNH_F_ONLINK among them).
	Flags uint32
	// NHID is RTA_NH_ID: the route uses a nexthop object.
	NHID     uint32
	Protocol uint8
	Scope    uint8
	Type     uint8
	// MultiPath: the route has RTA_MULTIPATH next hops.
	MultiPath bool
}

// routeOf reduces a vishvananda route (of a route event) to a Route.
func routeOf(r *netlink.Route) Route {
	out := Route{
		LinkIndex: r.LinkIndex, Priority: r.Priority, Table: uint32(r.Table), Flags: uint32(r.Flags),
		Protocol: uint8(r.Protocol), Scope: uint8(r.Scope), Type: uint8(r.Type), MultiPath: len(r.MultiPath) > 0,
	}
	out.Dst = prefixOf(r.Dst).Masked()
	out.Gw = addrOf(r.Gw)
	return out
}

// parseRoute decodes the payload of an RTM_NEWROUTE message (struct rtmsg
// and attributes). ok is false for a message too short to be a route.
func parseRoute(p []byte) (r Route, family Family, ok bool) {
	const rtmsgLen = 12
	if len(p) < rtmsgLen {
		return Route{}, 0, false
	}
	family = Family(p[0])
	dstLen := int(p[1])
	r = Route{
		Table: uint32(p[4]), Protocol: p[5], Scope: p[6], Type: p[7],
		Flags: binary.NativeEndian.Uint32(p[8:12]),
	}
	ne := binary.NativeEndian
	Attrs(p[rtmsgLen:], func(typ uint16, v []byte) {
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
	if !r.Dst.IsValid() {
		// No RTA_DST: a default route (as iproute2 and netlink show it).
		switch family {
		case FamilyV4:
			r.Dst, _ = netip.IPv4Unspecified().Prefix(dstLen)
		case FamilyV6:
			r.Dst, _ = netip.IPv6Unspecified().Prefix(dstLen)
		}
	}
	return r, family, true
}

// RouteList lists the routes of family (FamilyAll: every family) in table
// (0: every table) for which keep returns true (nil keeps every route),
// into out, whose old contents are dropped; pass the previous result to
// reuse its memory. keep sees each route while the dump is parsed, so
// what it drops costs no memory. Cached clones are skipped.
func (c *Conn) RouteList(family Family, table uint32, keep func(*Route) bool, out []Route) ([]Route, error) {
	err := c.RouteWalk(family, table, func() { out = out[:0] }, func(r *Route) {
		if keep == nil || keep(r) {
			out = append(out, *r)
		}
	})
	if err != nil && !errors.Is(err, errClosed) {
		return nil, err
	}
	return out, err
}

// RouteWalk calls fn with every route of family (FamilyAll: every family)
// in table (0: every table) while the dump is parsed, so that no list of
// the routes is built: r is only valid during the call. start (nil: none)
// is called before the dump and again before each repetition of a dump the
// kernel reported interrupted, so that the caller can drop what fn
// gathered. Cached clones are skipped.
func (c *Conn) RouteWalk(family Family, table uint32, start func(), fn func(r *Route)) error {
	if c.s == nil {
		if start != nil {
			start()
		}
		return errClosed
	}
	body := [12]byte{0: uint8(family)} // struct rtmsg
	if table < 256 {
		body[4] = uint8(table) // a hint; the kernel may still send others
	}
	// One route, reused: handing fn the address of a fresh one per route
	// would move each to the heap.
	var r Route
	_, err := retryDump(func() ([]struct{}, error) {
		if start != nil {
			start()
		}
		return nil, c.s.dump(unix.RTM_GETROUTE, body[:], unix.RTM_NEWROUTE, func(p []byte) error {
			if len(p) >= 12 && binary.NativeEndian.Uint32(p[8:12])&unix.RTM_F_CLONED != 0 {
				return nil // cached clones, as netlink.RouteList skips them
			}
			var f Family
			var ok bool
			if r, f, ok = parseRoute(p); !ok || (family != FamilyAll && f != family) || (table != 0 && r.Table != table) {
				return nil
			}
			fn(&r)
			return nil
		})
	})
	return err
}

// RouteSpec is a route to install: Dst via Gw out of LinkIndex. Without a
// gateway it is a device route of scope link.
type RouteSpec struct {
	Dst       netip.Prefix
	Gw        netip.Addr
	LinkIndex int
	// OnLink sets RTNH_F_ONLINK: the gateway is reachable on the link even
	// though no connected route covers it (vxlan).
	OnLink bool
}

// netlink returns the kernel route for s in the main table, tagged with
// protocol.
func (s RouteSpec) netlink(protocol uint8) *netlink.Route {
	r := &netlink.Route{
		Family:    int(FamilyOf(s.Dst.Addr())),
		Dst:       ipNetOf(s.Dst),
		Gw:        ipOf(s.Gw),
		LinkIndex: s.LinkIndex,
		Protocol:  netlink.RouteProtocol(protocol),
		Table:     unix.RT_TABLE_MAIN,
		Scope:     netlink.SCOPE_UNIVERSE,
		Type:      unix.RTN_UNICAST,
	}
	if !s.Gw.IsValid() {
		r.Scope = netlink.SCOPE_LINK
	}
	if s.OnLink {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	return r
}

// ReplaceRoute installs r in the main table, tagged with protocol,
// replacing any route with the same destination and metric 0: one request,
// answered before it returns, and no nexthop object (RouteTable batches
// routes and gives gatewayed ones nexthop objects; this is for a backend
// with one route, or a caller that wants one request at a time).
func (c *Conn) ReplaceRoute(r RouteSpec, protocol uint8) error {
	if c.h == nil {
		return errClosed
	}
	return c.h.RouteReplace(r.netlink(protocol))
}

// DelRoute deletes the route r as a dump showed it, matching destination,
// table, metric, protocol and scope only: a route that uses a nexthop
// object does not match a request that names a gateway. The kernel matches
// the scope too (a device route has scope link), so r must carry the one
// the dump showed.
func (c *Conn) DelRoute(r *Route) error {
	if c.h == nil {
		return errClosed
	}
	return c.h.RouteDel(&netlink.Route{
		Family: int(FamilyOf(r.Dst.Addr())), Dst: ipNetOf(r.Dst), Table: int(r.Table), Priority: r.Priority,
		Protocol: netlink.RouteProtocol(r.Protocol), Scope: netlink.Scope(r.Scope),
	})
}

// RouteTo asks the kernel how it would reach dst: the output device and the
// preferred source address (invalid if the route names none).
func (c *Conn) RouteTo(dst netip.Addr) (linkIndex int, src netip.Addr, err error) {
	if c.h == nil {
		return 0, netip.Addr{}, errClosed
	}
	rs, err := c.h.RouteGet(ipOf(dst))
	if err != nil {
		return 0, netip.Addr{}, err
	}
	if len(rs) == 0 {
		return 0, netip.Addr{}, fmt.Errorf("no route to %s", dst)
	}
	return rs[0].LinkIndex, addrOf(rs[0].Src), nil
}

// Owned describes a route or nexthop object tagged with weft's protocol,
// for DelOwnedRoutes's selector.
type Owned struct {
	// LinkIndex is the output device (0 for a nexthop group).
	LinkIndex int
	// Gw is the gateway; invalid for a device route.
	Gw netip.Addr
	// OnLink is RTNH_F_ONLINK.
	OnLink bool
}

// DelOwnedRoutes removes, from every table, the IPv4 and IPv6 routes and
// the nexthop objects tagged with protocol that sel selects (nil selects
// all), and returns how many routes it removed. Deleting a nexthop object takes the
// routes that use it along.
func (c *Conn) DelOwnedRoutes(protocol uint8, sel func(Owned) bool) (int, error) {
	if sel == nil {
		sel = func(Owned) bool { return true }
	}
	var del []uint32
	if err := c.nexthops(func(nh nexthop) {
		if nh.protocol == protocol && sel(nh.Owned) {
			del = append(del, nh.id)
		}
	}); err == nil { // else: no nexthop objects in this kernel
		var errs []error
		for _, id := range del {
			if err := c.delNexthop(id); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete nexthop %d: %w", id, err))
			}
		}
		if err := errors.Join(errs...); err != nil {
			return 0, err
		}
	}
	rs, err := c.RouteList(FamilyAll, 0, func(r *Route) bool {
		return r.Protocol == protocol && r.Dst.IsValid() && sel(Owned{LinkIndex: r.LinkIndex, Gw: r.Gw, OnLink: r.Flags&unix.RTNH_F_ONLINK != 0})
	}, nil)
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	n := 0
	var errs []error
	for i := range rs {
		err := c.DelRoute(&rs[i])
		if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", rs[i].Dst, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// nexthop is one nexthop object of a dump.
type nexthop struct {
	Owned
	id       uint32
	protocol uint8
}

// nexthops calls fn with every nexthop object. It fails on kernels without
// nexthop objects (before 5.3).
func (c *Conn) nexthops(fn func(nexthop)) error {
	if c.s == nil {
		return errClosed
	}
	var body [8]byte // struct nhmsg, family AF_UNSPEC
	ne := binary.NativeEndian
	_, err := retryDump(func() ([]struct{}, error) {
		return nil, c.s.dump(unix.RTM_GETNEXTHOP, body[:], unix.RTM_NEWNEXTHOP, func(p []byte) error {
			if len(p) < 8 {
				return nil
			}
			nh := nexthop{protocol: p[2]}
			nh.OnLink = ne.Uint32(p[4:8])&unix.RTNH_F_ONLINK != 0
			Attrs(p[8:], func(typ uint16, v []byte) {
				switch {
				case typ == unix.NHA_ID && len(v) >= 4:
					nh.id = ne.Uint32(v)
				case typ == unix.NHA_OIF && len(v) >= 4:
					nh.LinkIndex = int(ne.Uint32(v))
				case typ == unix.NHA_GATEWAY:
					nh.Gw = addrOf(v)
				}
			})
			if nh.id != 0 {
				fn(nh)
			}
			return nil
		})
	})
	return err
}

// delNexthop deletes the nexthop object id (and the routes that use it).
func (c *Conn) delNexthop(id uint32) error {
	return c.request(func(b []byte) ([]byte, []byte) {
		b, start := appendMsg(b, unix.RTM_DELNEXTHOP, unix.NLM_F_REQUEST|unix.NLM_F_ACK)
		b = append(b, unix.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0) // struct nhmsg
		b = appendAttrU32(b, unix.NHA_ID, id)
		return finishMsg(b, start)
	})
}
