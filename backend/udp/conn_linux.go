package udp

import (
	"encoding/binary"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpSock is the batchConn of a real UDP socket: recvmmsg/sendmmsg through
// the Go poller, UDP_SEGMENT on send and UDP_GRO on receive when the
// kernel has them. Its buffers are set up once; a call allocates nothing.
type udpSock struct {
	f    *os.File
	rc   syscall.RawConn
	port uint16
	gso  bool // UDP_SEGMENT accepted
	gro  bool // UDP_GRO enabled

	r sockBatch
	w sockBatch
}

// mmsghdr is struct mmsghdr.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

// sockBatch is the syscall-side state of one direction.
type sockBatch struct {
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	cmsgs []byte
	cnt   int // messages in this call
	done  int // messages the kernel took
	errno unix.Errno
	fn    func(fd uintptr) bool
	calls int  // read: fn calls in this ReadBatch; more than one means it waited
	idle  bool // read: the last ReadBatch had to wait
	raw   bool // write: this call is short (see sys6)
}

// rawMaxBytes is the most a write may move and still skip the runtime's
// syscall bookkeeping (see sys6): one packet, or a few.
const rawMaxBytes = 16 << 10

// sys6 makes one of the data path's system calls. None of them blocks:
// the descriptors are non-blocking and waiting is the Go poller's job.
//
// With raw set the call skips the runtime's syscall bookkeeping
// (entersyscall/exitsyscall). That is what a lone packet needs: after
// the process went idle, the first call with bookkeeping wakes the
// runtime's monitor thread (sysmon), which costs a futex wake-up on the
// packet's critical path, and sysmon then wakes up every 20 µs for a
// millisecond or more, taking turns on the very CPUs the packet's next
// hops need. In a 2-host lab on 2 cores (weftd per host, pings 10 ms
// apart), raw calls cut the context switches into weftd per ping from
// about 12 to 3.4 (the three hops' own wake-ups) and the median RTT by
// 60-90 µs. The data path uses raw calls while a direction is idle (its
// last read had to wait in the poller) and for writes of at most
// rawMaxBytes. Everything else, the reads of a busy direction and writes
// of super-packets, keeps the bookkeeping, so that the runtime may hand
// the P to other goroutines during a long call, sysmon stays awake to
// preempt a busy loop, and a GC stop need not wait for a call to return.
func sys6(raw bool, trap, a1, a2, a3, a4, a5, a6 uintptr) (uintptr, unix.Errno) {
	if raw {
		r, _, e := unix.RawSyscall6(trap, a1, a2, a3, a4, a5, a6)
		return r, e
	}
	r, _, e := unix.Syscall6(trap, a1, a2, a3, a4, a5, a6)
	return r, e
}

var cmsgSpace = unix.CmsgSpace(4)

func newSockBatch(n, iovs int) sockBatch {
	return sockBatch{
		hdrs:  make([]mmsghdr, n),
		iovs:  make([]unix.Iovec, iovs),
		names: make([]unix.RawSockaddrInet4, n),
		cmsgs: make([]byte, n*cmsgSpace),
	}
}

// openUDP opens the backend's socket, bound to port on every address of
// the current network namespace, and probes UDP GSO and GRO (unless
// offloads is false).
//
// Why a wildcard bind without SO_REUSEADDR or SO_REUSEPORT. The port is
// above 1023, so any local user may bind it. Linux lets a second UDP
// socket bind the same port only if both sockets set SO_REUSEADDR, or
// both set SO_REUSEPORT and belong to the same user; a more specific
// address (a bind to <PublicIP>:8285 next to our 0.0.0.0:8285) would
// then take the peers' datagrams, since the kernel delivers to the most
// specific match. With neither option set on our socket, every other
// bind of the port in the namespace, wildcard or specific, by any user
// (root included) fails with EADDRINUSE. The wildcard is also what
// makes a specific bind conflict: a socket bound to PublicIP alone would
// leave the port free on the host's other addresses, and could not be
// opened at all when PublicIP is a NAT address (--public-ip).
func openUDP(port uint16, offloads bool) (*udpSock, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("open UDP socket: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], 8<<20) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[1], 8<<20)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(port)}); err != nil {
		return nil, fmt.Errorf("bind UDP port %d: %w", port, err)
	}
	s := &udpSock{port: port, r: newSockBatch(rxBatch, rxBatch), w: newSockBatch(txMaxMsgs, 4*txMaxMsgs)}
	if _, err := unix.GetsockoptInt(fd, unix.SOL_UDP, unix.UDP_SEGMENT); err == nil && offloads {
		s.gso = true
	}
	if offloads && unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_GRO, 1) == nil {
		s.gro = true
	}
	s.f = os.NewFile(uintptr(fd), "weft-udp")
	rc, err := s.f.SyscallConn()
	if err != nil {
		s.f.Close()
		ok = true
		return nil, fmt.Errorf("UDP socket raw conn: %w", err)
	}
	s.rc = rc
	s.r.fn = s.recv
	s.w.fn = s.sendFrom
	ok = true
	return s, nil
}

// Close closes the socket; blocked reads and writes return.
func (s *udpSock) Close() error { return s.f.Close() }

func (s *udpSock) recv(fd uintptr) bool {
	b := &s.r
	b.calls++
	raw := b.idle || b.calls > 1
	for {
		n, e := sys6(raw, unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(b.cnt), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			b.done, b.errno = int(n), 0
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			b.done, b.errno = 0, e
			return true
		}
	}
}

// ReadBatch implements batchConn.
func (s *udpSock) ReadBatch(ms []message) (int, error) {
	b := &s.r
	b.cnt = min(len(ms), len(b.hdrs))
	for i := 0; i < b.cnt; i++ {
		b.iovs[i].Base = &ms[i].buf[0]
		b.iovs[i].SetLen(len(ms[i].buf))
		h := &b.hdrs[i].hdr
		*h = unix.Msghdr{}
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Namelen = unix.SizeofSockaddrInet4
		h.Iov = &b.iovs[i]
		h.Iovlen = 1
		h.Control = &b.cmsgs[i*cmsgSpace]
		h.SetControllen(cmsgSpace)
		b.hdrs[i].n = 0
	}
	b.calls = 0
	for {
		if err := s.rc.Read(b.fn); err != nil {
			return 0, err
		}
		if b.errno == 0 {
			break
		}
		if b.errno == unix.ECONNREFUSED || b.errno == unix.EHOSTUNREACH || b.errno == unix.ENETUNREACH {
			continue // a stale ICMP error; not about the next datagram
		}
		return 0, fmt.Errorf("recvmmsg: %w", b.errno)
	}
	b.idle = b.calls > 1
	for i := 0; i < b.done; i++ {
		m := &ms[i]
		m.n = int(b.hdrs[i].n)
		a := b.names[i].Addr
		m.addr = binary.BigEndian.Uint32(a[:])
		m.seg = 0
		if cl := int(b.hdrs[i].hdr.Controllen); cl >= unix.SizeofCmsghdr+4 {
			c := b.cmsgs[i*cmsgSpace:]
			hdr := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
			if hdr.Level == unix.SOL_UDP && hdr.Type == unix.UDP_GRO {
				m.seg = int(binary.NativeEndian.Uint32(c[unix.CmsgLen(0):]))
			}
		}
	}
	return b.done, nil
}

func (s *udpSock) sendFrom(fd uintptr) bool {
	b := &s.w
	for b.done < b.cnt {
		n, e := sys6(b.raw, unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[b.done])), uintptr(b.cnt-b.done), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			b.done += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			b.errno = e
			return true
		}
	}
	return true
}

// WriteBatch implements batchConn. A message the kernel refuses is skipped
// and reported after the rest went out.
func (s *udpSock) WriteBatch(ms []message) error {
	b := &s.w
	var firstErr error
	for len(ms) > 0 {
		b.cnt = min(len(ms), len(b.hdrs))
		iov, bytes := 0, 0
		for i := 0; i < b.cnt; i++ {
			m := &ms[i]
			need := max(1, len(m.vec))
			if iov+need > len(b.iovs) {
				b.cnt = i // the rest goes in the next call
				break
			}
			m.n = 0
			name := &b.names[i]
			name.Family = unix.AF_INET
			binary.BigEndian.PutUint32(name.Addr[:], m.addr)
			binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&name.Port))[:], s.port)
			first := iov
			if m.vec == nil {
				b.iovs[iov].Base = &m.buf[0]
				b.iovs[iov].SetLen(len(m.buf))
				iov++
				bytes += len(m.buf)
			} else {
				for _, v := range m.vec {
					if len(v) == 0 {
						continue
					}
					b.iovs[iov].Base = &v[0]
					b.iovs[iov].SetLen(len(v))
					iov++
					bytes += len(v)
				}
			}
			h := &b.hdrs[i].hdr
			*h = unix.Msghdr{}
			h.Name = (*byte)(unsafe.Pointer(name))
			h.Namelen = unix.SizeofSockaddrInet4
			h.Iov = &b.iovs[first]
			h.SetIovlen(iov - first)
			if m.seg > 0 {
				c := b.cmsgs[i*cmsgSpace : (i+1)*cmsgSpace]
				clear(c)
				ch := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
				ch.Level = unix.SOL_UDP
				ch.Type = unix.UDP_SEGMENT
				ch.SetLen(unix.CmsgLen(2))
				binary.NativeEndian.PutUint16(c[unix.CmsgLen(0):], uint16(m.seg))
				h.Control = &c[0]
				h.SetControllen(unix.CmsgSpace(2))
			}
		}
		b.done, b.errno, b.raw = 0, 0, bytes <= rawMaxBytes
		for b.done < b.cnt {
			b.errno = 0
			if err := s.rc.Write(b.fn); err != nil {
				return err
			}
			if b.errno != 0 {
				// The message at b.done failed; skip it.
				if ms[b.done].seg > 0 && (b.errno == unix.EIO || b.errno == unix.EINVAL) {
					return errGSO
				}
				if firstErr == nil {
					firstErr = fmt.Errorf("sendmmsg: %w", b.errno)
				}
				ms[b.done].n = -1
				b.done++
			}
		}
		ms = ms[b.cnt:]
	}
	return firstErr
}
