package packet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// refChecksum is a deliberately naive RFC 1071 checksum, independent of Sum.
func refChecksum(parts ...[]byte) uint16 {
	var all []byte
	for _, p := range parts {
		all = append(all, p...)
	}
	if len(all)%2 == 1 {
		all = append(all, 0)
	}
	var s uint32
	for i := 0; i < len(all); i += 2 {
		s += uint32(all[i])<<8 | uint32(all[i+1])
		for s > 0xffff {
			s = (s & 0xffff) + (s >> 16)
		}
	}
	return ^uint16(s)
}

func ipHdrOK(t *testing.T, p []byte) {
	t.Helper()
	ihl := int(p[0]&0xf) * 4
	if refChecksum(p[:ihl]) != 0 {
		t.Fatalf("IP header checksum wrong: % x", p[:ihl])
	}
}

func tcpOK(t *testing.T, p []byte) {
	t.Helper()
	ihl := int(p[0]&0xf) * 4
	tcp := p[ihl:]
	ph := make([]byte, 12)
	copy(ph, p[12:20])
	ph[9] = ProtoTCP
	binary.BigEndian.PutUint16(ph[10:], uint16(len(tcp)))
	if refChecksum(ph, tcp) != 0 {
		t.Fatalf("TCP checksum wrong")
	}
}

type tcpSpec struct {
	src, dst   uint32
	sport      uint16
	dport      uint16
	seq, ack   uint32
	flags      uint8
	win        uint16
	opts       []byte
	payload    []byte
	id         uint16
	ttl        uint8
	partialSum bool // leave the pseudo-header sum in the checksum field
}

func buildTCP(s tcpSpec) []byte {
	thl := 20 + len(s.opts)
	p := make([]byte, 20+thl+len(s.payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], s.id)
	p[6] = 0x40 // DF
	if s.ttl == 0 {
		s.ttl = 64
	}
	p[8] = s.ttl
	p[9] = ProtoTCP
	binary.BigEndian.PutUint32(p[12:], s.src)
	binary.BigEndian.PutUint32(p[16:], s.dst)
	SetIPv4Checksum(p[:20])
	t := p[20:]
	binary.BigEndian.PutUint16(t[0:], s.sport)
	binary.BigEndian.PutUint16(t[2:], s.dport)
	binary.BigEndian.PutUint32(t[4:], s.seq)
	binary.BigEndian.PutUint32(t[8:], s.ack)
	t[12] = byte(thl/4) << 4
	t[13] = s.flags
	binary.BigEndian.PutUint16(t[14:], s.win)
	copy(t[20:], s.opts)
	copy(t[thl:], s.payload)
	if s.partialSum {
		binary.BigEndian.PutUint16(t[16:], Fold(PseudoHeaderSum(p, ProtoTCP, len(t))))
	} else {
		binary.BigEndian.PutUint16(t[16:], ^Fold(Sum(t, PseudoHeaderSum(p, ProtoTCP, len(t)))))
	}
	return p
}

func seqPayload(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestChecksumAgainstReference(t *testing.T) {
	for n := 0; n < 300; n++ {
		b := seqPayload(n, byte(n))
		if got, want := Checksum(b), refChecksum(b); got != want {
			t.Fatalf("len %d: got %#04x want %#04x", n, got, want)
		}
	}
}

func TestParseIPv4(t *testing.T) {
	good := buildTCP(tcpSpec{src: 0xc6120101, dst: 0xc6120201, payload: []byte("x")})
	cases := []struct {
		name string
		mod  func([]byte) []byte
		err  error
	}{
		{"ok", func(b []byte) []byte { return b }, nil},
		{"short", func(b []byte) []byte { return b[:19] }, ErrTooShort},
		{"v6", func(b []byte) []byte { b[0] = 0x65; return b }, ErrNotIPv4},
		{"ihl4", func(b []byte) []byte { b[0] = 0x44; return b }, ErrBadIHL},
		{"ihl-beyond", func(b []byte) []byte { b[0] = 0x4f; return b[:40] }, ErrBadIHL},
		{"totlen-long", func(b []byte) []byte { binary.BigEndian.PutUint16(b[2:], 2000); return b }, ErrBadTotalLen},
		{"totlen-short", func(b []byte) []byte { binary.BigEndian.PutUint16(b[2:], 10); return b }, ErrBadTotalLen},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.mod(bytes.Clone(good))
			h, err := ParseIPv4(b)
			if !errors.Is(err, c.err) {
				t.Fatalf("err %v, want %v", err, c.err)
			}
			if err == nil && (h.Src != 0xc6120101 || h.Dst != 0xc6120201 || h.Proto != ProtoTCP || h.TotalLen != len(good)) {
				t.Fatalf("bad parse %+v", h)
			}
		})
	}
}

func TestDecTTL(t *testing.T) {
	for ttl := 0; ttl < 256; ttl++ {
		p := buildTCP(tcpSpec{ttl: uint8(ttl), src: 1, dst: 2, payload: []byte{1}})
		if ttl == 0 {
			p[8] = 0
			SetIPv4Checksum(p[:20])
		}
		ok := DecTTL(p)
		if ok != (ttl > 1) {
			t.Fatalf("ttl %d: ok=%v", ttl, ok)
		}
		if ok && int(p[8]) != ttl-1 {
			t.Fatalf("ttl %d -> %d", ttl, p[8])
		}
		ipHdrOK(t, p)
	}
}

func TestSegmentTCPv4(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload int
		mss     int
		flags   uint8
		opts    []byte
	}{
		{"exact", 4 * 1000, 1000, TCPAck | TCPPsh, nil},
		{"tail", 4*1000 + 123, 1000, TCPAck | TCPPsh | TCPFin | TCPCwr, []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}},
		{"one", 500, 1000, TCPAck, nil},
		{"big", 65535 - 52, 1420, TCPAck | TCPPsh, []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pl := seqPayload(tc.payload, 3)
			p := buildTCP(tcpSpec{src: 0xc6120102, dst: 0xc6120202, sport: 4000, dport: 5201, seq: 0xfffff000, ack: 77,
				flags: tc.flags, win: 500, opts: tc.opts, payload: pl, id: 0xfffe, partialSum: true})
			out := make([]byte, 200000)
			segSize, nseg, used, err := SegmentTCPv4(p, tc.mss, true, out)
			if err != nil {
				t.Fatal(err)
			}
			hl := 40 + len(tc.opts)
			if want := (tc.payload + tc.mss - 1) / tc.mss; nseg != want {
				t.Fatalf("nseg %d want %d", nseg, want)
			}
			if segSize != hl+tc.mss {
				t.Fatalf("segSize %d", segSize)
			}
			var got []byte
			off := 0
			for i := 0; i < nseg; i++ {
				end := min(off+segSize, used)
				s := out[off:end]
				ipHdrOK(t, s)
				tcpOK(t, s)
				if int(binary.BigEndian.Uint16(s[2:])) != len(s) {
					t.Fatalf("seg %d: total length %d vs %d", i, binary.BigEndian.Uint16(s[2:]), len(s))
				}
				if id := binary.BigEndian.Uint16(s[4:]); id != 0xfffe+uint16(i) {
					t.Fatalf("seg %d: id %#x", i, id)
				}
				if s[8] != 63 {
					t.Fatalf("ttl %d", s[8])
				}
				if seq := binary.BigEndian.Uint32(s[24:]); seq != 0xfffff000+uint32(i*tc.mss) {
					t.Fatalf("seg %d: seq %#x", i, seq)
				}
				f := s[33]
				last := i == nseg-1
				if want := tc.flags&(TCPFin|TCPPsh) != 0 && last; (f&(TCPFin|TCPPsh) != 0) != want {
					t.Fatalf("seg %d flags %#x", i, f)
				}
				if last && f&(TCPFin|TCPPsh) != tc.flags&(TCPFin|TCPPsh) {
					t.Fatalf("last flags %#x", f)
				}
				if (f&TCPCwr != 0) != (i == 0 && tc.flags&TCPCwr != 0) {
					t.Fatalf("seg %d cwr %#x", i, f)
				}
				if !bytes.Equal(s[40:hl], tc.opts) {
					t.Fatalf("options changed")
				}
				got = append(got, s[hl:]...)
				off = end
			}
			if off != used || !bytes.Equal(got, pl) {
				t.Fatalf("payload mismatch (%d/%d bytes)", len(got), len(pl))
			}
		})
	}
}

func TestSegmentErrors(t *testing.T) {
	p := buildTCP(tcpSpec{src: 1, dst: 2, payload: seqPayload(3000, 0)})
	if _, _, _, err := SegmentTCPv4(p, 1000, false, make([]byte, 100)); !errors.Is(err, ErrOutTooSmall) {
		t.Fatalf("small out: %v", err)
	}
	if _, _, _, err := SegmentTCPv4(p, 0, false, make([]byte, 10000)); !errors.Is(err, ErrBadGSO) {
		t.Fatalf("mss 0: %v", err)
	}
	p[9] = ProtoUDP
	if _, _, _, err := SegmentTCPv4(p, 1000, false, make([]byte, 10000)); !errors.Is(err, ErrBadGSO) {
		t.Fatalf("udp: %v", err)
	}
}

type capture struct{ pkts [][]byte }

func (c *capture) WritePacket(iov [][]byte) error {
	var b []byte
	for _, v := range iov {
		b = append(b, v...)
	}
	c.pkts = append(c.pkts, b)
	return nil
}

// resegment checks a coalesced write and splits it back with the
// kernel's rules (using SegmentTCPv4 on a copy with a full checksum).
func TestCoalesce(t *testing.T) {
	const mss = 1000
	opts := []byte{1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 8}
	mk := func(seq uint32, n int, flags uint8, sport uint16) []byte {
		return buildTCP(tcpSpec{src: 0xc6120102, dst: 0xc6120202, sport: sport, dport: 80, seq: seq, ack: 5,
			flags: flags, win: 100, opts: opts, payload: seqPayload(n, byte(seq)), id: uint16(seq / mss)})
	}
	push := func(c *Coalescer, p []byte) {
		h, err := ParseIPv4(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Push(p, h); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("merge-run", func(t *testing.T) {
		var w capture
		c := NewCoalescer(4, &w)
		var want []byte
		for i := 0; i < 5; i++ {
			fl := uint8(TCPAck)
			n := mss
			if i == 4 {
				fl |= TCPPsh
				n = 300
			}
			p := mk(uint32(i*mss), n, fl, 1)
			want = append(want, p[52:]...)
			push(c, p)
		}
		push(c, mk(5*mss, mss, TCPAck, 1)) // after PSH: new packet
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		if len(w.pkts) != 2 {
			t.Fatalf("%d writes, want 2", len(w.pkts))
		}
		b := w.pkts[0]
		h := DecodeVirtioNetHdr(b)
		p := b[VirtioNetHdrLen:]
		if h.GSOType != GSOTCPv4 || h.Flags != VirtioNeedsCsum || h.GSOSize != mss || h.HdrLen != 52 || h.CsumStart != 20 || h.CsumOffset != 16 {
			t.Fatalf("vnet hdr %+v", h)
		}
		ipHdrOK(t, p)
		if int(binary.BigEndian.Uint16(p[2:])) != len(p) || !bytes.Equal(p[52:], want) {
			t.Fatal("merged payload or length wrong")
		}
		if p[33]&TCPPsh == 0 {
			t.Fatal("PSH of last segment lost")
		}
		// Complete the checksum as the kernel would, then verify it.
		full := bytes.Clone(p)
		if err := CompletePartialChecksum(full, 20, 16); err != nil {
			t.Fatal(err)
		}
		tcpOK(t, full)
		// Splitting it again gives back the original segments.
		out := make([]byte, 100000)
		_, nseg, _, err := SegmentTCPv4(full, int(h.GSOSize), false, out)
		if err != nil || nseg != 5 {
			t.Fatalf("resegment: %d %v", nseg, err)
		}
		if s := w.pkts[1]; DecodeVirtioNetHdr(s).GSOType != GSONone || !bytes.Equal(s[10:], mk(5*mss, mss, TCPAck, 1)) {
			t.Fatal("single segment was changed")
		}
	})
	t.Run("gap-and-flows", func(t *testing.T) {
		var w capture
		c := NewCoalescer(2, &w)
		push(c, mk(0, mss, TCPAck, 1))
		push(c, mk(0, mss, TCPAck, 2))
		push(c, mk(2*mss, mss, TCPAck, 1)) // gap: flow 1 flushed, new run
		push(c, mk(mss, mss, TCPAck, 2))   // merges
		push(c, mk(0, mss, TCPAck, 3))     // table full: flush all
		c.Flush()
		var segs []int
		for _, b := range w.pkts {
			h := DecodeVirtioNetHdr(b)
			n := 1
			if h.GSOType == GSOTCPv4 {
				n = (len(b) - 10 - 52 + int(h.GSOSize) - 1) / int(h.GSOSize)
			}
			segs = append(segs, n)
		}
		if len(w.pkts) != 4 || segs[0]+segs[1]+segs[2]+segs[3] != 5 {
			t.Fatalf("writes %v", segs)
		}
		// Order within flow 1 is kept.
		var seqs []uint32
		for _, b := range w.pkts {
			if binary.BigEndian.Uint16(b[30:]) == 1 {
				seqs = append(seqs, binary.BigEndian.Uint32(b[34:]))
			}
		}
		if len(seqs) != 2 || seqs[0] != 0 || seqs[1] != 2*mss {
			t.Fatalf("flow 1 order %v", seqs)
		}
	})
	t.Run("no-merge", func(t *testing.T) {
		cases := map[string]func(a, b []byte){
			"ack":     func(a, b []byte) { b[28]++ },
			"window":  func(a, b []byte) { b[34]++ },
			"options": func(a, b []byte) { b[51]++ },
			"tos":     func(a, b []byte) { b[1] = 4 },
			"ttl":     func(a, b []byte) { b[8]-- },
			"syn":     func(a, b []byte) { b[33] |= TCPSyn },
			"larger":  nil,
		}
		for name, mod := range cases {
			t.Run(name, func(t *testing.T) {
				var w capture
				c := NewCoalescer(4, &w)
				a := mk(0, mss, TCPAck, 1)
				b := mk(mss, mss, TCPAck, 1)
				if mod == nil {
					a = mk(0, 500, TCPAck, 1)
					b = mk(500, 600, TCPAck, 1)
				} else {
					mod(a, b)
				}
				push(c, a)
				push(c, b)
				c.Flush()
				if len(w.pkts) != 2 {
					t.Fatalf("%d writes, want 2", len(w.pkts))
				}
				if !bytes.Equal(w.pkts[0][10:], a) || !bytes.Equal(w.pkts[1][10:], b) {
					t.Fatal("packets changed or reordered")
				}
			})
		}
	})
}

func TestNetUnreachable(t *testing.T) {
	orig := buildTCP(tcpSpec{src: 0xc6120102, dst: 0xc6120909, payload: seqPayload(100, 0)})
	out := make([]byte, 1500)
	n := BuildNetUnreachable(out, orig, 0xc6120100)
	if n != 20+8+28 {
		t.Fatalf("len %d", n)
	}
	p := out[:n]
	ipHdrOK(t, p)
	if refChecksum(p[20:]) != 0 || p[20] != 3 || p[21] != 0 {
		t.Fatal("bad icmp")
	}
	if binary.BigEndian.Uint32(p[16:]) != 0xc6120102 || binary.BigEndian.Uint32(p[12:]) != 0xc6120100 {
		t.Fatal("bad addresses")
	}
	if !bytes.Equal(p[28:], orig[:28]) {
		t.Fatal("bad quote")
	}
	// No error about an error.
	if BuildNetUnreachable(out, p, 1) != 0 {
		t.Fatal("answered an ICMP error")
	}
}

func FuzzParseIPv4(f *testing.F) {
	f.Add(buildTCP(tcpSpec{src: 1, dst: 2, payload: []byte("hello")}), uint16(3))
	f.Add([]byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}, uint16(0))
	f.Add([]byte{0x4f}, uint16(1))
	out := make([]byte, 300000)
	f.Fuzz(func(t *testing.T, b []byte, mss uint16) {
		h, err := ParseIPv4(b)
		if err != nil {
			return
		}
		if h.TotalLen > len(b) || h.HeaderLen > h.TotalLen {
			t.Fatalf("inconsistent %+v for %d bytes", h, len(b))
		}
		p := b[:h.TotalLen]
		DecTTL(bytes.Clone(p))
		BuildNetUnreachable(out, p, 1)
		if _, n, err := SegmentTCPv4Headers(p, int(mss), true, out); err == nil && n <= 0 {
			t.Fatalf("headers: %d", n)
		}
		if _, n, used, err := SegmentUDPv4(bytes.Clone(p), int(mss), true, out); err == nil && (n <= 0 || used > len(out)) {
			t.Fatalf("segment udp: %d %d", n, used)
		}
		if _, n, used, err := SegmentTCPv4(bytes.Clone(p), int(mss), true, out); err == nil && (n <= 0 || used > len(out)) {
			t.Fatalf("segment: %d %d", n, used)
		}
		_ = CompletePartialChecksum(bytes.Clone(p), h.HeaderLen, 16)
		var w capture
		c := NewCoalescer(2, &w)
		_ = c.Push(p, h)
		_ = c.Push(p, h)
		_ = c.Flush()
	})
}

func BenchmarkSegmentTCPv4(b *testing.B) {
	p := buildTCP(tcpSpec{src: 1, dst: 2, payload: seqPayload(64000, 1), partialSum: true})
	out := make([]byte, 100000)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := SegmentTCPv4(p, 1420, false, out); err != nil {
			b.Fatal(err)
		}
	}
}

type discard struct{}

func (discard) WritePacket([][]byte) error { return nil }

func BenchmarkCoalesce(b *testing.B) {
	var pkts [][]byte
	for i := 0; i < 44; i++ {
		pkts = append(pkts, buildTCP(tcpSpec{src: 1, dst: 2, seq: uint32(i * 1420), flags: TCPAck, payload: seqPayload(1420, 1)}))
	}
	c := NewCoalescer(8, discard{})
	b.SetBytes(int64(44 * len(pkts[0])))
	b.ReportAllocs()
	for b.Loop() {
		for _, p := range pkts {
			h, _ := ParseIPv4(p)
			c.Push(p, h)
		}
		c.Flush()
	}
}

func TestSegmentUDPv4(t *testing.T) {
	pl := seqPayload(3*1000+7, 9)
	p := make([]byte, 28+len(pl))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], 0xffff)
	p[8] = 64
	p[9] = ProtoUDP
	binary.BigEndian.PutUint32(p[12:], 0xc6120102)
	binary.BigEndian.PutUint32(p[16:], 0xc6120202)
	SetIPv4Checksum(p[:20])
	binary.BigEndian.PutUint16(p[20:], 1111)
	binary.BigEndian.PutUint16(p[22:], 2222)
	copy(p[28:], pl)
	out := make([]byte, 10000)
	segSize, nseg, used, err := SegmentUDPv4(p, 1000, true, out)
	if err != nil || nseg != 4 || segSize != 1028 {
		t.Fatalf("%d %d %v", segSize, nseg, err)
	}
	var got []byte
	for i := 0; i < nseg; i++ {
		s := out[i*segSize : min((i+1)*segSize, used)]
		ipHdrOK(t, s)
		u := s[20:]
		ph := make([]byte, 12)
		copy(ph, s[12:20])
		ph[9] = ProtoUDP
		binary.BigEndian.PutUint16(ph[10:], uint16(len(u)))
		if refChecksum(ph, u) != 0 || int(binary.BigEndian.Uint16(u[4:])) != len(u) || s[8] != 63 {
			t.Fatalf("segment %d bad", i)
		}
		if id := binary.BigEndian.Uint16(s[4:]); id != uint16(0xffff+i) {
			t.Fatalf("id %#x", id)
		}
		got = append(got, u[8:]...)
	}
	if !bytes.Equal(got, pl) {
		t.Fatal("payload mismatch")
	}
}

func TestSegmentTCPv4HeadersMatchesCopy(t *testing.T) {
	for _, n := range []int{1, 999, 1000, 4321, 65000} {
		p := buildTCP(tcpSpec{src: 1, dst: 2, seq: 7, flags: TCPAck | TCPPsh | TCPFin, opts: []byte{1, 1, 1, 1}, payload: seqPayload(n, 5), id: 9, partialSum: true})
		out := make([]byte, 200000)
		segSize, nseg, used, err := SegmentTCPv4(bytes.Clone(p), 1000, true, out)
		if err != nil {
			t.Fatal(err)
		}
		hdrs := make([]byte, 100000)
		orig := bytes.Clone(p)
		hl, nseg2, err := SegmentTCPv4Headers(p, 1000, true, hdrs)
		if err != nil || nseg2 != nseg || !bytes.Equal(p, orig) {
			t.Fatalf("n=%d: %d segs (want %d), %v, pkt modified %v", n, nseg2, nseg, err, !bytes.Equal(p, orig))
		}
		for i := 0; i < nseg; i++ {
			want := out[i*segSize : min((i+1)*segSize, used)]
			got := append(bytes.Clone(hdrs[i*hl:(i+1)*hl]), p[hl+i*1000:min(hl+(i+1)*1000, len(p))]...)
			if !bytes.Equal(got, want) {
				t.Fatalf("n=%d segment %d differs", n, i)
			}
		}
	}
	if _, _, err := SegmentTCPv4Headers(buildTCP(tcpSpec{src: 1, dst: 2, payload: seqPayload(5000, 0)}), 100, false, make([]byte, 100)); !errors.Is(err, ErrOutTooSmall) {
		t.Fatalf("small hdrs: %v", err)
	}
}
