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

// batchChunk is how many requests go into one sendmsg. The kernel handles
// the messages of one buffer in order and acks each, so a chunk costs one
// send and a few receives instead of a round trip per request.
const batchChunk = 256

// errNoAck is reported for a request whose ack never came.
var errNoAck = errors.New("no acknowledgement from the kernel")

// Batcher sends requests that expect nothing but an ack, many per sendmsg,
// on its own socket. It is not safe for concurrent use.
type Batcher struct {
	s   *vnl.NetlinkSocket
	seq uint32
	buf []byte // requests of one chunk, reused
	rcv []byte // receive buffer, reused
}

// NewBatcher opens a route netlink socket in ns (netns.None(): current).
func NewBatcher(ns netns.NsHandle) (*Batcher, error) {
	s, err := vnl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	// Room for a whole chunk of error acks, which echo the request.
	_ = s.SetReceiveBufferSize(4<<20, true)
	return &Batcher{s: s}, nil
}

// Close closes the socket.
func (b *Batcher) Close() {
	if b.s != nil {
		b.s.Close()
		b.s = nil
	}
}

// Op is one request and, after Do, its result.
type Op struct {
	Req *vnl.NetlinkRequest
	// Msg is the request as bytes (struct nlmsghdr and payload, see
	// AppendMsg), used when Req is nil. Do sets the header's sequence
	// number and adds NLM_F_REQUEST|NLM_F_ACK.
	Msg []byte
	Err error
}

// Do sends every op's request, in order, and sets each op's Err from its
// ack. The returned error is for the socket itself; when it is set, ops
// not yet acknowledged carry an error too.
func (b *Batcher) Do(ops []*Op) error {
	for start := 0; start < len(ops); start += batchChunk {
		part := ops[start:min(start+batchChunk, len(ops))]
		if err := b.chunk(part); err != nil {
			for _, op := range ops[start:] {
				if op.Err == nil || op.Err == errNoAck {
					op.Err = err
				}
			}
			return err
		}
	}
	return nil
}

func (b *Batcher) chunk(part []*Op) error {
	ne := binary.NativeEndian
	first := b.seq + 1
	b.buf = b.buf[:0]
	for _, op := range part {
		b.seq++
		op.Err = errNoAck
		if op.Req != nil {
			op.Req.Seq = b.seq
			op.Req.Flags |= unix.NLM_F_REQUEST | unix.NLM_F_ACK
			b.buf = append(b.buf, op.Req.Serialize()...)
			continue
		}
		start := len(b.buf)
		b.buf = append(b.buf, op.Msg...)
		m := b.buf[start:]
		if len(m) < unix.SizeofNlMsghdr {
			return errors.New("short netlink request")
		}
		ne.PutUint16(m[6:8], ne.Uint16(m[6:8])|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
		ne.PutUint32(m[8:12], b.seq)
	}
	if err := unix.Sendto(b.s.GetFd(), b.buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send netlink batch: %w", err)
	}
	if b.rcv == nil {
		b.rcv = make([]byte, dumpBufSize)
	}
	for pending := len(part); pending > 0; {
		n, err := unix.Read(b.s.GetFd(), b.rcv)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive netlink acks: %w", err)
		}
		for m := b.rcv[:n]; len(m) >= unix.SizeofNlMsghdr; {
			l := int(ne.Uint32(m[0:4]))
			if l < unix.SizeofNlMsghdr || l > len(m) {
				break
			}
			typ, seq, data := ne.Uint16(m[4:6]), ne.Uint32(m[8:12]), m[unix.SizeofNlMsghdr:l]
			m = m[min((l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1), len(m)):]
			if seq-first >= uint32(len(part)) || typ != unix.NLMSG_ERROR || len(data) < 4 {
				continue
			}
			op := part[seq-first]
			if op.Err != errNoAck {
				continue // answered already
			}
			pending--
			if errno := int32(ne.Uint32(data[:4])); errno != 0 {
				op.Err = syscall.Errno(-errno)
			} else {
				op.Err = nil
			}
		}
	}
	return nil
}

// AppendMsg appends a netlink message header of type typ with flags to b
// and returns b and the header's offset, for FinishMsg.
func AppendMsg(b []byte, typ, flags uint16) ([]byte, int) {
	start := len(b)
	b = append(b, make([]byte, unix.SizeofNlMsghdr)...)
	binary.NativeEndian.PutUint16(b[start+4:], typ)
	binary.NativeEndian.PutUint16(b[start+6:], flags)
	return b, start
}

// AppendAttr appends the route attribute typ with value v, padded.
func AppendAttr(b []byte, typ uint16, v []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(unix.SizeofRtAttr+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for pad := (unix.RTA_ALIGNTO - len(v)%unix.RTA_ALIGNTO) % unix.RTA_ALIGNTO; pad > 0; pad-- {
		b = append(b, 0)
	}
	return b
}

// AppendAttrU32 appends a uint32 route attribute.
func AppendAttrU32(b []byte, typ uint16, v uint32) []byte {
	var a [4]byte
	binary.NativeEndian.PutUint32(a[:], v)
	return AppendAttr(b, typ, a[:])
}

// FinishMsg sets the length of the message that starts at start and
// returns b and the message.
func FinishMsg(b []byte, start int) ([]byte, []byte) {
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b, b[start:len(b):len(b)]
}

// AppendNeighSet appends to b the request NeighSetRequest builds (create
// or replace), without allocating, and returns b and the message. ip is
// unmapped; mac may be nil.
func AppendNeighSet(b []byte, linkIndex int, family uint8, state uint16, typ, flags uint8, ip netip.Addr, mac net.HardwareAddr) ([]byte, []byte) {
	b, start := AppendMsg(b, unix.RTM_NEWNEIGH, unix.NLM_F_REQUEST|unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK)
	b = append(b, family, 0, 0, 0)
	b = binary.NativeEndian.AppendUint32(b, uint32(linkIndex))
	b = binary.NativeEndian.AppendUint16(b, state)
	b = append(b, flags, typ)
	if ip.Is4() {
		a := ip.As4()
		b = AppendAttr(b, unix.NDA_DST, a[:])
	} else {
		a := ip.As16()
		b = AppendAttr(b, unix.NDA_DST, a[:])
	}
	if mac != nil {
		b = AppendAttr(b, unix.NDA_LLADDR, mac)
	}
	return FinishMsg(b, start)
}

// NeighSetRequest builds the request of netlink.Handle.NeighSet (create or
// replace) for n: IP neighbours and bridge FDB entries alike.
func NeighSetRequest(n *netlink.Neigh) *vnl.NetlinkRequest {
	req := vnl.NewNetlinkRequest(unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK)
	family := n.Family
	if family == 0 {
		family = vnl.GetIPFamily(n.IP)
	}
	req.AddData(&netlink.Ndmsg{
		Family: uint8(family), Index: uint32(n.LinkIndex), State: uint16(n.State),
		Type: uint8(n.Type), Flags: uint8(n.Flags),
	})
	ip := n.IP.To4()
	if ip == nil {
		ip = n.IP.To16()
	}
	req.AddData(vnl.NewRtAttr(unix.NDA_DST, ip))
	if n.HardwareAddr != nil {
		req.AddData(vnl.NewRtAttr(unix.NDA_LLADDR, []byte(n.HardwareAddr)))
	}
	return req
}
