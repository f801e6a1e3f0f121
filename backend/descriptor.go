package backend

import (
	"encoding/json"
	"net"
	"net/netip"
	"reflect"

	"github.com/weftnet/weft/subnet"
)

// Descriptor describes one backend type, once: everything weftd, weftctl
// and the doctor need to know about it besides the code that programs the
// kernel. Each backend package exports its Descriptor; internal/backends
// lists them, one line each.
type Descriptor struct {
	// Type is the config's Backend.Type, lower case ("vxlan").
	Type string
	// LeaseType is the BackendType its leases carry: Type, or "" for udp,
	// whose flannel leases carry none.
	LeaseType string
	// New builds the backend; it validates the options and touches no
	// kernel state.
	New Factory
	// Cleanup removes whatever the backend type may have left behind.
	Cleanup Cleanup
	// PeerData judges a peer lease's BackendData: it returns the identity
	// two hosts must never share (vxlan: the VTEP MAC, as 6 bytes), "" if
	// the backend has none, or an error when the data is unusable. Nil
	// means the backend carries no peer data.
	PeerData func(subnet.LeaseAttrs) (identity string, err error)
	// PeerData6 judges BackendV6Data the same way for a dual-stack peer;
	// nil when the backend publishes no IPv6 data.
	PeerData6 func(subnet.LeaseAttrs) (identity string, err error)
	// DualStack is true when the backend programs IPv6 beside IPv4. weftd
	// and weftctl config set refuse EnableIPv6 for a backend without it.
	DualStack bool
	// Expect says what the backend holds in a host's kernel for a set of
	// peers, for weftctl doctor to compare with what is there.
	Expect func(ExpectInput) (Expectation, error)
	// Keys are the option names the backend reads from the Backend
	// object besides Type, as the documentation spells them (matched
	// case-insensitively). weftctl config set refuses any other key and
	// suggests the nearest of these. Empty: the backend has no options.
	Keys []string
	// Options parses a Backend object into the backend's options with
	// their defaults applied, comparable with reflect.DeepEqual, so that
	// two configs are compared by meaning ({"VNI":1} is no change from
	// {}). Nil: the backend has no options beyond Type.
	Options func(json.RawMessage) (any, error)
}

// SameOptions reports whether two Backend objects mean the same options
// for d.
func (d Descriptor) SameOptions(a, b json.RawMessage) bool {
	if d.Options == nil {
		return true
	}
	oa, erra := d.Options(a)
	ob, errb := d.Options(b)
	return erra == nil && errb == nil && reflect.DeepEqual(oa, ob)
}

// PeerRules is what subnet.FilterPeers needs to know of the backend.
func (d Descriptor) PeerRules() subnet.PeerRules {
	return subnet.PeerRules{LeaseType: d.LeaseType, PeerData: d.PeerData, PeerData6: d.PeerData6}
}

// ExpectInput is what a backend's expectation depends on.
type ExpectInput struct {
	Network *subnet.Config
	// Options is the Backend object of the config.
	Options json.RawMessage
	// Own is our lease; Peers the peers subnet.FilterPeers let through.
	Own   subnet.Lease
	Peers []*subnet.Lease
	// Ext is the underlay interface (Name, Index and MTU are set; Index is
	// 0 when it was not found).
	Ext ExternalInterface
	// OnLink are the prefixes on-link on Ext (see routes.OnLink), and on a
	// dual-stack network its global IPv6 prefixes too (routes.OnLink6).
	OnLink []netip.Prefix
}

// Expectation is the kernel state a backend keeps for its peers.
type Expectation struct {
	// Devices are the backend's own devices.
	Devices []ExpectedDevice
	// Routes are the routes it installs with RouteProtocol.
	Routes []ExpectedRoute
	// Neighbours are permanent neighbour entries; FDB bridge FDB entries.
	Neighbours []ExpectedNeigh
	FDB        []ExpectedFDB
	// WireGuardPeers are the peers a WireGuard device holds.
	WireGuardPeers []ExpectedWireGuardPeer
	// Refused are peers the backend will not program, with the reason.
	Refused map[netip.Prefix]string
}

// ExpectedWireGuardPeer is one peer of the WireGuard device Dev: its
// public key, endpoint and allowed IPs. Peer is the PublicIP it serves.
type ExpectedWireGuardPeer struct {
	Dev        string
	PublicKey  [32]byte
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
	Peer       netip.Addr
}

// ExpectedDevice is a device the backend owns.
type ExpectedDevice struct {
	Name string
	// MTU is checked when not zero; Addr when valid.
	MTU  int
	Addr netip.Prefix
}

// ExpectedRoute is one route; Dev names its device ("" for the underlay
// interface). Peer is the PublicIP it serves, for messages.
type ExpectedRoute struct {
	Dst    netip.Prefix
	Gw     netip.Addr
	Dev    string
	OnLink bool
	Peer   netip.Addr
}

// ExpectedNeigh is a permanent neighbour entry on Dev.
type ExpectedNeigh struct {
	Dev  string
	IP   netip.Addr
	MAC  net.HardwareAddr
	Peer netip.Addr
}

// ExpectedFDB is a bridge FDB entry on Dev sending MAC to Dst.
type ExpectedFDB struct {
	Dev string
	MAC net.HardwareAddr
	Dst netip.Addr
}
