package routes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

// ErrUnderlayRoute is wrapped by DeviceNet.Ensure's error when it did not
// route the cluster network into the device because the route would take
// the host's own traffic off its underlay.
var ErrUnderlayRoute = errors.New("the cluster network route would cover the host's underlay")

// DeviceKernel is what DeviceNet asks of netlink: *nl.Conn, or a fake.
type DeviceKernel interface {
	// AddrList lists the addresses of family on a device (0: every one).
	AddrList(linkIndex int, family nl.Family) ([]nl.Addr, error)
	// AddAddr adds an address; DelAddr removes one as listed.
	AddAddr(linkIndex int, p netip.Prefix) error
	DelAddr(a nl.Addr) error
	// RouteList lists the routes of family in table into out.
	RouteList(family nl.Family, table uint32, keep func(*nl.Route) bool, out []nl.Route) ([]nl.Route, error)
	// ReplaceRoute installs one route tagged with protocol; DelRoute
	// removes one as listed.
	ReplaceRoute(r nl.RouteSpec, protocol uint8) error
	DelRoute(r *nl.Route) error
}

// DeviceNet keeps what a backend whose device carries the whole cluster
// network holds on that device (udp's weft0, wireguard's weft-wg): the
// lease subnet's network address /32 as its only address, and one route
// for the cluster network into it, scope link, tagged with
// backend.RouteProtocol. The route is refused, and removed if an earlier
// pass installed it, when it would cover the host's underlay
// (UnderlayConflict; the device itself and our own subnet, the pod
// bridge's, are not underlay).
type DeviceNet struct {
	// Name is the device's name, for messages.
	Name string
	// Logger, if set, hears when a refused route is installed again.
	Logger *slog.Logger

	addrInstalled  netip.Prefix
	routeInstalled bool
	refused        string
	routeBuf       []nl.Route
}

// Refused is why the last Ensure did not route the network into the
// device, "" when it did.
func (d *DeviceNet) Refused() string { return d.refused }

// Ensure makes the device idx hold own's network address /32 and nothing
// else, and the route for network into it. A repaired address or route
// (one an earlier call installed that had gone) is counted in repairs
// under "addr" or "route". The error wraps ErrUnderlayRoute when the route
// is refused; when a refused route is installed again, Logger hears of it.
func (d *DeviceNet) Ensure(k DeviceKernel, idx int, network, own netip.Prefix, repairs map[string]uint64) error {
	wasRefused, err := d.ensure(k, idx, network, own, repairs)
	if err == nil && wasRefused != "" && d.Logger != nil {
		d.Logger.Info("the cluster network route no longer covers the underlay; routing it again", "device", d.Name)
	}
	return err
}

func (d *DeviceNet) ensure(k DeviceKernel, idx int, network, own netip.Prefix, repairs map[string]uint64) (wasRefused string, err error) {
	want := netip.PrefixFrom(own.Masked().Addr(), 32)
	// Every address of the namespace is listed: the others are the
	// underlay the route must leave alone.
	as, err := k.AddrList(0, nl.FamilyV4)
	if err != nil {
		return d.refused, fmt.Errorf("list addresses: %w", err)
	}
	have := false
	for _, a := range as {
		if a.LinkIndex != idx {
			continue
		}
		if a.Prefix == want && !a.Peer.IsValid() {
			have = true
			continue
		}
		if err := k.DelAddr(a); err != nil {
			return d.refused, fmt.Errorf("remove stale address %s from %s: %w", a.Prefix, d.Name, err)
		}
	}
	if !have {
		if err := k.AddAddr(idx, want); err != nil && !errors.Is(err, unix.EEXIST) {
			return d.refused, fmt.Errorf("add address %s to %s: %w", want, d.Name, err)
		}
		if d.addrInstalled == want {
			repairs["addr"]++
		}
	}
	d.addrInstalled = want

	nw := network.Masked()
	rs, err := k.RouteList(nl.FamilyV4, unix.RT_TABLE_MAIN, nil, d.routeBuf)
	d.routeBuf = rs
	if err != nil {
		return d.refused, fmt.Errorf("list routes: %w", err)
	}
	wasRefused = d.refused
	d.refused = deviceUnderlayConflict(nw, own, idx, rs, as)
	haveRoute := false
	for i := range rs {
		r := &rs[i]
		if r.LinkIndex != idx || r.Protocol != backend.RouteProtocol {
			continue
		}
		if r.Dst == nw && d.refused == "" && deviceRouteMatches(r) {
			haveRoute = true
			continue
		}
		if err := k.DelRoute(r); err != nil && !errors.Is(err, unix.ESRCH) {
			return wasRefused, fmt.Errorf("remove stale route %s: %w", r.Dst, err)
		}
	}
	if d.refused != "" {
		d.routeInstalled = false
		return wasRefused, fmt.Errorf("%w: %s; no peer is reachable until that changes", ErrUnderlayRoute, d.refused)
	}
	if !haveRoute {
		if err := k.ReplaceRoute(nl.RouteSpec{Dst: nw, LinkIndex: idx}, backend.RouteProtocol); err != nil {
			return wasRefused, fmt.Errorf("add route %s dev %s: %w", nw, d.Name, err)
		}
		if d.routeInstalled {
			repairs["route"]++
		}
	}
	d.routeInstalled = true
	return wasRefused, nil
}

// deviceRouteMatches reports whether r, a route of ours into the device to
// the network, is the route Ensure installs: a device route of scope link,
// metric 0, without a gateway.
func deviceRouteMatches(r *nl.Route) bool {
	return !r.Gw.IsValid() && r.Priority == 0 && !r.MultiPath && r.Scope == unix.RT_SCOPE_LINK &&
		(r.Type == 0 || r.Type == unix.RTN_UNICAST)
}

// deviceUnderlayConflict applies UnderlayConflict to the route for nw out
// of the device devIndex, given the main table rs and the addresses addrs
// of the namespace, leaving out the device and our own subnet own (the pod
// bridge's routes and addresses). It returns "" if the route may be
// installed.
func deviceUnderlayConflict(nw, own netip.Prefix, devIndex int, rs []nl.Route, addrs []nl.Addr) string {
	ours := func(p netip.Prefix) bool {
		return own.IsValid() && p.IsValid() && p.Bits() >= own.Bits() && own.Contains(p.Addr())
	}
	under := make([]nl.Route, 0, len(rs))
	for i := range rs {
		if r := &rs[i]; r.LinkIndex != devIndex && !ours(r.Dst) {
			under = append(under, *r)
		}
	}
	var as []netip.Addr
	for _, a := range addrs {
		ip := a.Prefix.Addr().Unmap()
		if !ip.IsValid() || a.LinkIndex == devIndex || ours(netip.PrefixFrom(ip, ip.BitLen())) {
			continue
		}
		as = append(as, ip)
	}
	return UnderlayConflict(nw, under, as)
}

// RemoveDevice deletes the device name in ns and every route tagged with
// backend.RouteProtocol that points into it: the Cleanup of a backend with
// one device. what names the backend in the log. It succeeds when there is
// nothing to remove.
func RemoveDevice(ctx context.Context, ns netns.NsHandle, name, what string, logger *slog.Logger) error {
	c, err := nl.Open(ns)
	if err != nil {
		return fmt.Errorf("%s cleanup: %w", what, err)
	}
	defer c.Close()
	link, err := c.LinkByName(name)
	if errors.Is(err, nl.ErrLinkNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if _, err := c.DelOwnedRoutes(backend.RouteProtocol, func(o nl.Owned) bool { return o.LinkIndex == link.Index }); err != nil {
		return fmt.Errorf("remove routes via %s: %w", name, err)
	}
	if err := c.DelLink(link.Index); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	if logger != nil {
		logger.Info("removed "+what+" backend device", "device", name)
	}
	return nil
}
