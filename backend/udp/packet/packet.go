// Package packet parses and rewrites the IPv4 packets that weft's udp
// backend carries: header validation, checksums, TTL handling, the
// virtio-net header that a TUN device opened with IFF_VNET_HDR prepends,
// TCP segmentation of offloaded super-packets (GSO) and TCP coalescing of
// received segments (GRO).
//
// Every function works on caller-owned buffers and allocates nothing, so
// that the data path stays allocation-free per packet.
package packet

import (
	"encoding/binary"
	"errors"
	"math/bits"
)

// IP protocol numbers used by the data path.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// IPv4HeaderLen is the length of an IPv4 header without options.
const IPv4HeaderLen = 20

// Parse errors. They are sentinel values so that the data path can count
// them without allocating.
var (
	ErrTooShort    = errors.New("packet shorter than an IPv4 header")
	ErrNotIPv4     = errors.New("not an IPv4 packet")
	ErrBadIHL      = errors.New("bad IPv4 header length")
	ErrBadTotalLen = errors.New("IPv4 total length does not match the buffer")
	ErrBadL4       = errors.New("bad transport header")
)

// IPv4 is the part of an IPv4 header the data path looks at.
type IPv4 struct {
	HeaderLen int    // IHL in bytes
	TotalLen  int    // total length field
	Proto     uint8  // protocol
	TTL       uint8  // time to live
	Src, Dst  uint32 // addresses in host order
	Fragment  bool   // MF set or fragment offset non-zero
}

// ParseIPv4 validates the IPv4 header at the start of b. b may be longer
// than the packet (the caller trims to TotalLen); it may not be shorter.
func ParseIPv4(b []byte) (IPv4, error) {
	var h IPv4
	if len(b) < IPv4HeaderLen {
		return h, ErrTooShort
	}
	if b[0]>>4 != 4 {
		return h, ErrNotIPv4
	}
	h.HeaderLen = int(b[0]&0x0f) * 4
	if h.HeaderLen < IPv4HeaderLen || h.HeaderLen > len(b) {
		return h, ErrBadIHL
	}
	h.TotalLen = int(binary.BigEndian.Uint16(b[2:4]))
	if h.TotalLen < h.HeaderLen || h.TotalLen > len(b) {
		return h, ErrBadTotalLen
	}
	frag := binary.BigEndian.Uint16(b[6:8])
	h.Fragment = frag&0x3fff != 0
	h.TTL = b[8]
	h.Proto = b[9]
	h.Src = binary.BigEndian.Uint32(b[12:16])
	h.Dst = binary.BigEndian.Uint32(b[16:20])
	return h, nil
}

// TCPHeaderLen returns the TCP header length of the segment that starts at
// b[ihl:], validating it against the packet length.
func TCPHeaderLen(b []byte, ihl int) (int, error) {
	if len(b) < ihl+20 {
		return 0, ErrBadL4
	}
	thl := int(b[ihl+12]>>4) * 4
	if thl < 20 || ihl+thl > len(b) {
		return 0, ErrBadL4
	}
	return thl, nil
}

// Sum adds b to the running one's-complement sum acc (RFC 1071) and returns
// the new, unfolded sum. An odd trailing byte is padded with zero, so only
// the last chunk of a checksummed range may have odd length.
func Sum(b []byte, acc uint64) uint64 {
	var carry uint64
	for len(b) >= 32 {
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[0:8]), 0)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[8:16]), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[16:24]), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[24:32]), carry)
		acc += carry
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[0:8]), 0)
		acc += carry
		b = b[8:]
	}
	if len(b) >= 4 {
		acc, carry = bits.Add64(acc, uint64(binary.BigEndian.Uint32(b[0:4])), 0)
		acc += carry
		b = b[4:]
	}
	if len(b) >= 2 {
		acc, carry = bits.Add64(acc, uint64(binary.BigEndian.Uint16(b[0:2])), 0)
		acc += carry
		b = b[2:]
	}
	if len(b) == 1 {
		acc, carry = bits.Add64(acc, uint64(b[0])<<8, 0)
		acc += carry
	}
	return acc
}

// Fold folds a running sum into 16 bits (not complemented).
func Fold(acc uint64) uint16 {
	acc = (acc >> 32) + (acc & 0xffffffff)
	acc = (acc >> 32) + (acc & 0xffffffff)
	acc = (acc >> 16) + (acc & 0xffff)
	acc = (acc >> 16) + (acc & 0xffff)
	acc = (acc >> 16) + (acc & 0xffff)
	return uint16(acc)
}

// Checksum returns the Internet checksum of b.
func Checksum(b []byte) uint16 { return ^Fold(Sum(b, 0)) }

// PseudoHeaderSum returns the unfolded sum of the IPv4 pseudo-header for a
// transport segment of length l carried in the packet whose header is ip.
func PseudoHeaderSum(ip []byte, proto uint8, l int) uint64 {
	acc := uint64(binary.BigEndian.Uint32(ip[12:16])) + uint64(binary.BigEndian.Uint32(ip[16:20]))
	return acc + uint64(proto) + uint64(l)
}

// SetIPv4Checksum recomputes the header checksum of the IPv4 header ip
// (ip must be exactly the header, options included).
func SetIPv4Checksum(ip []byte) {
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:12], Checksum(ip))
}

// DecTTL decrements the TTL of the IPv4 header at the start of b and
// updates the header checksum incrementally (RFC 1624). It reports false,
// leaving b unchanged, when the TTL is already 0 or 1 and the packet must
// not be forwarded.
func DecTTL(b []byte) bool {
	if b[8] <= 1 {
		return false
	}
	old := uint16(b[8])<<8 | uint16(b[9])
	b[8]--
	neu := uint16(b[8])<<8 | uint16(b[9])
	hc := binary.BigEndian.Uint16(b[10:12])
	// HC' = ~(~HC + ~m + m')
	acc := uint64(^hc) + uint64(^old) + uint64(neu)
	binary.BigEndian.PutUint16(b[10:12], ^Fold(acc))
	return true
}
