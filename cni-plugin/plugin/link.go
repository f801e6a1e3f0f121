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
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/cni-plugin/ipam"
	"github.com/weftnet/weft/internal/nl"
)

// ForeignAddressError is why ensureBridge refuses an existing bridge: it
// holds addresses (IPv4, or global IPv6) outside the lease subnet of their
// family that weft did not put there,
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

// planBridgeAddrs decides what to do with the addresses of one family a
// bridge holds, given the gateway address it should hold (want, inside lease) and
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
// exactly the gateway address among its IPv4 addresses and, with dual
// stack, exactly the IPv6 gateway among its global IPv6 addresses. It
// refuses an existing bridge that holds addresses it must not remove (see
// planBridgeAddrs) before changing any address, and returns the addresses
// it removed. Concurrent plugin runs may race here; every step tolerates the
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
	// Plan every family before changing anything, so that a foreign
	// address of either family leaves the bridge untouched.
	type plan struct {
		f      family
		want   netip.Prefix
		have   []netip.Prefix
		remove []netip.Prefix
	}
	ours, err := readGateways(store, s.Bridge)
	if err != nil {
		return nil, nil, err
	}
	var plans []plan
	for _, f := range s.families() {
		have, err := bridgeAddrs(br, f.gateway.Is6())
		if err != nil {
			return nil, nil, fmt.Errorf("list addresses of %s: %w", s.Bridge, err)
		}
		want := netip.PrefixFrom(f.gateway, f.subnet.Bits())
		remove, err := planBridgeAddrs(s.Bridge, have, want, f.subnet, ours)
		if err != nil {
			return nil, nil, err
		}
		plans = append(plans, plan{f, want, have, remove})
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
	var removed []netip.Prefix
	for _, p := range plans {
		v6 := p.f.gateway.Is6()
		if v6 {
			// A host whose default turns IPv6 off must not leave the
			// bridge without it.
			if err := writeSysctl("/proc/sys/net/ipv6/conf/"+s.Bridge+"/disable_ipv6", "0"); err != nil {
				return nil, nil, fmt.Errorf("enable IPv6 on bridge %s: %w", s.Bridge, err)
			}
		}
		// The record comes first: a gateway on the bridge that is not in
		// it would be refused after the next lease change.
		if !slices.Contains(ours, p.want) || len(p.remove) > 0 {
			if err := recordGateway(store, s.Bridge, p.want, p.remove); err != nil {
				return nil, nil, err
			}
		}
		for _, r := range p.remove {
			// The connected route of the old address goes with it.
			if err := netlink.AddrDel(br, &netlink.Addr{IPNet: ipNet(r)}); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
				return nil, nil, fmt.Errorf("remove old address %s from %s: %w", r, s.Bridge, err)
			}
		}
		removed = append(removed, p.remove...)
		if !slices.Contains(p.have, p.want) {
			addr := &netlink.Addr{IPNet: ipNet(p.want)}
			if v6 {
				// The gateway is ours alone (the lease is this node's):
				// no duplicate address detection, so that it answers
				// neighbour solicitations from the first pod at once
				// instead of staying tentative for a second or more.
				addr.Flags = unix.IFA_F_NODAD
			}
			if err := netlink.AddrAdd(br, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
				return nil, nil, fmt.Errorf("add %s to %s: %w", p.want, s.Bridge, err)
			}
		}
	}
	return br, removed, nil
}

// bridgeAddrs lists the bridge's addresses of one family that weft may
// manage: for IPv6 the global ones, since the kernel's own link-local
// address is none of weft's business.
func bridgeAddrs(br netlink.Link, v6 bool) ([]netip.Prefix, error) {
	fam := netlink.FAMILY_V4
	if v6 {
		fam = netlink.FAMILY_V6
	}
	// Pods coming and going change addresses in the namespace all the
	// time (their host ends' link-local ones), which interrupts dumps.
	addrs, err := nl.RetryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(br, fam) })
	if err != nil {
		return nil, err
	}
	have := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if !ok || (v6 && (p.Addr().IsLinkLocalUnicast() || !p.Addr().Is6())) {
			continue
		}
		have = append(have, p)
	}
	return have, nil
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
// pods need to reach anything beyond the bridge, and with v6 IPv6
// forwarding too. The kernel forwards IPv6 only while
// net.ipv6.conf.all.forwarding is set, and setting it sets every
// interface's forwarding flag; an interface with accept_ra=1 then stops
// taking router advertisements (accept_ra=2 keeps them), which
// Documentation/cni.md points out.
func ensureForwarding(v6 bool) error {
	if err := writeSysctl("/proc/sys/net/ipv4/ip_forward", "1"); err != nil {
		return fmt.Errorf("enable ip forwarding: %w", err)
	}
	if v6 {
		if err := writeSysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1"); err != nil {
			return fmt.Errorf("enable IPv6 forwarding: %w", err)
		}
	}
	return nil
}

// writeSysctl sets a sysctl of the calling thread's network namespace
// unless it already has the value.
func writeSysctl(path, value string) error {
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) == value {
		return nil
	}
	return os.WriteFile(path, []byte(value), 0o644)
}
