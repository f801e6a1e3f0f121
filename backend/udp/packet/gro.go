package packet

import (
	"encoding/binary"
)

// MaxCoalesced is the largest packet a Coalescer builds.
const MaxCoalesced = 65535

// maxSegs bounds the segments merged into one packet (and so the length
// of the vector handed to the Writer).
const maxSegs = 64

// maxHeaders is the room for a copied IPv4 + TCP header (no IP options,
// TCP options up to 40 bytes).
const maxHeaders = IPv4HeaderLen + 60

// Writer receives finished packets from a Coalescer as a vector to be
// written back to back in one call (writev): the first slice starts with
// a VirtioNetHdrLen-byte virtio-net header.
type Writer interface {
	WritePacket(iov [][]byte) error
}

type groFlow struct {
	head    []byte   // virtio-net header, then the first segment's IP and TCP headers
	iov     [][]byte // head[:VirtioNetHdrLen+hl], then the payloads
	n       int      // length of the merged IP packet
	src     uint32
	dst     uint32
	ports   uint32
	nextSeq uint32
	hl      int // IP + TCP header length
	mss     int // payload length of the first segment
	closed  bool
	inUse   bool
}

// A Coalescer merges consecutive TCP/IPv4 segments of the same flow into
// super-packets that a TUN device opened with IFF_VNET_HDR accepts as one
// write (GRO). Segments merge only when a receiving Linux stack would
// merge them too: same addresses and ports, next sequence number, same
// ACK, window, flags (but PSH) and options, IP header without options,
// no fragments, and a payload no longer than the first segment's.
//
// Payloads are not copied: a packet passed to Push must stay unchanged
// until the next Flush. A packet that cannot be merged is written right
// after the flow's earlier segments, so the order within a flow is kept.
type Coalescer struct {
	flows  []groFlow
	zero   [VirtioNetHdrLen]byte
	single [2][]byte
	w      Writer
}

// NewCoalescer returns a Coalescer holding up to maxFlows flows at once.
func NewCoalescer(maxFlows int, w Writer) *Coalescer {
	c := &Coalescer{flows: make([]groFlow, maxFlows), w: w}
	for i := range c.flows {
		c.flows[i].head = make([]byte, VirtioNetHdrLen+maxHeaders)
		c.flows[i].iov = make([][]byte, 0, maxSegs+1)
	}
	return c
}

// candidate reports whether a TCP segment may start or join a merged
// packet, and returns its header lengths.
func candidate(pkt []byte, ip IPv4) (hl int, ok bool) {
	if ip.Proto != ProtoTCP || ip.HeaderLen != IPv4HeaderLen || ip.Fragment {
		return 0, false
	}
	thl, err := TCPHeaderLen(pkt, ip.HeaderLen)
	if err != nil {
		return 0, false
	}
	if pkt[IPv4HeaderLen+13]&(TCPSyn|TCPFin|TCPRst|TCPUrg|TCPCwr) != 0 {
		return 0, false
	}
	hl = ip.HeaderLen + thl
	if len(pkt) <= hl {
		return 0, false // no payload: pure ACKs pass through
	}
	return hl, true
}

// Push hands one IPv4 packet (already validated and trimmed to its total
// length) to the coalescer. ip is its parsed header.
func (c *Coalescer) Push(pkt []byte, ip IPv4) error {
	hl, ok := candidate(pkt, ip)
	var ports uint32
	if ip.Proto == ProtoTCP && len(pkt) >= ip.HeaderLen+4 {
		ports = binary.BigEndian.Uint32(pkt[ip.HeaderLen:])
	}
	free := -1
	for i := range c.flows {
		f := &c.flows[i]
		if !f.inUse {
			if free < 0 {
				free = i
			}
			continue
		}
		if f.src != ip.Src || f.dst != ip.Dst || f.ports != ports || ip.Proto != ProtoTCP {
			continue
		}
		if ok && c.canAppend(f, pkt, hl) {
			c.appendTo(f, pkt, hl)
			return nil
		}
		// Same flow but not mergeable: write what we hold first.
		if err := c.flushFlow(f); err != nil {
			return err
		}
		if free < 0 {
			free = i
		}
		break
	}
	if !ok {
		c.single[0], c.single[1] = c.zero[:], pkt
		return c.w.WritePacket(c.single[:])
	}
	if free < 0 {
		if err := c.Flush(); err != nil {
			return err
		}
		free = 0
	}
	f := &c.flows[free]
	copy(f.head[VirtioNetHdrLen:], pkt[:hl])
	f.iov = append(f.iov[:0], f.head[:VirtioNetHdrLen+hl], pkt[hl:])
	f.n = len(pkt)
	f.src, f.dst, f.ports = ip.Src, ip.Dst, ports
	f.hl = hl
	f.mss = len(pkt) - hl
	f.nextSeq = binary.BigEndian.Uint32(pkt[ip.HeaderLen+4:]) + uint32(f.mss)
	f.closed = pkt[IPv4HeaderLen+13]&TCPPsh != 0
	f.inUse = true
	return nil
}

func (c *Coalescer) canAppend(f *groFlow, pkt []byte, hl int) bool {
	if f.closed || hl != f.hl {
		return false
	}
	payload := len(pkt) - hl
	if payload > f.mss || f.n+payload > MaxCoalesced {
		return false
	}
	head := f.head[VirtioNetHdrLen : VirtioNetHdrLen+hl]
	// IP: TOS, DF/flags word, TTL and protocol must match.
	if head[1] != pkt[1] || head[6] != pkt[6] || head[7] != pkt[7] || head[8] != pkt[8] {
		return false
	}
	t1, t2 := head[IPv4HeaderLen:], pkt[IPv4HeaderLen:hl]
	if binary.BigEndian.Uint32(t2[4:8]) != f.nextSeq {
		return false
	}
	// ACK, data offset, flags but PSH, window.
	if binary.BigEndian.Uint32(t1[8:12]) != binary.BigEndian.Uint32(t2[8:12]) ||
		t1[12] != t2[12] || (t1[13]^t2[13])&^TCPPsh != 0 ||
		t1[14] != t2[14] || t1[15] != t2[15] {
		return false
	}
	// Options, byte for byte.
	for i := 20; i < len(t2); i++ {
		if t1[i] != t2[i] {
			return false
		}
	}
	return true
}

func (c *Coalescer) appendTo(f *groFlow, pkt []byte, hl int) {
	payload := len(pkt) - hl
	f.iov = append(f.iov, pkt[hl:])
	f.n += payload
	f.nextSeq += uint32(payload)
	psh := pkt[IPv4HeaderLen+13] & TCPPsh
	f.head[VirtioNetHdrLen+IPv4HeaderLen+13] |= psh
	if payload < f.mss || psh != 0 || len(f.iov) == cap(f.iov) {
		f.closed = true
	}
}

// flushFlow writes the flow's packet: untouched when it holds a single
// segment, else as a GSO super-packet whose TCP checksum the kernel
// completes (NEEDS_CSUM with the pseudo-header sum in place).
func (c *Coalescer) flushFlow(f *groFlow) error {
	if !f.inUse {
		return nil
	}
	f.inUse = false
	if len(f.iov) == 2 {
		clear(f.head[:VirtioNetHdrLen])
		return c.w.WritePacket(f.iov)
	}
	p := f.head[VirtioNetHdrLen : VirtioNetHdrLen+f.hl]
	binary.BigEndian.PutUint16(p[2:4], uint16(f.n))
	SetIPv4Checksum(p[:IPv4HeaderLen])
	tcpLen := f.n - IPv4HeaderLen
	binary.BigEndian.PutUint16(p[IPv4HeaderLen+16:], Fold(PseudoHeaderSum(p, ProtoTCP, tcpLen)))
	VirtioNetHdr{
		Flags:      VirtioNeedsCsum,
		GSOType:    GSOTCPv4,
		HdrLen:     uint16(f.hl),
		GSOSize:    uint16(f.mss),
		CsumStart:  IPv4HeaderLen,
		CsumOffset: 16,
	}.Encode(f.head)
	return c.w.WritePacket(f.iov)
}

// Flush writes every held flow.
func (c *Coalescer) Flush() error {
	var first error
	for i := range c.flows {
		if err := c.flushFlow(&c.flows[i]); err != nil && first == nil {
			first = err
		}
	}
	return first
}
