package packet

import "encoding/binary"

// ICMP types and codes the data path sends.
const (
	ICMPDestUnreachable = 3
	ICMPNetUnreachable  = 0
	icmpEchoRequest     = 8
	icmpEchoReply       = 0
)

// BuildNetUnreachable writes into out an ICMP destination-unreachable
// (net unreachable) message from src to the sender of orig, quoting orig's
// IP header and the first 8 bytes of its payload (RFC 792). It returns the
// length written, or 0 when no error may be sent about orig: fragments
// other than the first, and ICMP errors (RFC 1122 3.2.2).
func BuildNetUnreachable(out, orig []byte, src uint32) int {
	ip, err := ParseIPv4(orig)
	if err != nil {
		return 0
	}
	if binary.BigEndian.Uint16(orig[6:8])&0x1fff != 0 {
		return 0
	}
	if ip.Proto == ProtoICMP {
		if ip.TotalLen <= ip.HeaderLen {
			return 0
		}
		t := orig[ip.HeaderLen]
		if t != icmpEchoRequest && t != icmpEchoReply {
			return 0
		}
	}
	quote := min(ip.TotalLen, ip.HeaderLen+8)
	n := IPv4HeaderLen + 8 + quote
	if len(out) < n {
		return 0
	}
	h := out[:IPv4HeaderLen]
	h[0] = 0x45
	h[1] = 0xc0 // internetwork control
	binary.BigEndian.PutUint16(h[2:4], uint16(n))
	binary.BigEndian.PutUint32(h[4:8], 0)
	h[8] = 64
	h[9] = ProtoICMP
	binary.BigEndian.PutUint32(h[12:16], src)
	binary.BigEndian.PutUint32(h[16:20], ip.Src)
	SetIPv4Checksum(h)
	icmp := out[IPv4HeaderLen:n]
	icmp[0] = ICMPDestUnreachable
	icmp[1] = ICMPNetUnreachable
	clear(icmp[2:8])
	copy(icmp[8:], orig[:quote])
	binary.BigEndian.PutUint16(icmp[2:4], Checksum(icmp))
	return n
}
