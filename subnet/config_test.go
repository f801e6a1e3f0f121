package subnet

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseConfigDefaults(t *testing.T) {
	tests := []struct {
		name      string
		json      string
		len       int
		min, max  string
		backend   string
		defaulted bool
	}{
		{"flannel example /16", `{"Network":"10.5.0.0/16"}`, 24, "10.5.1.0", "10.5.255.0", "vxlan", true},
		{"/15", `{"Network":"198.18.0.0/15","Backend":{"Type":"host-gw"}}`, 24, "198.18.1.0", "198.19.255.0", "host-gw", false},
		{"/22 still 24", `{"Network":"198.18.0.0/22"}`, 24, "198.18.1.0", "198.18.3.0", "vxlan", true},
		{"/23 gives 25", `{"Network":"198.18.0.0/23"}`, 25, "198.18.0.128", "198.18.1.128", "vxlan", true},
		{"/28 gives 30", `{"Network":"198.18.0.0/28"}`, 30, "198.18.0.4", "198.18.0.12", "vxlan", true},
		{"explicit len", `{"Network":"198.18.0.0/16","SubnetLen":26}`, 26, "198.18.0.64", "198.18.255.192", "vxlan", true},
		{"explicit bounds", `{"Network":"198.18.0.0/16","SubnetMin":"198.18.10.0","SubnetMax":"198.18.20.0"}`, 24, "198.18.10.0", "198.18.20.0", "vxlan", true},
		{"case-insensitive fields", `{"network":"198.18.0.0/16","subnetlen":25,"backend":{"type":"UDP"}}`, 25, "198.18.0.128", "198.18.255.128", "udp", false},
		{"host bits masked", `{"Network":"198.18.3.7/16"}`, 24, "198.18.1.0", "198.18.255.0", "vxlan", true},
		{"a /8 is broad enough", `{"Network":"10.0.0.0/8"}`, 24, "10.0.1.0", "10.255.255.0", "vxlan", true},
		{"next to link-local", `{"Network":"169.253.0.0/16"}`, 24, "169.253.1.0", "169.253.255.0", "vxlan", true},
		{"last below multicast", `{"Network":"223.255.0.0/16"}`, 24, "223.255.1.0", "223.255.255.0", "vxlan", true},
		{"IPv6 fields present but off", `{"Network":"198.18.0.0/16","EnableIPv6":false,"IPv6Network":"2001:db8::/64"}`, 24, "198.18.1.0", "198.18.255.0", "vxlan", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tt.json))
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			if c.SubnetLen != tt.len || c.SubnetMin.String() != tt.min || c.SubnetMax.String() != tt.max {
				t.Errorf("got len %d min %s max %s, want %d %s %s", c.SubnetLen, c.SubnetMin, c.SubnetMax, tt.len, tt.min, tt.max)
			}
			if c.BackendType != tt.backend || c.BackendDefaulted != tt.defaulted {
				t.Errorf("backend %q defaulted %v, want %q %v", c.BackendType, c.BackendDefaulted, tt.backend, tt.defaulted)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name, json, field, contains string
	}{
		{"not json", `{`, "", "not valid JSON"},
		{"trailing", `{"Network":"198.18.0.0/16"} x`, "", "trailing"},
		{"no network", `{}`, "Network", "required"},
		{"bad network", `{"Network":"banana"}`, "Network", "not an IPv4 CIDR"},
		{"v6 network", `{"Network":"2001:db8::/64"}`, "Network", "not an IPv4 CIDR"},
		{"prefix too long", `{"Network":"198.18.0.0/29"}`, "Network", "too long"},
		{"len over 30", `{"Network":"198.18.0.0/16","SubnetLen":31}`, "SubnetLen", "larger than 30"},
		{"len too short", `{"Network":"198.18.0.0/16","SubnetLen":17}`, "SubnetLen", "at least"},
		{"min outside", `{"Network":"198.18.0.0/16","SubnetMin":"203.0.113.0"}`, "SubnetMin", "outside"},
		{"min off boundary", `{"Network":"198.18.0.0/16","SubnetMin":"198.18.1.5"}`, "SubnetMin", "boundary"},
		{"max not ip", `{"Network":"198.18.0.0/16","SubnetMax":"x"}`, "SubnetMax", "not an IPv4"},
		{"max below min", `{"Network":"198.18.0.0/16","SubnetMin":"198.18.9.0","SubnetMax":"198.18.2.0"}`, "SubnetMax", "below"},
		{"backend no type", `{"Network":"198.18.0.0/16","Backend":{"VNI":2}}`, "Backend.Type", "required"},
		{"backend not object", `{"Network":"198.18.0.0/16","Backend":"vxlan"}`, "Backend", "object"},
		{"ipv4 off", `{"Network":"198.18.0.0/16","EnableIPv4":false}`, "EnableIPv4", "IPv4"},
		{"everything", `{"Network":"0.0.0.0/0"}`, "Network", "shorter than /8"},
		{"everything, host bits", `{"Network":"198.18.0.0/0"}`, "Network", "shorter than /8"},
		{"/7", `{"Network":"10.0.0.0/7"}`, "Network", "shorter than /8"},
		{"this network", `{"Network":"0.0.0.0/8"}`, "Network", "reserved range 0.0.0.0/8"},
		{"loopback", `{"Network":"127.0.0.0/16"}`, "Network", "reserved range 127.0.0.0/8"},
		{"link-local", `{"Network":"169.254.0.0/16"}`, "Network", "reserved range 169.254.0.0/16"},
		{"covers link-local", `{"Network":"169.0.0.0/8"}`, "Network", "reserved range 169.254.0.0/16"},
		{"multicast", `{"Network":"239.1.0.0/16"}`, "Network", "reserved range 224.0.0.0/4"},
		{"class E", `{"Network":"250.0.0.0/16"}`, "Network", "reserved range 240.0.0.0/4"},
		{"broadcast", `{"Network":"255.255.255.0/24"}`, "Network", "reserved range 240.0.0.0/4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tt.json))
			if err == nil {
				t.Fatal("want an error")
			}
			if !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("error %q does not mention %q", err, tt.contains)
			}
			var fe *FieldError
			if tt.field != "" && (!errors.As(err, &fe) || fe.Field != tt.field) {
				t.Errorf("error %q does not name field %s", err, tt.field)
			}
		})
	}
	if _, err := ParseConfig([]byte(`{"Network":"0.0.0.0/0"}`)); !errors.Is(err, ErrNetworkTooBroad) {
		t.Errorf("0.0.0.0/0: got %v, want ErrNetworkTooBroad", err)
	}
	if _, err := ParseConfig([]byte(`{"Network":"127.0.0.0/8"}`)); !errors.Is(err, ErrNetworkReserved) {
		t.Errorf("127.0.0.0/8: got %v, want ErrNetworkReserved", err)
	}
}

func TestRandomFreeExhaustion(t *testing.T) {
	c, err := ParseConfig([]byte(`{"Network":"198.18.0.0/22"}`)) // subnets .1 .2 .3
	if err != nil {
		t.Fatal(err)
	}
	if n := c.SubnetCount(); n != 3 {
		t.Fatalf("SubnetCount = %d, want 3", n)
	}
	taken := map[netip.Prefix]bool{}
	for i := 0; i < 3; i++ {
		sn, err := c.RandomFree(taken, nil)
		if err != nil {
			t.Fatalf("pick %d: %v", i, err)
		}
		if taken[sn] || !c.InRange(sn) {
			t.Fatalf("pick %d: %s already taken or out of range", i, sn)
		}
		taken[sn] = true
	}
	if _, err := c.RandomFree(taken, nil); !errors.Is(err, ErrOutOfSubnets) {
		t.Fatalf("full network: got %v, want ErrOutOfSubnets", err)
	}
	if c.InRange(netip.MustParsePrefix("198.18.0.0/24")) {
		t.Error("the first subnet is below SubnetMin and must not be in range")
	}
}

func TestValidatePeer(t *testing.T) {
	c, _ := ParseConfig([]byte(`{"Network":"198.18.0.0/16"}`))
	own := netip.MustParsePrefix("198.18.1.0/24")
	me := netip.MustParseAddr("192.0.2.11")
	lease := func(sn, ip string) Lease {
		return Lease{Subnet: netip.MustParsePrefix(sn), Attrs: LeaseAttrs{PublicIP: netip.MustParseAddr(ip)}}
	}
	tests := []struct {
		name string
		l    Lease
		ok   bool
	}{
		{"valid", lease("198.18.2.0/24", "192.0.2.12"), true},
		{"outside network", lease("203.0.113.0/24", "192.0.2.12"), false},
		{"wrong length", lease("198.18.2.0/25", "192.0.2.12"), false},
		{"overlaps ours", lease("198.18.1.0/24", "192.0.2.12"), false},
		{"our public ip", lease("198.18.2.0/24", "192.0.2.11"), false},
		{"unspecified", lease("198.18.2.0/24", "0.0.0.0"), false},
		{"loopback", lease("198.18.2.0/24", "127.0.0.5"), false},
		{"multicast", lease("198.18.2.0/24", "224.0.0.1"), false},
		{"inside overlay", lease("198.18.2.0/24", "198.18.9.9"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.ValidatePeer(tt.l, own, me)
			if (err == nil) != tt.ok {
				t.Errorf("ValidatePeer = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{`{"Network":"10.5.0.0/16"}`, `{"Network":"198.18.0.0/23","SubnetLen":27,"SubnetMin":"198.18.0.32"}`, `{"network":"1.2.3.4/28","backend":{"type":"udp"}}`, `{}`, `[]`,
		`{"Network":"0.0.0.0/0"}`, `{"Network":"169.254.0.0/16"}`, `{"Network":"223.255.255.0/24"}`, `{"Network":"10.0.0.0/8","SubnetLen":30}`,
		`{"Network":"198.18.0.0/15","SubnetMin":"198.19.255.0","SubnetMax":"198.19.255.0","Backend":{"Type":"HOST-GW"}}`,
		`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48"}`,
		`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/120","IPv6SubnetLen":124,"IPv6SubnetMin":"2001:db8::20"}`,
		`{"Network":"198.18.0.0/16","enableipv6":true,"ipv6network":"::/0"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		// Every accepted config must be internally consistent.
		if c.SubnetLen > 30 || c.SubnetLen < c.Network.Bits()+2 {
			t.Fatalf("SubnetLen %d invalid for %s", c.SubnetLen, c.Network)
		}
		if !c.InRange(netip.PrefixFrom(c.SubnetMin, c.SubnetLen)) || !c.InRange(netip.PrefixFrom(c.SubnetMax, c.SubnetLen)) {
			t.Fatalf("bounds %s..%s not in range of %s", c.SubnetMin, c.SubnetMax, c.Network)
		}
		if c.SubnetCount() < 1 {
			t.Fatalf("no subnets")
		}
		if c.Network.Bits() < MinNetworkBits {
			t.Fatalf("accepted too broad a network %s", c.Network)
		}
		for _, r := range ReservedRanges {
			if c.Network.Overlaps(r) {
				t.Fatalf("accepted %s, which overlaps reserved %s", c.Network, r)
			}
		}
		if !c.Network.Addr().Is4() || c.Network.Masked() != c.Network {
			t.Fatalf("Network %s is not a masked IPv4 prefix", c.Network)
		}
		if last := c.NthSubnet(c.SubnetCount() - 1); last.Addr() != c.SubnetMax || !c.InRange(last) {
			t.Fatalf("the last subnet %s is not SubnetMax %s", last, c.SubnetMax)
		}
		// CheckUnderlay refuses exactly the addresses inside the network.
		if err := c.CheckUnderlay(c.SubnetMax); !errors.Is(err, ErrNetworkCoversUnderlay) {
			t.Fatalf("CheckUnderlay(%s) inside %s = %v", c.SubnetMax, c.Network, err)
		}
		if err := c.CheckUnderlay(netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("fe80::1")); err != nil {
			t.Fatalf("CheckUnderlay outside %s = %v", c.Network, err)
		}
		if c.EnableIPv6 {
			checkPool6(t, c.IPv6)
		} else if c.IPv6.Enabled() {
			t.Fatalf("IPv6 pool %v set without EnableIPv6", c.IPv6)
		}
		if c.Backend == nil || c.BackendType == "" || c.BackendType != strings.ToLower(c.BackendType) {
			t.Fatalf("backend %q %s", c.BackendType, c.Backend)
		}
	})
}

func TestCheckUnderlay(t *testing.T) {
	c, err := ParseConfig([]byte(`{"Network":"198.18.0.0/15"}`))
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	tests := []struct {
		name  string
		addrs []netip.Addr
		bad   string // the address the error must name; "" = accepted
	}{
		{"none", nil, ""},
		{"outside", []netip.Addr{a("192.0.2.11"), a("203.0.113.5")}, ""},
		{"ipv6 ignored", []netip.Addr{a("2001:db8::1")}, ""},
		{"invalid ignored", []netip.Addr{{}}, ""},
		{"inside", []netip.Addr{a("192.0.2.11"), a("198.19.4.20")}, "198.19.4.20"},
		{"network address", []netip.Addr{a("198.18.0.0")}, "198.18.0.0"},
		{"v4-mapped", []netip.Addr{a("::ffff:198.18.9.9")}, "198.18.9.9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.CheckUnderlay(tt.addrs...)
			if tt.bad == "" {
				if err != nil {
					t.Fatalf("CheckUnderlay = %v, want nil", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != "Network" {
				t.Fatalf("CheckUnderlay = %v, want a FieldError for Network", err)
			}
			if !errors.Is(err, ErrNetworkCoversUnderlay) {
				t.Errorf("CheckUnderlay = %v, want errors.Is ErrNetworkCoversUnderlay", err)
			}
			if !strings.Contains(err.Error(), tt.bad) {
				t.Errorf("error %q does not name %s", err, tt.bad)
			}
		})
	}
	err = c.CheckUnderlay(a("198.18.1.1"), a("198.18.1.1"), a("198.18.2.1"))
	if err == nil || !strings.Contains(err.Error(), "198.18.1.1") || !strings.Contains(err.Error(), "1 more") {
		t.Errorf("several inside: %v", err)
	}
}
