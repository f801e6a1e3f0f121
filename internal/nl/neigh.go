package nl

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Neigh is one entry of a neighbour or bridge FDB dump, with the fields
// weft compares and the ones a delete request needs. For an FDB entry of a
// VXLAN device, IP is the remote VTEP.
type Neigh struct {
	LinkIndex   int
	Family      Family
	Flags       uint8 // NTF_*
	State       uint16
	Type        uint8
	IP          netip.Addr
	hw          [16]byte
	hwLen       uint8
	llIP        netip.Addr // NDA_LLADDR of 4 bytes
	FlagsExt    uint32
	Vlan        uint16
	VNI         uint32
	MasterIndex uint32
}

// HardwareAddr returns the link-layer address (nil if none); it shares no
// memory with n when the caller keeps it.
func (n *Neigh) HardwareAddr() net.HardwareAddr {
	if n.hwLen == 0 {
		return nil
	}
	return net.HardwareAddr(n.hw[:n.hwLen:n.hwLen])
}

// HardwareAddrIs reports whether the link-layer address is mac, without
// allocating.
func (n *Neigh) HardwareAddrIs(mac net.HardwareAddr) bool {
	return int(n.hwLen) == len(mac) && string(n.hw[:n.hwLen]) == string(mac)
}

// SetHardwareAddr sets the link-layer address (at most 16 bytes are kept).
func (n *Neigh) SetHardwareAddr(mac net.HardwareAddr) {
	n.hwLen = uint8(copy(n.hw[:], mac))
}

// netlink returns n as vishvananda's type, for a delete request that must
// name the entry the way the dump showed it.
func (n *Neigh) netlink() *netlink.Neigh {
	out := &netlink.Neigh{
		LinkIndex: n.LinkIndex, Family: int(n.Family), State: int(n.State), Type: int(n.Type),
		Flags: int(n.Flags), FlagsExt: int(n.FlagsExt), Vlan: int(n.Vlan), VNI: int(n.VNI),
		MasterIndex: int(n.MasterIndex), HardwareAddr: append(net.HardwareAddr(nil), n.HardwareAddr()...),
	}
	if n.IP.IsValid() {
		out.IP = net.IP(n.IP.AsSlice())
	}
	if n.llIP.IsValid() {
		out.LLIPAddr = net.IP(n.llIP.AsSlice())
	}
	return out
}

// parseNeigh decodes the payload of an RTM_NEWNEIGH message (struct ndmsg
// and attributes). IPv4-mapped addresses are unmapped.
func parseNeigh(p []byte) (Neigh, bool) {
	const ndmsgLen = 12
	if len(p) < ndmsgLen {
		return Neigh{}, false
	}
	ne := binary.NativeEndian
	n := Neigh{
		Family: Family(p[0]), LinkIndex: int(int32(ne.Uint32(p[4:8]))), State: ne.Uint16(p[8:10]),
		Flags: p[10], Type: p[11],
	}
	Attrs(p[ndmsgLen:], func(typ uint16, v []byte) {
		switch typ {
		case unix.NDA_DST:
			if a, ok := netip.AddrFromSlice(v); ok {
				n.IP = a.Unmap()
			}
		case unix.NDA_LLADDR:
			switch {
			case len(v) == 4:
				n.llIP, _ = netip.AddrFromSlice(v)
			case len(v) <= len(n.hw):
				n.hwLen = uint8(copy(n.hw[:], v))
			}
		case netlink.NDA_FLAGS_EXT:
			if len(v) >= 4 {
				n.FlagsExt = ne.Uint32(v)
			}
		case unix.NDA_VLAN:
			if len(v) >= 2 {
				n.Vlan = ne.Uint16(v)
			}
		case unix.NDA_VNI:
			if len(v) >= 4 {
				n.VNI = ne.Uint32(v)
			}
		case unix.NDA_MASTER:
			if len(v) >= 4 {
				n.MasterIndex = ne.Uint32(v)
			}
		}
	})
	return n, true
}

// NeighList lists the neighbour entries of family (FamilyV4, FamilyV6, or
// FamilyBridge for the FDB) on the device linkIndex (0: every device) into
// out, whose old contents are dropped; pass the previous result to reuse
// its memory.
func (c *Conn) NeighList(linkIndex int, family Family, out []Neigh) ([]Neigh, error) {
	err := c.NeighWalk(linkIndex, family, func() { out = out[:0] }, func(n *Neigh) { out = append(out, *n) })
	return out, err
}

// NeighWalk calls fn with every neighbour entry of family (FamilyV4,
// FamilyV6, or FamilyBridge for the FDB) on the device linkIndex (0: every
// device) while the dump is parsed, so that no list of the entries is
// built: n is only valid during the call. start (nil: none) is called
// before the dump and again before each repetition of a dump the kernel
// reported interrupted, so that the caller can drop what fn gathered.
func (c *Conn) NeighWalk(linkIndex int, family Family, start func(), fn func(n *Neigh)) error {
	if c.s == nil {
		if start != nil {
			start()
		}
		return errClosed
	}
	var body [12]byte // struct ndmsg
	body[0] = uint8(family)
	binary.NativeEndian.PutUint32(body[4:8], uint32(linkIndex))
	// One entry, reused: handing fn the address of a fresh one per entry
	// would move each to the heap.
	var n Neigh
	_, err := retryDump(func() ([]struct{}, error) {
		if start != nil {
			start()
		}
		return nil, c.s.dump(unix.RTM_GETNEIGH, body[:], unix.RTM_NEWNEIGH, func(p []byte) error {
			var ok bool
			if n, ok = parseNeigh(p); !ok || (linkIndex != 0 && n.LinkIndex != linkIndex) || (family != FamilyAll && n.Family != family) {
				return nil
			}
			fn(&n)
			return nil
		})
	})
	return err
}

// NeighSpec is a neighbour or FDB entry to create or replace.
type NeighSpec struct {
	LinkIndex int
	// Family is FamilyBridge for an FDB entry; otherwise the IP's.
	Family Family
	State  uint16 // NUD_*
	Type   uint8  // RTN_*
	Flags  uint8  // NTF_*
	IP     netip.Addr
	MAC    net.HardwareAddr // may be nil
}

// SetNeighs creates or replaces every entry, in order, many requests per
// sendmsg, and returns one error (or nil) per entry. The requests are
// built one batch at a time, so the memory they take does not grow with
// the number of entries.
func (c *Conn) SetNeighs(specs []NeighSpec) []error {
	errs := make([]error, len(specs))
	if len(specs) == 0 {
		return errs
	}
	ops := &c.opBuf
	for start := 0; start < len(specs); start += batchChunk {
		part := specs[start:min(start+batchChunk, len(specs))]
		c.arena, c.ops = c.arena[:0], c.ops[:0]
		for i := range part {
			ops[i] = op{}
			c.arena, ops[i].msg = appendNeighSet(c.arena, &part[i])
			c.ops = append(c.ops, &ops[i])
		}
		c.batch(c.ops)
		for i := range part {
			errs[start+i] = ops[i].err
		}
	}
	c.arena, c.ops = c.arena[:0], c.ops[:0]
	return errs
}

// appendNeighSet appends to b the create-or-replace request for n, without
// allocating, and returns b and the message.
func appendNeighSet(b []byte, n *NeighSpec) ([]byte, []byte) {
	family := n.Family
	if family == FamilyAll {
		family = FamilyOf(n.IP)
	}
	b, start := appendMsg(b, unix.RTM_NEWNEIGH, unix.NLM_F_REQUEST|unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK)
	b = append(b, uint8(family), 0, 0, 0)
	b = binary.NativeEndian.AppendUint32(b, uint32(n.LinkIndex))
	b = binary.NativeEndian.AppendUint16(b, n.State)
	b = append(b, n.Flags, n.Type)
	if ip := n.IP.Unmap(); ip.Is4() {
		a := ip.As4()
		b = appendAttr(b, unix.NDA_DST, a[:])
	} else {
		a := ip.As16()
		b = appendAttr(b, unix.NDA_DST, a[:])
	}
	if n.MAC != nil {
		b = appendAttr(b, unix.NDA_LLADDR, n.MAC)
	}
	return finishMsg(b, start)
}

// DelNeigh deletes the entry n exactly as a dump showed it (for an FDB
// entry: this remote of this MAC, with its VNI and port).
func (c *Conn) DelNeigh(n *Neigh) error {
	if c.h == nil {
		return errClosed
	}
	return c.h.NeighDel(n.netlink())
}
