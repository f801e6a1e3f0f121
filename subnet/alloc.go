package subnet

import (
	"errors"
	"math/rand/v2"
	"net/netip"
)

// ErrOutOfSubnets means every subnet in [SubnetMin, SubnetMax] is leased or
// reserved.
var ErrOutOfSubnets = errors.New("out of subnets: every subnet in the range is leased or reserved")

// RandomFree picks a random free IPv4 subnet (see Pool.RandomFree).
func (c *Config) RandomFree(taken map[netip.Prefix]bool, rng *rand.Rand) (netip.Prefix, error) {
	return c.Pool4().RandomFree(taken, rng)
}

// NthSubnet returns the i-th IPv4 subnet counted from SubnetMin.
func (c *Config) NthSubnet(i int) netip.Prefix { return c.Pool4().Nth(uint64(i)) }
