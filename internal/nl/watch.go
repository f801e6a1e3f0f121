package nl

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
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

// filter is Events over vishvananda's update types, which the
// subscriptions deliver.
type filter struct {
	Route   func(netlink.RouteUpdate) bool
	Neigh   func(netlink.NeighUpdate) bool
	Link    func(netlink.LinkUpdate) bool
	Addr    func(netlink.AddrUpdate) bool
	Nexthop func(NexthopEvent) bool
}

// filter returns the filter that passes the events e selects.
func (e Events) filter() filter {
	f := filter{Nexthop: e.Nexthop}
	if e.Link != nil {
		f.Link = func(u netlink.LinkUpdate) bool {
			ev := LinkEvent{Deleted: u.Header.Type == unix.RTM_DELLINK}
			if u.Link != nil {
				a := u.Link.Attrs()
				ev.Index, ev.Name, ev.Up, ev.MTU = a.Index, a.Name, a.Flags&net.FlagUp != 0, a.MTU
			}
			return e.Link(ev)
		}
	}
	if e.Addr != nil {
		f.Addr = func(u netlink.AddrUpdate) bool {
			ev := AddrEvent{Deleted: !u.NewAddr, LinkIndex: u.LinkIndex}
			ev.Prefix = prefixOf(&u.LinkAddress)
			return e.Addr(ev)
		}
	}
	if e.Route != nil {
		f.Route = func(u netlink.RouteUpdate) bool {
			return e.Route(RouteEvent{Deleted: u.Type == unix.RTM_DELROUTE, Route: routeOf(&u.Route)})
		}
	}
	if e.Neigh != nil {
		f.Neigh = func(u netlink.NeighUpdate) bool {
			return e.Neigh(NeighEvent{
				Deleted: u.Type == unix.RTM_DELNEIGH, LinkIndex: u.LinkIndex, Family: Family(u.Family),
				State: uint16(u.State), IP: addrOf(u.IP),
			})
		}
	}
	return f
}

// eventBuffer is the kernel receive buffer asked for each subscription, so
// that programming thousands of peers does not overflow it.
const eventBuffer = 8 << 20

// resubscribeDelay is how long Watch waits before subscribing again after a
// subscription broke or could not be made.
const resubscribeDelay = 200 * time.Millisecond

// Watch subscribes, in ns, to every kind of event e has a function for and
// calls kick whenever an event passes it. kick must not block. A
// subscription that breaks (for example because the socket overflowed and
// events were lost) is re-made after a short delay, and kick is called
// because something may have been missed. Watch returns when ctx is done and
// every goroutine it started has ended.
func Watch(ctx context.Context, ns netns.NsHandle, logger *slog.Logger, e Events, kick func()) {
	f := e.filter()
	var wg sync.WaitGroup
	start := func(fn func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn()
		}()
	}
	errCB := func(kind string) func(error) {
		return func(err error) {
			if ctx.Err() == nil {
				logger.Debug("netlink subscription error", "kind", kind, "err", err)
			}
		}
	}
	if f.Route != nil {
		start(func() {
			watchLoop(ctx, logger, "route", func(ch chan netlink.RouteUpdate, done chan struct{}) error {
				return netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
					Namespace: &ns, ErrorCallback: errCB("route"),
					ReceiveBufferSize: eventBuffer, ReceiveBufferForceSize: true,
				})
			}, f.Route, kick)
		})
	}
	if f.Neigh != nil {
		start(func() {
			watchLoop(ctx, logger, "neigh", func(ch chan netlink.NeighUpdate, done chan struct{}) error {
				return netlink.NeighSubscribeWithOptions(ch, done, netlink.NeighSubscribeOptions{
					Namespace: &ns, ErrorCallback: errCB("neigh"),
					ReceiveBufferSize: eventBuffer, ReceiveBufferForceSize: true,
				})
			}, f.Neigh, kick)
		})
	}
	if f.Link != nil {
		start(func() {
			watchLoop(ctx, logger, "link", func(ch chan netlink.LinkUpdate, done chan struct{}) error {
				return netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
					Namespace: &ns, ErrorCallback: errCB("link"),
					ReceiveBufferSize: eventBuffer, ReceiveBufferForceSize: true,
				})
			}, f.Link, kick)
		})
	}
	if f.Addr != nil {
		start(func() {
			watchLoop(ctx, logger, "addr", func(ch chan netlink.AddrUpdate, done chan struct{}) error {
				return netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{
					Namespace: &ns, ErrorCallback: errCB("addr"),
					ReceiveBufferSize: eventBuffer, ReceiveBufferForceSize: true,
				})
			}, f.Addr, kick)
		})
	}
	if f.Nexthop != nil {
		start(func() {
			watchLoop(ctx, logger, "nexthop", func(ch chan NexthopEvent, done chan struct{}) error {
				return nexthopSubscribe(ns, ch, done)
			}, f.Nexthop, kick)
		})
	}
	wg.Wait()
}

// nexthopSubscribe is the nexthop counterpart of the netlink package's
// Subscribe functions, which have none: it delivers events on ch until done
// is closed or the socket fails, then closes ch.
func nexthopSubscribe(ns netns.NsHandle, ch chan<- NexthopEvent, done <-chan struct{}) error {
	s, err := vnl.SubscribeAt(ns, netns.None(), unix.NETLINK_ROUTE, unix.RTNLGRP_NEXTHOP)
	if err != nil {
		return err
	}
	if err := s.SetReceiveBufferSize(eventBuffer, true); err != nil {
		s.Close()
		return err
	}
	go func() {
		<-done
		s.Close()
	}()
	go func() {
		defer close(ch)
		for {
			msgs, _, err := s.Receive()
			if err != nil {
				return
			}
			for _, m := range msgs {
				t := m.Header.Type
				if (t != unix.RTM_NEWNEXTHOP && t != unix.RTM_DELNEXTHOP) || len(m.Data) < 8 {
					continue
				}
				u := NexthopEvent{Deleted: t == unix.RTM_DELNEXTHOP, Protocol: m.Data[2]}
				if attrs, err := vnl.ParseRouteAttr(m.Data[8:]); err == nil {
					for _, a := range attrs {
						if a.Attr.Type == unix.NHA_ID && len(a.Value) >= 4 {
							u.ID = vnl.NativeEndian().Uint32(a.Value)
						}
					}
				}
				select {
				case ch <- u:
				case <-done:
					return
				}
			}
		}
	}()
	return nil
}

// watchLoop keeps one subscription alive until ctx is done. The netlink
// package closes ch when its receive goroutine ends, so waiting for the
// close is waiting for that goroutine.
func watchLoop[T any](ctx context.Context, logger *slog.Logger, kind string,
	subscribe func(ch chan T, done chan struct{}) error, filter func(T) bool, kick func()) {
	first := true
	for {
		ch := make(chan T, 4096)
		done := make(chan struct{})
		if err := subscribe(ch, done); err != nil {
			close(done)
			logger.Warn("cannot subscribe to netlink events; relying on the resync timer", "kind", kind, "err", err)
		} else {
			if !first {
				// Events may have been lost while we were not listening.
				kick()
			}
			first = false
			consume(ctx, ch, done, filter, kick)
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

func consume[T any](ctx context.Context, ch chan T, done chan struct{}, filter func(T) bool, kick func()) {
	for {
		select {
		case <-ctx.Done():
			close(done)
			for range ch {
			}
			return
		case u, ok := <-ch:
			if !ok {
				close(done)
				return
			}
			if filter(u) {
				kick()
			}
		}
	}
}
