package subnet

import (
	"errors"
	"math/rand/v2"
	"net/netip"
)

// ErrOutOfSubnets means every subnet in [SubnetMin, SubnetMax] is leased or
// reserved.
var ErrOutOfSubnets = errors.New("out of subnets: every subnet in the range is leased or reserved")

// RandomFree picks a uniformly random subnet in [SubnetMin, SubnetMax] that is
// not in taken. It walks the range once from a random start, so its cost is
// linear in the range size and it never loops forever. rng may be nil.
func (c *Config) RandomFree(taken map[netip.Prefix]bool, rng *rand.Rand) (netip.Prefix, error) {
	n := c.SubnetCount()
	if n <= 0 {
		return netip.Prefix{}, ErrOutOfSubnets
	}
	var start int
	if rng != nil {
		start = rng.IntN(n)
	} else {
		start = rand.IntN(n)
	}
	for i := 0; i < n; i++ {
		sn := c.NthSubnet((start + i) % n)
		if !taken[sn] {
			return sn, nil
		}
	}
	return netip.Prefix{}, ErrOutOfSubnets
}

// NthSubnet returns the i-th subnet counted from SubnetMin.
func (c *Config) NthSubnet(i int) netip.Prefix {
	size := uint32(1) << (32 - c.SubnetLen)
	return netip.PrefixFrom(u32ToAddr(addrToU32(c.SubnetMin)+uint32(i)*size), c.SubnetLen)
}
