package nl

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Filter selects the rtnetlink events that should trigger a reconcile. A nil
// function means "do not subscribe to this kind of event".
type Filter struct {
	Route func(netlink.RouteUpdate) bool
	Neigh func(netlink.NeighUpdate) bool
	Link  func(netlink.LinkUpdate) bool
	Addr  func(netlink.AddrUpdate) bool
}

// eventBuffer is the kernel receive buffer asked for each subscription, so
// that programming thousands of peers does not overflow it.
const eventBuffer = 8 << 20

// resubscribeDelay is how long Watch waits before subscribing again after a
// subscription broke or could not be made.
const resubscribeDelay = 200 * time.Millisecond

// Watch subscribes, in ns, to every kind of event with a non-nil filter and
// calls kick whenever an event passes its filter. kick must not block. A
// subscription that breaks (for example because the socket overflowed and
// events were lost) is re-made after a short delay, and kick is called
// because something may have been missed. Watch returns when ctx is done and
// every goroutine it started has ended.
func Watch(ctx context.Context, ns netns.NsHandle, logger *slog.Logger, f Filter, kick func()) {
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
	wg.Wait()
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
