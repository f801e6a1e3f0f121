package udp

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tunFile is an attached TUN queue and the offloads it got.
type tunFile struct {
	*os.File
	vnetHdr  bool
	offloads []string // active TUN offloads, e.g. "csum", "tso4"

	rc     syscall.RawConn
	rbufs  [][]byte
	rsizes []int
	rn     int
	rcalls int  // readQueued calls in this ReadBatch; more than one means it waited
	ridle  bool // the last ReadBatch had to wait
	rerr   error
	rfn    func(fd uintptr) bool

	wiov []unix.Iovec
	wn   int
	wraw bool // this write is short (see sys6)
	werr unix.Errno
	wfn  func(fd uintptr) bool
}

// Writev implements vectorWriter: one packet from several buffers.
func (t *tunFile) Writev(iov [][]byte) (int, error) {
	t.wiov = t.wiov[:0]
	bytes := 0
	for _, v := range iov {
		if len(v) == 0 {
			continue
		}
		t.wiov = append(t.wiov, unix.Iovec{Base: &v[0]})
		t.wiov[len(t.wiov)-1].SetLen(len(v))
		bytes += len(v)
	}
	if len(t.wiov) == 0 {
		return 0, nil
	}
	t.wn, t.werr, t.wraw = 0, 0, bytes <= rawMaxBytes
	if err := t.rc.Write(t.wfn); err != nil {
		return 0, err
	}
	if t.werr != 0 {
		return 0, fmt.Errorf("write TUN: %w", t.werr)
	}
	return t.wn, nil
}

func (t *tunFile) writev(fd uintptr) bool {
	for {
		n, e := sys6(t.wraw, unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&t.wiov[0])), uintptr(len(t.wiov)), 0, 0, 0)
		switch e {
		case 0:
			t.wn = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			t.werr = e
			return true
		}
	}
}

// ReadBatch implements batchReader: it reads until the queue is empty or
// bufs are full. If the queue is empty at first, it waits in the Go poller
// until the device is readable and then returns the first packet alone:
// after a wait it is most likely a lone packet, which should leave before
// another read finds the queue empty. Packets queued behind it are read
// by the next call, without a wait.
func (t *tunFile) ReadBatch(bufs [][]byte, sizes []int) (int, error) {
	t.rbufs, t.rsizes, t.rn, t.rerr, t.rcalls = bufs, sizes, 0, nil, 0
	if err := t.rc.Read(t.rfn); err != nil {
		return 0, err
	}
	t.ridle = t.rcalls > 1
	if t.rn == 0 && t.rerr != nil {
		return 0, t.rerr
	}
	return t.rn, nil
}

func (t *tunFile) readQueued(fd uintptr) bool {
	t.rcalls++
	limit := len(t.rbufs)
	if t.rcalls > 1 {
		limit = 1 // called again after a wait
	}
	raw := t.ridle || t.rcalls > 1
	for t.rn < limit {
		b := t.rbufs[t.rn]
		n, e := sys6(raw, unix.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
		switch e {
		case 0:
			t.rsizes[t.rn] = int(n)
			t.rn++
		case unix.EINTR:
		case unix.EAGAIN:
			return t.rn > 0
		default:
			t.rerr = fmt.Errorf("read TUN: %w", e)
			return true
		}
	}
	return true
}

// openTUN attaches to (creating if needed) the persistent TUN device name
// in the current network namespace, asking for a virtio-net header and
// TCP segmentation offload, and falling back step by step to a plain TUN.
// With offloads false it opens a plain TUN, as flannel does.
func openTUN(name string, offloads bool) (*tunFile, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	t := &tunFile{}
	setIff := func(flags uint16) error {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint16(flags)
		return unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	base := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if !offloads {
		if err := setIff(base); err != nil {
			return nil, fmt.Errorf("attach TUN %s: %w", name, err)
		}
	} else if err := setIff(base | unix.IFF_VNET_HDR); err == nil {
		t.vnetHdr = true
	} else if err2 := setIff(base); err2 != nil {
		return nil, fmt.Errorf("attach TUN %s: %w", name, errors.Join(err, err2))
	}
	// Who may attach. A TUN device with neither an owner nor a group set
	// lets any process that can open /dev/net/tun (mode 0666 on most
	// distributions) attach to it: the kernel asks for CAP_NET_ADMIN only
	// when the caller's euid differs from a set owner, or when the caller
	// is not in a set group. The device is persistent, so at each weftd
	// restart, or while weftd is stopped, any local user could attach,
	// read the pods' outgoing traffic and write packets with any source
	// into the host. With the owner set to our euid (root, or the user a
	// capability-holding weftd runs as) only that user and holders of
	// CAP_NET_ADMIN may attach; a group set by whoever created the device
	// before cannot widen that, since the kernel requires both to match.
	// Attached, we may change the owner of a device someone made earlier
	// with another owner (ip tuntap add weft0 mode tun user nobody). The
	// kernel cannot unset an owner, hence our own euid rather than none.
	if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, os.Geteuid()); err != nil {
		return nil, fmt.Errorf("set owner of TUN %s: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return nil, fmt.Errorf("make TUN %s persistent: %w", name, err)
	}
	if !t.vnetHdr {
		// A persistent device keeps the offloads a previous owner
		// enabled; without a virtio-net header we could not tell a
		// partial checksum or a super-packet from a finished packet.
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
			return nil, fmt.Errorf("clear offloads of TUN %s: %w", name, err)
		}
	} else {
		for _, try := range []struct {
			flags int
			names []string
		}{
			// USO needs both USO4 and USO6; IPv6 is never routed
			// into the device, so only IPv4 super-packets arrive.
			{unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO_ECN | unix.TUN_F_USO4 | unix.TUN_F_USO6,
				[]string{"csum", "tso4", "tso-ecn", "uso4"}},
			{unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO_ECN, []string{"csum", "tso4", "tso-ecn"}},
			{unix.TUN_F_CSUM | unix.TUN_F_TSO4, []string{"csum", "tso4"}},
			{unix.TUN_F_CSUM, []string{"csum"}},
			{0, nil},
		} {
			if unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, try.flags) == nil {
				t.offloads = try.names
				break
			}
		}
		t.offloads = append([]string{"vnet-hdr"}, t.offloads...)
	}
	t.File = os.NewFile(uintptr(fd), "/dev/net/tun:"+name)
	rc, err := t.File.SyscallConn()
	if err != nil {
		t.File.Close()
		ok = true
		return nil, fmt.Errorf("TUN raw conn: %w", err)
	}
	t.rc = rc
	t.rfn = t.readQueued
	t.wfn = t.writev
	t.wiov = make([]unix.Iovec, 0, 80)
	ok = true
	return t, nil
}

func (t *tunFile) String() string { return strings.Join(t.offloads, ",") }
