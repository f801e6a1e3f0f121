package udp

import "github.com/weftnet/weft/backend/routes"

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
// take the host's own traffic off its underlay (routes.DeviceNet).
var ErrUnderlayRoute = routes.ErrUnderlayRoute
