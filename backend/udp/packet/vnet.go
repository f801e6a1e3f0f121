package packet

import "encoding/binary"

// VirtioNetHdrLen is the length of the header a TUN device opened with
// IFF_VNET_HDR puts before every packet (struct virtio_net_hdr).
const VirtioNetHdrLen = 10

// virtio_net_hdr flags and GSO types (include/uapi/linux/virtio_net.h).
const (
	VirtioNeedsCsum = 1
	VirtioDataValid = 2

	GSONone   = 0
	GSOTCPv4  = 1
	GSOUDP    = 3
	GSOTCPv6  = 4
	GSOUDPL4  = 5
	GSOECNBit = 0x80
)

// VirtioNetHdr describes the offload state of one packet read from or
// written to a TUN device. Fields are in host byte order, as the TUN
// driver uses them when TUNSETVNETLE/BE is not set.
type VirtioNetHdr struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
}

// DecodeVirtioNetHdr reads a header from the first VirtioNetHdrLen bytes of b.
func DecodeVirtioNetHdr(b []byte) VirtioNetHdr {
	_ = b[VirtioNetHdrLen-1]
	return VirtioNetHdr{
		Flags:      b[0],
		GSOType:    b[1],
		HdrLen:     binary.NativeEndian.Uint16(b[2:4]),
		GSOSize:    binary.NativeEndian.Uint16(b[4:6]),
		CsumStart:  binary.NativeEndian.Uint16(b[6:8]),
		CsumOffset: binary.NativeEndian.Uint16(b[8:10]),
	}
}

// Encode writes h into the first VirtioNetHdrLen bytes of b.
func (h VirtioNetHdr) Encode(b []byte) {
	_ = b[VirtioNetHdrLen-1]
	b[0] = h.Flags
	b[1] = h.GSOType
	binary.NativeEndian.PutUint16(b[2:4], h.HdrLen)
	binary.NativeEndian.PutUint16(b[4:6], h.GSOSize)
	binary.NativeEndian.PutUint16(b[6:8], h.CsumStart)
	binary.NativeEndian.PutUint16(b[8:10], h.CsumOffset)
}

// CompletePartialChecksum finishes a checksum the sender left to the
// device (VIRTIO_NET_HDR_F_NEEDS_CSUM): the field at start+offset holds
// the pseudo-header sum and the checksum covers b[start:].
func CompletePartialChecksum(b []byte, start, offset int) error {
	if start < 0 || start+offset+2 > len(b) || offset < 0 {
		return ErrBadL4
	}
	c := ^Fold(Sum(b[start:], 0))
	if c == 0 && offset == 6 { // UDP: 0 means "no checksum"
		c = 0xffff
	}
	binary.BigEndian.PutUint16(b[start+offset:], c)
	return nil
}
