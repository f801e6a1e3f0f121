package subnet

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

func dual(v6 string, extra string) []byte {
	return []byte(`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"` + v6 + `"` + extra + `}`)
}

func TestParseConfigIPv6(t *testing.T) {
	tests := []struct {
		name     string
		data     []byte
		len      int
		min, max string
	}{
		{"/48 gives /64s", dual("2001:db8:100::/48", ""), 64, "2001:db8:100:1::", "2001:db8:100:ffff::"},
		{"/62 still /64", dual("2001:db8:100::/62", ""), 64, "2001:db8:100:1::", "2001:db8:100:3::"},
		{"/64 splits in four", dual("2001:db8:100::/64", ""), 66, "2001:db8:100:0:4000::", "2001:db8:100:0:c000::"},
		{"smallest /124", dual("2001:db8::/124", ""), 126, "2001:db8::4", "2001:db8::c"},
		{"host bits masked", dual("2001:db8:100::1/48", ""), 64, "2001:db8:100:1::", "2001:db8:100:ffff::"},
		{"explicit len and bounds", dual("2001:db8::/32", `,"IPv6SubnetLen":80,"IPv6SubnetMin":"2001:db8:0:5::","IPv6SubnetMax":"2001:db8:0:7::"`), 80, "2001:db8:0:5::", "2001:db8:0:7::"},
		{"field names any case", []byte(`{"network":"198.18.0.0/16","enableipv6":true,"ipv6network":"fd00:1::/48"}`), 64, "fd00:1:0:1::", "fd00:1:0:ffff::"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig(tt.data)
			if err != nil {
				t.Fatal(err)
			}
			p := c.IPv6
			if !c.EnableIPv6 || p.Family != IPv6 || p.SubnetLen != tt.len || p.SubnetMin.String() != tt.min || p.SubnetMax.String() != tt.max {
				t.Fatalf("got enable=%v %v /%d %s..%s, want /%d %s..%s", c.EnableIPv6, p.Network, p.SubnetLen, p.SubnetMin, p.SubnetMax, tt.len, tt.min, tt.max)
			}
			checkPool6(t, p)
		})
	}
}

func TestParseConfigIPv6Errors(t *testing.T) {
	tests := []struct {
		name  string
		data  []byte
		field string
		want  error
	}{
		{"missing network", []byte(`{"Network":"198.18.0.0/16","EnableIPv6":true}`), "IPv6Network", nil},
		{"v4 as v6", dual("198.19.0.0/16", ""), "IPv6Network", nil},
		{"mapped", dual("::ffff:198.19.0.0/112", ""), "IPv6Network", nil},
		{"everything", dual("::/0", ""), "IPv6Network", ErrNetworkTooBroad},
		{"too broad", dual("2000::/8", ""), "IPv6Network", ErrNetworkTooBroad},
		{"too long", dual("2001:db8::/125", ""), "IPv6Network", nil},
		{"link-local", dual("fe80::/64", ""), "IPv6Network", ErrNetworkReserved},
		{"multicast", dual("ff02::/64", ""), "IPv6Network", ErrNetworkReserved},
		{"covers loopback", dual("::/64", ""), "IPv6Network", ErrNetworkReserved},
		{"len too short", dual("2001:db8::/48", `,"IPv6SubnetLen":49`), "IPv6SubnetLen", nil},
		{"len too long", dual("2001:db8::/48", `,"IPv6SubnetLen":127`), "IPv6SubnetLen", nil},
		{"min outside", dual("2001:db8::/48", `,"IPv6SubnetMin":"2001:db9::"`), "IPv6SubnetMin", nil},
		{"min off boundary", dual("2001:db8::/48", `,"IPv6SubnetMin":"2001:db8:0:1::1"`), "IPv6SubnetMin", nil},
		{"max below min", dual("2001:db8::/48", `,"IPv6SubnetMin":"2001:db8:0:9::","IPv6SubnetMax":"2001:db8:0:8::"`), "IPv6SubnetMax", nil},
		{"min not an address", dual("2001:db8::/48", `,"IPv6SubnetMin":"198.18.1.0"`), "IPv6SubnetMin", nil},
		{"IPv6-only", []byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8::/48"}`), "EnableIPv4", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig(tt.data)
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("got %v, want an error for field %s", err, tt.field)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	// IPv6 fields are ignored while EnableIPv6 is off.
	c, err := ParseConfig([]byte(`{"Network":"198.18.0.0/16","IPv6Network":"::/0"}`))
	if err != nil || c.EnableIPv6 || c.IPv6.Enabled() {
		t.Fatalf("IPv6 off: %+v, %v", c, err)
	}
}

// checkPool6 asserts the invariants of an accepted IPv6 pool.
func checkPool6(t *testing.T, p Pool) {
	t.Helper()
	nw := p.Network
	if !nw.Addr().Is6() || nw.Addr().Is4In6() || nw.Masked() != nw || nw.Bits() < MinNetworkBits6 || nw.Bits() > MaxNetworkBits6 {
		t.Fatalf("IPv6 network %s", nw)
	}
	for _, r := range ReservedRanges6 {
		if nw.Overlaps(r) {
			t.Fatalf("accepted %s, which overlaps reserved %s", nw, r)
		}
	}
	if p.SubnetLen < nw.Bits()+2 || p.SubnetLen > 126 {
		t.Fatalf("IPv6 subnet length %d for %s", p.SubnetLen, nw)
	}
	lo, hi := netip.PrefixFrom(p.SubnetMin, p.SubnetLen), netip.PrefixFrom(p.SubnetMax, p.SubnetLen)
	if !p.InRange(lo) || !p.InRange(hi) || p.Count() < 1 {
		t.Fatalf("bounds %s..%s (count %d) not in range of %s", lo, hi, p.Count(), nw)
	}
	if n := p.Count(); n < 1<<40 {
		if last := p.Nth(n - 1); last != hi {
			t.Fatalf("Nth(Count-1) = %s, want %s", last, hi)
		}
	}
	if p.InRange(netip.PrefixFrom(nw.Addr(), p.SubnetLen)) && p.SubnetMin != nw.Addr() {
		t.Fatalf("the network's first subnet is in range but below SubnetMin")
	}
}

func TestPoolRandomFreeIPv6(t *testing.T) {
	c, err := ParseConfig(dual("2001:db8::/120", `,"IPv6SubnetLen":124`)) // 15 subnets after the first
	if err != nil {
		t.Fatal(err)
	}
	p := c.PoolOf(IPv6)
	if p.Count() != 15 {
		t.Fatalf("Count = %d, want 15", p.Count())
	}
	rng := rand.New(rand.NewPCG(1, 2))
	taken := map[netip.Prefix]bool{}
	for i := 0; i < 15; i++ {
		sn, err := p.RandomFree(taken, rng)
		if err != nil {
			t.Fatalf("pick %d: %v", i, err)
		}
		if taken[sn] || !p.InRange(sn) {
			t.Fatalf("pick %d: %s taken or out of range", i, sn)
		}
		taken[sn] = true
	}
	if _, err := p.RandomFree(taken, rng); !errors.Is(err, ErrOutOfSubnets) {
		t.Fatalf("full: got %v", err)
	}

	// A /32 holds 2^32 /64s: a pick costs at most len(taken)+1 steps and
	// never returns a taken subnet.
	big, err := ParseConfig(dual("2001:db8::/32", ""))
	if err != nil {
		t.Fatal(err)
	}
	bp := big.IPv6
	if bp.Count() != 1<<32-1 {
		t.Fatalf("Count = %d", bp.Count())
	}
	taken = map[netip.Prefix]bool{}
	for i := 0; i < 2000; i++ {
		sn, err := bp.RandomFree(taken, rng)
		if err != nil || taken[sn] || !bp.InRange(sn) {
			t.Fatalf("pick %d: %s %v", i, sn, err)
		}
		taken[sn] = true
	}
	if bp.Nth(0).String() != "2001:db8:0:1::/64" || bp.Nth(bp.Count()-1).String() != "2001:db8:ffff:ffff::/64" {
		t.Fatalf("Nth: %s .. %s", bp.Nth(0), bp.Nth(bp.Count()-1))
	}
}

func TestCheckUnderlayIPv6(t *testing.T) {
	c, err := ParseConfig(dual("2001:db8:100::/48", ""))
	if err != nil {
		t.Fatal(err)
	}
	err = c.CheckUnderlay(netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8:100:7::1"), netip.MustParseAddr("2001:db8:100:8::1"))
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "IPv6Network" || !errors.Is(err, ErrNetworkCoversUnderlay) ||
		!strings.Contains(err.Error(), "2001:db8:100:7::1") || !strings.Contains(err.Error(), "and 1 more") {
		t.Fatalf("got %v", err)
	}
	if err := c.CheckUnderlay(netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("fe80::1%eth0")); err != nil {
		t.Fatalf("outside: %v", err)
	}
}
