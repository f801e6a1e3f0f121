package nl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// batchChunk is how many requests go into one sendmsg. The kernel handles
// the messages of one buffer in order and acks each, so a chunk costs one
// send and a few receives instead of a round trip per request.
const batchChunk = 256

// errNoAck is reported for a request whose ack never came.
var errNoAck = errors.New("no acknowledgement from the kernel")

// op is one request that expects nothing but an ack and, after do, its
// result.
type op struct {
	// msg is the request as bytes (struct nlmsghdr and payload, see
	// appendMsg). do sets the header's sequence number and adds
	// NLM_F_REQUEST|NLM_F_ACK.
	msg []byte
	err error
}

// do sends every op's request, in order, many per sendmsg, and sets each
// op's err from its ack. The returned error is for the socket itself; when
// it is set, ops not yet acknowledged carry an error too.
func (s *sock) do(ops []*op) error {
	for start := 0; start < len(ops); start += batchChunk {
		part := ops[start:min(start+batchChunk, len(ops))]
		if err := s.chunk(part); err != nil {
			for _, o := range ops[start:] {
				if o.err == nil || o.err == errNoAck {
					o.err = err
				}
			}
			return err
		}
	}
	return nil
}

func (s *sock) chunk(part []*op) error {
	if s.s == nil {
		return errClosed
	}
	ne := binary.NativeEndian
	first := s.seq + 1
	s.buf = s.buf[:0]
	for _, o := range part {
		s.seq++
		o.err = errNoAck
		start := len(s.buf)
		s.buf = append(s.buf, o.msg...)
		m := s.buf[start:]
		if len(m) < unix.SizeofNlMsghdr {
			return errors.New("short netlink request")
		}
		ne.PutUint16(m[6:8], ne.Uint16(m[6:8])|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
		ne.PutUint32(m[8:12], s.seq)
	}
	if err := unix.Sendto(s.s.GetFd(), s.buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send netlink batch: %w", err)
	}
	rcv := s.recvBuf()
	for pending := len(part); pending > 0; {
		n, err := unix.Read(s.s.GetFd(), rcv)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive netlink acks: %w", err)
		}
		for m := rcv[:n]; len(m) >= unix.SizeofNlMsghdr; {
			l := int(ne.Uint32(m[0:4]))
			if l < unix.SizeofNlMsghdr || l > len(m) {
				break
			}
			typ, seq, data := ne.Uint16(m[4:6]), ne.Uint32(m[8:12]), m[unix.SizeofNlMsghdr:l]
			m = m[min((l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1), len(m)):]
			if seq-first >= uint32(len(part)) || typ != unix.NLMSG_ERROR || len(data) < 4 {
				continue
			}
			o := part[seq-first]
			if o.err != errNoAck {
				continue // answered already
			}
			pending--
			if errno := int32(ne.Uint32(data[:4])); errno != 0 {
				o.err = syscall.Errno(-errno)
			} else {
				o.err = nil
			}
		}
	}
	return nil
}

// appendMsg appends a netlink message header of type typ with flags to b
// and returns b and the header's offset, for finishMsg.
func appendMsg(b []byte, typ, flags uint16) ([]byte, int) {
	start := len(b)
	b = append(b, make([]byte, unix.SizeofNlMsghdr)...)
	binary.NativeEndian.PutUint16(b[start+4:], typ)
	binary.NativeEndian.PutUint16(b[start+6:], flags)
	return b, start
}

// appendAttr appends the route attribute typ with value v, padded.
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(unix.SizeofRtAttr+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for pad := (unix.RTA_ALIGNTO - len(v)%unix.RTA_ALIGNTO) % unix.RTA_ALIGNTO; pad > 0; pad-- {
		b = append(b, 0)
	}
	return b
}

// appendAttrU32 appends a uint32 route attribute.
func appendAttrU32(b []byte, typ uint16, v uint32) []byte {
	var a [4]byte
	binary.NativeEndian.PutUint32(a[:], v)
	return appendAttr(b, typ, a[:])
}

// finishMsg sets the length of the message that starts at start and
// returns b and the message.
func finishMsg(b []byte, start int) ([]byte, []byte) {
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b, b[start:len(b):len(b)]
}
