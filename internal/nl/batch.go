package nl

import (
	"errors"
	"fmt"
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
	bySeq := make(map[uint32]*Op, len(part))
	var buf []byte
	for _, op := range part {
		b.seq++
		op.Req.Seq = b.seq
		op.Req.Flags |= unix.NLM_F_REQUEST | unix.NLM_F_ACK
		op.Err = errNoAck
		bySeq[op.Req.Seq] = op
		buf = append(buf, op.Req.Serialize()...)
	}
	if err := unix.Sendto(b.s.GetFd(), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send netlink batch: %w", err)
	}
	for pending := len(part); pending > 0; {
		msgs, _, err := b.s.Receive()
		if err != nil {
			return fmt.Errorf("receive netlink acks: %w", err)
		}
		for _, m := range msgs {
			op := bySeq[m.Header.Seq]
			if op == nil || m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			delete(bySeq, m.Header.Seq)
			pending--
			if errno := int32(vnl.NativeEndian().Uint32(m.Data[:4])); errno != 0 {
				op.Err = syscall.Errno(-errno)
			} else {
				op.Err = nil
			}
		}
	}
	return nil
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
