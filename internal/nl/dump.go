package nl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	vnl "github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Why a raw socket. vishvananda's dumps copy every reply into a fresh
// 64 KiB buffer, split it into a slice of messages, parse each message's
// attributes into another slice and then build a large struct per object.
// With thousands of peers each reconcile pass left tens of MB of garbage,
// which raised the GC goal and with it weftd's RSS. sock reads replies into
// one buffer it keeps and hands each message's payload to a callback that
// picks out only the fields it needs (Route, Neigh). The same socket sends
// batches of requests (batch.go).

// dumpBufSize holds the largest datagram a dump reply uses (the kernel
// sizes dump skbs to at most 32 KiB) with room to spare.
const dumpBufSize = 64 << 10

// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER from a type.
const nlaTypeMask = 0x3fff

// sock is one raw route netlink socket. It is not safe for concurrent use.
type sock struct {
	s   *vnl.NetlinkSocket
	seq uint32
	rcv []byte // receive buffer, reused
	req []byte // dump request, reused
	buf []byte // requests of one batch chunk, reused
}

// openSock opens a route netlink socket in ns (netns.None(): current).
func openSock(ns netns.NsHandle) (*sock, error) {
	s, err := vnl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	// Room for a whole chunk of error acks, which echo the request.
	_ = s.SetReceiveBufferSize(4<<20, true)
	return &sock{s: s}, nil
}

func (s *sock) close() {
	if s.s != nil {
		s.s.Close()
		s.s = nil
	}
}

func (s *sock) recvBuf() []byte {
	if s.rcv == nil {
		s.rcv = make([]byte, dumpBufSize)
	}
	return s.rcv
}

// dump sends a dump request of type reqType whose body (the family header
// and any attributes) is body, and calls fn with the payload of every reply
// message of type msgType. The payload is only valid during the call. An
// error from fn ends the dump (the rest of the reply is read and dropped)
// and is returned. A dump the kernel flagged as interrupted returns
// ErrDumpInterrupted after the whole reply was read.
func (s *sock) dump(reqType uint16, body []byte, msgType uint16, fn func(payload []byte) error) error {
	if s.s == nil {
		return errClosed
	}
	buf := s.recvBuf()
	s.seq++
	seq := s.seq
	ne := binary.NativeEndian
	s.req = s.req[:0]
	s.req = ne.AppendUint32(s.req, uint32(unix.SizeofNlMsghdr+len(body)))
	s.req = ne.AppendUint16(s.req, reqType)
	s.req = ne.AppendUint16(s.req, unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	s.req = ne.AppendUint32(s.req, seq)
	s.req = ne.AppendUint32(s.req, 0)
	s.req = append(s.req, body...)
	fd := s.s.GetFd()
	if err := unix.Sendto(fd, s.req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send netlink dump request: %w", err)
	}
	var fnErr error
	intr := false
	for {
		n, _, rflags, _, err := unix.Recvmsg(fd, buf, nil, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive netlink dump: %w", err)
		}
		if rflags&unix.MSG_TRUNC != 0 {
			return errors.New("receive netlink dump: message truncated")
		}
		done, err := walkMessages(buf[:n], seq, msgType, &intr, func(p []byte) {
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
		return ErrDumpInterrupted
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

// Dumper runs raw dumps on its own route socket, for reading what Conn
// does not parse (tests use it to read a TUN device's owner). It is not
// safe for concurrent use.
type Dumper struct {
	s *sock
}

// NewDumper opens a route netlink socket in ns (netns.None(): current).
func NewDumper(ns netns.NsHandle) (*Dumper, error) {
	s, err := openSock(ns)
	if err != nil {
		return nil, err
	}
	return &Dumper{s: s}, nil
}

// Close closes the socket. It is idempotent.
func (d *Dumper) Close() {
	if d != nil && d.s != nil {
		d.s.close()
		d.s = nil
	}
}

// Dump sends a dump request of type reqType whose body (the family header
// and any attributes) is body, and calls fn with the payload of every reply
// message of type msgType. The payload is only valid during the call. An
// error from fn ends the dump and is returned. Unlike Conn's methods, Dump
// does not retry: a dump the kernel flagged as interrupted returns
// ErrDumpInterrupted after the whole reply was read, and the caller decides
// whether to run it again.
func (d *Dumper) Dump(reqType uint16, body []byte, msgType uint16, fn func(payload []byte) error) error {
	if d.s == nil {
		return errClosed
	}
	return d.s.dump(reqType, body, msgType, fn)
}
