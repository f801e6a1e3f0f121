// Package vxlan is weft's VXLAN data path, wire-compatible with flannel's.
//
// Design note. One VXLAN device, weft.<VNI>, carries pod traffic between
// hosts. Learning is off: weft programs everything the kernel needs from the
// leases, so no flooding and no multicast group are involved. For each peer
// lease (subnet S, VtepMAC M, PublicIP P) three kernel objects are owned:
//
//   - a permanent neighbour entry on weft.<VNI>: S.network -> M, so that the
//     kernel never ARPs for the peer's VTEP;
//   - a bridge FDB entry on weft.<VNI> (self, permanent): M -> P, which tells
//     the device where to send frames for M;
//   - a route S via S.network dev weft.<VNI> onlink, tagged with
//     backend.RouteProtocol, installed through the shared route reconciler.
//
// With DirectRouting, a peer whose PublicIP lies in a prefix configured on
// the external interface gets a plain route S via P on that interface and
// no neighbour or FDB entry: no encapsulation is needed on one L2 segment.
// That route carries the (redundant) onlink flag, which tells it apart from
// a host-gw route when either backend's Cleanup runs.
//
// The device holds our lease's network address /32 and keeps its MAC across
// restarts (adopted from an existing matching device, else taken from the
// previous lease), so peers' entries stay valid. Every reconcile pass dumps
// each object kind once, indexes the dump in maps and fixes only the
// difference, so a pass costs O(peers) and an idle pass writes nothing.
// Writes go to the kernel in batches (many requests per sendmsg), and routes
// point at per-peer nexthop objects (see internal/nl/table.go for why), which
// keeps programming 5000 peers well under a second.
//
// Run reconciles after SetDesired, every ResyncInterval, and on rtnetlink
// events that show drift: one of our routes, neighbours, FDB entries,
// addresses or nexthop objects deleted, the device deleted or down. Objects
// that had been installed before and had to be put back are counted in
// Status.Repairs; first installs are not.
package vxlan

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/backend/routes"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/subnet"
)

// Type is the backend type name in the network config.
const Type = "vxlan"

// DevicePrefix starts the name of every device this backend creates.
const DevicePrefix = "weft."

var _ backend.Backend = (*Backend)(nil)
var _ backend.Factory = New
var _ backend.Cleanup = Cleanup

// Backend is the vxlan data path. Build it with New.
type Backend struct {
	cfg  backend.Config
	opts options
	log  *slog.Logger
	name string
	// loop holds the desired state and Status and runs pass.
	loop *backend.Loop

	mtu       atomic.Int64
	linkIndex atomic.Int64

	// kernel state, guarded by kmu: only Setup and pass touch it.
	kmu sync.Mutex
	// kern is the netlink connection and the route reconciler; k is the
	// open connection from prepare on (nil after closeHandles).
	kern          *routes.Kernel[kernel]
	k             kernel
	mac           net.HardwareAddr
	deviceUp      bool                             // the device was fully set up before
	neighs        *peerEntries[netip.Addr, string] // peer VTEP address -> MAC
	fdb           *peerEntries[string, netip.Addr] // MAC -> PublicIP
	installedAddr netip.Prefix
}

// kernel is what the backend asks of netlink in its namespace: *nl.Conn,
// or *nlfake.NS in tests. Routes go through a routes.Table instead.
type kernel interface {
	devices
	addrs
	neighbours
	// Close ends the connection; the next pass opens a new one.
	Close()
}

// devices finds, creates and fixes weft.<VNI> and reads the external
// interface.
type devices interface {
	// LinkByName and LinkByIndex look a device up; a missing one is
	// nl.ErrLinkNotFound.
	LinkByName(name string) (nl.Link, error)
	LinkByIndex(index int) (nl.Link, error)
	// LinkList lists every device.
	LinkList() ([]nl.Link, error)
	// AddLink creates a VXLAN device, down.
	AddLink(l nl.Link) error
	// DelLink deletes a device and everything on it.
	DelLink(index int) error
	// SetLinkUp, SetLinkMTU and SetLinkHardwareAddr change one attribute.
	SetLinkUp(index int) error
	SetLinkMTU(index, mtu int) error
	SetLinkHardwareAddr(index int, mac net.HardwareAddr) error
}

// addrs reads and sets the device's address.
type addrs interface {
	// AddrList lists the addresses of family on a device.
	AddrList(linkIndex int, family nl.Family) ([]nl.Addr, error)
	// AddAddr adds an address; DelAddr removes one as listed.
	AddAddr(linkIndex int, p netip.Prefix) error
	DelAddr(a nl.Addr) error
}

// neighbours programs the device's neighbour and FDB entries.
type neighbours interface {
	// NeighWalk calls fn with each entry of family on a device while it
	// is read, after start, which runs again before a repeated read.
	NeighWalk(linkIndex int, family nl.Family, start func(), fn func(n *nl.Neigh)) error
	// SetNeighs creates or replaces entries, one error per entry.
	SetNeighs(specs []nl.NeighSpec) []error
	// DelNeigh deletes an entry as listed.
	DelNeigh(n *nl.Neigh) error
}

var _ kernel = (*nl.Conn)(nil)

// New validates the options and returns a backend; it touches no kernel
// state.
func New(cfg backend.Config) (backend.Backend, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Network == nil {
		return nil, errors.New("vxlan: no network config")
	}
	o, err := parseOptions(cfg.Options)
	if err != nil {
		return nil, err
	}
	if !cfg.Ext.Addr.Is4() {
		return nil, fmt.Errorf("vxlan: external interface %q has no IPv4 address", cfg.Ext.Name)
	}
	b := &Backend{
		cfg:    cfg,
		opts:   o,
		name:   DevicePrefix + strconv.Itoa(o.VNI),
		kern:   routes.NewKernel[kernel](cfg.Netns, cfg.Network.Network),
		neighs: neighEntries(),
		fdb:    fdbEntries(),
	}
	b.log = cfg.Logger.With("backend", Type, "device", b.name)
	if len(o.Unknown) > 0 {
		b.log.Warn("ignoring unknown vxlan backend options", "options", o.Unknown)
	}
	lcfg := cfg
	lcfg.Logger = b.log
	b.loop = backend.NewLoop(lcfg, b.name, b.pass)
	return b, nil
}

// Setup implements backend.Backend: it creates or adopts weft.<VNI>.
func (b *Backend) Setup(ctx context.Context) (subnet.LeaseAttrs, error) {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	if err := b.prepare(); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	if _, err := b.ensureDevice(); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	data, err := json.Marshal(subnet.VXLANData{VNI: b.opts.VNI, VtepMAC: b.mac.String()})
	if err != nil {
		return subnet.LeaseAttrs{}, err
	}
	return subnet.LeaseAttrs{BackendType: Type, BackendData: data}, nil
}

// MTU implements backend.Backend.
func (b *Backend) MTU() int { return int(b.mtu.Load()) }

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

// events selects the events that mean something we own changed: the
// shared route events, plus our neighbour entries, device and addresses.
func (b *Backend) events() nl.Events {
	ext := b.cfg.Ext.Index
	ev := routes.Events(b.cfg.Network.Network)
	ev.Neigh = func(e nl.NeighEvent) bool {
		if int64(e.LinkIndex) != b.linkIndex.Load() {
			return false
		}
		return e.Deleted || e.State&unix.NUD_PERMANENT == 0
	}
	ev.Link = func(e nl.LinkEvent) bool {
		if e.Index == ext {
			return true // going down drops DirectRouting routes silently
		}
		if e.Name != b.name && int64(e.Index) != b.linkIndex.Load() {
			return false
		}
		return e.Deleted || !e.Up || int64(e.MTU) != b.mtu.Load()
	}
	ev.Addr = func(e nl.AddrEvent) bool {
		if e.LinkIndex == ext {
			return b.opts.DirectRouting // what is on-link may have changed
		}
		return e.Deleted && int64(e.LinkIndex) == b.linkIndex.Load()
	}
	return ev
}

// closeHandles closes the netlink connection; prepare reopens it. Caller
// holds kmu.
func (b *Backend) closeHandles() {
	b.kern.Close()
	b.k = nil
}

// prepare connects to the namespace and works out the MTU. Caller holds
// kmu.
func (b *Backend) prepare() (err error) {
	if b.k, err = b.kern.Open(); err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	if b.mtu.Load() == 0 {
		mtu := b.opts.MTU
		if mtu == 0 {
			ext, err := routes.ExtMTU(b.k, b.cfg.Ext)
			if err != nil {
				return fmt.Errorf("vxlan: %w", err)
			}
			mtu = ext - overhead
		}
		b.mtu.Store(int64(mtu))
	}
	return nil
}

func (b *Backend) deviceMatches(vx *nl.VXLAN) bool {
	return vx != nil && vx.VNI == b.opts.VNI && vx.Port == b.opts.Port && !vx.Learning &&
		vx.GBP == b.opts.GBP && vx.VtepDevIndex == b.cfg.Ext.Index &&
		vx.SrcAddr == b.cfg.Ext.Addr.Unmap() &&
		(!vx.Group.IsValid() || vx.Group.IsUnspecified())
}

// adoptable reports whether m may be our VtepMAC: usable, and not
// published by another host's lease (peers would keep the older lease and
// refuse ours).
func (b *Backend) adoptable(m net.HardwareAddr) bool {
	if !usableMAC(m) {
		return false
	}
	for _, a := range b.cfg.PeerAttrs {
		if a.BackendType != Type || a.PublicIP == b.cfg.Ext.PublicIP {
			continue
		}
		if _, pm, err := subnet.ParseVXLANData(a.BackendData); err == nil && bytes.Equal(pm, m) {
			b.log.Warn("not adopting a VtepMAC that another host's lease carries; picking a fresh one", "mac", m, "lease-public-ip", a.PublicIP)
			return false
		}
	}
	return true
}

func usableMAC(m net.HardwareAddr) bool {
	return len(m) == 6 && m[0]&1 == 0 && !bytes.Equal(m, make([]byte, 6))
}

func randomMAC() (net.HardwareAddr, error) {
	m := make(net.HardwareAddr, 6)
	if _, err := rand.Read(m); err != nil {
		return nil, fmt.Errorf("random MAC: %w", err)
	}
	m[0] = m[0]&^1 | 2 // unicast, locally administered
	return m, nil
}

// ensureDevice makes weft.<VNI> exist with the wanted attributes, MTU, MAC
// and up. It reports whether it had to fix a device that had been fully set
// up before (a repair). Caller holds kmu.
func (b *Backend) ensureDevice() (repaired bool, err error) {
	mtu := int(b.mtu.Load())
	l, err := b.k.LinkByName(b.name)
	switch {
	case err == nil:
		if b.deviceMatches(l.VXLAN) {
			if b.mac == nil {
				if b.adoptable(l.HardwareAddr) {
					b.mac = l.HardwareAddr
				} else if b.mac, err = b.pickMAC(); err != nil {
					return false, err
				}
			}
			if !bytes.Equal(l.HardwareAddr, b.mac) {
				repaired = true
				if err := b.k.SetLinkHardwareAddr(l.Index, b.mac); err != nil {
					return false, fmt.Errorf("set MAC of %s: %w", b.name, err)
				}
			}
			if l.MTU != mtu {
				repaired = true
				if err := b.k.SetLinkMTU(l.Index, mtu); err != nil {
					return false, fmt.Errorf("set MTU of %s: %w", b.name, err)
				}
			}
			if !l.Up {
				repaired = true
				if err := b.k.SetLinkUp(l.Index); err != nil {
					return false, fmt.Errorf("set %s up: %w", b.name, err)
				}
			}
			b.linkIndex.Store(int64(l.Index))
			wasUp := b.deviceUp
			b.deviceUp = true
			return repaired && wasUp, nil
		}
		// Wrong kind or attributes: recreate, keeping its MAC if we have
		// none yet.
		if b.mac == nil && l.VXLAN != nil && b.adoptable(l.HardwareAddr) {
			b.mac = l.HardwareAddr
		}
		b.log.Info("recreating device whose attributes do not match", "type", l.Kind)
		if err := b.k.DelLink(l.Index); err != nil {
			return false, fmt.Errorf("delete mismatched %s: %w", b.name, err)
		}
	case errors.Is(err, nl.ErrLinkNotFound):
	default:
		return false, fmt.Errorf("look up %s: %w", b.name, err)
	}

	if b.mac == nil {
		if b.mac, err = b.pickMAC(); err != nil {
			return false, err
		}
	}
	if err := b.removeFlannelDevice(); err != nil {
		return false, err
	}
	if err := b.createDevice(mtu); err != nil {
		return false, err
	}
	wasUp := b.deviceUp
	b.deviceUp = true
	return wasUp, nil
}

// pickMAC returns the previous lease's VtepMAC when it parses, else a random
// locally administered unicast MAC.
func (b *Backend) pickMAC() (net.HardwareAddr, error) {
	if b.cfg.Previous.BackendType == Type {
		if _, mac, err := subnet.ParseVXLANData(b.cfg.Previous.BackendData); err == nil && b.adoptable(mac) {
			return mac, nil
		}
	}
	return randomMAC()
}

func (b *Backend) newLink(mtu int) nl.Link {
	return nl.Link{
		Name:         b.name,
		MTU:          mtu,
		HardwareAddr: b.mac,
		VXLAN: &nl.VXLAN{
			VNI:          b.opts.VNI,
			VtepDevIndex: b.cfg.Ext.Index,
			SrcAddr:      b.cfg.Ext.Addr,
			Port:         b.opts.Port,
			Learning:     false,
			GBP:          b.opts.GBP,
		},
	}
}

func (b *Backend) createDevice(mtu int) error {
	err := b.k.AddLink(b.newLink(mtu))
	if errors.Is(err, unix.EADDRINUSE) || errors.Is(err, unix.EEXIST) {
		// Another VXLAN device holds this VNI and port.
		if derr := b.removeConflicting(); derr != nil {
			return errors.Join(fmt.Errorf("create %s: %w", b.name, err), derr)
		}
		err = b.k.AddLink(b.newLink(mtu))
	}
	if err != nil {
		return fmt.Errorf("create %s (VNI %d, port %d): %w", b.name, b.opts.VNI, b.opts.Port, err)
	}
	l, err := b.k.LinkByName(b.name)
	if err != nil {
		return fmt.Errorf("look up new %s: %w", b.name, err)
	}
	if !bytes.Equal(l.HardwareAddr, b.mac) {
		if err := b.k.SetLinkHardwareAddr(l.Index, b.mac); err != nil {
			return fmt.Errorf("set MAC of %s: %w", b.name, err)
		}
	}
	if err := b.k.SetLinkUp(l.Index); err != nil {
		return fmt.Errorf("set %s up: %w", b.name, err)
	}
	b.linkIndex.Store(int64(l.Index))
	b.log.Info("created device", "vni", b.opts.VNI, "port", b.opts.Port, "mac", b.mac.String(), "mtu", mtu)
	return nil
}

// removeFlannelDevice deletes flanneld's flannel.<VNI> when it uses our VNI
// and port: its socket would make our device fail with "address in use".
func (b *Backend) removeFlannelDevice() error {
	name := "flannel." + strconv.Itoa(b.opts.VNI)
	l, err := b.k.LinkByName(name)
	if err != nil {
		return nil
	}
	if vx := l.VXLAN; vx == nil || vx.VNI != b.opts.VNI || vx.Port != b.opts.Port {
		return nil
	}
	b.log.Info("deleting flanneld's device to take over its VNI and port (in-place migration)", "old", name)
	if err := b.k.DelLink(l.Index); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// removeConflicting deletes a flannel.* or weft.* VXLAN device with our
// VNI and port, whatever its name.
func (b *Backend) removeConflicting() error {
	links, err := b.k.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if vx := l.VXLAN; vx == nil || vx.VNI != b.opts.VNI || vx.Port != b.opts.Port {
			continue
		}
		if !strings.HasPrefix(l.Name, "flannel.") && !strings.HasPrefix(l.Name, DevicePrefix) {
			continue
		}
		b.log.Info("deleting conflicting VXLAN device", "old", l.Name)
		if err := b.k.DelLink(l.Index); err != nil {
			return fmt.Errorf("delete %s: %w", l.Name, err)
		}
	}
	return nil
}

// Cleanup deletes every weft.* VXLAN device (the kernel drops its
// neighbour and FDB entries, routes and nexthop objects with it) and the
// DirectRouting routes: those tagged with backend.RouteProtocol that have a
// gateway and the onlink flag, a shape only this backend installs. Other
// routes tagged with backend.RouteProtocol belong to other backends and are
// left alone, because weftd runs this at every start of another backend.
func Cleanup(ctx context.Context, ns netns.NsHandle, logger *slog.Logger) error {
	c, err := nl.Open(ns)
	if err != nil {
		return fmt.Errorf("vxlan cleanup: %w", err)
	}
	defer c.Close()
	links, err := c.LinkList()
	if err != nil {
		return fmt.Errorf("vxlan cleanup: list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		if l.VXLAN == nil || !strings.HasPrefix(l.Name, DevicePrefix) {
			continue
		}
		if err := c.DelLink(l.Index); err != nil {
			errs = append(errs, fmt.Errorf("vxlan cleanup: delete %s: %w", l.Name, err))
			continue
		}
		logger.Info("deleted device", "backend", Type, "device", l.Name)
	}
	n, err := c.DelOwnedRoutes(backend.RouteProtocol, func(o nl.Owned) bool { return o.Gw.IsValid() && o.OnLink })
	if err != nil {
		errs = append(errs, fmt.Errorf("vxlan cleanup: %w", err))
	}
	if n > 0 {
		logger.Info("deleted routes", "backend", Type, "count", n)
	}
	return errors.Join(errs...)
}
