package subnet

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
)

// Family is an address family of the cluster network.
type Family int

// The two families. Every lease has an IPv4 subnet; a dual-stack lease also
// has an IPv6 one.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// String returns "ipv4" or "ipv6", the value of the metrics' family label.
func (f Family) String() string {
	if f == IPv6 {
		return "ipv6"
	}
	return "ipv4"
}

// Pool is one family's part of the network config: the cluster network and
// the range of subnets leases are taken from. Allocation and range checks
// are the same code for both families.
type Pool struct {
	Family Family
	// Network is the cluster network, masked.
	Network netip.Prefix
	// SubnetLen is the prefix length of each host's subnet.
	SubnetLen int
	// SubnetMin and SubnetMax bound the subnets that may be leased
	// (inclusive, both network addresses of a subnet).
	SubnetMin, SubnetMax netip.Addr
}

// Enabled reports whether the pool is configured.
func (p Pool) Enabled() bool { return p.Network.IsValid() }

// bitsTotal is the address width of the pool's family.
func (p Pool) bitsTotal() int {
	if p.Family == IPv6 {
		return 128
	}
	return 32
}

// InRange reports whether sn is a subnet this pool may lease: inside the
// network, of length SubnetLen, on a boundary, within [SubnetMin, SubnetMax].
func (p Pool) InRange(sn netip.Prefix) bool {
	if !p.Enabled() || sn.Bits() != p.SubnetLen || sn.Masked() != sn || !p.Network.Contains(sn.Addr()) {
		return false
	}
	a := sn.Addr()
	return !a.Less(p.SubnetMin) && !p.SubnetMax.Less(a)
}

// Contains reports whether sn lies entirely inside the pool's network.
func (p Pool) Contains(sn netip.Prefix) bool {
	return p.Enabled() && sn.Addr().BitLen() == p.Network.Addr().BitLen() &&
		sn.Bits() >= p.Network.Bits() && p.Network.Contains(sn.Addr())
}

// Count is the number of subnets in [SubnetMin, SubnetMax], saturated at
// the largest int.
func (p Pool) Count() uint64 {
	if !p.Enabled() {
		return 0
	}
	hi, lo := sub128(toU128(p.SubnetMax), toU128(p.SubnetMin))
	hi, lo = shr128(hi, lo, uint(p.bitsTotal()-p.SubnetLen))
	if hi != 0 || lo == ^uint64(0) {
		return ^uint64(0)
	}
	return lo + 1
}

// Nth returns the i-th subnet counted from SubnetMin.
func (p Pool) Nth(i uint64) netip.Prefix {
	hi, lo := shl128(0, i, uint(p.bitsTotal()-p.SubnetLen))
	hi, lo = add128(toU128(p.SubnetMin), hi, lo)
	return netip.PrefixFrom(fromU128(hi, lo, p.Family), p.SubnetLen)
}

// RandomFree picks a random subnet in [SubnetMin, SubnetMax] that is not in
// taken: it starts at a uniformly random subnet and walks on from there,
// wrapping around. At most len(taken)+1 steps are needed to find a free
// subnet when one exists, so the cost is bounded by the number of leases,
// not by the size of the range (an IPv6 range may hold 2^64 subnets). rng
// may be nil.
func (p Pool) RandomFree(taken map[netip.Prefix]bool, rng *rand.Rand) (netip.Prefix, error) {
	n := p.Count()
	if n == 0 {
		return netip.Prefix{}, ErrOutOfSubnets
	}
	var start uint64
	if rng != nil {
		start = rng.Uint64N(n)
	} else {
		start = rand.Uint64N(n)
	}
	steps := n
	if m := uint64(len(taken)) + 1; m < steps {
		steps = m
	}
	for i := uint64(0); i < steps; i++ {
		j := start + i
		if j >= n || j < start {
			j -= n
		}
		sn := p.Nth(j)
		if !taken[sn] {
			return sn, nil
		}
	}
	return netip.Prefix{}, ErrOutOfSubnets
}

// IPv6 network rules.
const (
	// MinNetworkBits6 is the shortest prefix an IPv6Network may have.
	MinNetworkBits6 = 16
	// MaxNetworkBits6 is the longest: a /124 still splits into /126s.
	MaxNetworkBits6 = 124
	// DefaultSubnetLen6 is the IPv6 subnet length for networks of /62 or
	// shorter; a longer network is split into quarters.
	DefaultSubnetLen6 = 64
)

// ReservedRanges6 are the IPv6 ranges an IPv6Network must not overlap: the
// reserved ::/8 (unspecified, loopback, IPv4-mapped and -compatible
// addresses), link-local and multicast.
var ReservedRanges6 = []netip.Prefix{
	netip.MustParsePrefix("::/8"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("ff00::/8"),
}

// parsePool6 validates the IPv6 part of a network config.
func parsePool6(rc *rawConfig) (Pool, error) {
	p := Pool{Family: IPv6}
	if rc.IPv6Network == nil || *rc.IPv6Network == "" {
		return p, fieldErr("IPv6Network", "is required when EnableIPv6 is true (an IPv6 CIDR such as 2001:db8:100::/48)")
	}
	nw, err := netip.ParsePrefix(*rc.IPv6Network)
	if err != nil || !nw.Addr().Is6() || nw.Addr().Is4In6() || nw.Addr().Zone() != "" {
		return p, fieldErr("IPv6Network", "%q is not an IPv6 CIDR", *rc.IPv6Network)
	}
	nw = nw.Masked()
	if nw.Bits() < MinNetworkBits6 {
		return p, &FieldError{Field: "IPv6Network", Err: ErrNetworkTooBroad,
			Rule: fmt.Sprintf("%s is shorter than /%d: it would cover the hosts' own addresses", nw, MinNetworkBits6)}
	}
	if nw.Bits() > MaxNetworkBits6 {
		return p, fieldErr("IPv6Network", "prefix /%d is too long to split into subnets (at most /%d)", nw.Bits(), MaxNetworkBits6)
	}
	for _, r := range ReservedRanges6 {
		if nw.Overlaps(r) {
			return p, &FieldError{Field: "IPv6Network", Err: ErrNetworkReserved,
				Rule: fmt.Sprintf("%s overlaps the reserved range %s, which cannot be a pod network", nw, r)}
		}
	}
	p.Network = nw
	b := nw.Bits()
	switch {
	case rc.IPv6SubnetLen == nil || *rc.IPv6SubnetLen == 0:
		p.SubnetLen = DefaultSubnetLen6
		if b > 62 {
			p.SubnetLen = b + 2
		}
	default:
		if err := checkSubnetLen("IPv6SubnetLen", *rc.IPv6SubnetLen, b, 126); err != nil {
			return p, err
		}
		p.SubnetLen = *rc.IPv6SubnetLen
	}
	if err := p.fillBounds("IPv6SubnetMin", rc.IPv6SubnetMin, "IPv6SubnetMax", rc.IPv6SubnetMax); err != nil {
		return p, err
	}
	return p, nil
}

// checkSubnetLen checks a subnet length given in field: at most maxLen,
// and at least the network's prefix length (bits) + 2, so that the network
// holds the first subnet, which is never leased, and more.
func checkSubnetLen(field string, l, bits, maxLen int) error {
	if l > maxLen {
		return fieldErr(field, "%d is larger than %d", l, maxLen)
	}
	if l < bits+2 {
		return fieldErr(field, "%d must be at least the network prefix + 2 (%d)", l, bits+2)
	}
	return nil
}

// fillBounds sets SubnetMin and SubnetMax: the given values, checked, or
// the defaults (the network's second subnet and its last one).
func (p *Pool) fillBounds(minField string, minVal *string, maxField string, maxVal *string) error {
	shift := uint(p.bitsTotal() - p.SubnetLen)
	first := toU128(p.Network.Addr())
	// The last subnet starts one subnet size before the network's end:
	// last = first + 2^(total-bits) - size.
	sizeHi, sizeLo := shl128(0, 1, shift)
	spanHi, spanLo := shl128(0, 1, uint(p.bitsTotal()-p.Network.Bits()))
	offHi, offLo := sub128(u128{spanHi, spanLo}, u128{sizeHi, sizeLo})
	lastHi, lastLo := add128(first, offHi, offLo)
	minHi, minLo := add128(first, sizeHi, sizeLo)
	p.SubnetMin = fromU128(minHi, minLo, p.Family)
	p.SubnetMax = fromU128(lastHi, lastLo, p.Family)
	family := "an IPv4"
	if p.Family == IPv6 {
		family = "an IPv6"
	}
	parse := func(field string, s *string, dst *netip.Addr) error {
		if s == nil || *s == "" {
			return nil
		}
		a, err := netip.ParseAddr(*s)
		if err != nil || a.BitLen() != p.bitsTotal() || a.Is4In6() || a.Zone() != "" {
			return fieldErr(field, "%q is not %s address", *s, family)
		}
		if !p.Network.Contains(a) {
			return fieldErr(field, "%s is outside %s", a, p.Network)
		}
		if netip.PrefixFrom(a, p.SubnetLen).Masked().Addr() != a {
			return fieldErr(field, "%s is not on a /%d subnet boundary", a, p.SubnetLen)
		}
		*dst = a
		return nil
	}
	if err := parse(minField, minVal, &p.SubnetMin); err != nil {
		return err
	}
	if err := parse(maxField, maxVal, &p.SubnetMax); err != nil {
		return err
	}
	if p.SubnetMax.Less(p.SubnetMin) {
		return fieldErr(maxField, "%s is below %s %s", p.SubnetMax, minField, p.SubnetMin)
	}
	return nil
}

// u128 is an address as a 128-bit number (IPv4 in the low 32 bits).
type u128 struct{ hi, lo uint64 }

func toU128(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{0, uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func fromU128(hi, lo uint64, f Family) netip.Addr {
	if f == IPv4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], lo)
	return netip.AddrFrom16(b)
}

func add128(a u128, hi, lo uint64) (uint64, uint64) {
	l, c := bits.Add64(a.lo, lo, 0)
	h, _ := bits.Add64(a.hi, hi, c)
	return h, l
}

func sub128(a, b u128) (uint64, uint64) {
	l, c := bits.Sub64(a.lo, b.lo, 0)
	h, _ := bits.Sub64(a.hi, b.hi, c)
	return h, l
}

func shl128(hi, lo uint64, n uint) (uint64, uint64) {
	switch {
	case n >= 128:
		return 0, 0
	case n >= 64:
		return lo << (n - 64), 0
	case n == 0:
		return hi, lo
	}
	return hi<<n | lo>>(64-n), lo << n
}

func shr128(hi, lo uint64, n uint) (uint64, uint64) {
	switch {
	case n >= 128:
		return 0, 0
	case n >= 64:
		return 0, hi >> (n - 64)
	case n == 0:
		return hi, lo
	}
	return hi >> n, lo>>n | hi<<(64-n)
}
