package etcd

import (
	"fmt"
	"net/netip"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/weftnet/weft/subnet"
)

// InvalidLease is a key under <prefix>/subnets/ whose name or value does not
// parse. It is reported, never programmed.
type InvalidLease struct {
	Key   string
	Value []byte
	Err   error
	// ModRevision is the etcd revision of the last write to the key.
	ModRevision int64
}

// parseLeaseKV turns one key/value under subnetsPrefix into a lease: the
// subnets from the key (both parts of a dual-stack key), the attributes from
// the value, and the etcd lease ID (0 for a reservation) and revisions from
// kv. Expiration is left for the caller. Errors name the key.
func parseLeaseKV(subnetsPrefix string, kv *mvccpb.KeyValue) (subnet.Lease, error) {
	k := string(kv.Key)
	name, ok := strings.CutPrefix(k, subnetsPrefix)
	if !ok {
		return subnet.Lease{}, fmt.Errorf("lease key %q is not under %s", k, subnetsPrefix)
	}
	v4, v6, err := subnet.ParseSubnetKey(name)
	if err != nil {
		return subnet.Lease{}, fmt.Errorf("lease key %q: %w", k, err)
	}
	l := subnet.Lease{
		Subnet:         v4,
		IPv6Subnet:     v6,
		Reservation:    kv.Lease == 0,
		EtcdLease:      kv.Lease,
		ModRevision:    kv.ModRevision,
		CreateRevision: kv.CreateRevision,
	}
	attrs, err := subnet.ParseLeaseAttrs(kv.Value)
	if err != nil {
		return subnet.Lease{Subnet: v4, IPv6Subnet: v6}, fmt.Errorf("lease %s: %w", l.Key(), err)
	}
	l.Attrs = attrs
	return l, nil
}

// subnetFromKey returns the IPv4 subnet (the lease's identity) named by a
// lease key, if the key parses.
func subnetFromKey(subnetsPrefix string, key []byte) (netip.Prefix, error) {
	name, ok := strings.CutPrefix(string(key), subnetsPrefix)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("lease key %q is not under %s", key, subnetsPrefix)
	}
	sn, _, err := subnet.ParseSubnetKey(name)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("lease key %q: %w", key, err)
	}
	return sn, nil
}

// claimedSubnet returns the IPv4 subnet a lease key claims even when the key
// as a whole does not parse: the part before any '&', if that part is a
// valid IPv4 key. Allocation treats that subnet as taken.
func claimedSubnet(subnetsPrefix, key string) (netip.Prefix, error) {
	name, ok := strings.CutPrefix(key, subnetsPrefix)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("lease key %q is not under %s", key, subnetsPrefix)
	}
	v4part, _, _ := strings.Cut(name, "&")
	sn, _, err := subnet.ParseSubnetKey(v4part)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("lease key %q: %w", key, err)
	}
	return sn, nil
}
