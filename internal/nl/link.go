package nl

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// ErrLinkNotFound is wrapped by the error of a link lookup that found no
// such device.
var ErrLinkNotFound = errors.New("link not found")

// Link is a network device as weft sees it.
type Link struct {
	Index int
	Name  string
	// Kind is the device type ("vxlan", "veth", "tuntap", "bridge",
	// "device" for a physical one, ...).
	Kind         string
	MTU          int
	HardwareAddr net.HardwareAddr
	// Up is IFF_UP: the device is administratively up.
	Up bool
	// VXLAN holds the attributes of a "vxlan" device; nil for other kinds.
	VXLAN *VXLAN
}

// VXLAN is what weft sets and compares on a VXLAN device.
type VXLAN struct {
	VNI      int
	Port     int
	Learning bool
	GBP      bool
	// VtepDevIndex is the underlay device (0: none).
	VtepDevIndex int
	// SrcAddr is the local VTEP address (invalid: none).
	SrcAddr netip.Addr
	// Group is the multicast group or default remote (invalid: none).
	Group netip.Addr
}

func linkOf(l netlink.Link) Link {
	a := l.Attrs()
	out := Link{
		Index: a.Index, Name: a.Name, Kind: l.Type(), MTU: a.MTU, Up: a.Flags&net.FlagUp != 0,
		HardwareAddr: append(net.HardwareAddr(nil), a.HardwareAddr...),
	}
	if vx, ok := l.(*netlink.Vxlan); ok {
		out.VXLAN = &VXLAN{
			VNI: vx.VxlanId, Port: vx.Port, Learning: vx.Learning, GBP: vx.GBP, VtepDevIndex: vx.VtepDevIndex,
			SrcAddr: addrOf(vx.SrcAddr), Group: addrOf(vx.Group),
		}
	}
	return out
}

// addrOf converts ip (nil: invalid), unmapped.
func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// ipOf converts a (invalid: nil).
func ipOf(a netip.Addr) net.IP {
	if !a.IsValid() {
		return nil
	}
	return net.IP(a.AsSlice())
}

// ref names the device index for vishvananda's requests, which only read
// the index.
func ref(index int) netlink.Link {
	return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}}
}

func linkErr(what string, err error) error {
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return fmt.Errorf("%s: %w", what, ErrLinkNotFound)
	}
	return err
}

// LinkByName looks up a device; an absent one is ErrLinkNotFound.
func (c *Conn) LinkByName(name string) (Link, error) {
	if c.h == nil {
		return Link{}, errClosed
	}
	l, err := c.h.LinkByName(name)
	if err != nil {
		return Link{}, linkErr(name, err)
	}
	return linkOf(l), nil
}

// LinkByIndex looks up a device; an absent one is ErrLinkNotFound.
func (c *Conn) LinkByIndex(index int) (Link, error) {
	if c.h == nil {
		return Link{}, errClosed
	}
	l, err := c.h.LinkByIndex(index)
	if err != nil {
		return Link{}, linkErr(fmt.Sprintf("interface index %d", index), err)
	}
	return linkOf(l), nil
}

// LinkList lists every device.
func (c *Conn) LinkList() ([]Link, error) {
	if c.h == nil {
		return nil, errClosed
	}
	ls, err := retryDump(c.h.LinkList)
	if err != nil {
		return nil, err
	}
	out := make([]Link, len(ls))
	for i, l := range ls {
		out[i] = linkOf(l)
	}
	return out, nil
}

// AddLink creates the device l describes, down: a VXLAN device (l.VXLAN
// set) or a WireGuard one (l.Kind "wireguard"); Index and Up are ignored.
func (c *Conn) AddLink(l Link) error {
	if c.h == nil {
		return errClosed
	}
	la := netlink.NewLinkAttrs()
	la.Name = l.Name
	la.MTU = l.MTU
	la.HardwareAddr = l.HardwareAddr
	if l.VXLAN == nil && l.Kind == "wireguard" {
		return c.h.LinkAdd(&netlink.Wireguard{LinkAttrs: la})
	}
	if l.VXLAN == nil {
		return fmt.Errorf("create %s: only vxlan and wireguard devices are supported", l.Name)
	}
	v := l.VXLAN
	return c.h.LinkAdd(&netlink.Vxlan{
		LinkAttrs:    la,
		VxlanId:      v.VNI,
		VtepDevIndex: v.VtepDevIndex,
		SrcAddr:      ipOf(v.SrcAddr),
		Group:        ipOf(v.Group),
		Port:         v.Port,
		Learning:     v.Learning,
		GBP:          v.GBP,
	})
}

// DelLink deletes the device; the kernel drops its addresses, routes,
// neighbour and FDB entries with it.
func (c *Conn) DelLink(index int) error {
	if c.h == nil {
		return errClosed
	}
	return c.h.LinkDel(ref(index))
}

// SetLinkUp sets the device administratively up.
func (c *Conn) SetLinkUp(index int) error {
	if c.h == nil {
		return errClosed
	}
	return c.h.LinkSetUp(ref(index))
}

// SetLinkMTU sets the device's MTU.
func (c *Conn) SetLinkMTU(index, mtu int) error {
	if c.h == nil {
		return errClosed
	}
	return c.h.LinkSetMTU(ref(index), mtu)
}

// SetLinkHardwareAddr sets the device's MAC address.
func (c *Conn) SetLinkHardwareAddr(index int, mac net.HardwareAddr) error {
	if c.h == nil {
		return errClosed
	}
	return c.h.LinkSetHardwareAddr(ref(index), mac)
}
