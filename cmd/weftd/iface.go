package main

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

// ifaceKernel is what choosing the interface reads from netlink: *nl.Conn.
type ifaceKernel interface {
	LinkByName(name string) (nl.Link, error)
	LinkByIndex(index int) (nl.Link, error)
	LinkList() ([]nl.Link, error)
	AddrList(linkIndex int, family nl.Family) ([]nl.Addr, error)
	RouteList(family nl.Family, table uint32, keep func(*nl.Route) bool, out []nl.Route) ([]nl.Route, error)
	RouteTo(dst netip.Addr) (linkIndex int, src netip.Addr, err error)
}

var _ ifaceKernel = (*nl.Conn)(nil)

// chooseInterface picks the underlay interface, in flannel's order of
// preference: --iface (names or addresses, first match wins), --iface-regex
// (names, then addresses), --iface-can-reach, else the interface of the
// default route.
func chooseInterface(c *Config) (backend.ExternalInterface, error) {
	k, err := nl.Open(netns.None())
	if err != nil {
		return backend.ExternalInterface{}, err
	}
	defer k.Close()
	return chooseInterfaceIn(k, c)
}

// chooseInterfaceIn is chooseInterface on the kernel k.
func chooseInterfaceIn(k ifaceKernel, c *Config) (backend.ExternalInterface, error) {
	link, addr, err := findInterface(k, c)
	if err != nil {
		return backend.ExternalInterface{}, err
	}
	ext := backend.ExternalInterface{
		Name:     link.Name,
		Index:    link.Index,
		Addr:     addr,
		PublicIP: addr,
		MTU:      link.MTU,
	}
	if c.PublicIP.IsValid() {
		ext.PublicIP = c.PublicIP
	}
	// The IPv6 underlay address, used only on a dual-stack network.
	if a, err := firstIPv6(k, link); err == nil {
		ext.Addr6, ext.PublicIPv6 = a, a
	}
	if c.PublicIPv6.IsValid() {
		ext.PublicIPv6 = c.PublicIPv6
	}
	if ext.MTU <= 0 {
		return ext, fmt.Errorf("interface %s reports MTU %d", ext.Name, ext.MTU)
	}
	return ext, nil
}

func findInterface(k ifaceKernel, c *Config) (nl.Link, netip.Addr, error) {
	if len(c.Ifaces) > 0 {
		var tried []string
		for _, spec := range c.Ifaces {
			if ip, err := netip.ParseAddr(spec); err == nil {
				if l, err := linkByAddr(k, ip); err == nil {
					return l, ip, nil
				}
				tried = append(tried, spec)
				continue
			}
			l, err := k.LinkByName(spec)
			if err != nil {
				tried = append(tried, spec)
				continue
			}
			a, err := firstIPv4(k, l)
			if err != nil {
				return nl.Link{}, netip.Addr{}, fmt.Errorf("--iface %s: %w", spec, err)
			}
			return l, a, nil
		}
		return nl.Link{}, netip.Addr{}, fmt.Errorf("--iface: no interface found matching %q", tried)
	}
	if len(c.IfaceRegex) > 0 {
		links, err := k.LinkList()
		if err != nil {
			return nl.Link{}, netip.Addr{}, fmt.Errorf("list interfaces: %w", err)
		}
		for _, re := range c.IfaceRegex {
			for _, l := range links {
				if re.MatchString(l.Name) {
					if a, err := firstIPv4(k, l); err == nil {
						return l, a, nil
					}
				}
			}
			for _, l := range links {
				addrs, _ := k.AddrList(l.Index, nl.FamilyV4)
				for _, a := range addrs {
					if ip := a.Prefix.Addr(); re.MatchString(ip.String()) {
						return l, ip, nil
					}
				}
			}
		}
		return nl.Link{}, netip.Addr{}, errors.New("--iface-regex: no interface matches")
	}
	if !c.IfaceReach.IsValid() {
		// The interface of the default route in the main table.
		routes, err := k.RouteList(nl.FamilyV4, unix.RT_TABLE_MAIN, func(r *nl.Route) bool {
			return r.Dst.Bits() == 0 && r.LinkIndex > 0
		}, nil)
		if err == nil {
			for _, r := range routes {
				l, err := k.LinkByIndex(r.LinkIndex)
				if err != nil {
					continue
				}
				a, err := firstIPv4(k, l)
				if err != nil {
					return nl.Link{}, netip.Addr{}, fmt.Errorf("default route interface %s: %w", l.Name, err)
				}
				return l, a, nil
			}
		}
		return nl.Link{}, netip.Addr{}, errors.New("no default route: name the underlay interface with --iface")
	}
	idx, src, err := k.RouteTo(c.IfaceReach)
	if err != nil {
		return nl.Link{}, netip.Addr{}, fmt.Errorf("--iface-can-reach %s: no route: %v", c.IfaceReach, err)
	}
	l, err := k.LinkByIndex(idx)
	if err != nil {
		return nl.Link{}, netip.Addr{}, fmt.Errorf("--iface-can-reach %s: %w", c.IfaceReach, err)
	}
	if src.Is4() {
		return l, src, nil
	}
	a, err := firstIPv4(k, l)
	return l, a, err
}

func linkByAddr(k ifaceKernel, ip netip.Addr) (nl.Link, error) {
	addrs, err := k.AddrList(0, nl.FamilyV4)
	if err != nil {
		return nl.Link{}, err
	}
	for _, a := range addrs {
		if a.Prefix.Addr() == ip {
			return k.LinkByIndex(a.LinkIndex)
		}
	}
	return nl.Link{}, fmt.Errorf("no interface has address %s", ip)
}

// firstIPv6 returns the first global IPv6 address of l: not link-local,
// not tentative (duplicate address detection still running) and not
// deprecated.
func firstIPv6(k ifaceKernel, l nl.Link) (netip.Addr, error) {
	addrs, err := k.AddrList(l.Index, nl.FamilyV6)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list addresses of %s: %w", l.Name, err)
	}
	for _, a := range addrs {
		ip := a.Prefix.Addr()
		if a.Scope == unix.RT_SCOPE_UNIVERSE && ip.IsGlobalUnicast() && !ip.IsLinkLocalUnicast() &&
			a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED|unix.IFA_F_DEPRECATED) == 0 {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("interface %s has no global IPv6 address", l.Name)
}

func firstIPv4(k ifaceKernel, l nl.Link) (netip.Addr, error) {
	addrs, err := k.AddrList(l.Index, nl.FamilyV4)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list addresses of %s: %w", l.Name, err)
	}
	for _, a := range addrs {
		if a.Scope == unix.RT_SCOPE_UNIVERSE {
			return a.Prefix.Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("interface %s has no global IPv4 address", l.Name)
}
