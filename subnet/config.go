package subnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
)

// DefaultBackendType is used when the config has no Backend section.
// flanneld would pick "udp" in that case; weft picks vxlan and warns.
const DefaultBackendType = "vxlan"

// Config is the validated network config read from <prefix>/config.
type Config struct {
	// Network is the IPv4 cluster network, masked.
	Network netip.Prefix
	// SubnetLen is the prefix length of each host's lease.
	SubnetLen int
	// SubnetMin and SubnetMax bound the subnets that may be leased
	// (inclusive, both network addresses of a subnet).
	SubnetMin, SubnetMax netip.Addr
	// BackendType is Backend.Type, lower-cased; DefaultBackendType when the
	// config had no Backend section.
	BackendType string
	// BackendDefaulted is true when the config had no Backend section.
	BackendDefaulted bool
	// Backend is the raw Backend object (options for the backend), never nil.
	Backend json.RawMessage
	// EnableIPv6 is true for a dual-stack network: every lease then also
	// carries an IPv6 subnet from IPv6.
	EnableIPv6 bool
	// IPv6 is the IPv6 pool; zero unless EnableIPv6.
	IPv6 Pool
	// EnableNFTables is carried through for compatibility; weft always uses
	// the iptables command, which is nf_tables based on current distros.
	EnableNFTables bool
	// Raw is the config exactly as read.
	Raw []byte
}

// rawConfig mirrors flannel's JSON. encoding/json matches field names
// case-insensitively, which is the behaviour flannel documents.
type rawConfig struct {
	EnableIPv4     *bool
	EnableIPv6     bool
	Network        *string
	IPv6Network    *string
	SubnetLen      *int
	SubnetMin      *string
	SubnetMax      *string
	IPv6SubnetLen  *int
	IPv6SubnetMin  *string
	IPv6SubnetMax  *string
	EnableNFTables bool
	Backend        json.RawMessage
}

// ConfigKeys returns the network config's field names, as flannel spells
// them; the JSON decoder matches them case-insensitively. weftctl config set
// refuses any other key.
func ConfigKeys() []string {
	t := reflect.TypeFor[rawConfig]()
	keys := make([]string, t.NumField())
	for i := range keys {
		keys[i] = t.Field(i).Name
	}
	return keys
}

// ErrNetworkCoversUnderlay is wrapped by the FieldError CheckUnderlay returns
// when the cluster network contains a host's underlay address: the overlay
// routes for the network would then capture the hosts' own traffic.
var ErrNetworkCoversUnderlay = errors.New("network contains an underlay address")

// ErrNetworkTooBroad is wrapped by the FieldError for a Network shorter than
// MinNetworkBits: such a network would swallow the hosts' own addresses and
// the default route.
var ErrNetworkTooBroad = errors.New("network is too broad")

// ErrNetworkReserved is wrapped by the FieldError for a Network that overlaps
// an address range that can never carry pods (see ReservedRanges).
var ErrNetworkReserved = errors.New("network overlaps a reserved range")

// MinNetworkBits is the shortest prefix a cluster Network may have.
const MinNetworkBits = 8

// ReservedRanges are the IPv4 ranges a cluster Network must not overlap:
// "this network", loopback, link-local, multicast and the reserved class E
// range (with the limited broadcast address).
var ReservedRanges = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// FieldError names the config field that broke a rule.
type FieldError struct {
	Field string
	Rule  string
	// Err is an optional sentinel (such as ErrNetworkCoversUnderlay) for
	// errors.Is; Rule already describes it.
	Err error
}

func (e *FieldError) Error() string { return fmt.Sprintf("config field %s: %s", e.Field, e.Rule) }

// Unwrap returns the sentinel the rule stands for, if any.
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Rule: fmt.Sprintf(format, args...)}
}

// ParseConfig parses and validates a network config, filling in defaults.
// Every error names the offending field and the rule it breaks.
func ParseConfig(data []byte) (*Config, error) {
	var rc rawConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&rc); err != nil {
		return nil, fmt.Errorf("config is not valid JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("config is not valid JSON: trailing data after the object")
	}
	if rc.EnableIPv4 != nil && !*rc.EnableIPv4 {
		return nil, fieldErr("EnableIPv4", "must be true: every lease has an IPv4 subnet (IPv6-only networks are not supported; add EnableIPv6 for dual stack)")
	}
	cfg := &Config{Raw: append([]byte(nil), data...), EnableNFTables: rc.EnableNFTables}

	if rc.Network == nil || *rc.Network == "" {
		return nil, fieldErr("Network", "is required (an IPv4 CIDR such as 198.18.0.0/16)")
	}
	nw, err := netip.ParsePrefix(*rc.Network)
	if err != nil || !nw.Addr().Is4() {
		return nil, fieldErr("Network", "%q is not an IPv4 CIDR", *rc.Network)
	}
	nw = nw.Masked()
	if nw.Bits() < MinNetworkBits {
		return nil, &FieldError{Field: "Network", Err: ErrNetworkTooBroad,
			Rule: fmt.Sprintf("%s is shorter than /%d: it would cover the hosts' own addresses", nw, MinNetworkBits)}
	}
	for _, r := range ReservedRanges {
		if nw.Overlaps(r) {
			return nil, &FieldError{Field: "Network", Err: ErrNetworkReserved,
				Rule: fmt.Sprintf("%s overlaps the reserved range %s, which cannot be a pod network", nw, r)}
		}
	}
	bits := nw.Bits()
	p := Pool{Family: IPv4, Network: nw}
	switch {
	case rc.SubnetLen == nil || *rc.SubnetLen == 0:
		switch {
		case bits <= 22:
			p.SubnetLen = 24
		case bits <= 28:
			p.SubnetLen = bits + 2
		default:
			return nil, fieldErr("Network", "prefix /%d is too long to split into subnets (at most /28)", bits)
		}
	default:
		if err := checkSubnetLen("SubnetLen", *rc.SubnetLen, bits, 30); err != nil {
			return nil, err
		}
		p.SubnetLen = *rc.SubnetLen
	}
	if err := p.fillBounds("SubnetMin", rc.SubnetMin, "SubnetMax", rc.SubnetMax); err != nil {
		return nil, err
	}
	cfg.Network, cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax = p.Network, p.SubnetLen, p.SubnetMin, p.SubnetMax

	if rc.EnableIPv6 {
		p6, err := parsePool6(&rc)
		if err != nil {
			return nil, err
		}
		cfg.EnableIPv6, cfg.IPv6 = true, p6
	}

	if len(bytes.TrimSpace(rc.Backend)) == 0 || string(bytes.TrimSpace(rc.Backend)) == "null" {
		cfg.BackendType = DefaultBackendType
		cfg.BackendDefaulted = true
		cfg.Backend = json.RawMessage(`{"Type":"vxlan"}`)
	} else {
		var b struct{ Type string }
		if err := json.Unmarshal(rc.Backend, &b); err != nil {
			return nil, fieldErr("Backend", "must be an object with a Type: %v", err)
		}
		if b.Type == "" {
			return nil, fieldErr("Backend.Type", "is required (vxlan, host-gw or udp)")
		}
		cfg.BackendType = strings.ToLower(b.Type)
		cfg.Backend = append(json.RawMessage(nil), rc.Backend...)
	}
	return cfg, nil
}

// CheckUnderlay refuses a config whose Network or IPv6Network contains any
// of addrs: the hosts' underlay (public) addresses, such as the PublicIPs of
// all leases and a machine's own interface addresses. Invalid addresses are
// ignored, IPv4-mapped IPv6 addresses are checked as IPv4, and IPv6
// addresses only when the config enables IPv6. The error is a *FieldError
// for the network field that names the first offending address and wraps
// ErrNetworkCoversUnderlay.
func (c *Config) CheckUnderlay(addrs ...netip.Addr) error {
	for _, p := range []struct {
		field string
		nw    netip.Prefix
	}{{"Network", c.Network}, {"IPv6Network", c.IPv6.Network}} {
		if !p.nw.IsValid() {
			continue
		}
		var first netip.Addr
		more := 0
		for _, a := range addrs {
			a = a.Unmap()
			if !a.IsValid() || a.BitLen() != p.nw.Addr().BitLen() || !p.nw.Contains(a.WithZone("")) {
				continue
			}
			switch {
			case !first.IsValid():
				first = a
			case a != first:
				more++
			}
		}
		if !first.IsValid() {
			continue
		}
		rule := fmt.Sprintf("%s contains the underlay address %s", p.nw, first)
		if more > 0 {
			rule += fmt.Sprintf(" (and %d more)", more)
		}
		rule += ": the overlay would capture traffic between hosts; pick a network that no host address lies in"
		return &FieldError{Field: p.field, Rule: rule, Err: ErrNetworkCoversUnderlay}
	}
	return nil
}

// Pool4 is the IPv4 pool: Network, SubnetLen, SubnetMin and SubnetMax.
func (c *Config) Pool4() Pool {
	return Pool{Family: IPv4, Network: c.Network, SubnetLen: c.SubnetLen, SubnetMin: c.SubnetMin, SubnetMax: c.SubnetMax}
}

// PoolOf returns the pool of family f; the IPv6 pool is zero (not Enabled)
// unless EnableIPv6.
func (c *Config) PoolOf(f Family) Pool {
	if f == IPv6 {
		return c.IPv6
	}
	return c.Pool4()
}

// SubnetCount is the number of IPv4 subnets in [SubnetMin, SubnetMax].
func (c *Config) SubnetCount() int { return int(c.Pool4().Count()) }

// InRange reports whether sn is an IPv4 subnet this network may lease
// (see Pool.InRange).
func (c *Config) InRange(sn netip.Prefix) bool { return c.Pool4().InRange(sn) }

// Contains reports whether sn lies entirely inside the IPv4 cluster network.
func (c *Config) Contains(sn netip.Prefix) bool { return c.Pool4().Contains(sn) }

func addrToU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32ToAddr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
