package main

// The blackhole route (--ip-blackhole-route). Traffic to an address of our
// own subnet that no pod holds would otherwise follow the default route
// out of the host, when no bridge covers the subnet (a CNI setup without
// one, such as Canal). A blackhole route for the subnet drops it here.
//
// It is tagged with its own route protocol, blackholeProtocol, not with
// backend.RouteProtocol: the backends' route reconcilers own every route
// tagged 87 inside the network and delete the ones no peer explains, which
// our own subnet never is. Its metric is blackholeMetric, not 0, so that
// it never replaces or conflicts with the bridge's connected route for the
// same subnet (metric 0), which keeps precedence while it exists.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/cmd/weftd/node"
)

const (
	// blackholeProtocol tags weft's blackhole route (rtm_protocol), so
	// that weftd finds it again, and `ip route show proto 88` shows it.
	blackholeProtocol = 88
	// blackholeMetric keeps the route behind any connected route.
	blackholeMetric = 1024
)

// blackhole keeps one blackhole route, for our subnet, in the main table
// of one namespace, and removes weft's blackhole routes for any other
// destination (a subnet we held before).
type blackhole struct {
	h   *netlink.Handle
	log *slog.Logger

	mu      sync.Mutex
	own     netip.Prefix
	repairs uint64
}

var _ node.Rules = (*blackhole)(nil)

func newBlackhole(h *netlink.Handle, log *slog.Logger) *blackhole {
	return &blackhole{h: h, log: log}
}

// Set installs the route for own (network is not used).
func (b *blackhole) Set(_, own netip.Prefix) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.own = own.Masked()
	_, err := b.ensure()
	return err
}

// Repairs counts the times the route had to be put back after Set.
func (b *blackhole) Repairs() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.repairs
}

// Run puts the route back every interval until ctx ends.
func (b *blackhole) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	defer func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.h.Close()
		b.own = netip.Prefix{} // a late Set does nothing
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		b.mu.Lock()
		added, err := b.ensure()
		if added {
			b.repairs++
			b.log.Warn("the blackhole route for our subnet was missing; restored it", "subnet", b.own)
		}
		b.mu.Unlock()
		if err != nil {
			b.log.Warn("blackhole route; retrying", "err", err)
		}
	}
}

// ensure makes weft's blackhole routes exactly {own}; it reports whether
// it had to add the route. Caller holds mu. Before Set it does nothing.
func (b *blackhole) ensure() (added bool, err error) {
	if !b.own.IsValid() {
		return false, nil
	}
	rs, err := listBlackholes(b.h)
	if err != nil {
		return false, err
	}
	have := false
	var errs []error
	for i := range rs {
		r := &rs[i]
		if r.Dst != nil && r.Dst.String() == b.own.String() && r.Priority == blackholeMetric {
			have = true
			continue
		}
		if err := b.h.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete old blackhole route %s: %w", r.Dst, err))
		}
	}
	if !have {
		if err := b.h.RouteAdd(blackholeRoute(b.own)); err != nil && !errors.Is(err, unix.EEXIST) {
			return false, errors.Join(append(errs, fmt.Errorf("add blackhole route %s: %w", b.own, err))...)
		}
	}
	return !have, errors.Join(errs...)
}

func blackholeRoute(dst netip.Prefix) *netlink.Route {
	return &netlink.Route{
		Family:   netlink.FAMILY_V4,
		Dst:      &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)},
		Type:     unix.RTN_BLACKHOLE,
		Protocol: blackholeProtocol,
		Priority: blackholeMetric,
		Table:    unix.RT_TABLE_MAIN,
	}
}

// listBlackholes returns weft's blackhole routes in the main table.
func listBlackholes(h *netlink.Handle) ([]netlink.Route, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: blackholeProtocol, Type: unix.RTN_BLACKHOLE}
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TYPE)
	if err != nil {
		return nil, fmt.Errorf("list blackhole routes: %w", err)
	}
	return rs, nil
}

// removeBlackholes deletes weft's blackhole routes: weftd runs without
// --ip-blackhole-route.
func removeBlackholes(h *netlink.Handle) error {
	rs, err := listBlackholes(h)
	if err != nil {
		return err
	}
	var errs []error
	for i := range rs {
		if err := h.RouteDel(&rs[i]); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete blackhole route %s: %w", rs[i].Dst, err))
		}
	}
	return errors.Join(errs...)
}

// hostRules are several node.Rules edges set together (the masquerade and
// forward rules, and the blackhole route).
type hostRules []node.Rules

// Set sets every edge, and returns their errors joined.
func (rs hostRules) Set(network, own netip.Prefix) error {
	var errs []error
	for _, r := range rs {
		errs = append(errs, r.Set(network, own))
	}
	return errors.Join(errs...)
}

// Set6 sets the edges that keep IPv6 rules (node.Rules6), and returns
// their errors joined.
func (rs hostRules) Set6(network6, own6 netip.Prefix) error {
	var errs []error
	for _, r := range rs {
		if r6, ok := r.(node.Rules6); ok {
			errs = append(errs, r6.Set6(network6, own6))
		}
	}
	return errors.Join(errs...)
}

// edge returns rs as the core's Rules edge: nil when empty (no host rules).
func (rs hostRules) edge() node.Rules {
	if len(rs) == 0 {
		return nil
	}
	return rs
}
