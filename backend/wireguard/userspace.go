package wireguard

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/internal/nl"
)

// DefaultSocketDir is where WireGuard's tools look for the UAPI socket of a
// userspace device (<dir>/<device>.sock).
const DefaultSocketDir = "/var/run/wireguard"

// userspaceDriver runs wireguard-go's device.Device in this process over a
// persistent TUN device, and serves the UAPI socket that wg(8) talks to.
//
// The TUN device is persistent and owned by our euid (as the udp
// backend's weft0): when weftd stops, the device, its address and the
// cluster route stay, so a restarted weftd re-attaches without the
// routes going away; packets sent meanwhile are dropped by the kernel
// (no reader), not routed elsewhere. The WireGuard sessions end with the
// process: a new device starts handshakes to all peers at once (see
// Configure), so the gap is one round trip after weftd is back.
//
// Speed: the TUN is opened with a virtio-net header, which makes
// wireguard-go enable TSO/USO offloads and its TCP/UDP GRO and batch
// reads and writes at conn.IdealBatchSize; the standard bind uses UDP
// GSO/GRO and recvmmsg/sendmmsg, with large socket buffers.
type userspaceDriver struct {
	name      string
	mtu       int
	ns        netns.NsHandle
	socketDir string
	logger    *slog.Logger

	mu    sync.Mutex
	dev   *device.Device
	tun   tun.Device
	index int // the TUN's interface index
	uapi  *uapiServer
	key   wgtypes.Key
	port  int

	// initiations are the handshakes Configure scheduled, by peer; iwg
	// counts those scheduled and not yet done or stopped.
	initiations map[wgtypes.Key]*time.Timer
	iwg         sync.WaitGroup
}

var _ driver = (*userspaceDriver)(nil)

// initiateJitter bounds the random delay before a handshake Configure
// starts. Two hosts that add each other at the same moment (a cluster
// starting) would otherwise send their initiations at once; crossing
// initiations void each other's responses in WireGuard, and both sides
// then wait 5 s (REKEY_TIMEOUT) before trying again. Spread over 150 ms,
// they cross only rarely.
const initiateJitter = 150 * time.Millisecond

func (d *userspaceDriver) Name() string { return DriverUserspace }

// Ensure implements driver.
func (d *userspaceDriver) Ensure(key wgtypes.Key, port int) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fresh := false
	if d.dev != nil && !d.aliveLocked() {
		d.logger.Warn("in-process WireGuard device stopped or its TUN device was deleted; re-attaching", "device", d.name)
		d.closeLocked()
	}
	if d.dev == nil {
		if err := d.openLocked(); err != nil {
			return false, err
		}
		fresh = true
		d.key, d.port = wgtypes.Key{}, 0
	}
	if d.key == key && d.port == port {
		return fresh, nil
	}
	var b strings.Builder
	if d.key != key {
		fmt.Fprintf(&b, "private_key=%s\n", hex.EncodeToString(key[:]))
	}
	if d.port != port {
		fmt.Fprintf(&b, "listen_port=%d\n", port)
	}
	err := nl.Do(d.ns, func() error { return d.dev.IpcSet(b.String()) })
	if err != nil {
		// The message may quote the private key line: keep only what
		// is not secret.
		var ie *device.IPCError
		if errors.As(err, &ie) {
			return fresh, fmt.Errorf("configure %s: listen port %d or private key refused (code %d)", d.name, port, ie.ErrorCode())
		}
		return fresh, fmt.Errorf("configure %s: listen port %d or private key refused", d.name, port)
	}
	d.key, d.port = key, port
	if err := d.dev.Up(); err != nil {
		return fresh, fmt.Errorf("bring %s up: %w", d.name, err)
	}
	return fresh, nil
}

// aliveLocked reports whether the device runs and its TUN is still the
// device named d.name.
func (d *userspaceDriver) aliveLocked() bool {
	select {
	case <-d.dev.Wait():
		return false
	default:
	}
	var idx int
	err := nl.Do(d.ns, func() error {
		ifc, err := net.InterfaceByName(d.name)
		if err == nil {
			idx = ifc.Index
		}
		return err
	})
	return err == nil && idx == d.index
}

// openLocked attaches to (creating if needed) the persistent TUN device
// and starts a wireguard-go device and the UAPI socket on it. Everything
// that opens a socket or a device runs inside the namespace.
func (d *userspaceDriver) openLocked() error {
	ok := false
	return nl.Do(d.ns, func() error {
		f, err := openPersistentTUN(d.name)
		if err != nil {
			return err
		}
		td, err := tun.CreateTUNFromFile(f, d.mtu)
		if err != nil {
			f.Close()
			return fmt.Errorf("attach TUN %s: %w", d.name, err)
		}
		defer func() {
			if !ok {
				td.Close()
			}
		}()
		ifc, err := net.InterfaceByName(d.name)
		if err != nil {
			return fmt.Errorf("find %s: %w", d.name, err)
		}
		// wireguard-go's lines go to our logger; they name peers by
		// public key, never by private key. Debug lines are only
		// formatted when debug logging is on.
		logger := &device.Logger{
			Verbosef: func(format string, args ...any) {
				if d.logger.Enabled(context.Background(), slog.LevelDebug) {
					d.logger.Debug(fmt.Sprintf(format, args...))
				}
			},
			Errorf: func(format string, args ...any) { d.logger.Warn(fmt.Sprintf(format, args...)) },
		}
		dev := device.NewDevice(td, &nsBind{Bind: conn.NewStdNetBind(), ns: d.ns}, logger)
		srv, err := listenUAPI(d.socketDir, d.name, dev)
		if err != nil {
			dev.Close()
			return err
		}
		d.dev, d.tun, d.index, d.uapi = dev, td, ifc.Index, srv
		ok = true
		d.logger.Info("in-process WireGuard device attached", "device", d.name, "tun-batch", td.BatchSize(), "device-batch", dev.BatchSize(), "uapi", srv.path)
		return nil
	})
}

// Peers implements driver: it reads the device through its own UAPI get
// operation.
func (d *userspaceDriver) Peers() ([]DevicePeer, error) {
	d.mu.Lock()
	dev := d.dev
	d.mu.Unlock()
	if dev == nil {
		return nil, errors.New("in-process device is not running")
	}
	s, err := dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("read %s peers: %w", d.name, err)
	}
	return parseUAPIPeers(s)
}

// parseUAPIPeers reads the peers of a UAPI get response; device lines
// (the private key among them) are skipped.
func parseUAPIPeers(s string) ([]DevicePeer, error) {
	var out []DevicePeer
	var cur *DevicePeer
	var hsSec, hsNsec int64
	flush := func() {
		if cur != nil {
			if hsSec != 0 || hsNsec != 0 {
				cur.LastHandshake = time.Unix(hsSec, hsNsec)
			}
			out = append(out, *cur)
		}
		cur, hsSec, hsNsec = nil, 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		if k == "public_key" {
			flush()
			key, err := hexKey(v)
			if err != nil {
				return nil, fmt.Errorf("UAPI public_key: %w", err)
			}
			cur = &DevicePeer{PublicKey: key}
			continue
		}
		if cur == nil {
			continue // device lines, private_key included
		}
		var err error
		switch k {
		case "preshared_key":
			cur.PSK, err = hexKey(v)
		case "endpoint":
			var ap netip.AddrPort
			ap, err = netip.ParseAddrPort(v)
			cur.Endpoint = unmapAddrPort(ap)
		case "last_handshake_time_sec":
			hsSec, err = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			hsNsec, err = strconv.ParseInt(v, 10, 64)
		case "persistent_keepalive_interval":
			var n int
			n, err = strconv.Atoi(v)
			cur.Keepalive = time.Duration(n) * time.Second
		case "allowed_ip":
			var p netip.Prefix
			p, err = netip.ParsePrefix(v)
			cur.AllowedIPs = append(cur.AllowedIPs, p)
		}
		if err != nil {
			return nil, fmt.Errorf("UAPI %s: %w", k, err)
		}
	}
	flush()
	return out, nil
}

func hexKey(s string) (wgtypes.Key, error) {
	var k wgtypes.Key
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(k) {
		return k, errors.New("not a hex key")
	}
	copy(k[:], b)
	return k, nil
}

// uapiSet renders peer changes as a UAPI set operation.
func uapiSet(changes []wgtypes.PeerConfig) string {
	var b strings.Builder
	for _, c := range changes {
		fmt.Fprintf(&b, "public_key=%s\n", hex.EncodeToString(c.PublicKey[:]))
		if c.Remove {
			b.WriteString("remove=true\n")
			continue
		}
		if c.PresharedKey != nil {
			fmt.Fprintf(&b, "preshared_key=%s\n", hex.EncodeToString(c.PresharedKey[:]))
		}
		if c.Endpoint != nil {
			fmt.Fprintf(&b, "endpoint=%s\n", c.Endpoint.AddrPort())
		}
		if c.PersistentKeepaliveInterval != nil {
			fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", int(c.PersistentKeepaliveInterval.Seconds()))
		}
		if c.ReplaceAllowedIPs {
			b.WriteString("replace_allowed_ips=true\n")
		}
		for _, a := range c.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a.String())
		}
	}
	return b.String()
}

// Configure implements driver. Every peer added or changed gets a
// handshake initiation right away: after a restart or a key rotation both
// ends then have a session within a round trip, instead of after the
// sender's rekey timeout.
func (d *userspaceDriver) Configure(changes []wgtypes.PeerConfig) error {
	d.mu.Lock()
	dev := d.dev
	d.mu.Unlock()
	if dev == nil {
		return errors.New("in-process device is not running")
	}
	if len(changes) == 0 {
		return nil
	}
	if err := nl.Do(d.ns, func() error { return dev.IpcSet(uapiSet(changes)) }); err != nil {
		return fmt.Errorf("configure %s peers: %w", d.name, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dev != dev {
		return nil // closed meanwhile
	}
	if d.initiations == nil {
		d.initiations = map[wgtypes.Key]*time.Timer{}
	}
	for _, c := range changes {
		if t := d.initiations[c.PublicKey]; t != nil && t.Stop() {
			d.iwg.Done()
		}
		delete(d.initiations, c.PublicKey)
		if c.Remove {
			continue
		}
		key := c.PublicKey
		d.iwg.Add(1)
		d.initiations[key] = time.AfterFunc(rand.N(initiateJitter), func() {
			defer d.iwg.Done()
			if p := dev.LookupPeer(device.NoisePublicKey(key)); p != nil {
				p.SendHandshakeInitiation(false)
			}
		})
	}
	return nil
}

// Close implements driver: the device and the UAPI socket end; the TUN
// device stays (it is persistent).
func (d *userspaceDriver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closeLocked()
	return nil
}

func (d *userspaceDriver) closeLocked() {
	for _, t := range d.initiations {
		if t.Stop() {
			d.iwg.Done()
		}
	}
	d.initiations = nil
	d.iwg.Wait()
	if d.uapi != nil {
		d.uapi.Close()
		d.uapi = nil
	}
	if d.dev != nil {
		d.dev.Close() // closes the TUN file and the bind
		d.dev = nil
		d.tun = nil
	}
}

// nsBind opens the standard bind's sockets inside the backend's network
// namespace: wireguard-go re-opens them from its own goroutines (when the
// TUN goes up, or the port changes), which may run on any OS thread.
type nsBind struct {
	conn.Bind
	ns netns.NsHandle
}

func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	err = nl.Do(b.ns, func() error {
		var e error
		fns, actual, e = b.Bind.Open(port)
		return e
	})
	return fns, actual, err
}

// openPersistentTUN attaches to the TUN device name in the current
// namespace, creating it if needed, with a virtio-net header (for the
// offloads), owned by our euid and persistent. See the udp backend's
// openTUN for why the owner matters: no other local user may attach to
// the device while weftd is stopped.
func openPersistentTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, fmt.Errorf("TUN %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return nil, fmt.Errorf("attach TUN %s: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, os.Geteuid()); err != nil {
		return nil, fmt.Errorf("set owner of TUN %s: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return nil, fmt.Errorf("make TUN %s persistent: %w", name, err)
	}
	ok = true
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// uapiServer serves WireGuard's configuration protocol on
// <dir>/<device>.sock for wg(8), mode 0600 in a directory we create with
// mode 0700.
type uapiServer struct {
	ln   *net.UnixListener
	path string
	ino  uint64
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool
}

func listenUAPI(dir, name string, dev *device.Device) (*uapiServer, error) {
	if dir == "" {
		dir = DefaultSocketDir
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("UAPI socket directory: %w", err)
	}
	path := filepath.Join(dir, name+".sock")
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("UAPI socket %s is in use by another process", path)
	}
	// Bound under a temporary name, made private, then renamed into
	// place: the socket is never reachable with a wider mode.
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d.sock", name, os.Getpid()))
	os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("UAPI socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*uapiServer, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("UAPI socket: %w", err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	s := &uapiServer{ln: ln, path: path, conns: map[net.Conn]struct{}{}}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err == nil {
		s.ino = st.Ino
	}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			if s.done {
				s.mu.Unlock()
				c.Close()
				return
			}
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Go(func() {
				dev.IpcHandle(c) // closes c
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			})
		}
	})
	return s, nil
}

// Close stops serving, ends the open conversations and removes the
// socket, unless another process has put its own in its place.
func (s *uapiServer) Close() {
	s.mu.Lock()
	s.done = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.ln.Close()
	s.wg.Wait()
	var st unix.Stat_t
	if err := unix.Lstat(s.path, &st); err == nil && st.Ino == s.ino {
		os.Remove(s.path)
	}
}
