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
// The control path runs on backend.Loop, as vxlan's and host-gw's do: the
// Loop holds the desired state and Status and decides when to run a pass;
// the backend supplies the pass (pass.go) and the netlink events that call
// for one. A pass hands the data path its new forwarding table (an atomic
// swap; the data path never waits for the control path), keeps the data
// path running on weft0 (re-attaching, which re-creates the device, when
// weft0 is gone or a loop stopped), and then makes device, address and
// route match through internal/nl, with the underlay guard of underlay.go.
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
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/backend/routes"
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
	_ kernel          = (*nl.Conn)(nil)
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

// kernel is what the backend asks of netlink in its namespace: *nl.Conn,
// or *nlfake.NS in the plan tests.
type kernel interface {
	device
	addrs
	routeTable
	// Close ends the connection; the next pass opens a new one.
	Close()
}

// device reads and fixes weft0. The TUN device itself is created by
// attaching to it (openTUN), not over netlink.
type device interface {
	// LinkByName looks a device up; a missing one is nl.ErrLinkNotFound.
	LinkByName(name string) (nl.Link, error)
	// SetLinkUp and SetLinkMTU change one attribute.
	SetLinkUp(index int) error
	SetLinkMTU(index, mtu int) error
}

// addrs reads the namespace's addresses and sets weft0's.
type addrs interface {
	// AddrList lists the addresses of family on a device (0: every one).
	AddrList(linkIndex int, family nl.Family) ([]nl.Addr, error)
	// AddAddr adds an address; DelAddr removes one as listed.
	AddAddr(linkIndex int, p netip.Prefix) error
	DelAddr(a nl.Addr) error
}

// routeTable reads the main table and sets the network's one route.
type routeTable interface {
	// RouteList lists the routes of family in table into out.
	RouteList(family nl.Family, table uint32, keep func(*nl.Route) bool, out []nl.Route) ([]nl.Route, error)
	// ReplaceRoute installs one route tagged with protocol; DelRoute
	// removes one as listed.
	ReplaceRoute(r nl.RouteSpec, protocol uint8) error
	DelRoute(r *nl.Route) error
}

type udpBackend struct {
	cfg    backend.Config
	port   uint16
	mtuOpt int
	noOffl bool
	logger *slog.Logger
	// loop holds the desired state and Status and runs pass.
	loop *backend.Loop

	// fwd is the forwarding table the data path reads; only a pass
	// stores a new one.
	fwd   atomic.Pointer[fwdState]
	stats counters

	mu       sync.Mutex // guards the data path's files and what MTU and Offloads report
	mtu      int
	tun      *tunFile
	sock     *udpSock
	offloads string

	// Control path state, guarded by kmu: only Setup, pass and Run touch
	// it.
	kmu sync.Mutex
	// open connects to the namespace (nl.Open; the fake in plan tests);
	// k is the open connection, nil until a pass or Setup needs it.
	open func() (kernel, error)
	k    kernel
	// attach opens the TUN device, creating weft0 if it does not exist,
	// and the socket, whichever of the two is not open (attachFiles; in
	// plan tests a fake that only creates the link).
	attach func() error
	setUp  bool // Setup succeeded
	// live is set while Run runs: passes then keep the data path's loops
	// running on the open files.
	live  bool
	loops *loops
	table tableState
	// dev keeps weft0's address and the cluster network route.
	dev routes.DeviceNet
}

// New validates the options and builds the backend; it touches no kernel state.
func New(cfg backend.Config) (backend.Backend, error) {
	b := &udpBackend{cfg: cfg, port: DefaultPort, logger: cfg.Logger, dev: routes.DeviceNet{Name: DeviceName}}
	if b.logger == nil {
		b.logger = slog.New(slog.DiscardHandler)
	}
	b.logger = b.logger.With("backend", Type)
	b.dev.Logger = b.logger
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
	b.open = func() (kernel, error) {
		c, err := nl.Open(cfg.Netns)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
	b.attach = b.attachFiles
	lcfg := cfg
	lcfg.Logger = b.logger
	b.loop = backend.NewLoop(lcfg, DeviceName, b.pass)
	return b, nil
}

// Setup implements backend.Backend: it creates or re-attaches the TUN
// device, opens the UDP socket and brings the device up. The lease of a
// udp host carries no BackendType and no BackendData, as with flannel.
func (b *udpBackend) Setup(ctx context.Context) (subnet.LeaseAttrs, error) {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	mtu := b.mtuOpt
	if mtu == 0 {
		ext := b.cfg.Ext.MTU
		if ext == 0 {
			ext = 1500
		}
		mtu = ext - overhead
	}
	b.mu.Lock()
	b.mtu = mtu
	b.mu.Unlock()
	if err := b.connect(); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	if err := b.attach(); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	if _, _, err := b.ensureLink(); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	b.setUp = true
	return subnet.LeaseAttrs{}, nil
}

// connect opens the netlink connection if it is not open. Caller holds
// kmu.
func (b *udpBackend) connect() error {
	if b.k != nil {
		return nil
	}
	k, err := b.open()
	if err != nil {
		return fmt.Errorf("udp backend: %w", err)
	}
	b.k = k
	return nil
}

// closeKernel closes the netlink connection; the next pass reopens it.
// Caller holds kmu.
func (b *udpBackend) closeKernel() {
	if b.k != nil {
		b.k.Close()
		b.k = nil
	}
}

// attachFiles attaches the TUN and opens the socket inside cfg.Netns,
// whichever is not open. Caller holds kmu.
func (b *udpBackend) attachFiles() error {
	b.mu.Lock()
	tun, sock := b.tun, b.sock
	b.mu.Unlock()
	if tun != nil && sock != nil {
		return nil
	}
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
	b.mu.Lock()
	defer b.mu.Unlock()
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

// MTU implements backend.Backend.
func (b *udpBackend) MTU() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mtu
}

// SetDesired implements backend.Backend. The next pass, within
// milliseconds, swaps the forwarding table and programs address and route.
func (b *udpBackend) SetDesired(own subnet.Lease, peers []*subnet.Lease) {
	b.loop.SetDesired(own, peers)
}

// Status implements backend.Backend: the Loop's view of the passes, with
// the data path's counters.
func (b *udpBackend) Status() backend.Status {
	s := b.loop.Status()
	s.DataPath = b.stats.snapshot()
	return s
}

// Run implements backend.Backend. The passes start the data path's loops
// and restart them on a re-created device; when Run returns, the loops
// have ended and the TUN and the socket are closed, while device, address
// and route stay.
func (b *udpBackend) Run(ctx context.Context) error {
	b.kmu.Lock()
	if !b.setUp {
		b.kmu.Unlock()
		return errors.New("udp backend: Run before Setup")
	}
	b.live = true
	b.kmu.Unlock()
	b.loop.Run(ctx, func(ctx context.Context, kick func()) {
		nl.Watch(ctx, b.cfg.Netns, b.logger, b.events(), kick)
	})
	b.kmu.Lock()
	defer b.kmu.Unlock()
	b.live = false
	b.stopDataPath(true)
	b.closeKernel()
	return nil
}

// events selects the netlink events after which a pass is due: anything
// on weft0; an address deleted anywhere, or added inside the network; one
// of our routes deleted; and a route of somebody else's in the main table
// that overlaps the network added or deleted. Addresses and routes in the
// network may be underlay the network route must no longer cover, or
// cease to be (underlay.go).
func (b *udpBackend) events() nl.Events {
	nw := b.cfg.Network.Network
	return nl.Events{
		Link: func(e nl.LinkEvent) bool { return e.Name == DeviceName },
		Addr: func(e nl.AddrEvent) bool { return e.Deleted || nw.Contains(e.Prefix.Addr()) },
		Route: func(e nl.RouteEvent) bool {
			if e.Protocol == backend.RouteProtocol {
				return e.Deleted
			}
			return e.Table == unix.RT_TABLE_MAIN && e.Dst.IsValid() && e.Dst.Overlaps(nw)
		},
	}
}

// loops are the data path's two goroutines, one per direction.
type loops struct {
	wg sync.WaitGroup
	// errc holds each loop's error once it has ended.
	errc chan error
	// stopping is set before the loops are made to end on purpose.
	stopping atomic.Bool
}

// startLoops starts both directions on the open TUN and socket. A loop
// that ends by itself (the device was deleted, a read failed) asks for a
// pass, which restarts the data path. Caller holds kmu.
func (b *udpBackend) startLoops() {
	b.mu.Lock()
	dp := &dataPath{tun: b.tun, conn: b.sock, vnetHdr: b.tun.vnetHdr, state: &b.fwd, stats: &b.stats, logger: b.logger}
	dp.gso.Store(b.sock.gso)
	b.mu.Unlock()
	r := &loops{errc: make(chan error, 2)}
	for _, run := range []func() error{dp.newTx().run, dp.newRx().run} {
		r.wg.Go(func() {
			r.errc <- run()
			if !r.stopping.Load() {
				b.loop.Kick()
			}
		})
	}
	b.loops = r
}

// stopDataPath ends both loops and closes the TUN. The socket stays open,
// bound to the port, unless final: closing it to restart the data path
// would let another local user bind the port in between (see openUDP).
// The receive loop is ended with a deadline instead. Caller holds kmu.
func (b *udpBackend) stopDataPath(final bool) {
	b.mu.Lock()
	tun, sock := b.tun, b.sock
	b.tun = nil
	if final {
		b.sock = nil
	}
	b.mu.Unlock()
	r := b.loops
	b.loops = nil
	if r != nil {
		r.stopping.Store(true)
	}
	if tun != nil {
		tun.Close()
	}
	if sock != nil {
		if final {
			sock.Close()
		} else if r != nil {
			sock.f.SetDeadline(time.Unix(1, 0))
		}
	}
	if r == nil {
		return
	}
	r.wg.Wait()
	if sock != nil && !final {
		sock.f.SetDeadline(time.Time{})
	}
}

// Cleanup removes weft0 and every route tagged with backend.RouteProtocol
// that points into it. It succeeds when there is nothing to remove.
func Cleanup(ctx context.Context, ns netns.NsHandle, logger *slog.Logger) error {
	return routes.RemoveDevice(ctx, ns, DeviceName, "udp", logger)
}
