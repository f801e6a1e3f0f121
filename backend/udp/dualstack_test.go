package udp

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/weftnet/weft/subnet"
)

// TestIPv6PartsIgnored: udp carries IPv4 only. It does not declare dual
// stack (so weftd and weftctl refuse EnableIPv6 with it), and a peer lease
// with IPv6 parts (a dual-stack key written by another host) is forwarded
// to exactly as its IPv4-only form is.
func TestIPv6PartsIgnored(t *testing.T) {
	if Descriptor.DualStack || Descriptor.PeerData6 != nil {
		t.Fatal("udp declares dual stack")
	}
	nw, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","Backend":{"Type":"udp"}}`))
	if err != nil {
		t.Fatal(err)
	}
	v4 := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.2.0/24"), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.12")}}
	dual := v4
	dual.IPv6Subnet = netip.MustParsePrefix("2001:db8:100:2::/64")
	dual.Attrs.PublicIPv6 = netip.MustParseAddr("2001:db8::12")
	dual.Attrs.BackendV6Data = []byte(`{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}`)
	own := netip.MustParsePrefix("198.18.1.0/24")
	st4, ref4 := buildTable(nw, own, subnet.Pointers([]subnet.Lease{v4}))
	st6, ref6 := buildTable(nw, own, subnet.Pointers([]subnet.Lease{dual}))
	if len(ref4) != 0 || !reflect.DeepEqual(ref4, ref6) || !reflect.DeepEqual(st4, st6) || len(st6.peers) != 1 {
		t.Fatalf("IPv4-only lease: %+v %v; dual-stack lease: %+v %v", st4, ref4, st6, ref6)
	}
}
