package hostgw

import (
	"fmt"
	"net/netip"

	"github.com/weftnet/weft/backend"
)

// Descriptor describes the host-gw backend to weftd, weftctl and the
// doctor. Its leases carry no backend data.
var Descriptor = backend.Descriptor{
	Type:      Type,
	LeaseType: Type,
	New:       New,
	Cleanup:   Cleanup,
	Expect:    Expect,
	DualStack: true,
	Keys:      nil, // no options
}

// Expect is what host-gw keeps in the kernel: per peer a route via its
// PublicIP on the underlay interface; a peer that is not on-link is
// refused, with no route. On a dual-stack network, when our lease and the
// peer's have an IPv6 subnet and the peer a PublicIPv6 that is on-link
// (in.OnLink must then hold the interface's IPv6 prefixes too, see
// routes.OnLink6), also a route to its IPv6 subnet via its PublicIPv6; a
// PublicIPv6 that is not on-link means no IPv6 route, and no refusal.
func Expect(in backend.ExpectInput) (backend.Expectation, error) {
	exp := backend.Expectation{Refused: map[netip.Prefix]string{}}
	dual := in.Network != nil && in.Network.EnableIPv6 && in.Own.IPv6Subnet.IsValid()
	for _, p := range in.Peers {
		ip := p.Attrs.PublicIP
		if !contains(in.OnLink, ip) {
			exp.Refused[p.Subnet] = fmt.Sprintf("PublicIP %s is not on-link on %s", ip, in.Ext.Name)
			continue
		}
		exp.Routes = append(exp.Routes, backend.ExpectedRoute{Dst: p.Subnet, Gw: ip, Peer: ip})
		if ip6 := p.Attrs.PublicIPv6; dual && in.Network.HasIPv6(*p) && ip6.IsValid() && contains(in.OnLink, ip6) {
			exp.Routes = append(exp.Routes, backend.ExpectedRoute{Dst: p.IPv6Subnet, Gw: ip6, Peer: ip})
		}
	}
	return exp, nil
}
