package udp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/weftnet/weft/backend/udp/packet"
	"github.com/weftnet/weft/subnet"
)

// fakeTUN is a tunDevice backed by a channel of packets to read and a
// record of packets written.
type fakeTUN struct {
	in     chan []byte
	mu     sync.Mutex
	wrote  [][]byte
	closed chan struct{}
	once   sync.Once
}

func newFakeTUN() *fakeTUN { return &fakeTUN{in: make(chan []byte, 16), closed: make(chan struct{})} }

func (f *fakeTUN) Read(b []byte) (int, error) {
	select {
	case p := <-f.in:
		return copy(b, p), nil
	case <-f.closed:
		return 0, io.EOF
	}
}

func (f *fakeTUN) Write(b []byte) (int, error) {
	f.mu.Lock()
	f.wrote = append(f.wrote, bytes.Clone(b))
	f.mu.Unlock()
	return len(b), nil
}

func (f *fakeTUN) Close() { f.once.Do(func() { close(f.closed) }) }

func (f *fakeTUN) take() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.wrote
	f.wrote = nil
	return w
}

// fakeConn is a batchConn: reads come from a channel, writes are recorded.
type fakeConn struct {
	in      chan message
	mu      sync.Mutex
	sent    []message
	refuseG bool // fail segmented sends like a kernel without UDP GSO
	calls   int
	closed  chan struct{}
}

func newFakeConn() *fakeConn {
	return &fakeConn{in: make(chan message, 16), closed: make(chan struct{})}
}

func (c *fakeConn) ReadBatch(ms []message) (int, error) {
	select {
	case m := <-c.in:
		ms[0].n = copy(ms[0].buf, m.buf)
		ms[0].addr, ms[0].seg = m.addr, m.seg
		return 1, nil
	case <-c.closed:
		return 0, io.EOF
	}
}

func (c *fakeConn) WriteBatch(ms []message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	for _, m := range ms {
		if m.seg > 0 && c.refuseG {
			return errGSO
		}
	}
	for _, m := range ms {
		if m.vec != nil {
			var b []byte
			for _, v := range m.vec {
				b = append(b, v...)
			}
			m.buf, m.vec = b, nil
		} else {
			m.buf = bytes.Clone(m.buf)
		}
		c.sent = append(c.sent, m)
	}
	return nil
}

// datagrams splits the recorded sends into single datagrams, as the
// kernel would put them on the wire.
func (c *fakeConn) datagrams() []message {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []message
	for _, m := range c.sent {
		seg := m.seg
		if seg == 0 {
			seg = len(m.buf)
		}
		for off := 0; off < len(m.buf); off += seg {
			out = append(out, message{buf: m.buf[off:min(off+seg, len(m.buf))], addr: m.addr})
		}
	}
	c.sent = nil
	return out
}

func u32(s string) uint32 {
	a := netip.MustParseAddr(s).As4()
	return binary.BigEndian.Uint32(a[:])
}

// ipPacket builds an IPv4 packet with a valid header checksum; for TCP
// it also fills in a valid TCP header and checksum.
func ipPacket(src, dst string, proto uint8, payload []byte, ttl uint8) []byte {
	l4 := payload
	if proto == packet.ProtoTCP {
		l4 = make([]byte, 20+len(payload))
		binary.BigEndian.PutUint16(l4[0:], 1234)
		binary.BigEndian.PutUint16(l4[2:], 80)
		binary.BigEndian.PutUint32(l4[4:], 1000)
		l4[12] = 5 << 4
		l4[13] = packet.TCPAck
		binary.BigEndian.PutUint16(l4[14:], 100)
		copy(l4[20:], payload)
	}
	p := make([]byte, 20+len(l4))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[6] = 0x40
	p[8] = ttl
	p[9] = proto
	binary.BigEndian.PutUint32(p[12:], u32(src))
	binary.BigEndian.PutUint32(p[16:], u32(dst))
	packet.SetIPv4Checksum(p[:20])
	copy(p[20:], l4)
	if proto == packet.ProtoTCP {
		t := p[20:]
		binary.BigEndian.PutUint16(t[16:], ^packet.Fold(packet.Sum(t, packet.PseudoHeaderSum(p, packet.ProtoTCP, len(t)))))
	}
	return p
}

func checkIPv4(t *testing.T, p []byte) {
	t.Helper()
	if packet.Checksum(p[:20]) != 0 {
		t.Fatalf("bad IPv4 header checksum")
	}
	if p[9] == packet.ProtoTCP {
		tcp := p[20:]
		if ^packet.Fold(packet.Sum(tcp, packet.PseudoHeaderSum(p, packet.ProtoTCP, len(tcp)))) != 0 {
			t.Fatalf("bad TCP checksum")
		}
	}
}

// testPath builds a data path over fakes for own subnet 198.18.1.0/24 in
// 198.18.0.0/16, with peer 198.18.2.0/24 at 192.0.2.2.
func testPath(t testing.TB, vnet, gso bool) (*txPath, *rxPath, *fakeTUN, *fakeConn, *udpBackend) {
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","Backend":{"Type":"udp"}}`))
	if err != nil {
		t.Fatal(err)
	}
	bi, err := New(backendConfig(cfg, nil))
	if err != nil {
		t.Fatal(err)
	}
	b := bi.(*udpBackend)
	b.swapTable(netip.MustParsePrefix("198.18.1.0/24"), subnet.Pointers([]subnet.Lease{
		{Subnet: netip.MustParsePrefix("198.18.2.0/24"), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.2")}},
	}))
	tun, conn := newFakeTUN(), newFakeConn()
	dp := &dataPath{tun: tun, conn: conn, vnetHdr: vnet, state: &b.fwd, stats: &b.stats, logger: slog.New(slog.DiscardHandler)}
	dp.gso.Store(gso)
	return dp.newTx(), dp.newRx(), tun, conn, b
}

func vnetPrefix(h packet.VirtioNetHdr, p []byte) []byte {
	b := make([]byte, packet.VirtioNetHdrLen+len(p))
	h.Encode(b)
	copy(b[packet.VirtioNetHdrLen:], p)
	return b
}

func TestEncapsulate(t *testing.T) {
	for _, vnet := range []bool{false, true} {
		tx, _, tun, conn, b := testPath(t, vnet, false)
		p := ipPacket("198.18.1.2", "198.18.2.7", packet.ProtoUDP, []byte("hello"), 64)
		in := p
		if vnet {
			in = vnetPrefix(packet.VirtioNetHdr{}, p)
		}
		tx.handleNow(in)
		got := conn.datagrams()
		if len(got) != 1 || got[0].addr != u32("192.0.2.2") {
			t.Fatalf("vnet=%v: sent %+v", vnet, got)
		}
		w := got[0].buf
		if len(w) != len(p) || w[8] != 63 || !bytes.Equal(w[20:], p[20:]) {
			t.Fatalf("wire packet % x", w)
		}
		checkIPv4(t, w)
		if s := b.Status().DataPath; s.TxPackets != 1 || s.TxBytes != uint64(len(p)) {
			t.Fatalf("stats %+v", s)
		}
		if len(tun.take()) != 0 {
			t.Fatal("wrote to TUN")
		}
	}
}

func TestEncapsulateGSO(t *testing.T) {
	for _, tc := range []struct {
		name      string
		gso, fail bool
		wantMsgs  int
	}{{"udp-gso", true, false, 1}, {"no-udp-gso", false, false, 10}, {"udp-gso-refused", true, true, 10}} {
		t.Run(tc.name, func(t *testing.T) {
			tx, _, _, conn, b := testPath(t, true, tc.gso)
			conn.refuseG = tc.fail
			payload := make([]byte, 9*1400+100)
			for i := range payload {
				payload[i] = byte(i)
			}
			p := ipPacket("198.18.1.2", "198.18.2.7", packet.ProtoTCP, payload, 64)
			// As the kernel hands it over: partial checksum, GSO header.
			tcp := p[20:]
			binary.BigEndian.PutUint16(tcp[16:], packet.Fold(packet.PseudoHeaderSum(p, packet.ProtoTCP, len(tcp))))
			tx.handleNow(vnetPrefix(packet.VirtioNetHdr{Flags: packet.VirtioNeedsCsum, GSOType: packet.GSOTCPv4, HdrLen: 40, GSOSize: 1400, CsumStart: 20, CsumOffset: 16}, p))
			conn.mu.Lock()
			nmsgs := len(conn.sent)
			conn.mu.Unlock()
			if nmsgs != tc.wantMsgs {
				t.Fatalf("%d sendmmsg messages, want %d", nmsgs, tc.wantMsgs)
			}
			dg := conn.datagrams()
			if len(dg) != 10 {
				t.Fatalf("%d datagrams", len(dg))
			}
			var got []byte
			for i, d := range dg {
				checkIPv4(t, d.buf)
				if d.buf[8] != 63 || d.addr != u32("192.0.2.2") {
					t.Fatalf("segment %d: ttl %d addr %x", i, d.buf[8], d.addr)
				}
				if i < 9 && len(d.buf) != 1440 {
					t.Fatalf("segment %d is %d bytes", i, len(d.buf))
				}
				got = append(got, d.buf[40:]...)
			}
			if !bytes.Equal(got, payload) {
				t.Fatal("payload mismatch")
			}
			if s := b.Status().DataPath; s.TxPackets != 10 {
				t.Fatalf("tx packets %d", s.TxPackets)
			}
		})
	}
}

func TestUnknownDestinationGetsICMP(t *testing.T) {
	for _, vnet := range []bool{false, true} {
		tx, _, tun, conn, b := testPath(t, vnet, false)
		p := ipPacket("198.18.1.2", "198.18.9.9", packet.ProtoUDP, []byte("x"), 64)
		in := p
		if vnet {
			in = vnetPrefix(packet.VirtioNetHdr{}, p)
		}
		tx.handleNow(in)
		w := tun.take()
		if len(w) != 1 {
			t.Fatalf("vnet=%v: %d TUN writes", vnet, len(w))
		}
		icmp := w[0]
		if vnet {
			icmp = icmp[packet.VirtioNetHdrLen:]
		}
		checkIPv4(t, icmp)
		if icmp[9] != packet.ProtoICMP || icmp[20] != 3 || icmp[21] != 0 ||
			binary.BigEndian.Uint32(icmp[16:]) != u32("198.18.1.2") || binary.BigEndian.Uint32(icmp[12:]) != u32("198.18.9.9") {
			t.Fatalf("bad ICMP % x", icmp)
		}
		if len(conn.datagrams()) != 0 || b.Status().DataPath.Drops["no-route"] != 1 {
			t.Fatal("packet not dropped as no-route")
		}
		// Outside the cluster network: dropped silently.
		tx.handleNow(append(make([]byte, 0), in[:len(in)-len(p)]...))
		tx.handleNow(func() []byte {
			q := ipPacket("198.18.1.2", "203.0.113.9", packet.ProtoUDP, []byte("x"), 64)
			if vnet {
				return vnetPrefix(packet.VirtioNetHdr{}, q)
			}
			return q
		}())
		if len(tun.take()) != 0 {
			t.Fatal("answered a packet leaving the cluster network")
		}
	}
}

func TestDecapsulateFilters(t *testing.T) {
	peer := u32("192.0.2.2")
	cases := []struct {
		name string
		from uint32
		pkt  []byte
		drop string // "" = delivered
	}{
		{"ok", peer, ipPacket("198.18.2.7", "198.18.1.5", packet.ProtoUDP, []byte("hi"), 64), ""},
		{"ok-tcp", peer, ipPacket("198.18.2.7", "198.18.1.5", packet.ProtoTCP, []byte("hi"), 64), ""},
		{"unknown-peer", u32("192.0.2.99"), ipPacket("198.18.2.7", "198.18.1.5", packet.ProtoUDP, []byte("hi"), 64), "unknown-peer"},
		{"relay", peer, ipPacket("198.18.2.7", "198.18.3.5", packet.ProtoUDP, []byte("hi"), 64), "not-our-subnet"},
		{"outside-dst", peer, ipPacket("198.18.2.7", "203.0.113.5", packet.ProtoUDP, []byte("hi"), 64), "not-our-subnet"},
		{"spoofed-src", peer, ipPacket("203.0.113.1", "198.18.1.5", packet.ProtoUDP, []byte("hi"), 64), "bad-source"},
		// The inner source must lie in a subnet leased to the sender.
		{"src-other-peers-pod", peer, ipPacket("198.18.3.7", "198.18.1.5", packet.ProtoUDP, []byte("hi"), 64), "spoofed-source"},
		{"src-our-own-pod", peer, ipPacket("198.18.1.9", "198.18.1.5", packet.ProtoUDP, []byte("hi"), 64), "spoofed-source"},
		{"src-unleased", peer, ipPacket("198.18.9.9", "198.18.1.5", packet.ProtoTCP, []byte("hi"), 64), "spoofed-source"},
		{"src-second-lease-of-sender", peer, ipPacket("198.18.4.7", "198.18.1.5", packet.ProtoUDP, []byte("hi"), 64), ""},
		{"src-other-peer-itself", u32("192.0.2.3"), ipPacket("198.18.3.7", "198.18.1.5", packet.ProtoTCP, []byte("hi"), 64), ""},
		{"ttl", peer, ipPacket("198.18.2.7", "198.18.1.5", packet.ProtoUDP, []byte("hi"), 1), "ttl-exceeded"},
		{"garbage", peer, []byte{1, 2, 3}, "malformed"},
		{"ipv6", peer, append([]byte{0x60}, make([]byte, 39)...), "malformed"},
		{"empty", peer, nil, "malformed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, vnet := range []bool{false, true} {
				_, rx, tun, _, b := testPath(t, vnet, false)
				b.swapTable(netip.MustParsePrefix("198.18.1.0/24"), subnet.Pointers(spoofPeers()))
				rx.msgs[0] = message{buf: rx.bufs[0][headroom:], n: len(c.pkt), addr: c.from}
				copy(rx.msgs[0].buf, c.pkt)
				rx.handle(0, b.fwd.Load())
				rx.coal.Flush()
				w := tun.take()
				s := b.Status().DataPath
				if c.drop != "" {
					if len(w) != 0 || s.Drops[c.drop] != 1 || s.RxPackets != 0 {
						t.Fatalf("vnet=%v: want drop %q, got writes=%d stats=%+v", vnet, c.drop, len(w), s)
					}
					continue
				}
				if len(w) != 1 || s.RxPackets != 1 || len(s.Drops) != 0 {
					t.Fatalf("vnet=%v: writes=%d stats=%+v", vnet, len(w), s)
				}
				got := w[0]
				if vnet {
					if h := packet.DecodeVirtioNetHdr(got); h != (packet.VirtioNetHdr{}) {
						t.Fatalf("vnet header %+v", h)
					}
					got = got[packet.VirtioNetHdrLen:]
				}
				checkIPv4(t, got)
				if got[8] != 63 || !bytes.Equal(got[20:], c.pkt[20:]) {
					t.Fatalf("delivered % x", got)
				}
			}
		})
	}
}

// spoofPeers is testPath's peer 198.18.2.0/24 at 192.0.2.2, which also
// holds 198.18.4.0/24 (an old lease still alive), and 198.18.3.0/24 at
// 192.0.2.3.
func spoofPeers() []subnet.Lease {
	lease := func(sn, pub string) subnet.Lease {
		return subnet.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr(pub)}}
	}
	return []subnet.Lease{lease("198.18.2.0/24", "192.0.2.2"), lease("198.18.4.0/24", "192.0.2.2"), lease("198.18.3.0/24", "192.0.2.3")}
}

// TestDecapsulateSpoofedInGRO puts packets from the sender's pods and from
// another peer's pod in one UDP GRO buffer from 192.0.2.2: only the
// sender's are delivered, the other is counted as spoofed-source.
func TestDecapsulateSpoofedInGRO(t *testing.T) {
	for _, vnet := range []bool{false, true} {
		_, rx, tun, _, b := testPath(t, vnet, false)
		b.swapTable(netip.MustParsePrefix("198.18.1.0/24"), subnet.Pointers(spoofPeers()))
		var buf []byte
		for i, src := range []string{"198.18.2.7", "198.18.3.7", "198.18.4.7"} {
			buf = append(buf, ipPacket(src, "198.18.1.5", packet.ProtoUDP, []byte{byte(i), 0, 0, 0}, 64)...)
		}
		m := &rx.msgs[0]
		*m = message{buf: rx.bufs[0][headroom:], n: len(buf), addr: u32("192.0.2.2"), seg: len(buf) / 3}
		copy(m.buf, buf)
		rx.handle(0, b.fwd.Load())
		rx.coal.Flush()
		var srcs []string
		for _, w := range tun.take() {
			if vnet {
				w = w[packet.VirtioNetHdrLen:]
			}
			srcs = append(srcs, netip.AddrFrom4([4]byte(w[12:16])).String())
		}
		s := b.Status().DataPath
		if strings.Join(srcs, ",") != "198.18.2.7,198.18.4.7" || s.RxPackets != 2 || s.Drops["spoofed-source"] != 1 {
			t.Fatalf("vnet=%v: delivered %v, stats %+v", vnet, srcs, s)
		}
	}
}

// TestDecapsulateGRO feeds one UDP-GRO buffer holding several TCP
// segments of one flow and a UDP packet, and checks the TUN writes.
func TestDecapsulateGRO(t *testing.T) {
	_, rx, tun, _, b := testPath(t, true, false)
	const mss = 1000
	var buf, want []byte
	for i := 0; i < 4; i++ {
		pl := bytes.Repeat([]byte{byte(i)}, mss)
		p := ipPacket("198.18.2.7", "198.18.1.5", packet.ProtoTCP, pl, 64)
		binary.BigEndian.PutUint32(p[24:], 1000+uint32(i*mss))
		binary.BigEndian.PutUint16(p[36:], 0)
		binary.BigEndian.PutUint16(p[36:], ^packet.Fold(packet.Sum(p[20:], packet.PseudoHeaderSum(p, packet.ProtoTCP, len(p)-20))))
		buf = append(buf, p...)
		want = append(want, pl...)
	}
	seg := len(buf) / 4
	m := &rx.msgs[0]
	*m = message{buf: rx.bufs[0][headroom:], n: len(buf), addr: u32("192.0.2.2"), seg: seg}
	copy(m.buf, buf)
	rx.handle(0, b.fwd.Load())
	rx.coal.Flush()
	w := tun.take()
	if len(w) != 1 {
		t.Fatalf("%d TUN writes, want 1 coalesced", len(w))
	}
	h := packet.DecodeVirtioNetHdr(w[0])
	p := w[0][packet.VirtioNetHdrLen:]
	if h.GSOType != packet.GSOTCPv4 || h.GSOSize != mss || !bytes.Equal(p[40:], want) || p[8] != 63 {
		t.Fatalf("hdr %+v, %d bytes", h, len(p))
	}
	if packet.Checksum(p[:20]) != 0 {
		t.Fatal("bad IP checksum")
	}
	if b.Status().DataPath.RxPackets != 4 {
		t.Fatal("rx count")
	}
}

// TestLoopsEnd checks that both loops return once their fds are closed
// and that a packet makes the round trip through them.
func TestLoopsEnd(t *testing.T) {
	tx, rx, tun, conn, _ := testPath(t, false, false)
	errs := make(chan error, 2)
	go func() { errs <- tx.run() }()
	go func() { errs <- rx.run() }()
	tun.in <- ipPacket("198.18.1.2", "198.18.2.7", packet.ProtoUDP, []byte("x"), 64)
	conn.in <- message{buf: ipPacket("198.18.2.7", "198.18.1.2", packet.ProtoUDP, []byte("y"), 64), addr: u32("192.0.2.2")}
	tun.Close()
	close(conn.closed)
	for range 2 {
		if err := <-errs; !errors.Is(err, io.EOF) {
			t.Fatalf("loop ended with %v", err)
		}
	}
}

type nopConn struct{ n atomic.Int64 }

func (c *nopConn) ReadBatch(ms []message) (int, error) { return 0, io.EOF }
func (c *nopConn) WriteBatch(ms []message) error {
	c.n.Add(int64(len(ms)))
	return nil
}

type nopTUN struct{}

func (nopTUN) Read(b []byte) (int, error)  { return 0, io.EOF }
func (nopTUN) Write(b []byte) (int, error) { return len(b), nil }
func (nopTUN) Writev(iov [][]byte) (int, error) {
	n := 0
	for _, v := range iov {
		n += len(v)
	}
	return n, nil
}

func benchPath(b *testing.B, vnet, gso bool) (*txPath, *rxPath, *udpBackend) {
	tx, rx, _, _, ub := testPath(b, vnet, gso)
	tx.tun, tx.conn = nopTUN{}, &nopConn{}
	rx.tun, rx.conn, rx.vw = nopTUN{}, &nopConn{}, nopTUN{}
	return tx, rx, ub
}

func BenchmarkTxPacket(b *testing.B) {
	tx, _, _ := benchPath(b, false, false)
	p := ipPacket("198.18.1.2", "198.18.2.7", packet.ProtoUDP, make([]byte, 1400), 255)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		p[8] = 64
		packet.SetIPv4Checksum(p[:20])
		tx.handleNow(p)
	}
}

func BenchmarkTxGSO(b *testing.B) {
	tx, _, _ := benchPath(b, true, true)
	p := ipPacket("198.18.1.2", "198.18.2.7", packet.ProtoTCP, make([]byte, 45*1420), 64)
	in := vnetPrefix(packet.VirtioNetHdr{Flags: packet.VirtioNeedsCsum, GSOType: packet.GSOTCPv4, HdrLen: 40, GSOSize: 1420, CsumStart: 20, CsumOffset: 16}, p)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		tx.handleNow(in)
	}
}

func BenchmarkRxGRO(b *testing.B) {
	_, rx, ub := benchPath(b, true, false)
	var buf []byte
	for i := 0; i < 40; i++ {
		p := ipPacket("198.18.2.7", "198.18.1.5", packet.ProtoTCP, make([]byte, 1420), 64)
		binary.BigEndian.PutUint32(p[24:], uint32(i*1420))
		buf = append(buf, p...)
	}
	seg := len(buf) / 40
	st := ub.fwd.Load()
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		m := &rx.msgs[0]
		*m = message{buf: rx.bufs[0][headroom:], n: len(buf), addr: u32("192.0.2.2"), seg: seg}
		copy(m.buf, buf)
		rx.handle(0, st)
		rx.coal.Flush()
	}
}

func BenchmarkRxPacket(b *testing.B) {
	_, rx, ub := benchPath(b, false, false)
	p := ipPacket("198.18.2.7", "198.18.1.5", packet.ProtoUDP, make([]byte, 1400), 64)
	st := ub.fwd.Load()
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		m := &rx.msgs[0]
		*m = message{buf: rx.bufs[0][headroom:], n: len(p), addr: u32("192.0.2.2")}
		copy(m.buf, p)
		rx.handle(0, st)
	}
}

func TestEncapsulateUSO(t *testing.T) {
	tx, _, _, conn, _ := testPath(t, true, true)
	payload := make([]byte, 5*1000+1)
	for i := range payload {
		payload[i] = byte(i * 3)
	}
	udpHdr := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udpHdr[0:], 5000)
	binary.BigEndian.PutUint16(udpHdr[2:], 6000)
	copy(udpHdr[8:], payload)
	p := ipPacket("198.18.1.2", "198.18.2.7", packet.ProtoUDP, udpHdr, 64)
	tx.handleNow(vnetPrefix(packet.VirtioNetHdr{Flags: packet.VirtioNeedsCsum, GSOType: packet.GSOUDPL4, HdrLen: 28, GSOSize: 1000, CsumStart: 20, CsumOffset: 6}, p))
	dg := conn.datagrams()
	if len(dg) != 6 {
		t.Fatalf("%d datagrams", len(dg))
	}
	var got []byte
	for _, d := range dg {
		checkIPv4(t, d.buf)
		if int(binary.BigEndian.Uint16(d.buf[24:])) != len(d.buf)-20 {
			t.Fatal("bad UDP length")
		}
		got = append(got, d.buf[28:]...)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("payload mismatch")
	}
}

// FuzzParseDatagram feeds arbitrary datagrams from a known peer through
// the receive path, with and without a UDP GRO segment size, and arbitrary
// TUN reads through the send path: nothing may panic, and every datagram
// is either delivered or counted as dropped.
func FuzzParseDatagram(f *testing.F) {
	f.Add(ipPacket("198.18.2.7", "198.18.1.5", packet.ProtoTCP, []byte("hi"), 64), uint16(0), true)
	f.Add(ipPacket("198.18.2.7", "198.18.1.5", packet.ProtoUDP, []byte("hi"), 64), uint16(10), false)
	f.Add(vnetPrefix(packet.VirtioNetHdr{GSOType: packet.GSOTCPv4, GSOSize: 7, Flags: 1, CsumStart: 20, CsumOffset: 16},
		ipPacket("198.18.1.2", "198.18.2.7", packet.ProtoTCP, make([]byte, 50), 64)), uint16(3), true)
	type path struct {
		tx   *txPath
		rx   *rxPath
		tun  *fakeTUN
		conn *fakeConn
		b    *udpBackend
	}
	var paths [2]path
	for i, vnet := range []bool{false, true} {
		tx, rx, tun, conn, b := testPath(f, vnet, true)
		paths[i] = path{tx, rx, tun, conn, b}
	}
	seen := func(b *udpBackend) uint64 {
		s := b.Status().DataPath
		n := s.RxPackets
		for _, v := range s.Drops {
			n += v
		}
		return n
	}
	f.Fuzz(func(t *testing.T, b []byte, seg uint16, vnet bool) {
		if len(b) > maxPacket {
			return
		}
		p := paths[0]
		if vnet {
			p = paths[1]
		}
		before := seen(p.b)
		m := &p.rx.msgs[0]
		*m = message{buf: p.rx.bufs[0][headroom:], n: len(b), addr: u32("192.0.2.2"), seg: int(seg)}
		copy(m.buf, b)
		p.rx.handle(0, p.b.fwd.Load())
		p.rx.coal.Flush()
		if seen(p.b) == before {
			t.Fatal("datagram neither delivered nor counted")
		}
		p.tx.handleNow(bytes.Clone(b))
		p.tun.take()
		p.conn.datagrams()
	})
}

// handleNow handles one TUN read and sends what it queued.
func (t *txPath) handleNow(b []byte) {
	t.handle(b)
	t.flush()
}

// TestTxBatching queues several reads, small packets and a super-packet,
// to two peers, and checks they leave in one WriteBatch, in order.
func TestTxBatching(t *testing.T) {
	tx, _, _, conn, b := testPath(t, true, true)
	b.swapTable(netip.MustParsePrefix("198.18.1.0/24"), subnet.Pointers([]subnet.Lease{
		{Subnet: netip.MustParsePrefix("198.18.2.0/24"), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.2")}},
		{Subnet: netip.MustParsePrefix("198.18.3.0/24"), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.3")}},
	}))
	var reads [][]byte
	for i := 0; i < 3; i++ {
		dst := []string{"198.18.2.7", "198.18.3.7"}[i%2]
		reads = append(reads, vnetPrefix(packet.VirtioNetHdr{}, ipPacket("198.18.1.2", dst, packet.ProtoUDP, []byte{byte(i)}, 64)))
	}
	big := ipPacket("198.18.1.2", "198.18.3.9", packet.ProtoTCP, make([]byte, 3000), 64)
	reads = append(reads, vnetPrefix(packet.VirtioNetHdr{GSOType: packet.GSOTCPv4, GSOSize: 1000, HdrLen: 40}, big))
	for _, r := range reads {
		tx.handle(r)
	}
	if conn.calls != 0 {
		t.Fatal("sent before flush")
	}
	tx.flush()
	if conn.calls != 1 {
		t.Fatalf("%d WriteBatch calls, want 1", conn.calls)
	}
	dg := conn.datagrams()
	if len(dg) != 6 {
		t.Fatalf("%d datagrams", len(dg))
	}
	wantTo := []string{"192.0.2.2", "192.0.2.3", "192.0.2.2", "192.0.2.3", "192.0.2.3", "192.0.2.3"}
	for i, d := range dg {
		if d.addr != u32(wantTo[i]) {
			t.Fatalf("datagram %d to %#x", i, d.addr)
		}
		if i < 3 && d.buf[20] != byte(i) {
			t.Fatalf("datagram %d out of order", i)
		}
	}
	if s := b.Status().DataPath; s.TxPackets != 6 {
		t.Fatalf("tx packets %d", s.TxPackets)
	}
}

// TestDecapsulateMixedGRO puts TCP segments and equal-sized UDP packets
// in one GRO buffer: the UDP writes must not disturb the TCP payloads the
// coalescer still holds.
func TestDecapsulateMixedGRO(t *testing.T) {
	_, rx, tun, _, b := testPath(t, true, false)
	const mss = 500
	var buf, wantTCP []byte
	for i := 0; i < 4; i++ {
		var p []byte
		if i%2 == 0 {
			pl := bytes.Repeat([]byte{byte(0xa0 + i)}, mss)
			p = ipPacket("198.18.2.7", "198.18.1.5", packet.ProtoTCP, pl, 64)
			binary.BigEndian.PutUint32(p[24:], 1000+uint32(i/2*mss))
			binary.BigEndian.PutUint16(p[36:], 0)
			binary.BigEndian.PutUint16(p[36:], ^packet.Fold(packet.Sum(p[20:], packet.PseudoHeaderSum(p, packet.ProtoTCP, len(p)-20))))
			wantTCP = append(wantTCP, pl...)
		} else {
			p = ipPacket("198.18.2.7", "198.18.1.5", packet.ProtoUDP, bytes.Repeat([]byte{0x55}, mss+20), 64)
		}
		buf = append(buf, p...)
	}
	m := &rx.msgs[0]
	*m = message{buf: rx.bufs[0][headroom:], n: len(buf), addr: u32("192.0.2.2"), seg: len(buf) / 4}
	copy(m.buf, buf)
	rx.handle(0, b.fwd.Load())
	rx.coal.Flush()
	var tcp []byte
	udps := 0
	for _, w := range tun.take() {
		p := w[packet.VirtioNetHdrLen:]
		if h := packet.DecodeVirtioNetHdr(w); h.Flags&packet.VirtioNeedsCsum != 0 {
			packet.CompletePartialChecksum(p, int(h.CsumStart), int(h.CsumOffset))
		}
		checkIPv4(t, p)
		switch p[9] {
		case packet.ProtoTCP:
			tcp = append(tcp, p[40:]...)
		case packet.ProtoUDP:
			udps++
		}
	}
	if udps != 2 || !bytes.Equal(tcp, wantTCP) {
		t.Fatalf("udp writes %d, tcp payload intact %v", udps, bytes.Equal(tcp, wantTCP))
	}
}

// TestReceiveFiltersNoAllocs checks that a datagram costs no allocation
// whichever way the receive filters decide.
func TestReceiveFiltersNoAllocs(t *testing.T) {
	_, rx, _, _, b := testPath(t, false, false)
	b.swapTable(netip.MustParsePrefix("198.18.1.0/24"), subnet.Pointers(spoofPeers()))
	rx.tun, rx.conn, rx.vw = nopTUN{}, &nopConn{}, nopTUN{}
	st := b.fwd.Load()
	for _, c := range []struct {
		name, src string
		from      uint32
	}{
		{"delivered", "198.18.2.7", u32("192.0.2.2")},
		{"spoofed-source", "198.18.3.7", u32("192.0.2.2")},
		{"bad-source", "203.0.113.1", u32("192.0.2.2")},
		{"unknown-peer", "198.18.2.7", u32("192.0.2.99")},
	} {
		p := ipPacket(c.src, "198.18.1.5", packet.ProtoUDP, make([]byte, 100), 64)
		if a := testing.AllocsPerRun(100, func() {
			m := &rx.msgs[0]
			*m = message{buf: rx.bufs[0][headroom:], n: len(p), addr: c.from}
			copy(m.buf, p)
			rx.handle(0, st)
		}); a != 0 {
			t.Errorf("%s: %v allocations per datagram", c.name, a)
		}
	}
	if d := b.Status().DataPath.Drops; d["spoofed-source"] == 0 || d["bad-source"] == 0 || d["unknown-peer"] == 0 {
		t.Fatalf("filters not exercised: %v", d)
	}
}

// TestTxHostIPv6Ignored reads from the TUN what the kernel sends into
// weft0 on its own (an IPv6 router solicitation): counted as
// ignored-non-ipv4, not as a drop. Another IP version is malformed.
func TestTxHostIPv6Ignored(t *testing.T) {
	rs := make([]byte, 40+8)
	rs[0] = 0x60
	binary.BigEndian.PutUint16(rs[4:], 8)
	rs[6], rs[7] = 58, 255 // next header ICMPv6, hop limit 255
	copy(rs[24:], netip.MustParseAddr("ff02::2").AsSlice())
	rs[40] = 133 // router solicitation
	v5 := ipPacket("198.18.1.2", "198.18.2.7", packet.ProtoUDP, []byte("x"), 64)
	v5[0] = 0x55
	for _, vnet := range []bool{false, true} {
		tx, _, tun, conn, b := testPath(t, vnet, false)
		for _, p := range [][]byte{rs, v5} {
			if vnet {
				p = vnetPrefix(packet.VirtioNetHdr{}, p)
			}
			tx.handleNow(p)
		}
		d := b.Status().DataPath.Drops
		if len(d) != 2 || d["ignored-non-ipv4"] != 1 || d["malformed"] != 1 {
			t.Fatalf("vnet=%v: drops %v", vnet, d)
		}
		if len(conn.datagrams()) != 0 || len(tun.take()) != 0 {
			t.Fatalf("vnet=%v: forwarded or answered", vnet)
		}
	}
}
