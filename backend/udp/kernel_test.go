package udp_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/backend/udp"
	"github.com/weftnet/weft/backend/udp/packet"
	"github.com/weftnet/weft/backend/udp/udplab"
	"github.com/weftnet/weft/internal/nl"
)

func newLab(t *testing.T) *udplab.Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root to create network namespaces")
	}
	if testing.Short() {
		t.Skip("kernel test skipped in -short mode")
	}
	l, err := udplab.New(1500 - 28)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

func startNode(t *testing.T, l *udplab.Lab, i int) *udplab.Node {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	n, err := l.StartUDP(i, nil, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Stop() })
	return n
}

// inNS runs fn with the calling thread in the named namespace.
func inNS(t *testing.T, name string, fn func() error) {
	t.Helper()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := nl.Do(h, fn); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestKernelDeviceAndPing(t *testing.T) {
	l := newLab(t)
	baseG := runtime.NumGoroutine()
	n0 := startNode(t, l, 0)
	n1 := startNode(t, l, 1)

	// Device, address, MTU and route as flannel programs them.
	h, err := netlink.NewHandleAt(l.HostNS(0))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(udp.DeviceName)
	if err != nil {
		t.Fatal(err)
	}
	if link.Type() != "tuntap" || link.Attrs().MTU != 1472 || link.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("device %s type %s mtu %d flags %v", udp.DeviceName, link.Type(), link.Attrs().MTU, link.Attrs().Flags)
	}
	addrs, _ := h.AddrList(link, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "198.18.1.0/32" {
		t.Fatalf("addresses %v", addrs)
	}
	routes, _ := h.RouteList(link, netlink.FAMILY_V4)
	found := false
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == "198.18.0.0/16" && r.Protocol == backend.RouteProtocol {
			found = true
		}
	}
	if !found {
		t.Fatalf("no cluster route in %v", routes)
	}

	// Lease attributes: nothing backend-specific, as with flannel's udp.
	attrs, err := n0.Backend.Setup(context.Background())
	if err != nil || attrs.BackendType != "" || attrs.BackendData != nil {
		t.Fatalf("lease attrs %+v, %v", attrs, err)
	}
	if n0.Backend.MTU() != 1472 {
		t.Fatalf("MTU %d", n0.Backend.MTU())
	}

	if sent, recv, err := udplab.Ping(l.Pod[0], l.PodIP[1], 3, 200*time.Millisecond); err != nil || recv == 0 {
		t.Fatalf("pod-to-pod ping: %d/%d %v", recv, sent, err)
	}
	st := n0.Backend.Status()
	if st.DataPath.TxPackets == 0 || st.DataPath.RxPackets == 0 || !st.Ready() || st.LastError != "" {
		t.Fatalf("status %+v %+v", st, st.DataPath)
	}
	t.Logf("offloads: %s", n0.Offloads())

	// An address inside the network but in no lease: ICMP net unreachable.
	out, _ := udplab.Exec(l.Pod[0], "ping", "-n", "-c", "1", "-W", "1", "198.18.77.1")
	if !strings.Contains(out, "Net Unreachable") {
		t.Fatalf("ping to unleased subnet: %q", out)
	}

	// Route removed behind our back: repaired (netlink event or resync).
	if _, err := udplab.Exec(l.Host[0], "ip", "route", "del", "198.18.0.0/16", "dev", udp.DeviceName); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "route repair", 15*time.Second, func() bool { return n0.Backend.Status().Repairs["route"] >= 1 })
	if sent, recv, err := udplab.Ping(l.Pod[0], l.PodIP[1], 3, 200*time.Millisecond); err != nil || recv == 0 {
		t.Fatalf("ping after repair: %d/%d %v", recv, sent, err)
	}

	// Address removed and device set down behind our back: repaired.
	if _, err := udplab.Exec(l.Host[0], "ip", "addr", "flush", "dev", udp.DeviceName); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "address repair", 15*time.Second, func() bool { return n0.Backend.Status().Repairs["addr"] >= 1 })
	if _, err := udplab.Exec(l.Host[0], "ip", "link", "set", udp.DeviceName, "down"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "link-up repair", 15*time.Second, func() bool {
		lk, err := h.LinkByName(udp.DeviceName)
		return err == nil && lk.Attrs().Flags&net.FlagUp != 0 && n0.Backend.Status().Repairs["device"] >= 1
	})
	waitFor(t, "route back after link up", 15*time.Second, func() bool {
		_, recv, _ := udplab.Ping(l.Pod[0], l.PodIP[1], 1, 100*time.Millisecond)
		return recv == 1
	})
	devRepairs := n0.Backend.Status().Repairs["device"]

	// Device deleted behind our back: re-created, forwarding resumes.
	if _, err := udplab.Exec(l.Host[0], "ip", "link", "del", udp.DeviceName); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "device repair", 15*time.Second, func() bool { return n0.Backend.Status().Repairs["device"] > devRepairs })
	waitFor(t, "ping after device repair", 10*time.Second, func() bool {
		_, recv, _ := udplab.Ping(l.Pod[0], l.PodIP[1], 1, 100*time.Millisecond)
		return recv == 1
	})

	// Run returns and leaves device and route; Cleanup removes them.
	if err := n0.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName(udp.DeviceName); err != nil {
		t.Fatalf("device gone after Run returned: %v", err)
	}
	if err := udp.Cleanup(context.Background(), l.HostNS(0), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName(udp.DeviceName); err == nil {
		t.Fatal("device still there after Cleanup")
	}
	if err := udp.Cleanup(context.Background(), l.HostNS(0), nil); err != nil {
		t.Fatalf("second Cleanup: %v", err)
	}
	// Both backends stopped: every goroutine they started has ended.
	n1.Stop()
	waitFor(t, "backend goroutines to end", 5*time.Second, func() bool { return runtime.NumGoroutine() <= baseG })
}

// TestKernelTransfer100MB sends 100 MiB pod to pod and compares hashes,
// with offloads on both hosts, on neither (flannel's one packet per
// syscall), and on one only: the wire format does not depend on them.
func TestKernelTransfer100MB(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts [2]string
	}{
		{"offloads", [2]string{"", ""}},
		{"plain", [2]string{`{"DisableOffloads":true}`, `{"DisableOffloads":true}`}},
		{"mixed", [2]string{"", `{"DisableOffloads":true}`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t)
			var nodes [2]*udplab.Node
			for i := range 2 {
				n, err := l.StartUDP(i, json.RawMessage(tc.opts[i]), nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { n.Stop() })
				nodes[i] = n
			}
			t.Logf("offloads: %q / %q", nodes[0].Offloads(), nodes[1].Offloads())
			transfer(t, l, nodes[0])
		})
	}
}

func transfer(t *testing.T, l *udplab.Lab, n0 *udplab.Node) {

	const size = 100 << 20
	var ln net.Listener
	inNS(t, l.Pod[1], func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(l.PodIP[1], 0).String())
		return err
	})
	defer ln.Close()
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(90 * time.Second))
		h := sha256.New()
		n, err := io.Copy(h, c)
		var r result
		copy(r.sum[:], h.Sum(nil))
		r.n, r.err = n, err
		got <- r
	}()
	var c net.Conn
	inNS(t, l.Pod[0], func() (err error) {
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	})
	c.SetDeadline(time.Now().Add(90 * time.Second))
	src := rand.NewChaCha8([32]byte{1, 2, 3})
	h := sha256.New()
	buf := make([]byte, 1<<20)
	start := time.Now()
	for sent := 0; sent < size; sent += len(buf) {
		src.Read(buf)
		h.Write(buf)
		if _, err := c.Write(buf); err != nil {
			t.Fatalf("write after %d bytes: %v", sent, err)
		}
	}
	c.Close()
	r := <-got
	if r.err != nil || r.n != size {
		t.Fatalf("received %d bytes, err %v", r.n, r.err)
	}
	if want := h.Sum(nil); string(want) != string(r.sum[:]) {
		t.Fatal("sha256 of received data differs")
	}
	t.Logf("100 MiB in %v (%.2f Gbit/s)", time.Since(start), float64(size*8)/time.Since(start).Seconds()/1e9)
	if st := n0.Backend.Status().DataPath; st.TxBytes < size {
		t.Fatalf("tx bytes %d", st.TxBytes)
	}
}

func TestKernelUnknownPeerDropped(t *testing.T) {
	l := newLab(t)
	n0 := startNode(t, l, 0)
	startNode(t, l, 1)
	// A second address on host 2's underlay that is no peer's PublicIP.
	if _, err := udplab.Exec(l.Host[1], "ip", "addr", "add", "192.0.2.99/24", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	inner := make([]byte, 28)
	inner[0] = 0x45
	binary.BigEndian.PutUint16(inner[2:], 28)
	inner[8] = 64
	inner[9] = packet.ProtoUDP
	copy(inner[12:16], l.PodIP[1].AsSlice())
	copy(inner[16:20], l.PodIP[0].AsSlice())
	packet.SetIPv4Checksum(inner[:20])
	var c *net.UDPConn
	inNS(t, l.Host[1], func() (err error) {
		c, err = net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(192, 0, 2, 99)}, &net.UDPAddr{IP: l.HostIP[0].AsSlice(), Port: udp.DefaultPort})
		return err
	})
	defer c.Close()
	for range 5 {
		if _, err := c.Write(inner); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "unknown-peer drops", 5*time.Second, func() bool {
		return n0.Backend.Status().DataPath.Drops["unknown-peer"] >= 5
	})
	if rx := n0.Backend.Status().DataPath.RxPackets; rx != 0 {
		t.Fatalf("%d packets delivered from a non-peer", rx)
	}
}

func TestKernelRestartKeepsForwarding(t *testing.T) {
	l := newLab(t)
	n0 := startNode(t, l, 0)
	startNode(t, l, 1)
	if _, recv, err := udplab.Ping(l.Pod[0], l.PodIP[1], 2, 100*time.Millisecond); err != nil || recv == 0 {
		t.Fatalf("ping before restart: %v", err)
	}
	type pr struct {
		sent, recv int
		err        error
	}
	res := make(chan pr, 1)
	go func() {
		s, r, err := udplab.Ping(l.Pod[0], l.PodIP[1], 400, 10*time.Millisecond)
		res <- pr{s, r, err}
	}()
	time.Sleep(time.Second)
	t0 := time.Now()
	if err := n0.Stop(); err != nil {
		t.Fatal(err)
	}
	n0b := startNode(t, l, 0)
	t.Logf("restart took %v", time.Since(t0))
	r := <-res
	if r.err != nil && r.sent == 0 {
		t.Fatal(r.err)
	}
	lost := r.sent - r.recv
	t.Logf("pings at 100/s across the restart: sent %d, received %d, lost %d", r.sent, r.recv, lost)
	if lost >= 100 {
		t.Fatalf("lost %d pings (>= 1 s worth)", lost)
	}
	if st := n0b.Backend.Status(); st.DataPath.RxPackets == 0 || st.Repairs["route"] != 0 || st.Repairs["addr"] != 0 {
		t.Fatalf("second instance status %+v %+v", st, st.DataPath)
	}
}

var _ = errors.Is

// TestKernelUDPSegmentation sends a UDP GSO super-packet from a pod: it
// reaches the TUN as one USO read (when the kernel offers USO) and must
// arrive at the other pod as the original datagrams.
func TestKernelUDPSegmentation(t *testing.T) {
	l := newLab(t)
	startNode(t, l, 0)
	startNode(t, l, 1)
	var rc *net.UDPConn
	inNS(t, l.Pod[1], func() (err error) {
		rc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: l.PodIP[1].AsSlice()})
		return err
	})
	defer rc.Close()
	var sc *net.UDPConn
	inNS(t, l.Pod[0], func() (err error) {
		sc, err = net.DialUDP("udp4", nil, rc.LocalAddr().(*net.UDPAddr))
		return err
	})
	defer sc.Close()
	raw, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT, 1000) })
	if serr != nil {
		t.Skipf("no UDP_SEGMENT: %v", serr)
	}
	msg := make([]byte, 8*1000+5)
	for i := range msg {
		msg[i] = byte(i)
	}
	rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	// Retry a few times: the first send may race ARP on the pod link.
	for try := 0; try < 5 && len(got) < len(msg); try++ {
		got = got[:0]
		if _, err := sc.Write(msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2000)
		for len(got) < len(msg) {
			rc.SetReadDeadline(time.Now().Add(time.Second))
			n, err := rc.Read(buf)
			if err != nil {
				break
			}
			if n > 1000 {
				t.Fatalf("datagram of %d bytes: segmentation lost", n)
			}
			got = append(got, buf[:n]...)
		}
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("received %d of %d bytes, or reordered", len(got), len(msg))
	}
}

// TestKernelWireFormat talks to the backend the way a flannel udp peer
// would, with a plain UDP socket on the peer's PublicIP and port 8285: a
// datagram holding a bare ICMP echo request for pod 1 must come back as a
// bare echo reply, TTL decremented by the host's forwarding and by the
// backend's send.
func TestKernelWireFormat(t *testing.T) {
	l := newLab(t)
	n0 := startNode(t, l, 0) // host 2 runs no backend: the test is its peer
	var c *net.UDPConn
	inNS(t, l.Host[1], func() (err error) {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: l.HostIP[1].AsSlice(), Port: udp.DefaultPort})
		return err
	})
	defer c.Close()
	req := make([]byte, 20+8+4)
	req[0] = 0x45
	binary.BigEndian.PutUint16(req[2:], uint16(len(req)))
	req[8] = 64
	req[9] = packet.ProtoICMP
	copy(req[12:16], l.PodIP[1].AsSlice()) // from the remote pod
	copy(req[16:20], l.PodIP[0].AsSlice())
	packet.SetIPv4Checksum(req[:20])
	icmp := req[20:]
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:], 0x7764)
	binary.BigEndian.PutUint16(icmp[6:], 1)
	copy(icmp[8:], "weft")
	binary.BigEndian.PutUint16(icmp[2:], packet.Checksum(icmp))
	to := &net.UDPAddr{IP: l.HostIP[0].AsSlice(), Port: udp.DefaultPort}
	buf := make([]byte, 2000)
	for try := 0; ; try++ {
		if _, err := c.WriteToUDP(req, to); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			if try < 5 {
				continue
			}
			t.Fatalf("no reply: %v (status %+v)", err, n0.Backend.Status().DataPath)
		}
		if !from.IP.Equal(l.HostIP[0].AsSlice()) || from.Port != udp.DefaultPort {
			t.Fatalf("reply from %v", from)
		}
		rep := buf[:n]
		h, err := packet.ParseIPv4(rep)
		if err != nil || h.TotalLen != n || packet.Checksum(rep[:20]) != 0 {
			t.Fatalf("reply is not one bare IPv4 packet: % x", rep)
		}
		if h.Src != binary.BigEndian.Uint32(l.PodIP[0].AsSlice()) || h.Dst != binary.BigEndian.Uint32(l.PodIP[1].AsSlice()) ||
			h.Proto != packet.ProtoICMP || rep[20] != 0 || string(rep[28:]) != "weft" {
			t.Fatalf("unexpected reply % x", rep)
		}
		if h.TTL != 62 {
			t.Fatalf("reply TTL %d, want 62 (64 - host forwarding - backend send)", h.TTL)
		}
		return
	}
}

// TestKernelReattachChangesOffloads restarts host 1's backend without
// offloads on the persistent device that had them, and back.
func TestKernelReattachChangesOffloads(t *testing.T) {
	l := newLab(t)
	startNode(t, l, 1)
	for i, opts := range []string{"", `{"DisableOffloads":true}`, ""} {
		n, err := l.StartUDP(0, json.RawMessage(opts), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, recv, err := udplab.Ping(l.Pod[0], l.PodIP[1], 3, 100*time.Millisecond); recv == 0 {
			n.Stop()
			t.Fatalf("attach %d (%q): no ping reply: %v", i, opts, err)
		}
		var ln net.Listener
		inNS(t, l.Pod[1], func() (err error) {
			ln, err = net.Listen("tcp", netip.AddrPortFrom(l.PodIP[1], 0).String())
			return err
		})
		done := make(chan int64, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				done <- -1
				return
			}
			c.SetDeadline(time.Now().Add(20 * time.Second))
			m, _ := io.Copy(io.Discard, c)
			c.Close()
			done <- m
		}()
		var c net.Conn
		inNS(t, l.Pod[0], func() (err error) {
			c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
			return err
		})
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Write(make([]byte, 8<<20)); err != nil {
			t.Fatalf("attach %d: write: %v", i, err)
		}
		c.Close()
		if m := <-done; m != 8<<20 {
			t.Fatalf("attach %d (%q): received %d bytes", i, opts, m)
		}
		ln.Close()
		n.Stop()
	}
}
