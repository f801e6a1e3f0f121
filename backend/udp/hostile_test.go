package udp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/backend/udp/packet"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/subnet"
)

// Tests of what a hostile local user can do to the backend: a process
// running as nobody (uid 65534), with no capabilities, in the same network
// namespace as weftd.

// nobodyEnv names the environment variable that turns the test binary into
// the unprivileged helper: it holds the helper's actions, separated by ";".
const nobodyEnv = "WEFT_UDP_TEST_AS_NOBODY"

const nobodyID = 65534

func TestMain(m *testing.M) {
	if acts := os.Getenv(nobodyEnv); acts != "" {
		os.Exit(nobodyHelper(acts))
	}
	os.Exit(m.Run())
}

// nobodyHelper runs in the child. Each action prints one line, "<action>
// <result>", where result is "ok" or the errno's name. Actions:
//
//	netns <inode>          exit 2 unless in that network namespace
//	id                     print euid and effective capabilities
//	bind <ip:port> <opts>  bind a UDP socket; opts: "-", or a comma
//	                       list of reuseaddr, reuseport
//	tun <name>             TUNSETIFF on fd 3, an unattached /dev/net/tun
//	                       opened by the parent in the test namespace
func nobodyHelper(acts string) int {
	for _, a := range strings.Split(acts, ";") {
		f := strings.Fields(a)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "netns":
			var st unix.Stat_t
			if err := unix.Stat("/proc/self/ns/net", &st); err != nil || strconv.FormatUint(st.Ino, 10) != f[1] {
				fmt.Printf("netns mismatch\n")
				return 2
			}
			fmt.Printf("netns ok\n")
		case "id":
			capEff := "?"
			if b, err := os.ReadFile("/proc/self/status"); err == nil {
				for _, l := range strings.Split(string(b), "\n") {
					if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
						capEff = strings.TrimSpace(v)
					}
				}
			}
			fmt.Printf("id %d %s\n", os.Geteuid(), capEff)
		case "bind":
			fmt.Printf("%s %s\n", a, errName(bindAs(f[1], f[2])))
		case "tun":
			ifr, err := unix.NewIfreq(f[1])
			if err == nil {
				ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
				err = unix.IoctlIfreq(3, unix.TUNSETIFF, ifr)
			}
			fmt.Printf("%s %s\n", a, errName(err))
		default:
			fmt.Printf("%s unknown\n", a)
			return 2
		}
	}
	return 0
}

func bindAs(addr, opts string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	family := unix.AF_INET
	var sa unix.Sockaddr
	if ap.Addr().Is6() {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if family == unix.AF_INET6 {
		// Dual-stack, so that [::] would also take IPv4 datagrams.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return err
		}
	}
	for _, o := range strings.Split(opts, ",") {
		switch o {
		case "reuseaddr":
			err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		case "reuseport":
			err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}
		if err != nil {
			return err
		}
	}
	return unix.Bind(fd, sa)
}

func errName(err error) string {
	var en unix.Errno
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &en) && unix.ErrnoName(en) != "":
		return unix.ErrnoName(en)
	default:
		return strings.ReplaceAll(err.Error(), " ", "_")
	}
}

var nobodyBin = struct {
	sync.Once
	path string
	err  error
}{}

// nobodyBinary returns a copy of the test binary that uid 65534 can run:
// go test keeps the binary in a directory only root may enter.
func nobodyBinary(t *testing.T) string {
	t.Helper()
	nobodyBin.Do(func() {
		self, err := os.Executable()
		if err != nil {
			nobodyBin.err = err
			return
		}
		dir, err := os.MkdirTemp("", "weft-udp-nobody")
		if err != nil {
			nobodyBin.err = err
			return
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			nobodyBin.err = err
			return
		}
		in, err := os.Open(self)
		if err != nil {
			nobodyBin.err = err
			return
		}
		defer in.Close()
		p := filepath.Join(dir, "udp.test")
		out, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
		if err != nil {
			nobodyBin.err = err
			return
		}
		_, err = io.Copy(out, in)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		nobodyBin.path, nobodyBin.err = p, err
	})
	if nobodyBin.err != nil {
		t.Fatalf("copy the test binary for uid %d: %v", nobodyID, nobodyBin.err)
	}
	return nobodyBin.path
}

// testNS is a throwaway network namespace with lo up and eth0 holding
// 192.0.2.1/24 (one end of a veth pair whose other end, eth1, is in the
// same namespace), deleted when the test ends.
type testNS struct {
	name string
	h    netns.NsHandle
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root to create network namespaces and to run a helper as uid 65534")
	}
	if testing.Short() {
		t.Skip("kernel test skipped in -short mode")
	}
	var rnd [3]byte
	rand.Read(rnd[:])
	n := &testNS{name: "wud" + hex.EncodeToString(rnd[:]) + "x"}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if n.h.IsOpen() {
			n.h.Close()
		}
		if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.name, err, out)
		}
	})
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "eth0", "type", "veth", "peer", "name", "eth1"},
		{"addr", "add", "192.0.2.1/24", "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"link", "set", "eth1", "up"},
	} {
		n.ip(t, args...)
	}
	h, err := netns.GetFromName(n.name)
	if err != nil {
		t.Fatal(err)
	}
	n.h = h
	return n
}

// ip runs "ip -n <ns> args..." and fails the test on error.
func (n *testNS) ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// asNobody runs the helper as uid and gid 65534 with no supplementary
// groups (so no capabilities) inside n, handing it extra as fd 3 and up,
// and returns its result lines keyed by action. It checks that the helper
// really ran unprivileged in n.
func (n *testNS) asNobody(t *testing.T, extra []*os.File, acts ...string) map[string]string {
	t.Helper()
	var st unix.Stat_t
	if err := nl.Do(n.h, func() error { return unix.Stat("/proc/thread-self/ns/net", &st) }); err != nil {
		t.Fatal(err)
	}
	acts = append([]string{fmt.Sprintf("netns %d", st.Ino), "id"}, acts...)
	cmd := exec.Command(nobodyBinary(t))
	cmd.Env = append(os.Environ(), nobodyEnv+"="+strings.Join(acts, ";"))
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyID, Gid: nobodyID, Groups: []uint32{}}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Started from a thread inside n, the child is born in n (it could not
	// enter it itself without CAP_SYS_ADMIN).
	if err := nl.Do(n.h, cmd.Run); err != nil {
		t.Fatalf("helper as uid %d: %v\nstdout: %s\nstderr: %s", nobodyID, err, stdout.String(), stderr.String())
	}
	res := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		res[l[:i]] = l[i+1:]
	}
	if res["netns"] != "ok" {
		t.Fatalf("helper did not run in the test namespace: %q", stdout.String())
	}
	if id := res["id "+strconv.Itoa(nobodyID)]; id != "0000000000000000" {
		t.Fatalf("helper is not unprivileged uid %d: %q", nobodyID, stdout.String())
	}
	return res
}

// startInNS sets up a udp backend in n as weftd does (New, Setup,
// SetDesired) without running it. Stop it with b.closeDataPath.
func startInNS(t *testing.T, n *testNS, network string) *udpBackend {
	t.Helper()
	cfg, err := subnet.ParseConfig([]byte(network))
	if err != nil {
		t.Fatal(err)
	}
	c := backendConfig(cfg, nil)
	c.Netns = n.h
	return startWith(t, c)
}

// startWith is startInNS with a backend config of the caller's.
func startWith(t *testing.T, c backend.Config) *udpBackend {
	t.Helper()
	bi, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	b := bi.(*udpBackend)
	if _, err := b.Setup(context.Background()); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(b.closeDataPath)
	return b
}

// closeDataPath closes the TUN, the socket and the netlink connection
// (what Run returning does).
func (b *udpBackend) closeDataPath() {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	b.stopDataPath(true)
	b.closeKernel()
}

// TestKernelPortCannotBeStolen binds the backend's port as weftd does and
// then, as uid 65534, tries to bind the same port on the host's address
// and on the wildcard, with and without SO_REUSEADDR and SO_REUSEPORT:
// every attempt must fail with EADDRINUSE, while another port binds fine.
func TestKernelPortCannotBeStolen(t *testing.T) {
	n := newTestNS(t)
	startInNS(t, n, `{"Network":"198.18.0.0/16","Backend":{"Type":"udp"}}`)
	var acts []string
	for _, addr := range []string{"192.0.2.1", "0.0.0.0", "127.0.0.1", "[::]"} {
		for _, opts := range []string{"-", "reuseaddr", "reuseport", "reuseaddr,reuseport"} {
			acts = append(acts, fmt.Sprintf("bind %s:%d %s", addr, DefaultPort, opts))
		}
	}
	control := fmt.Sprintf("bind 192.0.2.1:%d reuseaddr", DefaultPort+1)
	res := n.asNobody(t, nil, append(acts, control)...)
	if res[control] != "ok" {
		t.Fatalf("uid %d cannot bind any UDP port here (%s: %s); the test proves nothing", nobodyID, control, res[control])
	}
	for _, a := range acts {
		got := res[a]
		t.Logf("uid %d: %s: %s", nobodyID, a, got)
		if strings.HasPrefix(a, "bind [::]") && got == "EAFNOSUPPORT" {
			continue // no IPv6 in this kernel
		}
		if got != "EADDRINUSE" {
			t.Errorf("uid %d: %s: %s, want EADDRINUSE", nobodyID, a, got)
		}
	}
}

// TestKernelTUNOnlyForPrivileged sets the backend up, detaches it (as a
// stopped or restarting weftd is; the device persists) and has uid 65534
// try to attach to weft0: it must be refused. Once on a device the backend
// created, once on one made beforehand for uid and gid 65534 (as "ip
// tuntap add weft0 mode tun user nobody group nogroup" would), which the
// backend must adopt in place (no re-creation, so no lost packets) and
// take back. The helper gets an unattached /dev/net/tun fd from the test,
// because /dev/net/tun may be 0600 here while most distributions make it
// 0666.
func TestKernelTUNOnlyForPrivileged(t *testing.T) {
	for _, tc := range []struct {
		name     string
		preOwned bool
	}{{"created-by-weft", false}, {"pre-owned-by-nobody", true}} {
		t.Run(tc.name, func(t *testing.T) {
			n := newTestNS(t)
			var before tunLink
			if tc.preOwned {
				n.ip(t, "tuntap", "add", "dev", DeviceName, "mode", "tun", "user", strconv.Itoa(nobodyID), "group", strconv.Itoa(nobodyID))
				var ok bool
				var err error
				before, ok, err = findLink(n.h, DeviceName)
				if err != nil || !ok {
					t.Fatalf("find pre-created %s: %v %v", DeviceName, ok, err)
				}
				if before.owner != nobodyID || before.group != nobodyID {
					t.Skipf("this kernel does not report a TUN device's owner and group over netlink (%+v)", before)
				}
			}
			b := startInNS(t, n, `{"Network":"198.18.0.0/16","Backend":{"Type":"udp"}}`)
			after, ok, err := findLink(n.h, DeviceName)
			if err != nil || !ok {
				t.Fatalf("find %s after Setup: %v %v", DeviceName, ok, err)
			}
			if after.owner != int64(os.Geteuid()) {
				t.Errorf("%s owner %d after Setup, want our euid %d", DeviceName, after.owner, os.Geteuid())
			}
			if tc.preOwned && after.index != before.index {
				t.Errorf("%s was re-created (index %d -> %d), want it adopted", DeviceName, before.index, after.index)
			}
			b.mu.Lock()
			b.tun.Close()
			b.tun = nil
			b.mu.Unlock()
			var tunFD *os.File
			if err := nl.Do(n.h, func() error {
				var err error
				tunFD, err = os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer tunFD.Close()
			attach := "tun " + DeviceName
			res := n.asNobody(t, []*os.File{tunFD}, attach)
			if res[attach] != "EPERM" {
				t.Fatalf("uid %d attaching to the detached %s: %s, want EPERM", nobodyID, DeviceName, res[attach])
			}
		})
	}
}

// TestKernelRepairKeepsPort deletes weft0 behind a running backend's back:
// the data path restarts on a new device, but the socket stays open the
// whole time, so the port is never free for another user to take. The
// receive loop must read from it again afterwards.
func TestKernelRepairKeepsPort(t *testing.T) {
	n := newTestNS(t)
	b := startInNS(t, n, `{"Network":"198.18.0.0/16","Backend":{"Type":"udp"}}`)
	b.SetDesired(subnet.Lease{Subnet: netip.MustParsePrefix("198.18.1.0/24")}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	stop := sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	defer stop()
	sockOf := func() *udpSock {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.sock
	}
	waitUntil(t, "first reconcile", func() bool { return !b.Status().LastReconcile.IsZero() })
	sock := sockOf()
	n.ip(t, "link", "del", DeviceName)
	waitUntil(t, "device repair", func() bool {
		if b.Status().Repairs["device"] < 1 {
			return false
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.tun != nil
	})
	if s := sockOf(); s != sock {
		t.Fatalf("the socket was re-opened (%p -> %p): the port was free in between", sock, s)
	}
	// From our own address, which is no peer's: counted as unknown-peer
	// once the receive loop reads the socket again.
	var c *net.UDPConn
	if err := nl.Do(n.h, func() (err error) {
		c, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: DefaultPort})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitUntil(t, "a datagram read after the repair", func() bool {
		c.Write(ipPacket("198.18.2.7", "198.18.1.5", packet.ProtoUDP, []byte("x"), 64))
		return b.Status().DataPath.Drops["unknown-peer"] > 0
	})
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if s := sockOf(); s != nil {
		t.Fatal("socket still open after Run returned")
	}
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tunLink is what a link dump says about a TUN device.
type tunLink struct {
	index        int
	owner, group int64 // -1 when not set
}

// findLink looks for the device name in ns with one link dump; the kernel
// reports a TUN device's owner and group only when they are set.
func findLink(ns netns.NsHandle, name string) (tunLink, bool, error) {
	d, err := nl.NewDumper(ns)
	if err != nil {
		return tunLink{}, false, err
	}
	defer d.Close()
	var l tunLink
	found := false
	err = d.Dump(unix.RTM_GETLINK, make([]byte, unix.SizeofIfInfomsg), unix.RTM_NEWLINK, func(p []byte) error {
		if len(p) < unix.SizeofIfInfomsg {
			return nil
		}
		c := tunLink{index: int(int32(binary.NativeEndian.Uint32(p[4:8]))), owner: -1, group: -1}
		match := false
		nl.Attrs(p[unix.SizeofIfInfomsg:], func(typ uint16, v []byte) {
			switch typ {
			case unix.IFLA_IFNAME:
				match = string(bytes.TrimRight(v, "\x00")) == name
			case unix.IFLA_LINKINFO:
				nl.Attrs(v, func(typ uint16, v []byte) {
					if typ != unix.IFLA_INFO_DATA {
						return
					}
					nl.Attrs(v, func(typ uint16, v []byte) {
						switch {
						case typ == unix.IFLA_TUN_OWNER && len(v) >= 4:
							c.owner = int64(binary.NativeEndian.Uint32(v))
						case typ == unix.IFLA_TUN_GROUP && len(v) >= 4:
							c.group = int64(binary.NativeEndian.Uint32(v))
						}
					})
				})
			}
		})
		if match {
			l, found = c, true
		}
		return nil
	})
	return l, found, err
}

// TestKernelHostIPv6NotADrop brings weft0 up on a fresh host and waits for
// the IPv6 the kernel itself sends into it (MLD reports, router and
// neighbour solicitations): counted as ignored-non-ipv4, never as a drop
// worth alarming on.
func TestKernelHostIPv6NotADrop(t *testing.T) {
	n := newTestNS(t)
	b := startInNS(t, n, `{"Network":"198.18.0.0/16","Backend":{"Type":"udp"}}`)
	b.SetDesired(subnet.Lease{Subnet: netip.MustParsePrefix("198.18.1.0/24")}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	deadline := time.Now().Add(10 * time.Second)
	for len(b.Status().DataPath.Drops) == 0 {
		if time.Now().After(deadline) {
			t.Skipf("no IPv6 from the kernel on %s within 10 s (IPv6 disabled?)", DeviceName)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	for reason, v := range b.Status().DataPath.Drops {
		if reason != "ignored-non-ipv4" {
			t.Errorf("%d packets counted as %s on a host with no traffic", v, reason)
		}
	}
}
