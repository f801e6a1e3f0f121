package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/backend"
)

// chooseInterface picks the underlay interface, in flannel's order of
// preference: --iface (names or addresses, first match wins), --iface-regex
// (names, then addresses), --iface-can-reach, else the interface of the
// default route.
func chooseInterface(c *Config) (backend.ExternalInterface, error) {
	link, addr, err := findInterface(c)
	if err != nil {
		return backend.ExternalInterface{}, err
	}
	ext := backend.ExternalInterface{
		Name:     link.Attrs().Name,
		Index:    link.Attrs().Index,
		Addr:     addr,
		PublicIP: addr,
		MTU:      link.Attrs().MTU,
	}
	if c.PublicIP.IsValid() {
		ext.PublicIP = c.PublicIP
	}
	if ext.MTU <= 0 {
		return ext, fmt.Errorf("interface %s reports MTU %d", ext.Name, ext.MTU)
	}
	return ext, nil
}

func findInterface(c *Config) (netlink.Link, netip.Addr, error) {
	if len(c.Ifaces) > 0 {
		var tried []string
		for _, spec := range c.Ifaces {
			if ip, err := netip.ParseAddr(spec); err == nil {
				if l, err := linkByAddr(ip); err == nil {
					return l, ip, nil
				}
				tried = append(tried, spec)
				continue
			}
			l, err := netlink.LinkByName(spec)
			if err != nil {
				tried = append(tried, spec)
				continue
			}
			a, err := firstIPv4(l)
			if err != nil {
				return nil, netip.Addr{}, fmt.Errorf("--iface %s: %w", spec, err)
			}
			return l, a, nil
		}
		return nil, netip.Addr{}, fmt.Errorf("--iface: no interface found matching %q", tried)
	}
	if len(c.IfaceRegex) > 0 {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, netip.Addr{}, fmt.Errorf("list interfaces: %w", err)
		}
		for _, re := range c.IfaceRegex {
			for _, l := range links {
				if re.MatchString(l.Attrs().Name) {
					if a, err := firstIPv4(l); err == nil {
						return l, a, nil
					}
				}
			}
			for _, l := range links {
				addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
				for _, a := range addrs {
					if re.MatchString(a.IP.String()) {
						ip, _ := netip.AddrFromSlice(a.IP.To4())
						return l, ip, nil
					}
				}
			}
		}
		return nil, netip.Addr{}, errors.New("--iface-regex: no interface matches")
	}
	var dst net.IP
	if c.IfaceReach.IsValid() {
		dst = c.IfaceReach.AsSlice()
	} else {
		// The interface of the default route in the main table.
		routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
		if err == nil {
			for _, r := range routes {
				if (r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) && r.LinkIndex > 0 {
					l, err := netlink.LinkByIndex(r.LinkIndex)
					if err != nil {
						continue
					}
					a, err := firstIPv4(l)
					if err != nil {
						return nil, netip.Addr{}, fmt.Errorf("default route interface %s: %w", l.Attrs().Name, err)
					}
					return l, a, nil
				}
			}
		}
		return nil, netip.Addr{}, errors.New("no default route: name the underlay interface with --iface")
	}
	routes, err := netlink.RouteGet(dst)
	if err != nil || len(routes) == 0 {
		return nil, netip.Addr{}, fmt.Errorf("--iface-can-reach %s: no route: %v", c.IfaceReach, err)
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return nil, netip.Addr{}, fmt.Errorf("--iface-can-reach %s: %w", c.IfaceReach, err)
	}
	if src, ok := netip.AddrFromSlice(routes[0].Src.To4()); ok && routes[0].Src != nil {
		return l, src, nil
	}
	a, err := firstIPv4(l)
	return l, a, err
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

func linkByAddr(ip netip.Addr) (netlink.Link, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP.To4()); ok && got == ip {
			return netlink.LinkByIndex(a.LinkIndex)
		}
	}
	return nil, fmt.Errorf("no interface has address %s", ip)
}

func firstIPv4(l netlink.Link) (netip.Addr, error) {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	for _, a := range addrs {
		if a.Scope != int(netlink.SCOPE_UNIVERSE) {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("interface %s has no global IPv4 address", l.Attrs().Name)
}
