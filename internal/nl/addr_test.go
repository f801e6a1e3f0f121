package nl

import (
	"net/netip"
	"slices"
	"testing"
)

func TestOnLink(t *testing.T) {
	addrs := []Addr{
		{Prefix: pfx("192.0.2.11/24")},
		{Prefix: pfx("10.9.0.1/32"), Peer: pfx("10.9.0.2/32")},   // point-to-point: only the peer
		{Prefix: pfx("10.8.0.1/32"), Peer: pfx("10.8.0.128/25")}, // a peer network
		{Prefix: pfx("198.18.1.0/32")},                           // a host address
		{Prefix: pfx("2001:db8::1/64")},                          // family-neutral
		{},                                                       // nothing
	}
	want := []netip.Prefix{pfx("192.0.2.0/24"), pfx("10.9.0.2/32"), pfx("10.8.0.128/25"), pfx("198.18.1.0/32"), pfx("2001:db8::/64")}
	if got := OnLink(addrs); !slices.Equal(got, want) {
		t.Fatalf("OnLink = %v, want %v", got, want)
	}
}
