// Package udp is weft's udp backend: a userspace tunnel over a TUN device,
// wire-compatible with flannel's udp backend.
//
// Design note. Kernel objects: one persistent TUN device "weft0" (no
// packet-info header) holding our lease's network address /32, and one
// route for the whole cluster network into it (protocol
// backend.RouteProtocol). Peers are not kernel objects: they live in a
// userspace table mapping each peer subnet to the peer's PublicIP. Each
// inner IPv4 packet travels as one UDP datagram to PublicIP:Port with no
// header, as in flannel, and the TTL is decremented on both ends.
//
// Unlike flannel's one-packet-per-syscall loop, the data path uses the
// kernel's batching and offloads (TUN TSO with a virtio-net header,
// userspace GSO/GRO, recvmmsg/sendmmsg, UDP GSO/GRO); see datapath.go.
// The device is persistent so that a restarted daemon re-attaches to it
// with address and route intact; Run returning leaves both in place and
// Cleanup removes them.
//
// Other local users. The device is owned by weftd's euid, so no other
// user can attach to it while weftd is stopped (tun_linux.go), and the
// socket takes the port on every address with neither SO_REUSEADDR nor
// SO_REUSEPORT, so no other user can bind it next to weftd
// (conn_linux.go). The socket stays open when the data path restarts on
// a re-created device.
package udp

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/subnet"
)

// Type is the backend's name in the network config.
const Type = "udp"

// DeviceName is the TUN device the backend owns.
const DeviceName = "weft0"

// DefaultPort is flannel's udp port.
const DefaultPort = 8285

// overhead is what the outer IPv4 and UDP headers take from the underlay MTU.
const overhead = 28

// Compile-time checks.
var (
	_ backend.Factory = New
	_ backend.Cleanup = Cleanup
	_ backend.Backend = (*udpBackend)(nil)
	_ tunDevice       = (*tunFile)(nil)
	_ batchConn       = (*udpSock)(nil)
	_ batchReader     = (*tunFile)(nil)
	_ vectorWriter    = (*tunFile)(nil)
)

type options struct {
	Type string
	Port *int
	MTU  *int
	// DisableOffloads runs the data path one packet per syscall, as
	// flannel does (no TUN TSO, no UDP GSO/GRO). weft-only; for
	// debugging and for tests of the fallback path.
	DisableOffloads bool
}

type udpBackend struct {
	cfg    backend.Config
	port   uint16
	mtuOpt int
	noOffl bool
	logger *slog.Logger
	kick   chan struct{}

	fwd   atomic.Pointer[fwdState]
	stats counters

	mu       sync.Mutex // guards everything below
	mtu      int
	nlh      *netlink.Handle
	tun      *tunFile
	sock     *udpSock
	own      subnet.Lease
	peers    int
	refused  map[netip.Prefix]string
	applied  bool // address and route were programmed once
	status   backend.Status
	offloads string

	// routeRefused is why the last pass did not route the network into
	// the device ("" if it did); routeRefusedLogged the reason last logged.
	routeRefused       string
	routeRefusedLogged string
}

// New validates the options and builds the backend; it touches no kernel state.
func New(cfg backend.Config) (backend.Backend, error) {
	b := &udpBackend{cfg: cfg, port: DefaultPort, logger: cfg.Logger, kick: make(chan struct{}, 1)}
	if b.logger == nil {
		b.logger = slog.New(slog.DiscardHandler)
	}
	b.logger = b.logger.With("backend", Type)
	if cfg.Network == nil {
		return nil, errors.New("udp backend: no network config")
	}
	if len(bytes.TrimSpace(cfg.Options)) > 0 {
		var o options
		if err := json.Unmarshal(cfg.Options, &o); err != nil {
			return nil, fmt.Errorf("udp backend options: %w", err)
		}
		if o.Port != nil {
			if *o.Port < 1 || *o.Port > 65535 {
				return nil, fmt.Errorf("udp backend option Port: %d is not a port number (1-65535)", *o.Port)
			}
			b.port = uint16(*o.Port)
		}
		b.noOffl = o.DisableOffloads
		if o.MTU != nil {
			if *o.MTU < 576 || *o.MTU > 65535 {
				return nil, fmt.Errorf("udp backend option MTU: %d is outside 576-65535", *o.MTU)
			}
			b.mtuOpt = *o.MTU
		}
	}
	b.status = backend.Status{Device: DeviceName, Repairs: map[string]uint64{}, Refused: map[netip.Prefix]string{}}
	b.refused = map[netip.Prefix]string{}
	return b, nil
}

// Setup implements backend.Backend: it creates or re-attaches the TUN
// device, opens the UDP socket and brings the device up. The lease of a
// udp host carries no BackendType and no BackendData, as with flannel.
func (b *udpBackend) Setup(ctx context.Context) (subnet.LeaseAttrs, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mtu = b.mtuOpt
	if b.mtu == 0 {
		ext := b.cfg.Ext.MTU
		if ext == 0 {
			ext = 1500
		}
		b.mtu = ext - overhead
	}
	if b.nlh == nil {
		h, err := nl.NewHandle(b.cfg.Netns)
		if err != nil {
			return subnet.LeaseAttrs{}, err
		}
		b.nlh = h
	}
	if err := b.openLocked(); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	if _, err := b.ensureLinkLocked(); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	return subnet.LeaseAttrs{}, nil
}

// openLocked attaches the TUN and opens the socket inside cfg.Netns,
// whichever of the two is not open.
func (b *udpBackend) openLocked() error {
	if b.tun != nil && b.sock != nil {
		return nil
	}
	tun, sock := b.tun, b.sock
	err := nl.Do(b.cfg.Netns, func() error {
		var err error
		if tun == nil {
			if tun, err = openTUN(DeviceName, !b.noOffl); err != nil {
				return err
			}
		}
		if sock == nil {
			if sock, err = openUDP(b.port, !b.noOffl); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		if tun != nil && tun != b.tun {
			tun.Close()
		}
		return err
	}
	b.tun, b.sock = tun, sock
	off := tun.offloads
	if sock.gso {
		off = append(off, "udp-gso")
	}
	if sock.gro {
		off = append(off, "udp-gro")
	}
	b.offloads = strings.Join(off, ",")
	b.logger.Info("data path ready", "device", DeviceName, "port", b.port, "offloads", b.offloads)
	return nil
}

// Offloads lists the offloads active on the data path, e.g.
// "vnet-hdr,csum,tso4,tso-ecn,udp-gso,udp-gro" (empty before Setup).
func (b *udpBackend) Offloads() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.offloads
}

// ensureLinkLocked brings the device up with the right MTU. It reports
// whether it had to change anything.
func (b *udpBackend) ensureLinkLocked() (bool, error) {
	link, err := b.nlh.LinkByName(DeviceName)
	if err != nil {
		return false, fmt.Errorf("find %s: %w", DeviceName, err)
	}
	changed := false
	if link.Attrs().MTU != b.mtu {
		if err := b.nlh.LinkSetMTU(link, b.mtu); err != nil {
			return false, fmt.Errorf("set %s MTU %d: %w", DeviceName, b.mtu, err)
		}
		changed = true
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := b.nlh.LinkSetUp(link); err != nil {
			return false, fmt.Errorf("set %s up: %w", DeviceName, err)
		}
		changed = true
	}
	return changed, nil
}

// MTU implements backend.Backend.
func (b *udpBackend) MTU() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mtu
}

func prefixU32(p netip.Prefix) (addr, mask uint32) {
	a := p.Masked().Addr().As4()
	mask = ^uint32(0) << (32 - p.Bits())
	if p.Bits() == 0 {
		mask = 0
	}
	return binary.BigEndian.Uint32(a[:]), mask
}

// SetDesired implements backend.Backend. The peer table takes effect at
// once; the address and route are programmed by Run.
func (b *udpBackend) SetDesired(own subnet.Lease, peers []subnet.Lease) {
	nw := b.cfg.Network
	st := &fwdState{peers: make(map[uint32]uint32, len(peers)), publics: make(map[uint32]struct{}, len(peers))}
	st.netAddr, st.netMask = prefixU32(nw.Network)
	st.ownAddr, st.ownMask = prefixU32(own.Subnet)
	_, st.subMask = prefixU32(netip.PrefixFrom(netip.IPv4Unspecified(), nw.SubnetLen))
	refused := map[netip.Prefix]string{}
	for _, p := range peers {
		ip := p.Attrs.PublicIP
		switch {
		case !p.Subnet.Addr().Is4() || p.Subnet.Bits() != nw.SubnetLen || !nw.Network.Contains(p.Subnet.Addr()):
			refused[p.Subnet] = fmt.Sprintf("not a /%d inside %s", nw.SubnetLen, nw.Network)
			continue
		case !ip.Is4():
			refused[p.Subnet] = "PublicIP is not IPv4"
			continue
		case own.Subnet.IsValid() && p.Subnet.Overlaps(own.Subnet):
			refused[p.Subnet] = "overlaps our own subnet"
			continue
		}
		sn, _ := prefixU32(p.Subnet)
		a := ip.As4()
		pub := binary.BigEndian.Uint32(a[:])
		st.peers[sn] = pub
		st.publics[pub] = struct{}{}
	}
	if !own.Subnet.IsValid() {
		st.ownAddr, st.ownMask = 0xffffffff, 0xffffffff // nothing is ours yet
	}
	b.fwd.Store(st)
	b.mu.Lock()
	b.own = own
	b.peers = len(peers)
	b.refused = refused
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// Status implements backend.Backend.
func (b *udpBackend) Status() backend.Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.status
	s.Repairs = make(map[string]uint64, len(b.status.Repairs))
	for k, v := range b.status.Repairs {
		s.Repairs[k] = v
	}
	s.Refused = make(map[netip.Prefix]string, len(b.refused))
	for k, v := range b.refused {
		s.Refused[k] = v
	}
	s.PeersWanted = b.peers
	s.DataPath = b.stats.snapshot()
	return s
}

// Run implements backend.Backend.
func (b *udpBackend) Run(ctx context.Context) error {
	b.mu.Lock()
	if b.nlh == nil {
		b.mu.Unlock()
		return errors.New("udp backend: Run before Setup")
	}
	if err := b.openLocked(); err != nil {
		b.mu.Unlock()
		return err
	}
	b.mu.Unlock()

	interval := b.cfg.ResyncInterval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()

	wctx, wcancel := context.WithCancel(ctx)
	var wwg sync.WaitGroup
	wwg.Go(func() {
		nw := b.cfg.Network.Network
		nl.Watch(wctx, b.cfg.Netns, b.logger, nl.Filter{
			Link: func(u netlink.LinkUpdate) bool { return u.Attrs() != nil && u.Attrs().Name == DeviceName },
			// A new address or route in the network may be underlay
			// the network route must no longer cover (underlay.go).
			Addr: func(u netlink.AddrUpdate) bool {
				a, ok := netip.AddrFromSlice(u.LinkAddress.IP)
				return !u.NewAddr || (ok && nw.Contains(a.Unmap()))
			},
			Route: func(u netlink.RouteUpdate) bool {
				if u.Protocol == backend.RouteProtocol {
					return u.Type == unix.RTM_DELROUTE
				}
				if u.Type != unix.RTM_NEWROUTE || u.Table != unix.RT_TABLE_MAIN || u.Dst == nil {
					return false
				}
				a, ok := netip.AddrFromSlice(u.Dst.IP)
				ones, _ := u.Dst.Mask.Size()
				return ok && netip.PrefixFrom(a.Unmap(), ones).Overlaps(nw)
			},
		}, b.kickNow)
	})
	defer func() { wcancel(); wwg.Wait() }()

	errc := make(chan error, 2)
	var wg sync.WaitGroup
	running := false
	start := func() {
		b.mu.Lock()
		dp := &dataPath{tun: b.tun, conn: b.sock, vnetHdr: b.tun.vnetHdr, state: &b.fwd, stats: &b.stats, logger: b.logger}
		dp.gso.Store(b.sock.gso)
		b.mu.Unlock()
		tx, rx := dp.newTx(), dp.newRx()
		wg.Go(func() { errc <- tx.run() })
		wg.Go(func() { errc <- rx.run() })
		running = true
	}
	// stop ends both loops and closes the TUN. The socket stays open,
	// bound to the port, unless final: closing it to restart the data
	// path would let another local user bind the port in between (see
	// openUDP). The receive loop is ended with a deadline instead.
	stop := func(final bool) {
		b.mu.Lock()
		tun, sock := b.tun, b.sock
		b.tun = nil
		if final {
			b.sock = nil
		}
		b.mu.Unlock()
		if tun != nil {
			tun.Close()
		}
		if sock != nil {
			if final {
				sock.Close()
			} else {
				sock.f.SetDeadline(time.Unix(1, 0))
			}
		}
		if running {
			wg.Wait()
			for len(errc) > 0 {
				<-errc
			}
			running = false
		}
		if sock != nil && !final {
			sock.f.SetDeadline(time.Time{})
		}
	}
	defer stop(true)
	start()

	reopen := func() {
		stop(false)
		b.mu.Lock()
		err := b.openLocked()
		if err == nil {
			b.status.Repairs["device"]++
		}
		b.mu.Unlock()
		if err != nil {
			b.logger.Error("re-open data path", "err", err)
			return
		}
		start()
	}
	pass := func() {
		if !running {
			reopen()
		}
		if b.reconcile() {
			reopen()
			b.reconcile()
		}
	}
	pass()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			b.logger.Warn("data path stopped; re-opening the device", "err", err)
			reopen()
			b.reconcile()
		case <-b.kick:
			pass()
		case <-ticker.C:
			pass()
		}
	}
}

func (b *udpBackend) kickNow() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// reconcile makes device, address and route match the desired state. It
// reports true when the device is gone and must be re-created.
func (b *udpBackend) reconcile() (gone bool) {
	t0 := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	err := b.reconcileLocked()
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		gone = true
	}
	b.status.LastReconcile = time.Now()
	b.status.LastError = ""
	refused := errors.Is(err, ErrUnderlayRoute)
	switch {
	case gone:
		b.status.LastError = err.Error()
		b.logger.Info("device disappeared; re-creating it", "device", DeviceName)
	case refused:
		// Repeated every pass until the config or the host changes:
		// logged once per reason.
		b.status.LastError = err.Error()
		if b.routeRefusedLogged != b.routeRefused {
			b.logger.Error("not routing the cluster network into the TUN device; no peer is reachable", "device", DeviceName, "err", err)
			b.routeRefusedLogged = b.routeRefused
		}
	case err != nil:
		b.status.LastError = err.Error()
		b.logger.Warn("reconcile", "err", err)
	}
	if !refused && b.routeRefusedLogged != "" && b.routeRefused == "" {
		b.logger.Info("the cluster network route no longer covers the underlay; routing it again", "device", DeviceName)
		b.routeRefusedLogged = ""
	}
	b.status.PeersProgrammed = b.peers - len(b.refused)
	if b.routeRefused != "" {
		b.status.PeersProgrammed = 0
	}
	if b.cfg.OnReconcile != nil {
		b.cfg.OnReconcile(time.Since(t0), err)
	}
	return gone
}

func (b *udpBackend) reconcileLocked() error {
	changed, err := b.ensureLinkLocked()
	if err != nil {
		return err
	}
	if changed {
		b.status.Repairs["device"]++
	}
	if !b.own.Subnet.IsValid() {
		return nil
	}
	link, err := b.nlh.LinkByName(DeviceName)
	if err != nil {
		return fmt.Errorf("find %s: %w", DeviceName, err)
	}
	idx := link.Attrs().Index
	// Address: the lease's network address /32, and nothing else. Every
	// address of the namespace is listed: the others are the underlay
	// the route below must leave alone.
	want := netip.PrefixFrom(b.own.Subnet.Masked().Addr(), 32)
	addrs, err := nl.Dump(func() ([]netlink.Addr, error) { return b.nlh.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	have := false
	for _, a := range addrs {
		if a.LinkIndex != idx {
			continue
		}
		p, _ := netip.AddrFromSlice(a.IP.To4())
		ones, _ := a.Mask.Size()
		if netip.PrefixFrom(p, ones) == want {
			have = true
			continue
		}
		if err := b.nlh.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove stale address %s from %s: %w", a.IPNet, DeviceName, err)
		}
	}
	if !have {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: want.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}}
		if err := b.nlh.AddrAdd(link, a); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add address %s to %s: %w", want, DeviceName, err)
		}
		if b.applied {
			b.status.Repairs["addr"]++
		}
	}
	// Route: the whole cluster network into the device, unless it would
	// take the host's own traffic off its underlay (underlay.go).
	nw := b.cfg.Network.Network
	routes, err := nl.Dump(func() ([]netlink.Route, error) {
		return b.nlh.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	b.routeRefused = underlayConflict(nw, b.own.Subnet, idx, routes, addrs)
	haveRoute := false
	for _, r := range routes {
		if r.LinkIndex != idx || r.Protocol != backend.RouteProtocol || r.Dst == nil {
			continue
		}
		p, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		ones, _ := r.Dst.Mask.Size()
		if netip.PrefixFrom(p, ones) == nw && b.routeRefused == "" {
			haveRoute = true
			continue
		}
		if err := b.nlh.RouteDel(&r); err != nil {
			return fmt.Errorf("remove stale route %s: %w", r.Dst, err)
		}
	}
	if b.routeRefused != "" {
		return fmt.Errorf("%w: %s", ErrUnderlayRoute, b.routeRefused)
	}
	if !haveRoute {
		r := &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Dst:       &net.IPNet{IP: nw.Addr().AsSlice(), Mask: net.CIDRMask(nw.Bits(), 32)},
			Scope:     netlink.SCOPE_LINK,
			Protocol:  backend.RouteProtocol,
		}
		if err := b.nlh.RouteReplace(r); err != nil {
			return fmt.Errorf("add route %s dev %s: %w", nw, DeviceName, err)
		}
		if b.applied {
			b.status.Repairs["route"]++
		}
	}
	b.applied = true
	return nil
}

// Cleanup removes weft0 and every route tagged with backend.RouteProtocol
// that points into it. It succeeds when there is nothing to remove.
func Cleanup(ctx context.Context, ns netns.NsHandle, logger *slog.Logger) error {
	h, err := nl.NewHandle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(DeviceName)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find %s: %w", DeviceName, err)
	}
	routes, err := nl.Dump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: link.Attrs().Index, Table: unix.RT_TABLE_UNSPEC},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("list routes via %s: %w", DeviceName, err)
	}
	for _, r := range routes {
		if r.Protocol == backend.RouteProtocol {
			if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("remove route %s: %w", r.Dst, err)
			}
		}
	}
	if err := h.LinkDel(link); err != nil {
		return fmt.Errorf("delete %s: %w", DeviceName, err)
	}
	if logger != nil {
		logger.Info("removed udp backend device", "device", DeviceName)
	}
	return nil
}
