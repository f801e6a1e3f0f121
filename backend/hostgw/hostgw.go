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
	b := &Backend{
		cfg: cfg, log: cfg.Logger.With("backend", Type),
		kern: routes.NewKernel[kernel](cfg.Netns, cfg.Network.Network),
	}
	lcfg := cfg
	lcfg.Logger = b.log
	b.loop = backend.NewLoop(lcfg, "", b.pass)
	return b, nil
}

// Setup implements backend.Backend. host-gw publishes no BackendData.
func (b *Backend) Setup(ctx context.Context) (subnet.LeaseAttrs, error) {
	b.kmu.Lock()
	defer b.kmu.Unlock()
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
func (b *Backend) SetDesired(own subnet.Lease, peers []subnet.Lease) { b.loop.SetDesired(own, peers) }

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
	ev := routes.Events(b.cfg.Network.Network)
	// The external interface going down takes our routes with it; coming
	// back up needs them again.
	ev.Link = func(e nl.LinkEvent) bool { return e.Index == ext }
	// Addresses on the external interface decide what is on-link.
	ev.Addr = func(e nl.AddrEvent) bool { return e.LinkIndex == ext }
	return ev
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
func (b *Backend) pass(own subnet.Lease, peers []subnet.Lease) backend.Pass {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	programmed, refused, res, err := b.apply(peers)
	return backend.Pass{Programmed: programmed, Refused: refused, Failed: res.Failed, Repairs: map[string]uint64{"route": uint64(res.Repaired)}, Err: err}
}

// apply makes the routes match peers. Caller holds kmu.
func (b *Backend) apply(peers []subnet.Lease) (programmed int, refused map[netip.Prefix]string, res routes.Result, err error) {
	refused = map[netip.Prefix]string{}
	if err := b.prepare(); err != nil {
		return 0, refused, res, err
	}
	onLink, err := routes.OnLink(b.k, b.cfg.Ext)
	if err != nil {
		return 0, refused, res, err
	}
	want := make([]nl.RouteSpec, 0, len(peers))
	for _, l := range peers {
		ip := l.Attrs.PublicIP
		direct := false
		for _, p := range onLink {
			if p.Contains(ip) {
				direct = true
				break
			}
		}
		if !direct {
			refused[l.Subnet] = fmt.Sprintf("PublicIP %s is not on-link on %s (%s): host-gw needs every host on one L2 segment",
				ip, b.cfg.Ext.Name, prefixList(onLink))
			continue
		}
		want = append(want, nl.RouteSpec{Dst: l.Subnet, Gw: ip, LinkIndex: b.cfg.Ext.Index})
	}
	res, err = b.kern.Routes.Reconcile(want)
	for dst, why := range res.Refused {
		refused[dst] = why
	}
	for _, w := range want {
		if _, bad := res.Refused[w.Dst]; bad {
			continue
		}
		if _, failed := res.Failed[w.Dst]; failed {
			continue
		}
		programmed++
	}
	return programmed, refused, res, err
}

func prefixList(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "no IPv4 prefixes"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}

// Cleanup removes the routes (and nexthop objects) host-gw installs: tagged
// with backend.RouteProtocol, with a gateway and without the onlink flag.
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
