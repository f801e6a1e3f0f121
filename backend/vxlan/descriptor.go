package vxlan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/subnet"
)

// Descriptor describes the vxlan backend to weftd, weftctl and the doctor.
var Descriptor = backend.Descriptor{
	Type:      Type,
	LeaseType: Type,
	New:       New,
	Cleanup:   Cleanup,
	PeerData:  PeerData,
	PeerData6: PeerData6,
	DualStack: true,
	Expect:    Expect,
	Keys:      []string{"VNI", "Port", "MTU", "GBP", "DirectRouting"},
	Options: func(raw json.RawMessage) (any, error) {
		o, err := parseOptions(raw)
		o.Unknown = nil // warned about, not part of the meaning
		return o, err
	},
}

// PeerData judges a peer's vxlan BackendData: its identity is the VTEP
// MAC (6 bytes), which two hosts must never share because the kernel's FDB
// holds one remote per MAC; an unusable MAC (all zeros, broadcast,
// multicast) is an error.
//
// flannel and weft write the data in one canonical form,
// {"VNI":<n>,"VtepMAC":"<mac>"}, which is read here without encoding/json:
// judging 5000 peers would otherwise spend most of its time there. Anything
// else goes through subnet.ParseVXLANData.
func PeerData(a subnet.LeaseAttrs) (string, error) {
	m, err := peerMAC(a)
	if err != nil {
		return "", err
	}
	return string(m[:]), nil
}

// PeerData6 judges a dual-stack peer's BackendV6Data, the data of its IPv6
// device, the same way: its identity is the IPv6 VTEP MAC. A lease without
// BackendV6Data (a host whose IPv6 device is not up, or another backend's
// lease) has none and no error: it is served over IPv4 only.
func PeerData6(a subnet.LeaseAttrs) (string, error) {
	m, ok, err := peerMAC6(a)
	if err != nil || !ok {
		return "", err
	}
	return string(m[:]), nil
}

// mac is a VtepMAC. Unlike a net.HardwareAddr or a string it is
// comparable, holds no pointer and takes no allocation of its own.
type mac [6]byte

// peerMAC is PeerData's VtepMAC, as a mac.
func peerMAC(a subnet.LeaseAttrs) (mac, error) {
	return vtepMAC(a.BackendData)
}

// peerMAC6 is PeerData6's IPv6 VtepMAC, as a mac; ok is false when the
// lease has none.
func peerMAC6(a subnet.LeaseAttrs) (m mac, ok bool, err error) {
	if d := bytes.TrimSpace(a.BackendV6Data); len(d) == 0 || string(d) == "null" {
		return m, false, nil
	}
	if m, err = vtepMAC(a.BackendV6Data); err != nil {
		return m, false, fmt.Errorf("BackendV6Data: %w", err)
	}
	return m, true, nil
}

// vtepMAC returns the usable VtepMAC of vxlan backend data.
func vtepMAC(raw []byte) (mac, error) {
	if m, ok := canonicalVTEPMAC(raw); ok && usableMAC(m[:]) {
		return m, nil
	}
	_, hw, err := subnet.ParseVXLANData(raw)
	if err != nil {
		return mac{}, err
	}
	if !usableMAC(hw) {
		return mac{}, fmt.Errorf("vxlan BackendData: VtepMAC %s is not a usable unicast address", hw)
	}
	return mac(hw), nil
}

func canonicalVTEPMAC(s []byte) (mac [6]byte, ok bool) {
	const pre, mid = `{"VNI":`, `,"VtepMAC":"`
	if len(s) < len(pre) || string(s[:len(pre)]) != pre {
		return mac, false
	}
	s = s[len(pre):]
	n := 0
	for n < len(s) && n < 9 && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	if n == 0 || len(s) != n+len(mid)+17+2 || string(s[n:n+len(mid)]) != mid || string(s[len(s)-2:]) != `"}` {
		return mac, false
	}
	h := s[n+len(mid) : len(s)-2]
	for i := range 6 {
		if i > 0 && h[3*i-1] != ':' {
			return mac, false
		}
		hi, ok1 := unhex(h[3*i])
		lo, ok2 := unhex(h[3*i+1])
		if !ok1 || !ok2 {
			return mac, false
		}
		mac[i] = hi<<4 | lo
	}
	return mac, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// Expect is what the vxlan backend keeps in the kernel: the device
// weft.<VNI> with our subnet's network address /32, and per peer a
// permanent neighbour entry, an FDB entry and an onlink route through the
// device (or, with DirectRouting and an on-link peer, a route via its
// PublicIP on the underlay). On a dual-stack network, when our lease has an
// IPv6 subnet and a PublicIPv6, also weft-v6.<VNI> with our IPv6 subnet's
// network address /128, and the same three objects on it for every peer
// with an IPv6 subnet, a PublicIPv6 and BackendV6Data (with DirectRouting,
// in.OnLink must hold the interface's IPv6 prefixes too, see
// routes.OnLink6).
func Expect(in backend.ExpectInput) (backend.Expectation, error) {
	o, err := parseOptions(in.Options)
	if err != nil {
		return backend.Expectation{}, err
	}
	name := fmt.Sprintf("%s%d", DevicePrefix, o.VNI)
	name6 := fmt.Sprintf("%s%d", DevicePrefix6, o.VNI)
	mtu, mtu6 := o.MTU, o.MTU-(overhead6-overhead)
	if o.MTU == 0 {
		mtu, mtu6 = 0, 0
		if in.Ext.MTU > 0 {
			mtu, mtu6 = in.Ext.MTU-overhead, in.Ext.MTU-overhead6
		}
	}
	exp := backend.Expectation{Devices: []backend.ExpectedDevice{{Name: name, MTU: mtu, Addr: netip.PrefixFrom(in.Own.Subnet.Addr(), 32)}}}
	dual := in.Network != nil && in.Network.EnableIPv6 && in.Own.IPv6Subnet.IsValid() && in.Own.Attrs.PublicIPv6.IsValid()
	if dual {
		exp.Devices = append(exp.Devices, backend.ExpectedDevice{Name: name6, MTU: mtu6, Addr: netip.PrefixFrom(in.Own.IPv6Subnet.Addr(), 128)})
	}
	for _, p := range in.Peers {
		pub := p.Attrs.PublicIP
		if dual && in.Network.HasIPv6(*p) && p.Attrs.PublicIPv6.IsValid() {
			if id, err := PeerData6(p.Attrs); err == nil && id != "" {
				expectPeer(&exp, p.IPv6Subnet, p.Attrs.PublicIPv6, net.HardwareAddr(id), name6, o.DirectRouting && onLink(in.OnLink, p.Attrs.PublicIPv6), pub)
			}
		}
		id, err := PeerData(p.Attrs)
		if err != nil {
			continue // FilterPeers refuses it: it is not among the peers
		}
		expectPeer(&exp, p.Subnet, pub, net.HardwareAddr(id), name, o.DirectRouting && onLink(in.OnLink, pub), pub)
	}
	return exp, nil
}

// expectPeer appends what one family of a peer needs: for subnet sn behind
// the VTEP at remote with MAC mac, a neighbour entry, an FDB entry and a
// route through dev, or with direct a route via remote on the underlay.
// peer is the peer's PublicIP, for messages.
func expectPeer(exp *backend.Expectation, sn netip.Prefix, remote netip.Addr, mac net.HardwareAddr, dev string, direct bool, peer netip.Addr) {
	if direct {
		exp.Routes = append(exp.Routes, backend.ExpectedRoute{Dst: sn, Gw: remote, OnLink: true, Peer: peer})
		return
	}
	na := sn.Addr()
	exp.Neighbours = append(exp.Neighbours, backend.ExpectedNeigh{Dev: dev, IP: na, MAC: mac, Peer: peer})
	exp.FDB = append(exp.FDB, backend.ExpectedFDB{Dev: dev, MAC: mac, Dst: remote})
	exp.Routes = append(exp.Routes, backend.ExpectedRoute{Dst: sn, Gw: na, Dev: dev, OnLink: true, Peer: peer})
}

func onLink(prefixes []netip.Prefix, ip netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
