package nl

import (
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Addr is an address configured on a device.
type Addr struct {
	LinkIndex int
	// Prefix is the local address with its prefix length (192.0.2.11/24),
	// not masked.
	Prefix netip.Prefix
	// Peer is the other end of a point-to-point address, with its prefix
	// length; invalid for an ordinary address.
	Peer netip.Prefix
	// Scope is the address scope (RT_SCOPE_UNIVERSE for a global one).
	Scope uint8
	// Flags are the IFA_F_* flags (IFA_F_TENTATIVE while IPv6 duplicate
	// address detection runs, for example).
	Flags int
}

// OnLink returns the prefix the address puts on-link, masked: its own
// prefix, or for a point-to-point address only its peer's.
func (a Addr) OnLink() netip.Prefix {
	if a.Peer.IsValid() {
		return a.Peer.Masked()
	}
	return a.Prefix.Masked()
}

// OnLink returns what every address of addrs puts on-link (Addr.OnLink).
func OnLink(addrs []Addr) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		if p := a.OnLink(); p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

func prefixOf(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits != a.BitLen() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(a, ones)
}

func ipNetOf(p netip.Prefix) *net.IPNet {
	if !p.IsValid() {
		return nil
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// AddrList lists the addresses of family (FamilyAll: every family) on the
// device linkIndex (0: on every device).
func (c *Conn) AddrList(linkIndex int, family Family) ([]Addr, error) {
	if c.h == nil {
		return nil, errClosed
	}
	var link netlink.Link
	if linkIndex != 0 {
		link = ref(linkIndex)
	}
	as, err := retryDump(func() ([]netlink.Addr, error) { return c.h.AddrList(link, int(family)) })
	if err != nil {
		return nil, err
	}
	out := make([]Addr, 0, len(as))
	for _, a := range as {
		p := prefixOf(a.IPNet)
		if !p.IsValid() || (linkIndex != 0 && a.LinkIndex != linkIndex) {
			continue
		}
		out = append(out, Addr{LinkIndex: a.LinkIndex, Prefix: p, Peer: prefixOf(a.Peer), Scope: uint8(a.Scope), Flags: a.Flags})
	}
	return out, nil
}

// AddAddr adds the address p (with its prefix length) to the device.
func (c *Conn) AddAddr(linkIndex int, p netip.Prefix) error {
	if c.h == nil {
		return errClosed
	}
	return c.h.AddrAdd(ref(linkIndex), &netlink.Addr{IPNet: ipNetOf(p)})
}

// DelAddr removes the address a as AddrList showed it.
func (c *Conn) DelAddr(a Addr) error {
	if c.h == nil {
		return errClosed
	}
	return c.h.AddrDel(ref(a.LinkIndex), &netlink.Addr{IPNet: ipNetOf(a.Prefix), Peer: ipNetOf(a.Peer), Scope: int(a.Scope)})
}
