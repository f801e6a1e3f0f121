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
// Writes go to the kernel in batches (many requests per sendmsg), and IPv4
// routes point at per-peer nexthop objects (see internal/nl/table.go for
// why), which keeps programming 5000 peers well under a second. (IPv6 routes
// are plain routes, one request each.)
//
// Dual stack. On a network with EnableIPv6 a second device, weft-v6.<VNI>
// (same VNI and port: the kernel keeps IPv4 and IPv6 VXLAN sockets apart),
// carries IPv6 pod traffic over the IPv6 underlay, with the external
// interface's IPv6 address (--public-ipv6 when it has none; Setup fails
// without either) as its local VTEP. It has its own MAC, published as BackendV6Data
// {"VNI":<n>,"VtepMAC":<mac>} and kept across restarts like the IPv4 one,
// holds our IPv6 subnet's network address /128, and its MTU leaves room for
// the 40-byte IPv6 outer header: the underlay MTU - 70 (or the MTU option
// - 20). Pods keep the IPv4 device's MTU (as flanneld's do), so the host
// answers larger IPv6 packets with ICMPv6 Packet Too Big. A peer whose
// lease has an IPv6 subnet S6, a PublicIPv6 P6 and BackendV6Data (MAC M6)
// gets the same three objects on weft-v6.<VNI>: S6.network -> M6 (an NDP
// entry), M6 -> P6 (FDB), and S6 via S6.network onlink; with DirectRouting
// and P6 on-link, a route S6 via P6 on the underlay instead. A peer without
// PublicIPv6 or BackendV6Data, or a host without an IPv6 subnet of its own,
// is served over IPv4 only. A peer counts as programmed when every family
// it shares with us is.
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

// DevicePrefix starts the name of every IPv4 device this backend creates;
// DevicePrefix6 that of every IPv6 one.
const (
	DevicePrefix  = "weft."
	DevicePrefix6 = "weft-v6."
)

// flanneld's device name prefixes, taken over in place.
const (
	flannelPrefix  = "flannel."
	flannelPrefix6 = "flannel-v6."
)

var _ backend.Backend = (*Backend)(nil)
var _ backend.Factory = New
var _ backend.Cleanup = Cleanup

// Backend is the vxlan data path. Build it with New.
type Backend struct {
	cfg  backend.Config
	opts options
	log  *slog.Logger
	// loop holds the desired state and Status and runs pass.
	loop *backend.Loop

	// v4 is weft.<VNI>; v6 is weft-v6.<VNI> on a dual-stack network, nil
	// otherwise.
	v4, v6 *vtep

	// kernel state, guarded by kmu: only Setup and pass touch it.
	kmu sync.Mutex
	// kern is the netlink connection and the route reconcilers; k is the
	// open connection from prepare on (nil after closeHandles).
	kern *routes.Kernel[kernel]
	k    kernel
}

// vtep is one VXLAN device and what the backend keeps on it for its peers,
// in one address family. Its kernel state is guarded by Backend.kmu.
type vtep struct {
	b      *Backend
	family nl.Family // of the underlay and of the overlay addresses
	name   string    // weft.<VNI> or weft-v6.<VNI>
	// prefix starts the names of our devices of this family, flannel
	// those of flanneld's.
	prefix, flannel string
	// local is the local VTEP address on the underlay.
	local netip.Addr

	mtu       atomic.Int64
	linkIndex atomic.Int64

	mac           net.HardwareAddr
	deviceUp      bool         // the device was fully set up before
	neighs        *peerEntries // peer VTEP address -> MAC
	fdb           *peerEntries // MAC -> peer PublicIP(v6)
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
	b := &Backend{cfg: cfg, opts: o}
	b.v4 = b.newVTEP(nl.FamilyV4, DevicePrefix, flannelPrefix, cfg.Ext.Addr)
	var network6 netip.Prefix
	if cfg.Network.EnableIPv6 {
		network6 = cfg.Network.IPv6.Network
		// The interface's own address, as for IPv4; --public-ipv6 alone
		// when the interface has none (Setup requires one of them).
		local := cfg.Ext.Addr6
		if !local.IsValid() {
			local = cfg.Ext.PublicIPv6
		}
		b.v6 = b.newVTEP(nl.FamilyV6, DevicePrefix6, flannelPrefix6, local)
	}
	b.kern = routes.NewKernel[kernel](cfg.Netns, cfg.Network.Network, network6)
	b.log = cfg.Logger.With("backend", Type, "device", b.v4.name)
	if len(o.Unknown) > 0 {
		b.log.Warn("ignoring unknown vxlan backend options", "options", o.Unknown)
	}
	lcfg := cfg
	lcfg.Logger = b.log
	b.loop = backend.NewLoop(lcfg, b.v4.name, b.pass)
	b.loop.SetTrustedPass(b.trustedPass)
	return b, nil
}

func (b *Backend) newVTEP(family nl.Family, prefix, flannel string, local netip.Addr) *vtep {
	return &vtep{
		b: b, family: family, name: prefix + strconv.Itoa(b.opts.VNI), prefix: prefix, flannel: flannel, local: local,
		neighs: neighEntries(family), fdb: fdbEntries(),
	}
}

// Setup implements backend.Backend: it creates or adopts weft.<VNI>, and
// weft-v6.<VNI> on a dual-stack network.
func (b *Backend) Setup(ctx context.Context) (subnet.LeaseAttrs, error) {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	if b.v6 != nil && !b.cfg.Ext.PublicIPv6.IsValid() {
		return subnet.LeaseAttrs{}, fmt.Errorf("vxlan: dual stack needs an IPv6 underlay address: external interface %s has no global IPv6 address; add one, or name it with --public-ipv6",
			b.cfg.Ext.Name)
	}
	if err := b.prepare(); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	attrs := subnet.LeaseAttrs{BackendType: Type}
	var err error
	if _, err = b.v4.ensureDevice(); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	if attrs.BackendData, err = json.Marshal(subnet.VXLANData{VNI: b.opts.VNI, VtepMAC: b.v4.mac.String()}); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	if b.v6 == nil {
		// IPv4-only: a weft-v6.<VNI> left from a dual-stack run goes.
		if err := b.removeDevice(DevicePrefix6 + strconv.Itoa(b.opts.VNI)); err != nil {
			return subnet.LeaseAttrs{}, err
		}
		b.dropPeerAttrs()
		return attrs, nil
	}
	if _, err = b.v6.ensureDevice(); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	if attrs.BackendV6Data, err = json.Marshal(subnet.VXLANData{VNI: b.opts.VNI, VtepMAC: b.v6.mac.String()}); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	b.dropPeerAttrs()
	return attrs, nil
}

// dropPeerAttrs lets go of cfg.PeerAttrs once every device has its MAC:
// only choosing a MAC (adoptable) reads them, and each device keeps the
// MAC it has from then on, so holding every other host's lease attributes
// for the backend's life would cost memory per peer for nothing. Caller
// holds kmu.
func (b *Backend) dropPeerAttrs() {
	if b.v4.mac != nil && (b.v6 == nil || b.v6.mac != nil) {
		b.cfg.PeerAttrs = nil
	}
}

// MTU implements backend.Backend: the IPv4 device's, which pods use for
// both families.
func (b *Backend) MTU() int { return int(b.v4.mtu.Load()) }

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

// vteps returns the backend's devices: IPv4, then IPv6 if dual-stack.
func (b *Backend) vteps() []*vtep {
	if b.v6 == nil {
		return []*vtep{b.v4}
	}
	return []*vtep{b.v4, b.v6}
}

// events selects the events that mean something we own changed: the
// shared route events, plus our neighbour entries, devices and addresses.
func (b *Backend) events() nl.Events {
	ext := b.cfg.Ext.Index
	var network6 netip.Prefix
	if b.v6 != nil {
		network6 = b.cfg.Network.IPv6.Network
	}
	vteps := b.vteps()
	ours := func(index int) *vtep {
		for _, v := range vteps {
			if int64(index) == v.linkIndex.Load() {
				return v
			}
		}
		return nil
	}
	ev := routes.Events(b.cfg.Network.Network, network6)
	ev.Neigh = func(e nl.NeighEvent) bool {
		if ours(e.LinkIndex) == nil {
			return false
		}
		return e.Deleted || e.State&unix.NUD_PERMANENT == 0
	}
	ev.Link = func(e nl.LinkEvent) bool {
		if e.Index == ext {
			return true // going down drops DirectRouting routes silently
		}
		v := ours(e.Index)
		for _, w := range vteps {
			if e.Name == w.name {
				v = w
			}
		}
		if v == nil {
			return false
		}
		return e.Deleted || !e.Up || int64(e.MTU) != v.mtu.Load()
	}
	ev.Addr = func(e nl.AddrEvent) bool {
		if e.LinkIndex == ext {
			return b.opts.DirectRouting // what is on-link may have changed
		}
		return e.Deleted && ours(e.LinkIndex) != nil
	}
	return ev
}

// closeHandles closes the netlink connection; prepare reopens it. Caller
// holds kmu.
func (b *Backend) closeHandles() {
	b.kern.Close()
	b.k = nil
}

// minMTU6 is the smallest MTU IPv6 works with (the kernel disables IPv6 on
// a device with less).
const minMTU6 = 1280

// prepare connects to the namespace and works out the devices' MTUs.
// Caller holds kmu.
func (b *Backend) prepare() (err error) {
	if b.k, err = b.kern.Open(); err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	if b.v4.mtu.Load() == 0 || (b.v6 != nil && b.v6.mtu.Load() == 0) {
		mtu, mtu6 := b.opts.MTU, b.opts.MTU-(overhead6-overhead)
		if mtu == 0 {
			ext, err := routes.ExtMTU(b.k, b.cfg.Ext)
			if err != nil {
				return fmt.Errorf("vxlan: %w", err)
			}
			mtu, mtu6 = ext-overhead, ext-overhead6
		}
		if b.v6 != nil && mtu6 < minMTU6 {
			return fmt.Errorf("vxlan: the IPv6 device %s would get MTU %d, below IPv6's minimum %d: the underlay MTU of %s is too small for dual stack",
				b.v6.name, mtu6, minMTU6, b.cfg.Ext.Name)
		}
		b.v4.mtu.Store(int64(mtu))
		if b.v6 != nil {
			b.v6.mtu.Store(int64(mtu6))
		}
	}
	return nil
}

func (v *vtep) deviceMatches(vx *nl.VXLAN) bool {
	o := v.b.opts
	return vx != nil && vx.VNI == o.VNI && vx.Port == o.Port && !vx.Learning &&
		vx.GBP == o.GBP && vx.VtepDevIndex == v.b.cfg.Ext.Index &&
		vx.SrcAddr == v.local.Unmap() &&
		(!vx.Group.IsValid() || vx.Group.IsUnspecified())
}

// adoptable reports whether m may be this device's VtepMAC: usable, and
// not published for this family by another host's lease (peers would keep
// the older lease and refuse ours).
func (v *vtep) adoptable(m net.HardwareAddr) bool {
	if !usableMAC(m) {
		return false
	}
	b := v.b
	for _, a := range b.cfg.PeerAttrs {
		if a.BackendType != Type || a.PublicIP == b.cfg.Ext.PublicIP {
			continue
		}
		if _, pm, err := subnet.ParseVXLANData(v.data(a)); err == nil && bytes.Equal(pm, m) {
			b.log.Warn("not adopting a VtepMAC that another host's lease carries; picking a fresh one",
				"mac", m, "lease-public-ip", a.PublicIP, "device", v.name)
			return false
		}
	}
	return true
}

// data returns the family's backend data of a lease: BackendData for
// IPv4, BackendV6Data for IPv6.
func (v *vtep) data(a subnet.LeaseAttrs) json.RawMessage {
	if v.family == nl.FamilyV6 {
		return a.BackendV6Data
	}
	return a.BackendData
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

// ensureDevice makes the device exist with the wanted attributes, MTU, MAC
// and up. It reports whether it had to fix a device that had been fully set
// up before (a repair). Caller holds kmu.
func (v *vtep) ensureDevice() (repaired bool, err error) {
	k := v.b.k
	mtu := int(v.mtu.Load())
	l, err := k.LinkByName(v.name)
	switch {
	case err == nil:
		if v.deviceMatches(l.VXLAN) {
			if v.mac == nil {
				if v.adoptable(l.HardwareAddr) {
					v.mac = l.HardwareAddr
				} else if v.mac, err = v.pickMAC(); err != nil {
					return false, err
				}
			}
			if !bytes.Equal(l.HardwareAddr, v.mac) {
				repaired = true
				if err := k.SetLinkHardwareAddr(l.Index, v.mac); err != nil {
					return false, fmt.Errorf("set MAC of %s: %w", v.name, err)
				}
			}
			if l.MTU != mtu {
				repaired = true
				if err := k.SetLinkMTU(l.Index, mtu); err != nil {
					return false, fmt.Errorf("set MTU of %s: %w", v.name, err)
				}
			}
			if !l.Up {
				repaired = true
				if err := k.SetLinkUp(l.Index); err != nil {
					return false, fmt.Errorf("set %s up: %w", v.name, err)
				}
			}
			v.linkIndex.Store(int64(l.Index))
			wasUp := v.deviceUp
			v.deviceUp = true
			return repaired && wasUp, nil
		}
		// Wrong kind or attributes: recreate, keeping its MAC if we have
		// none yet.
		if v.mac == nil && l.VXLAN != nil && v.adoptable(l.HardwareAddr) {
			v.mac = l.HardwareAddr
		}
		v.b.log.Info("recreating device whose attributes do not match", "name", v.name, "type", l.Kind)
		if err := k.DelLink(l.Index); err != nil {
			return false, fmt.Errorf("delete mismatched %s: %w", v.name, err)
		}
	case errors.Is(err, nl.ErrLinkNotFound):
	default:
		return false, fmt.Errorf("look up %s: %w", v.name, err)
	}

	if v.mac == nil {
		if v.mac, err = v.pickMAC(); err != nil {
			return false, err
		}
	}
	if err := v.removeFlannelDevice(); err != nil {
		return false, err
	}
	if err := v.createDevice(mtu); err != nil {
		return false, err
	}
	wasUp := v.deviceUp
	v.deviceUp = true
	return wasUp, nil
}

// pickMAC returns the previous lease's VtepMAC of this family when it
// parses, else a random locally administered unicast MAC.
func (v *vtep) pickMAC() (net.HardwareAddr, error) {
	if prev := v.b.cfg.Previous; prev.BackendType == Type {
		if _, mac, err := subnet.ParseVXLANData(v.data(prev)); err == nil && v.adoptable(mac) {
			return mac, nil
		}
	}
	return randomMAC()
}

func (v *vtep) newLink(mtu int) nl.Link {
	o := v.b.opts
	return nl.Link{
		Name:         v.name,
		MTU:          mtu,
		HardwareAddr: v.mac,
		VXLAN: &nl.VXLAN{
			VNI:          o.VNI,
			VtepDevIndex: v.b.cfg.Ext.Index,
			SrcAddr:      v.local,
			Port:         o.Port,
			Learning:     false,
			GBP:          o.GBP,
		},
	}
}

func (v *vtep) createDevice(mtu int) error {
	k, o := v.b.k, v.b.opts
	err := k.AddLink(v.newLink(mtu))
	if errors.Is(err, unix.EADDRINUSE) || errors.Is(err, unix.EEXIST) {
		// Another VXLAN device of this family holds this VNI and port.
		if derr := v.removeConflicting(); derr != nil {
			return errors.Join(fmt.Errorf("create %s: %w", v.name, err), derr)
		}
		err = k.AddLink(v.newLink(mtu))
	}
	if err != nil {
		return fmt.Errorf("create %s (VNI %d, port %d, local %s): %w", v.name, o.VNI, o.Port, v.local, err)
	}
	l, err := k.LinkByName(v.name)
	if err != nil {
		return fmt.Errorf("look up new %s: %w", v.name, err)
	}
	if !bytes.Equal(l.HardwareAddr, v.mac) {
		if err := k.SetLinkHardwareAddr(l.Index, v.mac); err != nil {
			return fmt.Errorf("set MAC of %s: %w", v.name, err)
		}
	}
	if err := k.SetLinkUp(l.Index); err != nil {
		return fmt.Errorf("set %s up: %w", v.name, err)
	}
	v.linkIndex.Store(int64(l.Index))
	v.b.log.Info("created device", "name", v.name, "vni", o.VNI, "port", o.Port, "local", v.local, "mac", v.mac.String(), "mtu", mtu)
	return nil
}

// removeFlannelDevice deletes flanneld's device of this family
// (flannel.<VNI>, flannel-v6.<VNI>) when it uses our VNI and port: its
// socket would make our device fail with "address in use".
func (v *vtep) removeFlannelDevice() error {
	o := v.b.opts
	name := v.flannel + strconv.Itoa(o.VNI)
	l, err := v.b.k.LinkByName(name)
	if err != nil {
		return nil
	}
	if vx := l.VXLAN; vx == nil || vx.VNI != o.VNI || vx.Port != o.Port {
		return nil
	}
	v.b.log.Info("deleting flanneld's device to take over its VNI and port (in-place migration)", "old", name)
	if err := v.b.k.DelLink(l.Index); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// removeConflicting deletes a flanneld or weft VXLAN device of this family
// with our VNI and port, whatever its name.
func (v *vtep) removeConflicting() error {
	o := v.b.opts
	links, err := v.b.k.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if vx := l.VXLAN; vx == nil || vx.VNI != o.VNI || vx.Port != o.Port {
			continue
		}
		if !strings.HasPrefix(l.Name, v.flannel) && !strings.HasPrefix(l.Name, v.prefix) {
			continue
		}
		v.b.log.Info("deleting conflicting VXLAN device", "old", l.Name)
		if err := v.b.k.DelLink(l.Index); err != nil {
			return fmt.Errorf("delete %s: %w", l.Name, err)
		}
	}
	return nil
}

// removeDevice deletes our VXLAN device name if it exists. Caller holds
// kmu.
func (b *Backend) removeDevice(name string) error {
	l, err := b.k.LinkByName(name)
	if errors.Is(err, nl.ErrLinkNotFound) || (err == nil && l.VXLAN == nil) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	b.log.Info("deleting a device the network config no longer asks for", "name", name)
	if err := b.k.DelLink(l.Index); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// Cleanup deletes every weft.* and weft-v6.* VXLAN device (the kernel drops
// its neighbour and FDB entries, routes and nexthop objects with it) and
// the DirectRouting routes of both families: those tagged with
// backend.RouteProtocol that have a gateway and the onlink flag, a shape
// only this backend installs. Other routes tagged with
// backend.RouteProtocol belong to other backends and are left alone,
// because weftd runs this at every start of another backend.
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
		if l.VXLAN == nil || !(strings.HasPrefix(l.Name, DevicePrefix) || strings.HasPrefix(l.Name, DevicePrefix6)) {
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
