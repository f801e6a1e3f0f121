package wireguard

import (
	"encoding/json"
	"net/netip"

	"github.com/weftnet/weft/backend"
)

// Descriptor describes the wireguard backend to weftd, weftctl and the
// doctor. Its identity is the public key: two hosts with one key would
// take each other's traffic.
var Descriptor = backend.Descriptor{
	Type:      Type,
	LeaseType: Type,
	New:       New,
	Cleanup:   Cleanup,
	PeerData:  PeerData,
	Expect:    Expect,
	Keys:      []string{"ListenPort", "ListenPortV6", "MTU", "PSK", "PersistentKeepaliveInterval", "Mode"},
	Options: func(raw json.RawMessage) (any, error) {
		return parseOptions(raw)
	},
}

// Expect is what the wireguard backend keeps in the kernel: weft-wg with
// our subnet's network address /32, the route for the network on it, and
// one WireGuard peer per valid peer lease.
func Expect(in backend.ExpectInput) (backend.Expectation, error) {
	o, err := parseOptions(in.Options)
	if err != nil {
		return backend.Expectation{}, err
	}
	mtu := 0
	if o.MTU != 0 {
		mtu = o.MTU - overhead
	} else if in.Ext.MTU > 0 {
		mtu = in.Ext.MTU - overhead
	}
	exp := backend.Expectation{
		Devices: []backend.ExpectedDevice{{Name: DeviceName, MTU: mtu, Addr: netip.PrefixFrom(in.Own.Subnet.Addr(), 32)}},
		Routes:  []backend.ExpectedRoute{{Dst: in.Network.Network.Masked(), Dev: DeviceName}},
	}
	for _, p := range in.Peers {
		d, err := ParseLeaseData(p.Attrs.BackendData)
		if err != nil {
			continue // FilterPeers refuses it: it is not among the peers
		}
		port := d.Port
		if port == 0 {
			port = o.ListenPort
		}
		exp.WireGuardPeers = append(exp.WireGuardPeers, backend.ExpectedWireGuardPeer{
			Dev:        DeviceName,
			PublicKey:  d.PublicKey,
			Endpoint:   netip.AddrPortFrom(p.Attrs.PublicIP, uint16(port)),
			AllowedIPs: []netip.Prefix{p.Subnet.Masked()},
			Peer:       p.Attrs.PublicIP,
		})
	}
	return exp, nil
}
