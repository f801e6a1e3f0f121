package subnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Lease is one host's claim on a subnet, as stored at
// <prefix>/subnets/<a.b.c.d>-<len>.
//
// A lease moves through these states (see subnet/etcd for the code):
//
//	free --claim (txn: key absent)--> claimed --renew/keepalive--> claimed
//	claimed --TTL expires / key deleted--> lost --re-claim same subnet--> claimed
//	lost --subnet taken meanwhile--> claimed (new subnet, subnet file rewritten)
//
// A key with no etcd lease attached is a reservation: it never expires and
// only the host whose PublicIP it carries may use it.
type Lease struct {
	// Subnet is the IPv4 subnet: the lease's identity.
	Subnet netip.Prefix
	// IPv6Subnet is the IPv6 part of a dual-stack key
	// ("<v4>-<len>&<v6>-<len>"); invalid (zero) for a v4-only key.
	IPv6Subnet netip.Prefix
	Attrs      LeaseAttrs
	// Expiration is when the etcd lease runs out; zero for a reservation or
	// when unknown.
	Expiration time.Time
	// Reservation is true when the key has no etcd lease attached.
	Reservation bool
	// EtcdLease is the etcd lease ID the key is bound to (0 for a reservation).
	EtcdLease int64
	// ModRevision is the etcd revision of the last write to the key.
	ModRevision int64
	// CreateRevision is the etcd revision that created the key: a larger
	// value is a newer lease. Renewals do not change it.
	CreateRevision int64
}

// Key is the lease's key suffix under <prefix>/subnets/, in flannel's form:
// "198.18.7.0-24", or "198.18.7.0-24&2001:db8:1::-64" for dual stack.
func (l Lease) Key() string {
	if l.IPv6Subnet.IsValid() {
		return SubnetKey(l.Subnet) + "&" + SubnetKey(l.IPv6Subnet)
	}
	return SubnetKey(l.Subnet)
}

// LeaseAttrs is the JSON value of a lease key. MarshalJSON writes it
// byte-for-byte as flannel does: PublicIP, PublicIPv6 (null when absent),
// BackendType (omitted when empty, as for udp), BackendData (omitted when
// empty), BackendV6Data (omitted when empty).
type LeaseAttrs struct {
	PublicIP      netip.Addr
	PublicIPv6    netip.Addr // invalid (zero) means absent, written as null
	BackendType   string
	BackendData   json.RawMessage
	BackendV6Data json.RawMessage
}

// MarshalJSON implements json.Marshaler with flannel's field order.
func (a LeaseAttrs) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(`{"PublicIP":`)
	if a.PublicIP.IsValid() {
		b.WriteString(strconv.Quote(a.PublicIP.String()))
	} else {
		b.WriteString(`""`)
	}
	b.WriteString(`,"PublicIPv6":`)
	if a.PublicIPv6.IsValid() {
		b.WriteString(strconv.Quote(a.PublicIPv6.String()))
	} else {
		b.WriteString(`null`)
	}
	if a.BackendType != "" {
		b.WriteString(`,"BackendType":`)
		b.WriteString(strconv.Quote(a.BackendType))
	}
	if d := bytes.TrimSpace(a.BackendData); len(d) > 0 && string(d) != "null" {
		var c bytes.Buffer
		if err := json.Compact(&c, d); err != nil {
			return nil, fmt.Errorf("lease BackendData: %w", err)
		}
		b.WriteString(`,"BackendData":`)
		b.Write(c.Bytes())
	}
	if d := bytes.TrimSpace(a.BackendV6Data); len(d) > 0 && string(d) != "null" {
		var c bytes.Buffer
		if err := json.Compact(&c, d); err != nil {
			return nil, fmt.Errorf("lease BackendV6Data: %w", err)
		}
		b.WriteString(`,"BackendV6Data":`)
		b.Write(c.Bytes())
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON implements json.Unmarshaler. Field names match
// case-insensitively. PublicIP must be a valid IPv4 address.
func (a *LeaseAttrs) UnmarshalJSON(data []byte) error {
	var r struct {
		PublicIP      *string
		PublicIPv6    *string
		BackendType   string
		BackendData   json.RawMessage
		BackendV6Data json.RawMessage
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return err
	}
	if r.PublicIP == nil {
		return errors.New("lease has no PublicIP")
	}
	ip, err := netip.ParseAddr(*r.PublicIP)
	if err != nil || !ip.Is4() {
		return fmt.Errorf("lease PublicIP %q is not an IPv4 address", *r.PublicIP)
	}
	*a = LeaseAttrs{PublicIP: ip, BackendType: r.BackendType}
	if r.PublicIPv6 != nil && *r.PublicIPv6 != "" {
		ip6, err := netip.ParseAddr(*r.PublicIPv6)
		if err != nil || !ip6.Is6() {
			return fmt.Errorf("lease PublicIPv6 %q is not an IPv6 address", *r.PublicIPv6)
		}
		a.PublicIPv6 = ip6
	}
	if len(r.BackendData) > 0 && string(r.BackendData) != "null" {
		a.BackendData = r.BackendData
	}
	if len(r.BackendV6Data) > 0 && string(r.BackendV6Data) != "null" {
		a.BackendV6Data = r.BackendV6Data
	}
	return nil
}

// ParseLeaseAttrs decodes a lease value.
func ParseLeaseAttrs(data []byte) (LeaseAttrs, error) {
	var a LeaseAttrs
	if err := json.Unmarshal(data, &a); err != nil {
		return LeaseAttrs{}, fmt.Errorf("parse lease value: %w", err)
	}
	return a, nil
}

// VXLANData is the BackendData of a vxlan lease: {"VNI":1,"VtepMAC":"..."}.
type VXLANData struct {
	VNI     int    `json:"VNI"`
	VtepMAC string `json:"VtepMAC"`
}

// ErrUnusableVtepMAC is wrapped by ParseVXLANData's error for a VtepMAC that
// is well formed but cannot be a peer's VTEP: all zeros, broadcast or
// multicast. The kernel refuses an FDB entry for such an address.
var ErrUnusableVtepMAC = errors.New("unusable VtepMAC")

// ParseVXLANData decodes and validates vxlan BackendData. The MAC must be a
// 6-byte unicast hardware address other than 00:00:00:00:00:00; an all-zero,
// broadcast or multicast MAC gives an error that names it and wraps
// ErrUnusableVtepMAC.
func ParseVXLANData(raw json.RawMessage) (VXLANData, net.HardwareAddr, error) {
	var d VXLANData
	if len(raw) == 0 {
		return d, nil, errors.New("vxlan lease has no BackendData")
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return d, nil, fmt.Errorf("vxlan BackendData: %w", err)
	}
	mac, err := net.ParseMAC(d.VtepMAC)
	if err != nil || len(mac) != 6 {
		return d, nil, fmt.Errorf("vxlan BackendData: VtepMAC %q is not a 6-byte MAC address", d.VtepMAC)
	}
	switch {
	case mac[0]|mac[1]|mac[2]|mac[3]|mac[4]|mac[5] == 0:
		return d, nil, fmt.Errorf("vxlan BackendData: VtepMAC %s is all zeros: %w", mac, ErrUnusableVtepMAC)
	case mac[0]&mac[1]&mac[2]&mac[3]&mac[4]&mac[5] == 0xff:
		return d, nil, fmt.Errorf("vxlan BackendData: VtepMAC %s is the broadcast address: %w", mac, ErrUnusableVtepMAC)
	case mac[0]&1 == 1:
		return d, nil, fmt.Errorf("vxlan BackendData: VtepMAC %s is a multicast address: %w", mac, ErrUnusableVtepMAC)
	}
	return d, mac, nil
}

// SubnetKey returns the key suffix flannel uses for a subnet: "198.18.7.0-24".
func SubnetKey(sn netip.Prefix) string {
	return sn.Addr().String() + "-" + strconv.Itoa(sn.Bits())
}

// ParseSubnetKey parses a lease key suffix in flannel's form: "198.18.7.0-24",
// or "198.18.7.0-24&2001:db8:1:2::-64" for a dual-stack lease. v4 is the
// lease's identity; v6 is invalid (zero) for a plain key. Each part must be
// written exactly as SubnetKey writes it (canonical address, decimal length
// without leading zeros) with no host bits set, so that a parsed lease's
// Key() names the very key it came from. Errors name the key.
func ParseSubnetKey(key string) (v4, v6 netip.Prefix, err error) {
	part4, part6, dual := strings.Cut(key, "&")
	v4, err = parseKeyPart(key, part4, false)
	if err != nil {
		return netip.Prefix{}, netip.Prefix{}, err
	}
	if !dual {
		return v4, netip.Prefix{}, nil
	}
	if strings.IndexByte(part6, '&') >= 0 {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q: more than one '&'", key)
	}
	v6, err = parseKeyPart(key, part6, true)
	if err != nil {
		return netip.Prefix{}, netip.Prefix{}, err
	}
	return v4, v6, nil
}

// parseKeyPart parses one "<addr>-<len>" part of the lease key.
func parseKeyPart(key, part string, six bool) (netip.Prefix, error) {
	family, form, maxBits := "IPv4", "<a.b.c.d>-<len>", 32
	if six {
		family, form, maxBits = "IPv6", "<a.b.c.d>-<len>&<ipv6>-<len>", 128
	}
	i := strings.LastIndexByte(part, '-')
	if i <= 0 {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: want %s", key, form)
	}
	as, ls := part[:i], part[i+1:]
	ip, err := netip.ParseAddr(as)
	if err != nil || ip.Is4() == six || ip.Is4In6() || ip.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: %q is not an %s address", key, as, family)
	}
	if ip.String() != as {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: %s address %q is not in canonical form (%s)", key, family, as, ip)
	}
	bits, err := strconv.Atoi(ls)
	if err != nil || bits < 0 || bits > maxBits || ls != strconv.Itoa(bits) {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: %q is not an %s prefix length", key, ls, family)
	}
	p := netip.PrefixFrom(ip, bits)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: %s address %s has host bits set for /%d", key, family, ip, bits)
	}
	return p, nil
}

// ValidatePeer decides whether a peer lease may be programmed on this host.
// own is our own subnet (invalid if we hold none yet). It rejects leases
// outside the network or with the wrong length, leases overlapping our own
// subnet, and unusable public addresses.
func (c *Config) ValidatePeer(l Lease, own netip.Prefix, ownPublicIP netip.Addr) error {
	if !c.Contains(l.Subnet) || l.Subnet.Bits() != c.SubnetLen {
		return fmt.Errorf("subnet %s is not a /%d inside network %s", l.Subnet, c.SubnetLen, c.Network)
	}
	if own.IsValid() && own.Overlaps(l.Subnet) {
		return fmt.Errorf("subnet %s overlaps our own subnet %s", l.Subnet, own)
	}
	ip := l.Attrs.PublicIP
	switch {
	case !ip.IsValid() || !ip.Is4():
		return errors.New("PublicIP is not an IPv4 address")
	case ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("PublicIP %s is not a usable unicast address", ip)
	case c.Network.Contains(ip):
		return fmt.Errorf("PublicIP %s lies inside the cluster network", ip)
	case ownPublicIP.IsValid() && ip == ownPublicIP:
		return fmt.Errorf("PublicIP %s is our own address", ip)
	}
	return nil
}

// ValidatePeer6 judges the IPv6 part of a peer lease on a dual-stack
// network: the IPv6 subnet of its key (if any) must be a subnet of
// IPv6Network that does not overlap ours (own6), and its PublicIPv6 (if
// any) a usable unicast address outside the network and not our own. It
// accepts every lease when the network is IPv4-only: the IPv6 part of a
// dual-stack key is then ignored.
func (c *Config) ValidatePeer6(l Lease, own6 netip.Prefix, ownPublicIPv6 netip.Addr) error {
	if !c.EnableIPv6 {
		return nil
	}
	if sn := l.IPv6Subnet; sn.IsValid() {
		if !c.IPv6.Contains(sn) || sn.Bits() != c.IPv6.SubnetLen {
			return fmt.Errorf("IPv6 subnet %s is not a /%d inside IPv6Network %s", sn, c.IPv6.SubnetLen, c.IPv6.Network)
		}
		if own6.IsValid() && own6.Overlaps(sn) {
			return fmt.Errorf("IPv6 subnet %s overlaps our own IPv6 subnet %s", sn, own6)
		}
	}
	ip := l.Attrs.PublicIPv6
	switch {
	case !ip.IsValid():
	case !ip.Is6() || ip.Is4In6() || ip.Zone() != "":
		return fmt.Errorf("PublicIPv6 %s is not an IPv6 address", ip)
	case !ip.IsGlobalUnicast() && !ip.IsPrivate():
		return fmt.Errorf("PublicIPv6 %s is not a usable unicast address", ip)
	case c.IPv6.Network.Contains(ip):
		return fmt.Errorf("PublicIPv6 %s lies inside the IPv6 cluster network", ip)
	case ownPublicIPv6.IsValid() && ip == ownPublicIPv6:
		return fmt.Errorf("PublicIPv6 %s is our own address", ip)
	}
	return nil
}

// HasIPv6 reports whether l carries an IPv6 subnet this network programs.
func (c *Config) HasIPv6(l Lease) bool { return c.EnableIPv6 && l.IPv6Subnet.IsValid() }

// Pointers returns a pointer to each lease of ls, in order: the form in
// which FilterPeers hands peers to a backend. The leases are shared, not
// copied.
func Pointers(ls []Lease) []*Lease {
	ps := make([]*Lease, len(ls))
	for i := range ls {
		ps[i] = &ls[i]
	}
	return ps
}
