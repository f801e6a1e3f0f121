package nl

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	vnl "github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Events selects the rtnetlink events that should trigger a reconcile. A
// nil function means "do not subscribe to this kind of event".
type Events struct {
	Link  func(LinkEvent) bool
	Addr  func(AddrEvent) bool
	Route func(RouteEvent) bool
	Neigh func(NeighEvent) bool
	// Nexthop sees nexthop object events. The kernel removes the routes
	// that use a deleted nexthop object without a route event, so this is
	// the only prompt sign of that.
	Nexthop func(NexthopEvent) bool
}

// LinkEvent is RTM_NEWLINK or RTM_DELLINK.
type LinkEvent struct {
	Deleted bool
	Index   int
	Name    string
	Up      bool
	MTU     int
}

// AddrEvent is RTM_NEWADDR or RTM_DELADDR.
type AddrEvent struct {
	Deleted   bool
	LinkIndex int
	// Prefix is the address with its prefix length.
	Prefix netip.Prefix
}

// RouteEvent is RTM_NEWROUTE or RTM_DELROUTE.
type RouteEvent struct {
	Deleted bool
	Route
}

// NeighEvent is RTM_NEWNEIGH or RTM_DELNEIGH.
type NeighEvent struct {
	Deleted   bool
	LinkIndex int
	Family    Family
	State     uint16
	IP        netip.Addr
}

// NexthopEvent is RTM_NEWNEXTHOP or RTM_DELNEXTHOP.
type NexthopEvent struct {
	Deleted  bool
	ID       uint32
	Protocol uint8
}

// Why raw sockets. vishvananda's subscriptions parse every event into
// its large types and queue them in a channel of 4096 for each kind: about
// 2.7 MB that a daemon held all its life, plus garbage for every event when
// thousands of peers were programmed at once. Here each kind of event has
// one socket whose messages are read into one reused buffer and reduced to
// the small types above by the goroutine that reads them, which calls the
// filter and kick right away: the kernel's socket buffer is the only
// queue.

// eventBuffer is the kernel receive buffer asked for each subscription, so
// that programming thousands of peers does not overflow it.
const eventBuffer = 8 << 20

// eventMsgBuf holds the largest event message the reader expects (a link
// with its statistics and per-family settings takes a few KiB). A larger
// one is truncated, and treated as an event that may matter.
const eventMsgBuf = 32 << 10

// resubscribeDelay is how long Watch waits before subscribing again after a
// subscription broke or could not be made.
const resubscribeDelay = 200 * time.Millisecond

// subscription is one kind of event: the multicast groups that carry it
// and pass, which reports whether a message of type typ with payload p
// passes the caller's filter.
type subscription struct {
	kind   string
	groups []uint
	pass   func(typ uint16, p []byte) bool
}

// subscriptions returns the subscriptions for the kinds e has a function
// for.
func (e Events) subscriptions() []subscription {
	var subs []subscription
	if e.Link != nil {
		subs = append(subs, subscription{"link", []uint{unix.RTNLGRP_LINK}, func(typ uint16, p []byte) bool {
			ev, ok := parseLinkEvent(typ, p)
			return ok && e.Link(ev)
		}})
	}
	if e.Addr != nil {
		subs = append(subs, subscription{"addr", []uint{unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR}, func(typ uint16, p []byte) bool {
			ev, ok := parseAddrEvent(typ, p)
			return ok && e.Addr(ev)
		}})
	}
	if e.Route != nil {
		subs = append(subs, subscription{"route", []uint{unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE}, func(typ uint16, p []byte) bool {
			if typ != unix.RTM_NEWROUTE && typ != unix.RTM_DELROUTE {
				return false
			}
			r, _, ok := parseRoute(p)
			return ok && e.Route(RouteEvent{Deleted: typ == unix.RTM_DELROUTE, Route: r})
		}})
	}
	if e.Neigh != nil {
		subs = append(subs, subscription{"neigh", []uint{unix.RTNLGRP_NEIGH}, func(typ uint16, p []byte) bool {
			if typ != unix.RTM_NEWNEIGH && typ != unix.RTM_DELNEIGH {
				return false
			}
			n, ok := parseNeigh(p)
			return ok && e.Neigh(NeighEvent{
				Deleted: typ == unix.RTM_DELNEIGH, LinkIndex: n.LinkIndex, Family: n.Family, State: n.State, IP: n.IP,
			})
		}})
	}
	if e.Nexthop != nil {
		subs = append(subs, subscription{"nexthop", []uint{unix.RTNLGRP_NEXTHOP}, func(typ uint16, p []byte) bool {
			ev, ok := parseNexthopEvent(typ, p)
			return ok && e.Nexthop(ev)
		}})
	}
	return subs
}

// parseLinkEvent decodes RTM_NEWLINK and RTM_DELLINK (struct ifinfomsg and
// attributes).
func parseLinkEvent(typ uint16, p []byte) (LinkEvent, bool) {
	const ifinfomsgLen = 16
	if (typ != unix.RTM_NEWLINK && typ != unix.RTM_DELLINK) || len(p) < ifinfomsgLen {
		return LinkEvent{}, false
	}
	ne := binary.NativeEndian
	ev := LinkEvent{
		Deleted: typ == unix.RTM_DELLINK,
		Index:   int(int32(ne.Uint32(p[4:8]))),
		Up:      ne.Uint32(p[8:12])&unix.IFF_UP != 0,
	}
	Attrs(p[ifinfomsgLen:], func(t uint16, v []byte) {
		switch t {
		case unix.IFLA_IFNAME:
			ev.Name = string(bytes.TrimRight(v, "\x00"))
		case unix.IFLA_MTU:
			if len(v) >= 4 {
				ev.MTU = int(ne.Uint32(v))
			}
		}
	})
	return ev, true
}

// parseAddrEvent decodes RTM_NEWADDR and RTM_DELADDR (struct ifaddrmsg and
// attributes). Prefix is what ip(8) shows as the address: IFA_LOCAL with
// the prefix length, or for a point-to-point address the local address
// alone (/32, /128); IFA_ADDRESS when there is no IFA_LOCAL (IPv6).
func parseAddrEvent(typ uint16, p []byte) (AddrEvent, bool) {
	const ifaddrmsgLen = 8
	if (typ != unix.RTM_NEWADDR && typ != unix.RTM_DELADDR) || len(p) < ifaddrmsgLen {
		return AddrEvent{}, false
	}
	ev := AddrEvent{Deleted: typ == unix.RTM_DELADDR, LinkIndex: int(int32(binary.NativeEndian.Uint32(p[4:8])))}
	bits := int(p[1])
	var address, local netip.Addr
	Attrs(p[ifaddrmsgLen:], func(t uint16, v []byte) {
		switch t {
		case unix.IFA_ADDRESS:
			address, _ = netip.AddrFromSlice(v)
		case unix.IFA_LOCAL:
			local, _ = netip.AddrFromSlice(v)
		}
	})
	switch {
	case local.IsValid() && (!address.IsValid() || local != address || !local.Is4()):
		ev.Prefix = netip.PrefixFrom(local.Unmap(), local.Unmap().BitLen())
	case address.IsValid():
		ev.Prefix = netip.PrefixFrom(address.Unmap(), bits)
	}
	if ev.Prefix.Bits() < 0 {
		ev.Prefix = netip.Prefix{} // a prefix length the address cannot have
	}
	return ev, true
}

// parseNexthopEvent decodes RTM_NEWNEXTHOP and RTM_DELNEXTHOP (struct
// nhmsg and attributes).
func parseNexthopEvent(typ uint16, p []byte) (NexthopEvent, bool) {
	if (typ != unix.RTM_NEWNEXTHOP && typ != unix.RTM_DELNEXTHOP) || len(p) < 8 {
		return NexthopEvent{}, false
	}
	ev := NexthopEvent{Deleted: typ == unix.RTM_DELNEXTHOP, Protocol: p[2]}
	Attrs(p[8:], func(t uint16, v []byte) {
		if t == unix.NHA_ID && len(v) >= 4 {
			ev.ID = binary.NativeEndian.Uint32(v)
		}
	})
	return ev, true
}

// Watch subscribes, in ns, to every kind of event e has a function for and
// calls kick whenever an event passes it. kick must not block. When events
// were lost (the socket buffer overflowed) kick is called because something
// may have been missed; a subscription that breaks, or could not be made,
// is made again after a short delay, with a kick. The functions of e run on
// Watch's goroutines. Watch returns when ctx is done and every goroutine it
// started has ended.
func Watch(ctx context.Context, ns netns.NsHandle, logger *slog.Logger, e Events, kick func()) {
	var wg sync.WaitGroup
	for _, sub := range e.subscriptions() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			watchLoop(ctx, ns, logger, sub, kick)
		}()
	}
	wg.Wait()
}

// watchLoop keeps one subscription alive until ctx is done.
func watchLoop(ctx context.Context, ns netns.NsHandle, logger *slog.Logger, sub subscription, kick func()) {
	buf := make([]byte, eventMsgBuf)
	first := true
	for {
		f, err := subscribe(ns, sub.groups)
		if err != nil {
			logger.Warn("cannot subscribe to netlink events; relying on the resync timer", "kind", sub.kind, "err", err)
		} else {
			if !first {
				// Events may have been lost while we were not listening.
				kick()
			}
			first = false
			err = readEvents(ctx, f, buf, sub.pass, kick)
			f.Close()
			if ctx.Err() == nil {
				logger.Debug("netlink subscription error", "kind", sub.kind, "err", err)
			}
		}
		if ctx.Err() != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(resubscribeDelay):
		}
	}
}

// subscribe opens a route netlink socket in ns that receives the multicast
// groups, as a non-blocking file that the runtime's poller waits on (so
// that closing it ends a read in progress).
func subscribe(ns netns.NsHandle, groups []uint) (*os.File, error) {
	s, err := vnl.SubscribeAt(ns, netns.None(), unix.NETLINK_ROUTE, groups...)
	if err != nil {
		return nil, err
	}
	// The socket's own file is vishvananda's; read through a duplicate.
	fd, err := unix.FcntlInt(uintptr(s.GetFd()), unix.F_DUPFD_CLOEXEC, 0)
	s.Close()
	if err != nil {
		return nil, fmt.Errorf("duplicate netlink socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, eventBuffer); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink receive buffer: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "netlink events"), nil
}

// readEvents reads the event messages on f into buf until ctx is done or
// the socket fails, and kicks for each that passes, for a truncated one and
// when the kernel reports events lost. It returns ctx's error or the
// socket's.
func readEvents(ctx context.Context, f *os.File, buf []byte, pass func(typ uint16, p []byte) bool, kick func()) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	ne := binary.NativeEndian
	for {
		var n, rflags int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			for {
				n, _, rflags, _, rerr = unix.Recvmsg(int(fd), buf, nil, 0)
				if rerr != unix.EINTR {
					return rerr != unix.EAGAIN
				}
			}
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return err
		}
		switch {
		case rerr == unix.ENOBUFS:
			kick() // the socket overflowed: events were lost
			continue
		case rerr != nil:
			return rerr
		case rflags&unix.MSG_TRUNC != 0:
			kick() // too large to read whole: it may have mattered
			continue
		}
		kicked := false
		for b := buf[:n]; len(b) >= unix.SizeofNlMsghdr; {
			l := int(ne.Uint32(b[0:4]))
			if l < unix.SizeofNlMsghdr || l > len(b) {
				break
			}
			if !kicked && pass(ne.Uint16(b[4:6]), b[unix.SizeofNlMsghdr:l]) {
				kick()
				kicked = true
			}
			b = b[min((l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1), len(b)):]
		}
	}
}
