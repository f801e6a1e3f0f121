package nl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	vnl "github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Why a raw dumper. vishvananda's dumps copy every reply into a fresh
// 64 KiB buffer, split it into a slice of messages, parse each message's
// attributes into another slice and then build a large struct per object.
// With thousands of peers each reconcile pass left tens of MB of garbage,
// which raised the GC goal and with it weftd's RSS. Dumper reads replies
// into one buffer it keeps and hands each message's payload to a callback
// that picks out only the fields it needs.

// dumpBufSize holds the largest datagram a dump reply uses (the kernel
// sizes dump skbs to at most 32 KiB) with room to spare.
const dumpBufSize = 64 << 10

// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER from a type.
const nlaTypeMask = 0x3fff

// Dumper runs netlink dumps on its own route socket. It is not safe for
// concurrent use.
type Dumper struct {
	s   *vnl.NetlinkSocket
	buf []byte
	req []byte
	seq uint32
}

// NewDumper opens a route netlink socket in ns (netns.None(): current).
func NewDumper(ns netns.NsHandle) (*Dumper, error) {
	s, err := vnl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	return &Dumper{s: s}, nil
}

// Close closes the socket.
func (d *Dumper) Close() {
	if d != nil && d.s != nil {
		d.s.Close()
		d.s = nil
	}
}

// Dump sends a dump request of type reqType whose body (the family header
// and any attributes) is body, and calls fn with the payload of every reply
// message of type msgType. The payload is only valid during the call. An
// error from fn ends the dump (the rest of the reply is read and dropped)
// and is returned. A dump the kernel flagged as interrupted returns
// netlink.ErrDumpInterrupted after the whole reply was read, so it can be
// retried with Dump (the function).
func (d *Dumper) Dump(reqType uint16, body []byte, msgType uint16, fn func(payload []byte) error) error {
	if d.s == nil {
		return errors.New("netlink dumper is closed")
	}
	if d.buf == nil {
		d.buf = make([]byte, dumpBufSize)
	}
	d.seq++
	seq := d.seq
	ne := binary.NativeEndian
	d.req = d.req[:0]
	d.req = ne.AppendUint32(d.req, uint32(unix.SizeofNlMsghdr+len(body)))
	d.req = ne.AppendUint16(d.req, reqType)
	d.req = ne.AppendUint16(d.req, unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	d.req = ne.AppendUint32(d.req, seq)
	d.req = ne.AppendUint32(d.req, 0)
	d.req = append(d.req, body...)
	fd := d.s.GetFd()
	if err := unix.Sendto(fd, d.req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send netlink dump request: %w", err)
	}
	var fnErr error
	intr := false
	for {
		n, _, rflags, _, err := unix.Recvmsg(fd, d.buf, nil, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive netlink dump: %w", err)
		}
		if rflags&unix.MSG_TRUNC != 0 {
			return errors.New("receive netlink dump: message truncated")
		}
		done, err := walkMessages(d.buf[:n], seq, msgType, &intr, func(p []byte) {
			if fnErr == nil {
				fnErr = fn(p)
			}
		})
		if err != nil {
			return err
		}
		if done {
			break
		}
	}
	if fnErr != nil {
		return fnErr
	}
	if intr {
		return netlink.ErrDumpInterrupted
	}
	return nil
}

// walkMessages walks the netlink messages in b, passing the payloads of
// those of type msgType and sequence seq to fn. It reports whether the
// dump ended (NLMSG_DONE or an error).
func walkMessages(b []byte, seq uint32, msgType uint16, intr *bool, fn func([]byte)) (done bool, err error) {
	ne := binary.NativeEndian
	for len(b) >= unix.SizeofNlMsghdr {
		l := int(ne.Uint32(b[0:4]))
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return true, errors.New("malformed netlink message")
		}
		typ := ne.Uint16(b[4:6])
		flags := ne.Uint16(b[6:8])
		mseq := ne.Uint32(b[8:12])
		payload := b[unix.SizeofNlMsghdr:l]
		next := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if next > len(b) {
			next = len(b)
		}
		b = b[next:]
		if mseq != seq {
			continue // left over from an earlier request
		}
		if flags&unix.NLM_F_DUMP_INTR != 0 {
			*intr = true
		}
		switch typ {
		case unix.NLMSG_DONE, unix.NLMSG_ERROR:
			if len(payload) >= 4 {
				if errno := int32(ne.Uint32(payload[:4])); errno != 0 {
					return true, syscall.Errno(-errno)
				}
			}
			return true, nil
		case msgType:
			fn(payload)
		}
	}
	return false, nil
}

// Attrs calls fn for every route attribute (rtattr) in b, with its type
// (flag bits masked off) and value. It stops at the first malformed one.
func Attrs(b []byte, fn func(typ uint16, val []byte)) {
	ne := binary.NativeEndian
	for len(b) >= unix.SizeofRtAttr {
		l := int(ne.Uint16(b[0:2]))
		if l < unix.SizeofRtAttr || l > len(b) {
			return
		}
		fn(ne.Uint16(b[2:4])&nlaTypeMask, b[unix.SizeofRtAttr:l])
		next := (l + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1)
		if next > len(b) {
			return
		}
		b = b[next:]
	}
}

// Neigh is one entry of a neighbour or bridge FDB dump, with the fields
// weft compares and the ones a delete request needs.
type Neigh struct {
	LinkIndex   int
	Family      uint8
	Flags       uint8
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

// Netlink returns n as vishvananda's type, for a delete request that must
// name the entry the way the dump showed it.
func (n *Neigh) Netlink() *netlink.Neigh {
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

// ParseNeigh decodes the payload of an RTM_NEWNEIGH message (struct ndmsg
// and attributes). IPv4-mapped addresses are unmapped.
func ParseNeigh(p []byte) (Neigh, bool) {
	const ndmsgLen = 12
	if len(p) < ndmsgLen {
		return Neigh{}, false
	}
	ne := binary.NativeEndian
	n := Neigh{
		Family: p[0], LinkIndex: int(int32(ne.Uint32(p[4:8]))), State: ne.Uint16(p[8:10]),
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

// NeighList lists the neighbour entries of family (unix.AF_INET, or
// unix.AF_BRIDGE for the FDB) on the device linkIndex, like
// netlink.Handle.NeighList, into out (reused; its old contents are
// dropped). It retries interrupted dumps.
func (d *Dumper) NeighList(linkIndex int, family uint8, out []Neigh) ([]Neigh, error) {
	var body [12]byte
	body[0] = family
	binary.NativeEndian.PutUint32(body[4:8], uint32(linkIndex))
	return Dump(func() ([]Neigh, error) {
		out = out[:0]
		err := d.Dump(unix.RTM_GETNEIGH, body[:], unix.RTM_NEWNEIGH, func(p []byte) error {
			n, ok := ParseNeigh(p)
			if !ok || (linkIndex != 0 && n.LinkIndex != linkIndex) || (family != 0 && n.Family != family) {
				return nil
			}
			out = append(out, n)
			return nil
		})
		return out, err
	})
}
