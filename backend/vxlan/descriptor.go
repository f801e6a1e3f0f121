package vxlan

import (
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
	if m, ok := canonicalVTEPMAC(a.BackendData); ok && usableMAC(m[:]) {
		return string(m[:]), nil
	}
	_, hw, err := subnet.ParseVXLANData(a.BackendData)
	if err != nil {
		return "", err
	}
	if !usableMAC(hw) {
		return "", fmt.Errorf("vxlan BackendData: VtepMAC %s is not a usable unicast address", hw)
	}
	return string(hw), nil
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
// PublicIP on the underlay).
func Expect(in backend.ExpectInput) (backend.Expectation, error) {
	o, err := parseOptions(in.Options)
	if err != nil {
		return backend.Expectation{}, err
	}
	name := fmt.Sprintf("%s%d", DevicePrefix, o.VNI)
	mtu := o.MTU
	if mtu == 0 && in.Ext.MTU > 0 {
		mtu = in.Ext.MTU - overhead
	}
	exp := backend.Expectation{Devices: []backend.ExpectedDevice{{Name: name, MTU: mtu, Addr: netip.PrefixFrom(in.Own.Subnet.Addr(), 32)}}}
	for _, p := range in.Peers {
		pub := p.Attrs.PublicIP
		if o.DirectRouting && onLink(in.OnLink, pub) {
			exp.Routes = append(exp.Routes, backend.ExpectedRoute{Dst: p.Subnet, Gw: pub, OnLink: true, Peer: pub})
			continue
		}
		id, err := PeerData(p.Attrs)
		if err != nil {
			continue // FilterPeers refuses it: it is not among the peers
		}
		mac := net.HardwareAddr(id)
		na := p.Subnet.Addr()
		exp.Neighbours = append(exp.Neighbours, backend.ExpectedNeigh{Dev: name, IP: na, MAC: mac, Peer: pub})
		exp.FDB = append(exp.FDB, backend.ExpectedFDB{Dev: name, MAC: mac, Dst: pub})
		exp.Routes = append(exp.Routes, backend.ExpectedRoute{Dst: p.Subnet, Gw: na, Dev: name, OnLink: true, Peer: pub})
	}
	return exp, nil
}

func onLink(prefixes []netip.Prefix, ip netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
