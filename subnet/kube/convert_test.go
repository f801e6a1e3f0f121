package kube

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/backend/vxlan"
	"github.com/weftnet/weft/internal/kubeapi"
	"github.com/weftnet/weft/subnet"
)

const pfx = Annotations(DefaultAnnotationPrefix)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// node builds a Node created at t0 plus age seconds.
func node(name, cidr string, age int, ann map[string]string) *kubeapi.Node {
	return &kubeapi.Node{
		ObjectMeta: kubeapi.ObjectMeta{Name: name, Annotations: ann, CreationTimestamp: t0.Add(time.Duration(age) * time.Second).Format(time.RFC3339)},
		Spec:       kubeapi.NodeSpec{PodCIDR: cidr},
	}
}

// flannelAnn is what a flannel vxlan node writes, byte for byte.
func flannelAnn(ip, mac string) map[string]string {
	return map[string]string{
		"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"` + mac + `"}`,
		"flannel.alpha.coreos.com/backend-type":        "vxlan",
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
		"flannel.alpha.coreos.com/public-ip":           ip,
	}
}

func with(m map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "<delete>" {
			delete(out, kv[i])
		} else {
			out[kv[i]] = kv[i+1]
		}
	}
	return out
}

func mustConfig(t *testing.T, backend string) *subnet.Config {
	t.Helper()
	c, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","Backend":{"Type":"` + backend + `"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ownLease is this host's lease: 198.18.1.0/24 at 192.0.2.11.
func ownLease() subnet.Lease {
	return subnet.Lease{
		Subnet: netip.MustParsePrefix("198.18.1.0/24"),
		Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.11"), BackendType: "vxlan",
			BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}`)},
	}
}

// TestHostileNodes runs Nodes through NodeLeases and the one peer filter,
// as Watch and the core do, and checks what becomes a peer and what is
// refused with which reason.
func TestHostileNodes(t *testing.T) {
	ok := func(ip, mac string) map[string]string { return flannelAnn(ip, mac) }
	type want struct {
		peers   []string          // subnets programmed
		refused map[string]string // refusal key -> reason
	}
	cases := []struct {
		name  string
		nodes []*kubeapi.Node
		want  want
	}{
		{"a flannel node is a peer", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, ok("192.0.2.12", "0a:00:00:00:00:02"))},
			want{peers: []string{"198.18.2.0/24"}}},
		{"no annotations at all: no overlay there yet, not a peer, not a refusal", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, nil)},
			want{}},
		{"annotations of another program only", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, map[string]string{"node.alpha.kubernetes.io/ttl": "0"})},
			want{}},
		{"kube-subnet-manager false", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, with(ok("192.0.2.12", "0a:00:00:00:00:02"), pfx.Name(AnnKubeSubnetManager), "false"))},
			want{}},
		{"no podCIDR yet: waiting itself, not a peer", []*kubeapi.Node{node("b", "", 1, ok("192.0.2.12", "0a:00:00:00:00:02"))},
			want{}},
		{"kube-subnet-manager but no public-ip", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, with(ok("x", "0a:00:00:00:00:02"), pfx.Name(AnnPublicIP), "<delete>"))},
			want{refused: map[string]string{"node/b": subnet.RefusedUnparsable}}},
		{"public-ip not an address", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, ok("192.0.2.300", "0a:00:00:00:00:02"))},
			want{refused: map[string]string{"node/b": subnet.RefusedUnparsable}}},
		{"public-ip IPv6", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, ok("2001:db8::1", "0a:00:00:00:00:02"))},
			want{refused: map[string]string{"node/b": subnet.RefusedUnparsable}}},
		{"backend-data not JSON", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, with(ok("192.0.2.12", "x"), pfx.Name(AnnBackendData), `{"VNI":1,"VtepMAC":`))},
			want{refused: map[string]string{"node/b": subnet.RefusedUnparsable}}},
		{"backend-data JSON with a bad MAC", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, ok("192.0.2.12", "zz:zz"))},
			want{refused: map[string]string{"198.18.2.0-24": subnet.RefusedBackendData}}},
		{"backend-data with a multicast MAC", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, ok("192.0.2.12", "01:00:5e:00:00:01"))},
			want{refused: map[string]string{"198.18.2.0-24": subnet.RefusedBackendData}}},
		{"backend-data missing", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, with(ok("192.0.2.12", "x"), pfx.Name(AnnBackendData), "<delete>"))},
			want{refused: map[string]string{"198.18.2.0-24": subnet.RefusedBackendData}}},
		{"another backend", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, with(ok("192.0.2.12", "0a:00:00:00:00:02"), pfx.Name(AnnBackendType), "host-gw"))},
			want{refused: map[string]string{"198.18.2.0-24": subnet.RefusedBackendData}}},
		{"podCIDR outside the network", []*kubeapi.Node{node("b", "203.0.113.0/24", 1, ok("192.0.2.12", "0a:00:00:00:00:02"))},
			want{refused: map[string]string{"203.0.113.0-24": subnet.RefusedInvalid}}},
		{"podCIDR of another length", []*kubeapi.Node{node("b", "198.18.2.0/25", 1, ok("192.0.2.12", "0a:00:00:00:00:02"))},
			want{refused: map[string]string{"198.18.2.0-25": subnet.RefusedInvalid}}},
		{"podCIDR covering the network", []*kubeapi.Node{node("b", "198.18.0.0/16", 1, ok("192.0.2.12", "0a:00:00:00:00:02"))},
			want{refused: map[string]string{"198.18.0.0-16": subnet.RefusedInvalid}}},
		{"podCIDR with host bits", []*kubeapi.Node{node("b", "198.18.2.1/24", 1, ok("192.0.2.12", "0a:00:00:00:00:02"))},
			want{refused: map[string]string{"node/b": subnet.RefusedUnparsable}}},
		{"podCIDR garbage", []*kubeapi.Node{node("b", "\x1b[31mred", 1, ok("192.0.2.12", "0a:00:00:00:00:02"))},
			want{refused: map[string]string{"node/b": subnet.RefusedUnparsable}}},
		// The filter takes a lease with our subnet for our own, so the
		// conversion refuses another node's claim on it by name.
		{"podCIDR is ours, claimed by an older node", []*kubeapi.Node{
			node("b", "198.18.1.0/24", 1, ok("192.0.2.12", "0a:00:00:00:00:02")),
			node("self", "198.18.1.0/24", 5, ok("192.0.2.11", "0a:00:00:00:00:01")),
		}, want{refused: map[string]string{"node/b": subnet.RefusedUnparsable}}},
		{"podCIDR overlapping ours", []*kubeapi.Node{node("b", "198.18.1.0/25", 1, ok("192.0.2.12", "0a:00:00:00:00:02"))},
			want{refused: map[string]string{"198.18.1.0-25": subnet.RefusedInvalid}}},
		{"public-ip loopback", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, ok("127.0.0.1", "0a:00:00:00:00:02"))},
			want{refused: map[string]string{"198.18.2.0-24": subnet.RefusedInvalid}}},
		{"public-ip of our own host", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, ok("192.0.2.11", "0a:00:00:00:00:02"))},
			want{refused: map[string]string{"198.18.2.0-24": subnet.RefusedInvalid}}},
		{"public-ip inside the cluster network", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, ok("198.18.2.1", "0a:00:00:00:00:02"))},
			want{refused: map[string]string{"198.18.2.0-24": subnet.RefusedInvalid}}},
		{"our own VTEP MAC", []*kubeapi.Node{node("b", "198.18.2.0/24", 1, ok("192.0.2.12", "0a:00:00:00:00:01"))},
			want{refused: map[string]string{"198.18.2.0-24": subnet.RefusedDuplicateMAC}}},
		{"podCIDR claimed by two nodes: the older wins", []*kubeapi.Node{
			node("late", "198.18.2.0/24", 20, ok("192.0.2.13", "0a:00:00:00:00:03")),
			node("early", "198.18.2.0/24", 10, ok("192.0.2.12", "0a:00:00:00:00:02")),
		}, want{peers: []string{"198.18.2.0/24@192.0.2.12"}, refused: map[string]string{"198.18.2.0-24": subnet.RefusedDuplicateSubnet}}},
		{"one VTEP MAC on two nodes: the older wins", []*kubeapi.Node{
			node("early", "198.18.3.0/24", 10, ok("192.0.2.13", "0a:00:00:00:00:03")),
			node("late", "198.18.2.0/24", 20, ok("192.0.2.12", "0a:00:00:00:00:03")),
		}, want{peers: []string{"198.18.3.0/24"}, refused: map[string]string{"198.18.2.0-24": subnet.RefusedDuplicateMAC}}},
		{"same creation second: the name decides", []*kubeapi.Node{
			node("n2", "198.18.2.0/24", 5, ok("192.0.2.13", "0a:00:00:00:00:03")),
			node("n1", "198.18.2.0/24", 5, ok("192.0.2.12", "0a:00:00:00:00:02")),
		}, want{peers: []string{"198.18.2.0/24@192.0.2.12"}, refused: map[string]string{"198.18.2.0-24": subnet.RefusedDuplicateSubnet}}},
		{"dual-stack node", []*kubeapi.Node{func() *kubeapi.Node {
			n := node("b", "198.18.2.0/24", 1, with(ok("192.0.2.12", "0a:00:00:00:00:02"),
				pfx.Name(AnnPublicIPv6), "2001:db8::12", pfx.Name(AnnBackendV6Data), `{"VNI":1,"VtepMAC":"0a:00:00:00:01:02"}`))
			n.Spec.PodCIDRs = []string{"198.18.2.0/24", "2001:db8:100:2::/64"}
			return n
		}()}, want{peers: []string{"198.18.2.0/24"}}},
		{"podCIDRs disagreeing with podCIDR", []*kubeapi.Node{func() *kubeapi.Node {
			n := node("b", "198.18.2.0/24", 1, ok("192.0.2.12", "0a:00:00:00:00:02"))
			n.Spec.PodCIDRs = []string{"198.18.3.0/24"}
			return n
		}()}, want{refused: map[string]string{"node/b": subnet.RefusedUnparsable}}},
		{"IPv6 podCIDR only", []*kubeapi.Node{node("b", "2001:db8:100:2::/64", 1, ok("192.0.2.12", "0a:00:00:00:00:02"))},
			want{refused: map[string]string{"node/b": subnet.RefusedUnparsable}}},
		{"nil node", []*kubeapi.Node{nil}, want{}},
		{"a node that did not decode is refused by name, and costs no other node", []*kubeapi.Node{
			{ObjectMeta: kubeapi.ObjectMeta{Name: "c"}, Invalid: "node does not decode: json: cannot unmarshal number into annotations"},
			node("b", "198.18.2.0/24", 1, ok("192.0.2.12", "0a:00:00:00:00:02"))},
			want{peers: []string{"198.18.2.0/24"}, refused: map[string]string{"node/c": subnet.RefusedUnparsable}}},
		{"a creation time that does not parse loses the conflict", []*kubeapi.Node{
			func() *kubeapi.Node {
				n := node("a", "198.18.2.0/24", 0, ok("192.0.2.13", "0a:00:00:00:00:03"))
				n.CreationTimestamp = "yesterday"
				return n
			}(),
			node("b", "198.18.2.0/24", 5, ok("192.0.2.12", "0a:00:00:00:00:02"))},
			want{peers: []string{"198.18.2.0/24@192.0.2.12"}, refused: map[string]string{"198.18.2.0-24": subnet.RefusedDuplicateSubnet}}},
	}
	cfg := mustConfig(t, "vxlan")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			set := NodeLeases(pfx, "self", tc.nodes)
			peers, refused := subnet.FilterPeers(cfg, vxlan.Descriptor.PeerRules(), ownLease(), set.Leases, set.Invalid)
			var got []string
			for _, p := range peers {
				s := p.Subnet.String()
				if strings.Contains(strings.Join(tc.want.peers, " "), "@") {
					s += "@" + p.Attrs.PublicIP.String()
				}
				got = append(got, s)
			}
			if strings.Join(got, " ") != strings.Join(tc.want.peers, " ") {
				t.Errorf("peers %v, want %v", got, tc.want.peers)
			}
			gotRefused := map[string]string{}
			for _, r := range refused {
				gotRefused[r.Key] = r.Reason
				if r.Err == nil || r.Err.Error() == "" {
					t.Errorf("refusal %s has no error", r.Key)
				}
			}
			if len(gotRefused) != len(tc.want.refused) {
				t.Errorf("refused %v, want %v", refused, tc.want.refused)
			}
			for k, reason := range tc.want.refused {
				if gotRefused[k] != reason {
					t.Errorf("refusal of %s: %q, want %q (all: %v)", k, gotRefused[k], reason, refused)
				}
			}
		})
	}
}

// TestNodeLeaseAttrs checks the attributes and the creation order read
// from a flannel node.
func TestNodeLeaseAttrs(t *testing.T) {
	nodes := []*kubeapi.Node{
		node("c", "198.18.4.0/24", 30, flannelAnn("192.0.2.14", "0a:00:00:00:00:04")),
		node("a", "198.18.9.0/24", 10, flannelAnn("192.0.2.12", "0a:00:00:00:00:02")),
		node("b", "198.18.2.0/24", 20, with(flannelAnn("192.0.2.13", "x"), pfx.Name(AnnBackendType), "host-gw", pfx.Name(AnnBackendData), "null")),
	}
	set := NodeLeases(pfx, "self", nodes)
	if len(set.Invalid) != 0 || len(set.Leases) != 3 {
		t.Fatalf("set %+v", set)
	}
	// Sorted by subnet; CreateRevision by creation time: a=1, b=2, c=3.
	want := []struct {
		sn, ip, typ, data string
		rev               int64
	}{
		{"198.18.2.0/24", "192.0.2.13", "host-gw", "", 2},
		{"198.18.4.0/24", "192.0.2.14", "vxlan", `{"VNI":1,"VtepMAC":"0a:00:00:00:00:04"}`, 3},
		{"198.18.9.0/24", "192.0.2.12", "vxlan", `{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}`, 1},
	}
	for i, w := range want {
		l := set.Leases[i]
		if l.Subnet.String() != w.sn || l.Attrs.PublicIP.String() != w.ip || l.Attrs.BackendType != w.typ || string(l.Attrs.BackendData) != w.data || l.CreateRevision != w.rev {
			t.Errorf("lease %d: %s %s %q %s rev %d, want %+v", i, l.Subnet, l.Attrs.PublicIP, l.Attrs.BackendType, l.Attrs.BackendData, l.CreateRevision, w)
		}
	}
}

// TestWantAnnotations checks what we publish, in flannel's format, and
// that it reads back as the same attributes.
func TestWantAnnotations(t *testing.T) {
	attrs := subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.11"), BackendType: "vxlan",
		BackendData: json.RawMessage("{ \"VNI\": 1,\n \"VtepMAC\": \"0a:00:00:00:00:01\" }")}
	got, err := WantAnnotations(pfx, attrs)
	if err != nil {
		t.Fatal(err)
	}
	want := flannelAnn("192.0.2.11", "0a:00:00:00:00:01")
	if len(got) != len(want) {
		t.Errorf("annotations %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s=%q, want %q", k, got[k], v)
		}
	}
	back, err := ParseAnnotations(pfx, got)
	if err != nil || back.PublicIP != attrs.PublicIP || back.BackendType != "vxlan" || string(back.BackendData) != `{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}` {
		t.Errorf("read back %+v, %v", back, err)
	}

	hostgw, _ := WantAnnotations(pfx, subnet.LeaseAttrs{PublicIP: attrs.PublicIP, BackendType: "host-gw"})
	if hostgw[pfx.Name(AnnBackendData)] != "null" {
		t.Errorf("host-gw backend-data %q, want null", hostgw[pfx.Name(AnnBackendData)])
	}

	dual := attrs
	dual.PublicIPv6 = netip.MustParseAddr("2001:db8::11")
	dual.BackendV6Data = json.RawMessage(`{"VNI":1,"VtepMAC":"0a:00:00:00:01:01"}`)
	d, _ := WantAnnotations(pfx, dual)
	if d[pfx.Name(AnnPublicIPv6)] != "2001:db8::11" || d[pfx.Name(AnnBackendV6Data)] != `{"VNI":1,"VtepMAC":"0a:00:00:00:01:01"}` {
		t.Errorf("dual-stack annotations %v", d)
	}
	if _, ok := got[pfx.Name(AnnPublicIPv6)]; ok {
		t.Errorf("v4-only attrs wrote %s", pfx.Name(AnnPublicIPv6))
	}
}

// TestAnnotationPatch checks that the patch touches only what differs and
// removes stale v6 annotations.
func TestAnnotationPatch(t *testing.T) {
	want := flannelAnn("192.0.2.11", "0a:00:00:00:00:01")
	if p := annotationPatch(pfx, with(want, "other/x", "y"), want); p != nil {
		t.Errorf("patch for equal annotations: %s", p)
	}
	have := with(want, pfx.Name(AnnPublicIP), "192.0.2.99", pfx.Name(AnnPublicIPv6), "2001:db8::1", pfx.Name(AnnKubeSubnetManager), "<delete>")
	var got struct {
		Metadata struct{ Annotations map[string]*string }
	}
	if err := json.Unmarshal(annotationPatch(pfx, have, want), &got); err != nil {
		t.Fatal(err)
	}
	a := got.Metadata.Annotations
	if len(a) != 3 || a[pfx.Name(AnnPublicIP)] == nil || *a[pfx.Name(AnnPublicIP)] != "192.0.2.11" ||
		a[pfx.Name(AnnKubeSubnetManager)] == nil || *a[pfx.Name(AnnKubeSubnetManager)] != "true" {
		t.Errorf("patch %v", a)
	}
	if v, ok := a[pfx.Name(AnnPublicIPv6)]; !ok || v != nil {
		t.Errorf("stale public-ipv6 not removed: %v", a)
	}
}

// FuzzNodeLeases feeds arbitrary pod CIDRs and annotation values through
// the conversion and the filter: nothing panics, every lease has a
// canonical IPv4 subnet and an IPv4 PublicIP, and every peer lies in the
// network.
func FuzzNodeLeases(f *testing.F) {
	f.Add("198.18.2.0/24", "192.0.2.12", "vxlan", `{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}`, "", "")
	f.Add("198.18.2.1/24", "127.0.0.1", "host-gw", "null", "2001:db8::1", "198.18.3.0/24,2001:db8::/64")
	f.Add("::/0", "", "", "{", "x", ",")
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, cidr, ip, typ, data, ip6, cidrs string) {
		n := node("b", cidr, 1, map[string]string{
			pfx.Name(AnnKubeSubnetManager): "true", pfx.Name(AnnPublicIP): ip, pfx.Name(AnnBackendType): typ,
			pfx.Name(AnnBackendData): data, pfx.Name(AnnPublicIPv6): ip6,
		})
		if cidrs != "" {
			n.Spec.PodCIDRs = strings.Split(cidrs, ",")
		}
		twin := *n
		twin.Name = "c"
		set := NodeLeases(pfx, "self", []*kubeapi.Node{n, &twin})
		if len(set.Leases)+len(set.Invalid) != 2 && (podCIDR(n) != "") {
			t.Fatalf("%d leases + %d invalid from 2 nodes", len(set.Leases), len(set.Invalid))
		}
		for _, l := range set.Leases {
			if !l.Subnet.Addr().Is4() || l.Subnet.Masked() != l.Subnet || !l.Attrs.PublicIP.Is4() || l.CreateRevision < 1 {
				t.Fatalf("lease %+v", l)
			}
			if l.Attrs.BackendData != nil && !json.Valid(l.Attrs.BackendData) {
				t.Fatalf("backend data %q is not JSON", l.Attrs.BackendData)
			}
		}
		peers, _ := subnet.FilterPeers(cfg, vxlan.Descriptor.PeerRules(), ownLease(), set.Leases, set.Invalid)
		if len(peers) > 1 {
			t.Fatalf("two nodes with one subnet and MAC gave %d peers", len(peers))
		}
		for _, p := range peers {
			if !cfg.Contains(p.Subnet) {
				t.Fatalf("peer %s outside the network", p.Subnet)
			}
		}
	})
}

// TestLeaseChanged checks which Node updates wake Hold and Watch: not a
// kubelet's status report, nor another program's annotation.
func TestLeaseChanged(t *testing.T) {
	base := node("b", "198.18.2.0/24", 1, flannelAnn("192.0.2.12", "0a:00:00:00:00:02"))
	base.UID = "u1"
	cases := []struct {
		name   string
		change func(n *kubeapi.Node)
		want   bool
	}{
		{"status only", func(n *kubeapi.Node) {
			n.Status.Conditions = []kubeapi.NodeCondition{{Type: "Ready", Status: kubeapi.ConditionTrue}}
			n.ResourceVersion = "99"
		}, false},
		{"another program's annotation", func(n *kubeapi.Node) { n.Annotations["node.alpha.kubernetes.io/ttl"] = "0" }, false},
		{"no longer decodes", func(n *kubeapi.Node) { n.Invalid = "node does not decode: spec.podCIDR: a number" }, true},
		{"creation time", func(n *kubeapi.Node) { n.CreationTimestamp = "2026-11-01T13:00:00Z" }, true},
		{"our annotation", func(n *kubeapi.Node) { n.Annotations[pfx.Name(AnnPublicIP)] = "192.0.2.99" }, true},
		{"our annotation removed", func(n *kubeapi.Node) { delete(n.Annotations, pfx.Name(AnnBackendData)) }, true},
		{"overwrite added", func(n *kubeapi.Node) { n.Annotations[pfx.Name(AnnPublicIPOverwrite)] = "192.0.2.99" }, true},
		{"podCIDR", func(n *kubeapi.Node) { n.Spec.PodCIDR = "198.18.3.0/24" }, true},
		{"podCIDRs", func(n *kubeapi.Node) { n.Spec.PodCIDRs = []string{"198.18.2.0/24", "2001:db8::/64"} }, true},
		{"re-created", func(n *kubeapi.Node) { n.UID = "u2" }, true},
	}
	for _, tc := range cases {
		cur := *base
		cur.Annotations = maps.Clone(base.Annotations)
		tc.change(&cur)
		if got := leaseChanged(pfx, base, &cur); got != tc.want {
			t.Errorf("%s: leaseChanged %v, want %v", tc.name, got, tc.want)
		}
	}
}

// BenchmarkNodeLeases converts 5000 flannel Nodes, what Watch does after
// each relevant Node event in a large cluster.
func BenchmarkNodeLeases(b *testing.B) {
	nodes := make([]*kubeapi.Node, 5000)
	for i := range nodes {
		cidr := fmt.Sprintf("198.%d.%d.%d/28", 18+i/4096, i/16%256, i%16*16) // /28s of 198.18.0.0/15
		nodes[i] = node(fmt.Sprintf("n%d", i), cidr, i,
			flannelAnn(fmt.Sprintf("192.0.2.%d", 1+i%250), fmt.Sprintf("0a:00:00:00:%02x:%02x", i/256, i%256)))
	}
	b.ReportAllocs()
	for b.Loop() {
		if set := NodeLeases(pfx, "n0", nodes); len(set.Leases) != len(nodes) {
			b.Fatalf("%d leases", len(set.Leases))
		}
	}
}
