package packet

import (
	"encoding/binary"
	"errors"
)

// TCP flag bits (byte 13 of the TCP header).
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPPsh = 0x08
	TCPAck = 0x10
	TCPUrg = 0x20
	TCPEce = 0x40
	TCPCwr = 0x80
)

// ErrOutTooSmall is returned when the output buffer cannot hold every segment.
var ErrOutTooSmall = errors.New("output buffer too small for the segments")

// ErrBadGSO is returned for a super-packet whose offload header does not
// fit its content.
var ErrBadGSO = errors.New("bad GSO header")

// SegmentTCPv4 splits the TCP/IPv4 super-packet pkt into segments carrying
// at most mss payload bytes each, the way a NIC doing TSO would: every
// segment gets a copy of the IP and TCP headers with its own total length,
// IP ID (incremented per segment), sequence number and full checksums;
// CWR stays only on the first segment, FIN and PSH only on the last.
// When decTTL is set every segment's TTL is decremented as well.
//
// The segments are written back to back into out; all but the last are
// segSize bytes long, so that they can be handed to UDP GSO as they are.
// It returns the segment size, the number of segments and the bytes used.
func SegmentTCPv4(pkt []byte, mss int, decTTL bool, out []byte) (segSize, nseg, used int, err error) {
	ip, err := ParseIPv4(pkt)
	if err != nil {
		return 0, 0, 0, err
	}
	if ip.Proto != ProtoTCP || ip.Fragment {
		return 0, 0, 0, ErrBadGSO
	}
	// The kernel sets the total length of a super-packet to its full
	// length; trust the buffer, which ParseIPv4 checked is not shorter.
	pkt = pkt[:ip.TotalLen]
	ihl := ip.HeaderLen
	thl, err := TCPHeaderLen(pkt, ihl)
	if err != nil {
		return 0, 0, 0, err
	}
	hl := ihl + thl
	payload := len(pkt) - hl
	if mss <= 0 || payload <= 0 {
		return 0, 0, 0, ErrBadGSO
	}
	if decTTL && pkt[8] <= 1 {
		return 0, 0, 0, ErrTTL
	}
	nseg = (payload + mss - 1) / mss
	segSize = hl + mss
	used = (nseg-1)*segSize + hl + (payload - (nseg-1)*mss)
	if used > len(out) {
		return 0, 0, 0, ErrOutTooSmall
	}
	id0 := binary.BigEndian.Uint16(pkt[4:6])
	seq0 := binary.BigEndian.Uint32(pkt[ihl+4 : ihl+8])
	flags := pkt[ihl+13]
	off := 0
	for i := 0; i < nseg; i++ {
		start := hl + i*mss
		end := min(start+mss, len(pkt))
		seg := out[off : off+hl+(end-start)]
		copy(seg, pkt[:hl])
		copy(seg[hl:], pkt[start:end])

		binary.BigEndian.PutUint16(seg[2:4], uint16(len(seg)))
		binary.BigEndian.PutUint16(seg[4:6], id0+uint16(i))
		if decTTL {
			seg[8]--
		}
		SetIPv4Checksum(seg[:ihl])

		tcp := seg[ihl:]
		binary.BigEndian.PutUint32(tcp[4:8], seq0+uint32(i*mss))
		f := flags
		if i > 0 {
			f &^= TCPCwr
		}
		if i < nseg-1 {
			f &^= TCPFin | TCPPsh
		}
		tcp[13] = f
		tcp[16], tcp[17] = 0, 0
		acc := PseudoHeaderSum(seg, ProtoTCP, len(tcp))
		binary.BigEndian.PutUint16(tcp[16:18], ^Fold(Sum(tcp, acc)))
		off += len(seg)
	}
	return segSize, nseg, used, nil
}

// ErrTTL is returned when a packet's TTL does not allow forwarding it.
var ErrTTL = errors.New("TTL exceeded")

// SegmentUDPv4 splits the UDP/IPv4 super-packet pkt (UDP segmentation
// offload) into datagrams carrying at most size payload bytes each, with
// their own IP total length, IP ID, UDP length and full UDP checksum.
// Output layout and results are as for SegmentTCPv4.
func SegmentUDPv4(pkt []byte, size int, decTTL bool, out []byte) (segSize, nseg, used int, err error) {
	ip, err := ParseIPv4(pkt)
	if err != nil {
		return 0, 0, 0, err
	}
	if ip.Proto != ProtoUDP || ip.Fragment {
		return 0, 0, 0, ErrBadGSO
	}
	pkt = pkt[:ip.TotalLen]
	ihl := ip.HeaderLen
	hl := ihl + 8
	payload := len(pkt) - hl
	if size <= 0 || payload <= 0 {
		return 0, 0, 0, ErrBadGSO
	}
	if decTTL && pkt[8] <= 1 {
		return 0, 0, 0, ErrTTL
	}
	nseg = (payload + size - 1) / size
	segSize = hl + size
	used = (nseg-1)*segSize + hl + (payload - (nseg-1)*size)
	if used > len(out) {
		return 0, 0, 0, ErrOutTooSmall
	}
	id0 := binary.BigEndian.Uint16(pkt[4:6])
	off := 0
	for i := 0; i < nseg; i++ {
		start := hl + i*size
		end := min(start+size, len(pkt))
		seg := out[off : off+hl+(end-start)]
		copy(seg, pkt[:hl])
		copy(seg[hl:], pkt[start:end])
		binary.BigEndian.PutUint16(seg[2:4], uint16(len(seg)))
		binary.BigEndian.PutUint16(seg[4:6], id0+uint16(i))
		if decTTL {
			seg[8]--
		}
		SetIPv4Checksum(seg[:ihl])
		u := seg[ihl:]
		binary.BigEndian.PutUint16(u[4:6], uint16(len(u)))
		u[6], u[7] = 0, 0
		c := ^Fold(Sum(u, PseudoHeaderSum(seg, ProtoUDP, len(u))))
		if c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(u[6:8], c)
		off += len(seg)
	}
	return segSize, nseg, used, nil
}

// SegmentTCPv4Headers does what SegmentTCPv4 does without copying the
// payload: it writes only the nseg headers (hl bytes each, back to back)
// into hdrs. Segment i is hdrs[i*hl:(i+1)*hl] followed by
// pkt[hl+i*mss : min(hl+(i+1)*mss, len)], so the segments can be sent
// with a vector of buffers. pkt is not modified.
func SegmentTCPv4Headers(pkt []byte, mss int, decTTL bool, hdrs []byte) (hl, nseg int, err error) {
	ip, err := ParseIPv4(pkt)
	if err != nil {
		return 0, 0, err
	}
	if ip.Proto != ProtoTCP || ip.Fragment {
		return 0, 0, ErrBadGSO
	}
	pkt = pkt[:ip.TotalLen]
	ihl := ip.HeaderLen
	thl, err := TCPHeaderLen(pkt, ihl)
	if err != nil {
		return 0, 0, err
	}
	hl = ihl + thl
	payload := len(pkt) - hl
	if mss <= 0 || payload <= 0 {
		return 0, 0, ErrBadGSO
	}
	if decTTL && pkt[8] <= 1 {
		return 0, 0, ErrTTL
	}
	nseg = (payload + mss - 1) / mss
	if nseg*hl > len(hdrs) {
		return 0, 0, ErrOutTooSmall
	}
	id0 := binary.BigEndian.Uint16(pkt[4:6])
	seq0 := binary.BigEndian.Uint32(pkt[ihl+4 : ihl+8])
	flags := pkt[ihl+13]
	for i := 0; i < nseg; i++ {
		start := hl + i*mss
		end := min(start+mss, len(pkt))
		h := hdrs[i*hl : (i+1)*hl]
		copy(h, pkt[:hl])
		segLen := hl + end - start
		binary.BigEndian.PutUint16(h[2:4], uint16(segLen))
		binary.BigEndian.PutUint16(h[4:6], id0+uint16(i))
		if decTTL {
			h[8]--
		}
		SetIPv4Checksum(h[:ihl])
		tcp := h[ihl:]
		binary.BigEndian.PutUint32(tcp[4:8], seq0+uint32(i*mss))
		f := flags
		if i > 0 {
			f &^= TCPCwr
		}
		if i < nseg-1 {
			f &^= TCPFin | TCPPsh
		}
		tcp[13] = f
		tcp[16], tcp[17] = 0, 0
		acc := Sum(tcp, PseudoHeaderSum(h, ProtoTCP, segLen-ihl))
		// The TCP header is a multiple of 4 bytes long, so the payload's
		// sum continues at an even offset.
		binary.BigEndian.PutUint16(tcp[16:18], ^Fold(Sum(pkt[start:end], acc)))
	}
	return hl, nseg, nil
}
