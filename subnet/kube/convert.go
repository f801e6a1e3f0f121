package kube

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/weftnet/weft/internal/kubeapi"
	"github.com/weftnet/weft/subnet"
)

// DefaultAnnotationPrefix is flannel's annotation prefix.
const DefaultAnnotationPrefix = "flannel.alpha.coreos.com"

// Annotation names, after "<prefix>/". weftd writes the first six on its
// own Node (the two v6 ones only when it has v6 data); an operator sets the
// other two.
const (
	AnnKubeSubnetManager = "kube-subnet-manager"
	AnnBackendType       = "backend-type"
	AnnBackendData       = "backend-data"
	AnnBackendV6Data     = "backend-v6-data"
	AnnPublicIP          = "public-ip"
	AnnPublicIPv6        = "public-ipv6"
	AnnPublicIPOverwrite = "public-ip-overwrite"
	// AnnNodePublicIP is read once at start: the address to publish when
	// weftd was given no --public-ip.
	AnnNodePublicIP = "node-public-ip"
)

// Annotations names the annotations under one prefix.
type Annotations string

// Name returns "<prefix>/<ann>".
func (p Annotations) Name(ann string) string { return string(p) + "/" + ann }

// nodeKey is how a Node that yields no lease is named in a refusal.
func nodeKey(name string) string { return "node/" + name }

// NodeLeases converts Nodes to the lease set that subnet.FilterPeers
// judges, the way etcd keys are converted. It is pure.
//
//   - A Node without "<prefix>/kube-subnet-manager": "true" or without a
//     podCIDR runs no overlay yet: it is neither a lease nor a refusal.
//   - A Node that does carry it yields an InvalidLease (refused as
//     unparsable, named "node/<name>") when its podCIDR, public-ip or
//     backend data does not parse.
//   - A Node other than ours (self) whose IPv4 podCIDR is our Node's
//     yields an InvalidLease too: the filter would take a lease with our
//     subnet for our own and skip it silently, so it is refused here, by
//     name, and our own Node keeps the subnet.
//   - A Node that did not decode (kubeapi.Node.Invalid) yields an
//     InvalidLease with the decoding error, whatever it carries.
//   - Every other Node yields a Lease: Subnet from spec.podCIDR (the IPv4
//     entry of spec.podCIDRs), IPv6Subnet from the IPv6 entry, Attrs from
//     the annotations. Whether it may be a peer (inside the network, not
//     our subnet, usable and not our PublicIP, our backend's data, no
//     older claim on the same subnet or VTEP MAC) is FilterPeers' call.
//
// Kubernetes keeps no creation revision that a client can read later, so
// CreateRevision is the Node's rank in the order (creationTimestamp, then
// name), counting from 1 over the Nodes that yield a lease. Ranks shift as
// Nodes come and go but their order does not, and the order is all that
// FilterPeers compares: of two Nodes claiming one subnet or one VTEP MAC,
// the one created first wins. Revision, the set's own order, stays zero.
func NodeLeases(prefix Annotations, self string, nodes []*kubeapi.Node) subnet.LeaseSet {
	type withNode struct {
		lease subnet.Lease
		node  *kubeapi.Node
	}
	var ours netip.Prefix
	for _, n := range nodes {
		if n != nil && n.Name == self {
			ours, _, _ = PodCIDRs(n)
		}
	}
	var set subnet.LeaseSet
	var leases []withNode
	for _, n := range nodes {
		if n != nil && n.Invalid != "" {
			// It did not decode, so whether it runs an overlay is unknown:
			// refused by name, rather than missing without a word.
			set.Invalid = append(set.Invalid, subnet.InvalidLease{Key: nodeKey(n.Name), Err: fmt.Errorf("node %s: %s", n.Name, n.Invalid)})
			continue
		}
		if n == nil || n.Annotations[prefix.Name(AnnKubeSubnetManager)] != "true" || podCIDR(n) == "" {
			continue
		}
		l, err := NodeLease(prefix, n)
		if err == nil && ours.IsValid() && n.Name != self && l.Subnet == ours {
			err = fmt.Errorf("node %s: pod cidr %s is our node %s's", n.Name, ours, self)
		}
		if err != nil {
			set.Invalid = append(set.Invalid, subnet.InvalidLease{Key: nodeKey(n.Name), Value: annotationValue(prefix, n), Err: err})
			continue
		}
		leases = append(leases, withNode{l, n})
	}
	slices.SortFunc(leases, func(a, b withNode) int {
		return cmp.Or(created(a.node).Compare(created(b.node)), cmp.Compare(a.node.Name, b.node.Name))
	})
	set.Leases = make([]*subnet.Lease, len(leases))
	for i, wn := range leases {
		l := wn.lease // its own copy: a pointer into leases would keep the Nodes alive
		l.CreateRevision = int64(i + 1)
		set.Leases[i] = &l
	}
	slices.SortStableFunc(set.Leases, func(a, b *subnet.Lease) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	slices.SortFunc(set.Invalid, func(a, b subnet.InvalidLease) int { return cmp.Compare(a.Key, b.Key) })
	return set
}

// created is the Node's creationTimestamp. One that does not parse (the
// API server sets it, so only a broken one would) counts as the newest:
// it loses every conflict rather than winning one.
func created(n *kubeapi.Node) time.Time {
	t, err := time.Parse(time.RFC3339, n.CreationTimestamp)
	if err != nil {
		return time.Unix(1<<62, 0)
	}
	return t
}

// podCIDR is the Node's first pod CIDR, "" when none is assigned.
func podCIDR(n *kubeapi.Node) string {
	if n.Spec.PodCIDR != "" {
		return n.Spec.PodCIDR
	}
	if len(n.Spec.PodCIDRs) > 0 {
		return n.Spec.PodCIDRs[0]
	}
	return ""
}

// PodCIDRs returns the Node's IPv4 and IPv6 pod CIDRs from spec.podCIDR
// and spec.podCIDRs; either is invalid (zero) when absent. A CIDR that
// does not parse, has host bits set, or repeats a family is an error.
func PodCIDRs(n *kubeapi.Node) (v4, v6 netip.Prefix, err error) {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	} else if n.Spec.PodCIDR != "" && n.Spec.PodCIDR != cidrs[0] {
		return v4, v6, fmt.Errorf("spec.podCIDR %q is not the first of spec.podCIDRs %q", n.Spec.PodCIDR, cidrs)
	}
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("pod cidr %q: %w", s, err)
		}
		if p.Masked() != p {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("pod cidr %s has host bits set", p)
		}
		dst := &v4
		if !p.Addr().Is4() {
			dst = &v6
		}
		if dst.IsValid() {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("pod cidrs %q hold two of one family", cidrs)
		}
		*dst = p
	}
	return v4, v6, nil
}

// NodeLease converts one Node to a lease: its pod CIDRs and the
// annotations a flannel or weft node writes. The error says which field
// does not parse; CreateRevision is left zero.
func NodeLease(prefix Annotations, n *kubeapi.Node) (subnet.Lease, error) {
	v4, v6, err := PodCIDRs(n)
	if err != nil {
		return subnet.Lease{}, fmt.Errorf("node %s: %w", n.Name, err)
	}
	if !v4.IsValid() {
		return subnet.Lease{}, fmt.Errorf("node %s: no IPv4 pod cidr (weft's leases are IPv4 first)", n.Name)
	}
	attrs, err := ParseAnnotations(prefix, n.Annotations)
	if err != nil {
		return subnet.Lease{}, fmt.Errorf("node %s: %w", n.Name, err)
	}
	return subnet.Lease{Subnet: v4, IPv6Subnet: v6, Attrs: attrs}, nil
}

// ParseAnnotations reads lease attributes from a Node's annotations: the
// public-ip (an IPv4 address, required), public-ipv6, backend-type and
// the JSON of backend-data and backend-v6-data. The data's meaning is
// judged later, by the backend's rules in subnet.FilterPeers.
func ParseAnnotations(prefix Annotations, ann map[string]string) (subnet.LeaseAttrs, error) {
	var a subnet.LeaseAttrs
	ipText, ok := ann[prefix.Name(AnnPublicIP)]
	if !ok {
		return a, fmt.Errorf("annotation %s is missing", prefix.Name(AnnPublicIP))
	}
	ip, err := netip.ParseAddr(ipText)
	if err != nil || !ip.Is4() {
		return a, fmt.Errorf("annotation %s=%q is not an IPv4 address", prefix.Name(AnnPublicIP), ipText)
	}
	a.PublicIP = ip
	if s := ann[prefix.Name(AnnPublicIPv6)]; s != "" {
		ip6, err := netip.ParseAddr(s)
		if err != nil || !ip6.Is6() || ip6.Is4In6() || ip6.Zone() != "" {
			return a, fmt.Errorf("annotation %s=%q is not an IPv6 address", prefix.Name(AnnPublicIPv6), s)
		}
		a.PublicIPv6 = ip6
	}
	a.BackendType = ann[prefix.Name(AnnBackendType)]
	for _, f := range []struct {
		ann string
		dst *json.RawMessage
	}{{AnnBackendData, &a.BackendData}, {AnnBackendV6Data, &a.BackendV6Data}} {
		s := strings.TrimSpace(ann[prefix.Name(f.ann)])
		if s == "" || s == "null" {
			continue
		}
		if !json.Valid([]byte(s)) {
			return a, fmt.Errorf("annotation %s is not JSON", prefix.Name(f.ann))
		}
		*f.dst = json.RawMessage(s)
	}
	return a, nil
}

// WantAnnotations returns the annotations weftd publishes for attrs: the
// v6 ones only when attrs carry v6 data, as flannel writes them for dual
// stack. backend-data is written in the compact JSON of a lease value.
func WantAnnotations(prefix Annotations, attrs subnet.LeaseAttrs) (map[string]string, error) {
	raw, err := json.Marshal(attrs) // subnet.LeaseAttrs writes flannel's compact form
	if err != nil {
		return nil, err
	}
	var compact struct {
		BackendData, BackendV6Data json.RawMessage
	}
	if err := json.Unmarshal(raw, &compact); err != nil {
		return nil, err
	}
	data := string(compact.BackendData)
	if data == "" {
		data = "null" // what flannel writes for a backend without data
	}
	want := map[string]string{
		prefix.Name(AnnKubeSubnetManager): "true",
		prefix.Name(AnnBackendType):       attrs.BackendType,
		prefix.Name(AnnBackendData):       data,
		prefix.Name(AnnPublicIP):          attrs.PublicIP.String(),
	}
	if len(compact.BackendV6Data) > 0 {
		want[prefix.Name(AnnBackendV6Data)] = string(compact.BackendV6Data)
	}
	if attrs.PublicIPv6.IsValid() {
		want[prefix.Name(AnnPublicIPv6)] = attrs.PublicIPv6.String()
	}
	return want, nil
}

// annotationValue is the part of a Node that a refusal shows: its pod
// CIDRs and our annotations, as JSON.
func annotationValue(prefix Annotations, n *kubeapi.Node) []byte {
	v := map[string]any{"podCIDR": n.Spec.PodCIDR}
	if len(n.Spec.PodCIDRs) > 0 {
		v["podCIDRs"] = n.Spec.PodCIDRs
	}
	ann := map[string]string{}
	for k, s := range n.Annotations {
		if strings.HasPrefix(k, string(prefix)+"/") {
			ann[k] = s
		}
	}
	v["annotations"] = ann
	out, _ := json.Marshal(v) // strings only
	return out
}

// ErrPodCIDRNotAssigned is the reason our Node cannot hold a lease yet.
var ErrPodCIDRNotAssigned = errors.New("pod cidr not assigned")
