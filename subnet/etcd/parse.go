package etcd

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/weftnet/weft/subnet"
)

// InvalidLease is a key under <prefix>/subnets/ whose name or value does not
// parse. It is reported, never programmed.
type InvalidLease struct {
	Key   string
	Value []byte
	Err   error
}

// parseLeaseKV turns one key/value under subnetsPrefix into a lease. etcdLease
// is the etcd lease ID bound to the key (0 for a reservation). Expiration is
// left for the caller. Errors name the key.
func parseLeaseKV(subnetsPrefix string, key, value []byte, etcdLease, modRev int64) (subnet.Lease, error) {
	k := string(key)
	name, ok := strings.CutPrefix(k, subnetsPrefix)
	if !ok {
		return subnet.Lease{}, fmt.Errorf("lease key %q is not under %s", k, subnetsPrefix)
	}
	sn, err := subnet.ParseSubnetKey(name)
	if err != nil {
		return subnet.Lease{}, fmt.Errorf("lease key %q: %w", k, err)
	}
	attrs, err := subnet.ParseLeaseAttrs(value)
	if err != nil {
		return subnet.Lease{Subnet: sn}, fmt.Errorf("lease %s: %w", sn, err)
	}
	return subnet.Lease{
		Subnet:      sn,
		Attrs:       attrs,
		Reservation: etcdLease == 0,
		EtcdLease:   etcdLease,
		ModRevision: modRev,
	}, nil
}

// subnetFromKey returns the subnet named by a lease key, if it parses.
func subnetFromKey(subnetsPrefix string, key []byte) (netip.Prefix, error) {
	name, ok := strings.CutPrefix(string(key), subnetsPrefix)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("lease key %q is not under %s", key, subnetsPrefix)
	}
	sn, err := subnet.ParseSubnetKey(name)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("lease key %q: %w", key, err)
	}
	return sn, nil
}
