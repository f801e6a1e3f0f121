package plugin

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
)

// ensureBridge makes the bridge exist, be up, carry the MTU and hold exactly
// the gateway address among its IPv4 addresses. Concurrent plugin runs may
// race here; every step tolerates the other having done it already.
func ensureBridge(s *Settings) (*netlink.Bridge, error) {
	br, err := bridgeByName(s.Bridge)
	if err != nil {
		if !isNotFound(err) {
			return nil, err
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = s.Bridge
		attrs.MTU = s.MTU
		attrs.Flags = net.FlagUp
		// An explicit MAC pins the gateway's address: otherwise the bridge
		// takes the lowest MAC of its ports, and pods' ARP entries for the
		// gateway go stale whenever a port comes or goes.
		attrs.HardwareAddr = randomMAC()
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w", s.Bridge, err)
		}
		if br, err = bridgeByName(s.Bridge); err != nil {
			return nil, err
		}
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(br); err != nil {
			return nil, fmt.Errorf("set bridge %s up: %w", s.Bridge, err)
		}
	}
	if br.Attrs().MTU != s.MTU {
		if err := netlink.LinkSetMTU(br, s.MTU); err != nil {
			return nil, fmt.Errorf("set bridge %s mtu %d: %w", s.Bridge, s.MTU, err)
		}
	}
	addrs, err := netlink.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", s.Bridge, err)
	}
	want := netip.PrefixFrom(s.Gateway, s.Subnet.Bits())
	have := false
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if ok && p == want {
			have = true
			continue
		}
		// weftd re-leased: the old gateway address goes so that the
		// connected route of the old subnet does not linger.
		if err := netlink.AddrDel(br, &a); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
			return nil, fmt.Errorf("remove old address %s from %s: %w", a.IPNet, s.Bridge, err)
		}
	}
	if !have {
		addr := &netlink.Addr{IPNet: ipNet(want)}
		if err := netlink.AddrAdd(br, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("add %s to %s: %w", want, s.Bridge, err)
		}
	}
	return br, nil
}

// randomMAC returns a random unicast, locally administered MAC address.
func randomMAC() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	rand.Read(m)
	m[0] = m[0]&^0x01 | 0x02
	return m
}

func bridgeByName(name string) (*netlink.Bridge, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, err
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("%s exists but is a %s, not a bridge", name, l.Type())
	}
	return br, nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// deleteLinkByName removes a link if it exists.
func deleteLinkByName(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !isNotFound(err) && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// ensureForwarding turns on IPv4 forwarding in the plugin's namespace, which
// pods need to reach anything beyond the bridge.
func ensureForwarding() error {
	const p = "/proc/sys/net/ipv4/ip_forward"
	b, err := os.ReadFile(p)
	if err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable ip forwarding: %w", err)
	}
	return nil
}
