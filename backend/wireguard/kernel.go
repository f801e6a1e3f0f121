package wireguard

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/internal/nl"
)

// kernelDriver programs the kernel's WireGuard device (a "wireguard"
// link) through wgctrl's generic netlink client. The kernel keeps the
// device, its peers and their sessions when weftd stops, so a restart
// costs no packets.
type kernelDriver struct {
	name   string
	mtu    int
	ns     netns.NsHandle
	logger *slog.Logger

	client *wgctrl.Client
}

var _ driver = (*kernelDriver)(nil)

func (d *kernelDriver) Name() string { return DriverKernel }

// Ensure implements driver: it creates the wireguard link if it is
// missing (replacing a device of that name of another kind, such as the
// userspace driver's TUN) and sets key and port where they differ.
func (d *kernelDriver) Ensure(key wgtypes.Key, port int) (bool, error) {
	c, err := nl.Open(d.ns)
	if err != nil {
		return false, fmt.Errorf("kernel driver: %w", err)
	}
	defer c.Close()
	fresh := false
	l, err := c.LinkByName(d.name)
	if err == nil && l.Kind != "wireguard" {
		d.logger.Info("replacing device of another kind", "device", d.name, "kind", l.Kind)
		if err := c.DelLink(l.Index); err != nil {
			return false, fmt.Errorf("delete %s (%s): %w", d.name, l.Kind, err)
		}
		err = fmt.Errorf("%s: %w", d.name, nl.ErrLinkNotFound)
	}
	if errors.Is(err, nl.ErrLinkNotFound) {
		if err := c.AddLink(nl.Link{Name: d.name, Kind: "wireguard", MTU: d.mtu}); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) {
				return false, fmt.Errorf("create %s: %w (the kernel refused a wireguard link)", d.name, ErrNoKernelModule)
			}
			return false, fmt.Errorf("create %s: %w", d.name, err)
		}
		fresh = true
	} else if err != nil {
		return false, fmt.Errorf("find %s: %w", d.name, err)
	}
	if d.client == nil {
		if err := nl.Do(d.ns, func() error {
			var err error
			d.client, err = wgctrl.New()
			return err
		}); err != nil {
			return fresh, fmt.Errorf("wireguard netlink client: %w", err)
		}
	}
	dev, err := d.client.Device(d.name)
	if err != nil {
		return fresh, fmt.Errorf("read %s: %w", d.name, err)
	}
	if dev.PrivateKey == key && dev.ListenPort == port {
		return fresh, nil
	}
	if err := d.client.ConfigureDevice(d.name, wgtypes.Config{PrivateKey: &key, ListenPort: &port}); err != nil {
		return fresh, fmt.Errorf("configure %s: listen port %d or private key refused: %w", d.name, port, err)
	}
	return fresh, nil
}

// Peers implements driver.
func (d *kernelDriver) Peers() ([]DevicePeer, error) {
	if d.client == nil {
		return nil, errors.New("kernel driver: not set up")
	}
	dev, err := d.client.Device(d.name)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", d.name, err)
	}
	return fromWgtypes(dev.Peers), nil
}

func fromWgtypes(ps []wgtypes.Peer) []DevicePeer {
	out := make([]DevicePeer, 0, len(ps))
	for _, p := range ps {
		dp := DevicePeer{PublicKey: p.PublicKey, PSK: p.PresharedKey, Keepalive: p.PersistentKeepaliveInterval, LastHandshake: p.LastHandshakeTime}
		if p.Endpoint != nil {
			dp.Endpoint = unmapAddrPort(p.Endpoint.AddrPort())
		}
		for _, a := range p.AllowedIPs {
			if pr, ok := netipPrefix(a.IP, a.Mask); ok {
				dp.AllowedIPs = append(dp.AllowedIPs, pr)
			}
		}
		out = append(out, dp)
	}
	return out
}

func netipPrefix(ip []byte, mask []byte) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Prefix{}, false
	}
	ones := 0
	for _, b := range mask {
		for i := 7; i >= 0; i-- {
			if b&(1<<i) != 0 {
				ones++
			}
		}
	}
	a = a.Unmap()
	if len(mask) == 16 && a.Is4() {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones), true
}

// Configure implements driver. The kernel starts handshakes on the first
// packet to a peer; it offers no way to start one from here.
func (d *kernelDriver) Configure(changes []wgtypes.PeerConfig) error {
	if d.client == nil {
		return errors.New("kernel driver: not set up")
	}
	if len(changes) == 0 {
		return nil
	}
	if err := d.client.ConfigureDevice(d.name, wgtypes.Config{Peers: changes}); err != nil {
		return fmt.Errorf("configure %s peers: %w", d.name, err)
	}
	return nil
}

// Close implements driver; the device stays.
func (d *kernelDriver) Close() error {
	if d.client != nil {
		err := d.client.Close()
		d.client = nil
		return err
	}
	return nil
}
