// Package wireguard is weft's wireguard backend: pod traffic between hosts
// encrypted with WireGuard, wire- and lease-compatible with flannel's
// wireguard backend.
//
// Design note. Kernel objects: one device "weft-wg" holding our lease's
// network address /32, and one route for the whole cluster network on it,
// scope link (protocol backend.RouteProtocol). WireGuard's crypto-routing
// does the rest: each peer is the host of one lease, with its public key,
// its subnet as allowed IPs and PublicIP:Port as endpoint, so the device
// itself picks the peer of a packet from the destination address. The
// lease carries BackendType "wireguard" and BackendData
// {"PublicKey":"<base64>","Port":<listen port>}.
//
// The device is run by one of two drivers behind the small driver
// interface (driver.go): the kernel's WireGuard ("wireguard" link,
// programmed with wgctrl, kernel.go) when the module exists, or
// wireguard-go in this process over a persistent TUN device, with its
// batched and offloaded data path and the standard UAPI socket for wg(8)
// (userspace.go). --wireguard-driver overrides the choice.
//
// The control path runs on backend.Loop, as the other backends do: a
// pass makes sure the driver runs the device with our key and port
// (re-creating it when it was deleted), keeps the link up with our MTU,
// address and route, and then diffs the device's peers against the
// leases (peers.go), removing peers whose lease is gone or whose key
// changed and (re)configuring the rest. The private key lives in a file
// (keyfile.go), mode 0400, generated when missing; it is never logged and
// never part of Status.
//
// IPv4 only for now: Mode "ipv6" and "separate" are refused. A second
// family would add a second device and driver (weft-wg-v6) and the
// lease's BackendV6Data; the peer model already carries a list of allowed
// prefixes.
package wireguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sync"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/backend/routes"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/subnet"
)

// Type is the backend's name in the network config and its leases'
// BackendType.
const Type = "wireguard"

// DeviceName is the device the backend owns; FlannelDeviceName is
// flanneld's, which we take over (delete) at start.
const (
	DeviceName        = "weft-wg"
	FlannelDeviceName = "flannel-wg"
)

var (
	_ backend.Factory = New
	_ backend.Cleanup = Cleanup
	_ backend.Backend = (*wgBackend)(nil)
)

type wgBackend struct {
	cfg    backend.Config
	opts   Options
	logger *slog.Logger
	loop   *backend.Loop
	mtu    int

	// Control path state, guarded by kmu: only Setup, pass and Run
	// touch it.
	kmu      sync.Mutex
	key      wgtypes.Key
	pub      wgtypes.Key
	drv      driver
	k        *nl.Conn
	setUp    bool
	attached bool // a device has been running: a fresh one is a repair
	// applied is the desired peer set the device last matched, so that
	// a later difference with the same desired state counts as a repair.
	applied   []*subnet.Lease
	appliedOK bool
	// want and refused are the peers built from wantFrom (the slice
	// SetDesired handed over, which nobody modifies) for wantOwn: a
	// resync pass builds nothing.
	wantFrom []*subnet.Lease
	wantOwn  netip.Prefix
	want     []Peer
	refused  map[netip.Prefix]string
	// setEndpoint is the endpoint we last gave each peer. WireGuard
	// follows a peer that roams (a NAT rebinding its port): a device
	// endpoint that moved away from the one we set, while the lease still
	// says the same, is the peer's real address, not drift to repair.
	setEndpoint map[wgtypes.Key]netip.AddrPort
	// dev keeps weft-wg's address and the cluster network route.
	dev routes.DeviceNet
}

// New validates the options and builds the backend; it touches no kernel
// state and reads no key.
func New(cfg backend.Config) (backend.Backend, error) {
	if cfg.Network == nil {
		return nil, errors.New("wireguard backend: no network config")
	}
	o, err := parseOptions(cfg.Options)
	if err != nil {
		return nil, err
	}
	switch cfg.WireGuard.Driver {
	case "", DriverAuto, DriverKernel, DriverUserspace:
	default:
		return nil, fmt.Errorf("wireguard driver %q: want auto, kernel or userspace", cfg.WireGuard.Driver)
	}
	b := &wgBackend{cfg: cfg, opts: o, logger: cfg.Logger, dev: routes.DeviceNet{Name: DeviceName}}
	if b.logger == nil {
		b.logger = slog.New(slog.DiscardHandler)
	}
	b.logger = b.logger.With("backend", Type)
	b.dev.Logger = b.logger
	lcfg := cfg
	lcfg.Logger = b.logger
	b.loop = backend.NewLoop(lcfg, DeviceName, b.pass)
	return b, nil
}

// KeyFile is the private key file a host uses: the configured one (weftd
// resolves --wireguard-key-file and $WIREGUARD_KEY_FILE), else
// DefaultKeyFile.
func KeyFile(configured string) string {
	if configured != "" {
		return configured
	}
	return DefaultKeyFile
}

// Setup implements backend.Backend: it loads (or generates) the private
// key, picks the driver, takes over flanneld's device and brings weft-wg
// up. The lease carries our public key and listen port.
func (b *wgBackend) Setup(ctx context.Context) (subnet.LeaseAttrs, error) {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	ext := b.cfg.Ext.MTU
	if b.opts.MTU != 0 {
		ext = b.opts.MTU
	}
	if ext == 0 {
		ext = 1500
	}
	b.mtu = ext - overhead

	name, why, err := chooseDriver(b.cfg.WireGuard.Driver)
	if err != nil {
		return subnet.LeaseAttrs{}, err
	}
	path := KeyFile(b.cfg.WireGuard.KeyFile)
	key, created, err := LoadOrCreateKey(path)
	if err != nil {
		return subnet.LeaseAttrs{}, fmt.Errorf("wireguard backend: %w", err)
	}
	b.key = key
	pub := key.PublicKey()
	b.pub = pub
	if created {
		b.logger.Info("generated a new private key", "key-file", path, "public-key", pub.String())
	} else {
		b.logger.Info("using the private key of the key file", "key-file", path, "public-key", pub.String())
	}

	b.logger.Info("wireguard driver", "driver", name, "why", why, "listen-port", b.opts.ListenPort, "mtu", b.mtu)
	if b.drv == nil {
		if name == DriverKernel {
			b.drv = &kernelDriver{name: DeviceName, mtu: b.mtu, ns: b.cfg.Netns, logger: b.logger}
		} else {
			b.drv = &userspaceDriver{name: DeviceName, mtu: b.mtu, ns: b.cfg.Netns, socketDir: b.cfg.WireGuard.SocketDir, logger: b.logger}
		}
	}
	if err := b.connect(); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	if l, err := b.k.LinkByName(FlannelDeviceName); err == nil {
		if err := b.k.DelLink(l.Index); err != nil {
			return subnet.LeaseAttrs{}, fmt.Errorf("take over from flanneld: delete %s: %w", FlannelDeviceName, err)
		}
		b.logger.Info("deleted flanneld's device; weft's replaces it with the same key", "device", FlannelDeviceName)
	}
	if err := b.ensureUserspaceFirst(); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	if _, err := b.drv.Ensure(b.key, b.opts.ListenPort); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	b.attached = true
	if _, _, err := b.ensureLink(); err != nil {
		return subnet.LeaseAttrs{}, err
	}
	b.setUp = true
	return subnet.LeaseAttrs{
		BackendType: Type,
		BackendData: LeaseData{PublicKey: pub, Port: b.opts.ListenPort}.Marshal(),
	}, nil
}

// ensureUserspaceFirst deletes a weft-wg of the wrong kind for the
// userspace driver (a kernel wireguard link left by a kernel-driver run):
// a TUN device cannot be attached under a name a wireguard link holds.
// Caller holds kmu.
func (b *wgBackend) ensureUserspaceFirst() error {
	if b.drv.Name() != DriverUserspace {
		return nil
	}
	l, err := b.k.LinkByName(DeviceName)
	if err != nil || l.Kind == "tuntap" || l.Kind == "tun" {
		return nil
	}
	b.logger.Info("replacing device of another kind", "device", DeviceName, "kind", l.Kind)
	if err := b.k.DelLink(l.Index); err != nil {
		return fmt.Errorf("delete %s (%s): %w", DeviceName, l.Kind, err)
	}
	return nil
}

// connect opens the netlink connection if needed. Caller holds kmu.
func (b *wgBackend) connect() error {
	if b.k != nil {
		return nil
	}
	k, err := nl.Open(b.cfg.Netns)
	if err != nil {
		return fmt.Errorf("wireguard backend: %w", err)
	}
	b.k = k
	return nil
}

// MTU implements backend.Backend: the underlay MTU (or the MTU option)
// minus WireGuard's 80 bytes.
func (b *wgBackend) MTU() int {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	return b.mtu
}

// SetDesired implements backend.Backend.
func (b *wgBackend) SetDesired(own subnet.Lease, peers []*subnet.Lease) {
	b.loop.SetDesired(own, peers)
}

// Status implements backend.Backend. It holds no key material.
func (b *wgBackend) Status() backend.Status { return b.loop.Status() }

// Run implements backend.Backend. When it returns, the kernel driver's
// device stays as it is; the userspace driver's WireGuard state ends,
// while its persistent TUN, address and route stay for the next weftd.
func (b *wgBackend) Run(ctx context.Context) error {
	b.kmu.Lock()
	if !b.setUp {
		b.kmu.Unlock()
		return errors.New("wireguard backend: Run before Setup")
	}
	b.kmu.Unlock()
	nw := b.cfg.Network.Network
	b.loop.Run(ctx, func(ctx context.Context, kick func()) {
		nl.Watch(ctx, b.cfg.Netns, b.logger, nl.Events{
			Link: func(e nl.LinkEvent) bool { return e.Name == DeviceName },
			Addr: func(e nl.AddrEvent) bool { return e.Deleted || nw.Contains(e.Prefix.Addr()) },
			Route: func(e nl.RouteEvent) bool {
				if e.Protocol == backend.RouteProtocol {
					return e.Deleted
				}
				return e.Table == unix.RT_TABLE_MAIN && e.Dst.IsValid() && e.Dst.Overlaps(nw)
			},
		}, kick)
	})
	b.kmu.Lock()
	defer b.kmu.Unlock()
	err := b.drv.Close()
	if b.k != nil {
		b.k.Close()
		b.k = nil
	}
	if err != nil {
		b.logger.Warn("close wireguard device handle", "err", err)
	}
	return nil
}

// pass is the backend.PassFunc: the device with our key and port, the
// link with our MTU, address and route, then the peers.
func (b *wgBackend) pass(own subnet.Lease, leases []*subnet.Lease) backend.Pass {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	p := backend.Pass{Repairs: map[string]uint64{}}
	if err := b.connect(); err != nil {
		p.Err = err
		return p
	}
	if err := b.ensureUserspaceFirst(); err != nil {
		p.Err = err
		return p
	}
	fresh, err := b.drv.Ensure(b.key, b.opts.ListenPort)
	if err != nil {
		p.Err = err
		return p
	}
	if fresh && b.attached {
		p.Repairs["device"]++
		b.appliedOK = false
	}
	if fresh {
		b.setEndpoint = nil
	}
	b.attached = true
	routed, err := b.apply(own.Subnet, &p)
	if err != nil {
		p.Err = err
		return p
	}

	if b.want == nil || !backend.SamePeers(b.wantFrom, leases) || b.wantOwn != own.Subnet {
		b.want, b.refused = desiredPeers(b.cfg.Network, own.Subnet, b.pub, b.opts, leases)
		b.wantFrom, b.wantOwn = leases, own.Subnet
	}
	want := b.want
	p.Refused = maps.Clone(b.refused)
	have, err := b.drv.Peers()
	if err != nil {
		p.Err = err
		return p
	}
	for i := range have {
		h := &have[i]
		if set, ok := b.setEndpoint[h.PublicKey]; ok && h.Endpoint != set && h.Endpoint.IsValid() {
			h.Endpoint = set // roamed: leave it where WireGuard found the peer
		}
	}
	changes := diffPeers(have, want)
	if len(changes) > 0 {
		if b.appliedOK && backend.SamePeers(b.applied, leases) {
			p.Repairs["peer"] += uint64(len(changes))
		}
		b.logChanges(changes, want)
		if err := b.drv.Configure(changes); err != nil {
			p.Err = err
			b.appliedOK = false
			return p
		}
		if b.setEndpoint == nil {
			b.setEndpoint = map[wgtypes.Key]netip.AddrPort{}
		}
		for _, c := range changes {
			if c.Remove {
				delete(b.setEndpoint, c.PublicKey)
			} else {
				b.setEndpoint[c.PublicKey] = c.Endpoint.AddrPort()
			}
		}
	}
	b.applied, b.appliedOK = leases, true
	if routed {
		p.Programmed = len(want)
	}
	return p
}

// logChanges logs each peer removed or (re)configured, by public key.
func (b *wgBackend) logChanges(changes []wgtypes.PeerConfig, want []Peer) {
	sn := make(map[wgtypes.Key]netip.Prefix, len(want))
	for _, w := range want {
		sn[w.PublicKey] = w.Subnet
	}
	for _, c := range changes {
		if c.Remove {
			b.logger.Info("removing peer", "public-key", c.PublicKey.String())
			continue
		}
		b.logger.Info("configuring peer", "public-key", c.PublicKey.String(), "subnet", sn[c.PublicKey], "endpoint", c.Endpoint.String())
	}
}

// ensureLink brings weft-wg up with our MTU. Caller holds kmu.
func (b *wgBackend) ensureLink() (index int, changed bool, err error) {
	l, err := b.k.LinkByName(DeviceName)
	if err != nil {
		return 0, false, fmt.Errorf("find %s: %w", DeviceName, err)
	}
	if l.MTU != b.mtu {
		if err := b.k.SetLinkMTU(l.Index, b.mtu); err != nil {
			return 0, false, fmt.Errorf("set %s MTU %d: %w", DeviceName, b.mtu, err)
		}
		changed = true
	}
	if !l.Up {
		if err := b.k.SetLinkUp(l.Index); err != nil {
			return 0, false, fmt.Errorf("set %s up: %w", DeviceName, err)
		}
		changed = true
	}
	return l.Index, changed, nil
}

// apply makes the link, its address and the network route match, and
// reports whether the network is routed into the device. Caller holds
// kmu.
func (b *wgBackend) apply(own netip.Prefix, p *backend.Pass) (bool, error) {
	idx, changed, err := b.ensureLink()
	if err != nil {
		return false, err
	}
	if changed {
		p.Repairs["device"]++
	}
	if !own.IsValid() {
		return false, nil
	}
	if err := b.dev.Ensure(b.k, idx, b.cfg.Network.Network, own, p.Repairs); err != nil {
		return false, err
	}
	return true, nil
}

// Cleanup removes weft-wg (either driver's) and the routes weft put on
// it. The key file stays: it is the host's identity. It succeeds when
// there is nothing to remove.
func Cleanup(ctx context.Context, ns netns.NsHandle, logger *slog.Logger) error {
	return routes.RemoveDevice(ctx, ns, DeviceName, "wireguard", logger)
}
