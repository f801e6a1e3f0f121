// Package hostgw is weft's host-gw data path, compatible with flannel's.
//
// Design note. host-gw needs no device and no encapsulation: every host is
// the gateway for its own pod subnet, so for each peer lease (subnet S,
// PublicIP P) one route "S via P dev <external interface>", tagged with
// backend.RouteProtocol, is all the kernel needs. That only works when P is
// directly reachable on the external interface's L2 segment, so a peer whose
// PublicIP lies in none of the interface's IPv4 prefixes is refused (logged
// once, listed in Status.Refused) while the others are served. NAT cannot
// work either, since peers route to the address we publish; New rejects a
// --public-ip that differs from the interface address.
//
// Routes go through the shared declarative reconciler (backend/routes): one
// dump per pass, map diff, only the difference written. Run repeats the pass
// after SetDesired, on a timer and on route, link and address events.
//
// Dual stack. On a network with EnableIPv6, a peer whose lease has an IPv6
// subnet S6 and a PublicIPv6 P6 also gets "S6 via P6 dev <external
// interface>", through a second reconciler for the IPv6 network, when we
// hold an IPv6 subnet ourselves. The same on-link rule applies, to the
// interface's global IPv6 prefixes; but a peer whose P6 is not on-link
// (while its PublicIP is) is not refused: its IPv4 route is programmed, its
// IPv6 part is skipped (logged once, like a peer without PublicIPv6) and it
// counts as programmed, because one routed IPv6 underlay must not hold back
// IPv4 readiness. Setup needs a global IPv6 address on the external
// interface (which peers route to), and New refuses a --public-ipv6 that
// differs from it, as for IPv4.
package hostgw

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/backend/routes"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/subnet"
)

// Type is the backend type name in the network config.
const Type = "host-gw"

var _ backend.Backend = (*Backend)(nil)
var _ backend.Factory = New
var _ backend.Cleanup = Cleanup

// Backend is the host-gw data path. Build it with New.
type Backend struct {
	cfg backend.Config
	log *slog.Logger
	// loop holds the desired state and Status and runs pass.
	loop *backend.Loop

	mu  sync.Mutex // guards mtu
	mtu int

	kmu sync.Mutex // guards kernel state below
	// kern is the netlink connection and the route reconciler; k is the
	// open connection from prepare on (nil after closeHandles).
	kern *routes.Kernel[kernel]
	k    kernel
	// skipped6 are the peers (by IPv4 subnet) whose IPv6 part is not
	// programmed, with the reason last logged.
	skipped6 map[netip.Prefix]string
}

// kernel is what the backend asks of netlink in its namespace besides its
// routes, which go through a routes.Table: *nl.Conn, or *nlfake.NS in
// tests.
type kernel interface {
	// LinkByIndex looks a device up (for the external interface's MTU).
	LinkByIndex(index int) (nl.Link, error)
	routes.AddrLister
	// Close ends the connection; the next pass opens a new one.
	Close()
}

var _ kernel = (*nl.Conn)(nil)

// New validates the config and returns a backend; it touches no kernel
// state.
func New(cfg backend.Config) (backend.Backend, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Network == nil {
		return nil, errors.New("host-gw: no network config")
	}
	if !cfg.Ext.Addr.Is4() {
		return nil, fmt.Errorf("host-gw: external interface %q has no IPv4 address", cfg.Ext.Name)
	}
	if cfg.Ext.PublicIP.IsValid() && cfg.Ext.PublicIP != cfg.Ext.Addr {
		return nil, fmt.Errorf("host-gw cannot work through NAT: --public-ip %s differs from interface address %s",
			cfg.Ext.PublicIP, cfg.Ext.Addr)
	}
	if cfg.Ext.PublicIPv6.IsValid() && cfg.Ext.Addr6.IsValid() && cfg.Ext.PublicIPv6 != cfg.Ext.Addr6 {
		return nil, fmt.Errorf("host-gw cannot work through NAT: --public-ipv6 %s differs from interface address %s",
			cfg.Ext.PublicIPv6, cfg.Ext.Addr6)
	}
	var network6 netip.Prefix
	if cfg.Network.EnableIPv6 {
		network6 = cfg.Network.IPv6.Network
	}
	b := &Backend{
		cfg: cfg, log: cfg.Logger.With("backend", Type),
		kern:     routes.NewKernel[kernel](cfg.Netns, cfg.Network.Network, network6),
		skipped6: map[netip.Prefix]string{},
	}
	lcfg := cfg
	lcfg.Logger = b.log
	b.loop = backend.NewLoop(lcfg, "", b.pass)
	return b, nil
}

// Setup implements backend.Backend. host-gw publishes no BackendData (nor
// BackendV6Data). On a dual-stack network it needs our PublicIPv6, the
// gateway peers route our IPv6 subnet to.
func (b *Backend) Setup(ctx context.Context) (subnet.LeaseAttrs, error) {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	if b.cfg.Network.EnableIPv6 && !b.cfg.Ext.PublicIPv6.IsValid() {
		return subnet.LeaseAttrs{}, fmt.Errorf("host-gw: dual stack needs a global IPv6 address on %s, the gateway peers route our IPv6 subnet to: add one, or name it with --public-ipv6",
			b.cfg.Ext.Name)
	}
	if err := b.prepare(); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	return subnet.LeaseAttrs{BackendType: Type}, nil
}

// MTU implements backend.Backend: the external interface's MTU.
func (b *Backend) MTU() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mtu
}

// SetDesired implements backend.Backend.
func (b *Backend) SetDesired(own subnet.Lease, peers []*subnet.Lease) { b.loop.SetDesired(own, peers) }

// Status implements backend.Backend.
func (b *Backend) Status() backend.Status { return b.loop.Status() }

// Run implements backend.Backend.
func (b *Backend) Run(ctx context.Context) error {
	b.loop.Run(ctx, func(ctx context.Context, kick func()) {
		nl.Watch(ctx, b.cfg.Netns, b.log, b.events(), kick)
	})
	b.kmu.Lock()
	b.closeHandles()
	b.kmu.Unlock()
	return nil
}

// events selects the events that mean something we own changed.
func (b *Backend) events() nl.Events {
	ext := b.cfg.Ext.Index
	ev := routes.Events(b.cfg.Network.Network, b.network6())
	// The external interface going down takes our routes with it; coming
	// back up needs them again.
	ev.Link = func(e nl.LinkEvent) bool { return e.Index == ext }
	// Addresses on the external interface decide what is on-link.
	ev.Addr = func(e nl.AddrEvent) bool { return e.LinkIndex == ext }
	return ev
}

// network6 is the IPv6 cluster network, invalid when the network is
// IPv4-only.
func (b *Backend) network6() netip.Prefix {
	if !b.cfg.Network.EnableIPv6 {
		return netip.Prefix{}
	}
	return b.cfg.Network.IPv6.Network
}

// closeHandles closes the netlink connection; prepare reopens it. Caller
// holds kmu.
func (b *Backend) closeHandles() {
	b.kern.Close()
	b.k = nil
}

// prepare connects to the namespace and reads the MTU. Caller holds kmu.
func (b *Backend) prepare() (err error) {
	if b.k, err = b.kern.Open(); err != nil {
		return fmt.Errorf("host-gw: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mtu == 0 {
		if b.mtu, err = routes.ExtMTU(b.k, b.cfg.Ext); err != nil {
			return fmt.Errorf("host-gw: %w", err)
		}
	}
	return nil
}

// pass is the backend.PassFunc: one reconcile pass under kmu.
func (b *Backend) pass(own subnet.Lease, peers []*subnet.Lease) backend.Pass {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	return b.apply(own, peers)
}

// apply makes the routes match peers. Caller holds kmu.
func (b *Backend) apply(own subnet.Lease, peers []*subnet.Lease) (p backend.Pass) {
	p.Refused, p.Failed = map[netip.Prefix]string{}, map[netip.Prefix]error{}
	p.Repairs = map[string]uint64{"route": 0}
	if err := b.prepare(); err != nil {
		p.Err = err
		return p
	}
	onLink, err := routes.OnLink(b.k, b.cfg.Ext)
	if err != nil {
		p.Err = err
		return p
	}
	// IPv6 is programmed when both ends have it: the network, our lease
	// and the peer's.
	dual := b.kern.Routes6 != nil && own.IPv6Subnet.IsValid()
	var onLink6 []netip.Prefix
	if dual {
		if onLink6, err = routes.OnLink6(b.k, b.cfg.Ext); err != nil {
			p.Err = err
			return p
		}
	}
	want := make([]nl.RouteSpec, 0, len(peers))
	var want6 []nl.RouteSpec
	has6 := map[netip.Prefix]netip.Prefix{} // peer IPv4 subnet -> its IPv6 route's destination
	skipped := map[netip.Prefix]string{}
	for i := range peers {
		l := peers[i]
		ip := l.Attrs.PublicIP
		if !contains(onLink, ip) {
			p.Refused[l.Subnet] = fmt.Sprintf("PublicIP %s is not on-link on %s (%s): host-gw needs every host on one L2 segment",
				ip, b.cfg.Ext.Name, prefixList(onLink, "IPv4"))
			continue
		}
		want = append(want, nl.RouteSpec{Dst: l.Subnet, Gw: ip, LinkIndex: b.cfg.Ext.Index})
		if !dual || !b.cfg.Network.HasIPv6(*l) || !l.Attrs.PublicIPv6.IsValid() {
			continue // an IPv4-only peer
		}
		if ip6 := l.Attrs.PublicIPv6; !contains(onLink6, ip6) {
			skipped[l.Subnet] = fmt.Sprintf("PublicIPv6 %s is not on-link on %s (%s)", ip6, b.cfg.Ext.Name, prefixList(onLink6, "global IPv6"))
			continue
		}
		want6 = append(want6, nl.RouteSpec{Dst: l.IPv6Subnet, Gw: l.Attrs.PublicIPv6, LinkIndex: b.cfg.Ext.Index})
		has6[l.Subnet] = l.IPv6Subnet.Masked()
	}
	b.logSkipped6(skipped)

	var errs []error
	res, err := b.kern.Routes.Reconcile(want)
	if err != nil {
		errs = append(errs, err)
	}
	p.Repairs["route"] += uint64(res.Repaired)
	for dst, why := range res.Refused {
		p.Refused[dst] = why
	}
	var res6 routes.Result
	if b.kern.Routes6 != nil {
		// With no IPv6 subnet of our own, want6 is empty: IPv6 routes
		// left from before are removed.
		if res6, err = b.kern.Routes6.Reconcile(want6); err != nil {
			errs = append(errs, err)
		}
		p.Repairs["route"] += uint64(res6.Repaired)
	}
	for _, w := range want {
		sn := w.Dst
		if _, bad := p.Refused[sn]; bad {
			continue
		}
		if err, failed := res.Failed[sn]; failed {
			p.Failed[sn] = err
			continue
		}
		if dst6, ok := has6[sn]; ok {
			if why, bad := res6.Refused[dst6]; bad {
				p.Refused[sn] = fmt.Sprintf("IPv6 subnet %s: %s (its IPv4 route is programmed)", dst6, why)
				continue
			}
			if err, failed := res6.Failed[dst6]; failed {
				p.Failed[sn] = err
				continue
			}
		}
		p.Programmed++
	}
	p.Err = errors.Join(errs...)
	return p
}

// logSkipped6 logs each peer whose IPv6 part is skipped once, and again
// only when the reason changes. Caller holds kmu.
func (b *Backend) logSkipped6(skipped map[netip.Prefix]string) {
	for sn, why := range skipped {
		if b.skipped6[sn] != why {
			b.log.Warn("programming only the IPv4 route of a dual-stack peer", "subnet", sn, "reason", why)
		}
	}
	b.skipped6 = skipped
}

func contains(ps []netip.Prefix, ip netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func prefixList(ps []netip.Prefix, family string) string {
	if len(ps) == 0 {
		return "no " + family + " prefixes"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}

// Cleanup removes the routes (and nexthop objects) host-gw installs, of
// both families: tagged with backend.RouteProtocol, with a gateway and
// without the onlink flag.
// Routes of the vxlan backend (onlink) and of udp (no gateway) carry the
// same tag and are left alone, because weftd runs this at every start of
// another backend.
func Cleanup(ctx context.Context, ns netns.NsHandle, logger *slog.Logger) error {
	c, err := nl.Open(ns)
	if err != nil {
		return fmt.Errorf("host-gw cleanup: %w", err)
	}
	defer c.Close()
	n, err := c.DelOwnedRoutes(backend.RouteProtocol, func(o nl.Owned) bool { return o.Gw.IsValid() && !o.OnLink })
	if err != nil {
		return fmt.Errorf("host-gw cleanup: %w", err)
	}
	if n > 0 {
		logger.Info("deleted routes", "backend", Type, "count", n)
	}
	return nil
}
