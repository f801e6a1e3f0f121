package plugin

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/cni-plugin/ipam"
)

// ForeignAddressError is why ensureBridge refuses an existing bridge: it
// holds IPv4 addresses outside the lease subnet that weft did not put there,
// such as the host's own address on a bridge the config happens to name.
type ForeignAddressError struct {
	Bridge string
	Addrs  []netip.Prefix
	Lease  netip.Prefix
}

func (e *ForeignAddressError) Error() string {
	addrs := make([]string, len(e.Addrs))
	for i, a := range e.Addrs {
		addrs[i] = a.String()
	}
	return fmt.Sprintf("bridge %s holds %s, outside the lease subnet %s and not put there by weft; "+
		"refusing to use it, since removing the address could cut off the host "+
		"(set \"bridge\" to a bridge of weft's own, or remove the address)",
		e.Bridge, strings.Join(addrs, ", "), e.Lease)
}

// planBridgeAddrs decides what to do with the IPv4 addresses a bridge
// holds, given the gateway address it should hold (want, inside lease) and
// the gateways weft put on it before (ours). It returns the addresses to
// remove:
//
//   - want stays;
//   - an address inside the lease goes: the lease is this node's alone, so
//     it is a stale gateway of ours (e.g. a lease that grew), and left in
//     place it could collide with a pod's address;
//   - an earlier gateway of ours outside the lease goes (weftd re-leased);
//   - anything else is someone else's, and the bridge is refused with a
//     *ForeignAddressError before anything is changed.
func planBridgeAddrs(bridge string, have []netip.Prefix, want, lease netip.Prefix, ours []netip.Prefix) (remove []netip.Prefix, err error) {
	var foreign []netip.Prefix
	for _, p := range have {
		switch {
		case p == want:
		case lease.Contains(p.Addr()), slices.Contains(ours, p):
			remove = append(remove, p)
		default:
			foreign = append(foreign, p)
		}
	}
	if len(foreign) > 0 {
		return nil, &ForeignAddressError{Bridge: bridge, Addrs: foreign, Lease: lease}
	}
	return remove, nil
}

// ensureBridge makes the bridge exist, be up, carry the MTU and hold
// exactly the gateway address among its IPv4 addresses. It refuses an
// existing bridge that holds addresses it must not remove (see
// planBridgeAddrs) before changing anything, and returns the addresses it
// removed. Concurrent plugin runs may race here; every step tolerates the
// other having done it already.
func ensureBridge(s *Settings, store *ipam.Store) (*netlink.Bridge, []netip.Prefix, error) {
	br, err := bridgeByName(s.Bridge)
	if err != nil {
		if !isNotFound(err) {
			return nil, nil, err
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
			return nil, nil, fmt.Errorf("create bridge %s: %w", s.Bridge, err)
		}
		if br, err = bridgeByName(s.Bridge); err != nil {
			return nil, nil, err
		}
	}
	addrs, err := netlink.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		return nil, nil, fmt.Errorf("list addresses of %s: %w", s.Bridge, err)
	}
	want := netip.PrefixFrom(s.Gateway, s.Subnet.Bits())
	have := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok {
			have = append(have, p)
		}
	}
	ours, err := readGateways(store, s.Bridge)
	if err != nil {
		return nil, nil, err
	}
	remove, err := planBridgeAddrs(s.Bridge, have, want, s.Subnet, ours)
	if err != nil {
		return nil, nil, err
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(br); err != nil {
			return nil, nil, fmt.Errorf("set bridge %s up: %w", s.Bridge, err)
		}
	}
	if br.Attrs().MTU != s.MTU {
		if err := netlink.LinkSetMTU(br, s.MTU); err != nil {
			return nil, nil, fmt.Errorf("set bridge %s mtu %d: %w", s.Bridge, s.MTU, err)
		}
	}
	// The record comes first: a gateway on the bridge that is not in it
	// would be refused after the next lease change.
	if !slices.Contains(ours, want) || len(remove) > 0 {
		if err := recordGateway(store, s.Bridge, want, remove); err != nil {
			return nil, nil, err
		}
	}
	for _, p := range remove {
		// The connected route of the old address goes with it.
		if err := netlink.AddrDel(br, &netlink.Addr{IPNet: ipNet(p)}); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
			return nil, nil, fmt.Errorf("remove old address %s from %s: %w", p, s.Bridge, err)
		}
	}
	if !slices.Contains(have, want) {
		addr := &netlink.Addr{IPNet: ipNet(want)}
		if err := netlink.AddrAdd(br, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, nil, fmt.Errorf("add %s to %s: %w", want, s.Bridge, err)
		}
	}
	return br, remove, nil
}

// bridgeRecord lists the gateway addresses weft has put on a bridge, so
// that after a lease change it can tell its own old gateway from an address
// someone else put there.
type bridgeRecord struct {
	Gateways []netip.Prefix `json:"gateways"`
}

// readGateways reads the record of bridge; a missing one is empty.
func readGateways(store *ipam.Store, bridge string) ([]netip.Prefix, error) {
	b, err := os.ReadFile(store.MarkerPath("bridge", bridge))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read gateways of %s: %w", bridge, err)
	}
	var r bridgeRecord
	if err := json.Unmarshal(b, &r); err != nil {
		// Written by rename, so never partial; an unreadable record only
		// makes the plugin more careful (old gateways look foreign).
		return nil, nil
	}
	return r.Gateways, nil
}

// recordGateway adds want to the record of bridge and drops the addresses
// about to be removed, under the store lock.
func recordGateway(store *ipam.Store, bridge string, want netip.Prefix, removed []netip.Prefix) error {
	return store.Do(func(*ipam.Tx) error {
		gws, err := readGateways(store, bridge)
		if err != nil {
			return err
		}
		gws = slices.DeleteFunc(gws, func(p netip.Prefix) bool { return p == want || slices.Contains(removed, p) })
		gws = append(gws, want)
		b, _ := json.Marshal(bridgeRecord{Gateways: gws})
		path := store.MarkerPath("bridge", bridge)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fmt.Errorf("record gateway of %s: %w", bridge, err)
		}
		if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
			return fmt.Errorf("record gateway of %s: %w", bridge, err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			return fmt.Errorf("record gateway of %s: %w", bridge, err)
		}
		return nil
	})
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
