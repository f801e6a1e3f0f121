package udp

import (
	"errors"
	"net/netip"

	"github.com/weftnet/weft/backend/routes"
	"github.com/weftnet/weft/internal/nl"
)

// The connected-network guard. The udp backend routes the whole cluster
// network into weft0. Were that network to cover the host's underlay (a
// connected network, the default route, a gateway or one of the host's
// addresses), the route would replace or shadow the host's own routes and
// cut it off: 0.0.0.0/0 replaces the default route outright. The vxlan and
// host-gw backends refuse such routes in backend/routes; the udp backend
// applies the same rules (routes.UnderlayConflict) to its one route and,
// when it refuses it, removes the route if an earlier pass installed it and
// reports the reason in Status.LastError (wrapping ErrUnderlayRoute), with
// no peer programmed. Excluded from the underlay: weft0 itself, and
// routes and addresses inside our own lease subnet, which are the pod
// bridge's.

// ErrUnderlayRoute is wrapped by the error of a reconcile pass that did not
// route the cluster network into the TUN device because the route would
// take the host's own traffic off its underlay.
var ErrUnderlayRoute = errors.New("the cluster network route would cover the host's underlay")

// underlayConflict applies routes.UnderlayConflict to the route for nw out
// of the device devIndex, given the main table rs and the addresses addrs
// of the namespace. It returns "" if the route may be installed.
func underlayConflict(nw, own netip.Prefix, devIndex int, rs []nl.Route, addrs []nl.Addr) string {
	ours := func(p netip.Prefix) bool {
		return own.IsValid() && p.IsValid() && p.Bits() >= own.Bits() && own.Contains(p.Addr())
	}
	under := make([]nl.Route, 0, len(rs))
	for i := range rs {
		if r := &rs[i]; r.LinkIndex != devIndex && !ours(r.Dst) {
			under = append(under, *r)
		}
	}
	var as []netip.Addr
	for _, a := range addrs {
		ip := a.Prefix.Addr().Unmap()
		if !ip.IsValid() || a.LinkIndex == devIndex || ours(netip.PrefixFrom(ip, ip.BitLen())) {
			continue
		}
		as = append(as, ip)
	}
	return routes.UnderlayConflict(nw, under, as)
}
