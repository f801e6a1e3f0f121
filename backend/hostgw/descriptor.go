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
	Keys:      nil, // no options
}

// Expect is what host-gw keeps in the kernel: per peer a route via its
// PublicIP on the underlay interface; a peer that is not on-link is
// refused, with no route.
func Expect(in backend.ExpectInput) (backend.Expectation, error) {
	exp := backend.Expectation{Refused: map[netip.Prefix]string{}}
	for _, p := range in.Peers {
		ip := p.Attrs.PublicIP
		direct := false
		for _, c := range in.OnLink {
			if c.Contains(ip) {
				direct = true
				break
			}
		}
		if !direct {
			exp.Refused[p.Subnet] = fmt.Sprintf("PublicIP %s is not on-link on %s", ip, in.Ext.Name)
			continue
		}
		exp.Routes = append(exp.Routes, backend.ExpectedRoute{Dst: p.Subnet, Gw: ip, Peer: ip})
	}
	return exp, nil
}
