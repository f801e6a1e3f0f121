package wireguard

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/subnet"
)

// Peer is one peer as the device should hold it.
type Peer struct {
	PublicKey wgtypes.Key
	Endpoint  netip.AddrPort
	// AllowedIPs is the peer's subnet (one prefix per family, later).
	AllowedIPs []netip.Prefix
	PSK        wgtypes.Key // zero: none
	Keepalive  time.Duration
	// Subnet is the lease the peer comes from, for Status.
	Subnet netip.Prefix
}

// DevicePeer is one peer as the device holds it.
type DevicePeer struct {
	PublicKey     wgtypes.Key
	Endpoint      netip.AddrPort
	AllowedIPs    []netip.Prefix
	PSK           wgtypes.Key
	Keepalive     time.Duration
	LastHandshake time.Time
}

// desiredPeers turns the peer leases into the peers the device should
// hold: endpoint PublicIP:Port (Port 0: our own listen port), the subnet
// as allowed IPs, the cluster PSK and keepalive. Leases it cannot use are
// returned as refused, with the reason; they never stop the others.
func desiredPeers(nw *subnet.Config, own netip.Prefix, ownPub wgtypes.Key, o Options, leases []*subnet.Lease) ([]Peer, map[netip.Prefix]string) {
	refused := map[netip.Prefix]string{}
	peers := make([]Peer, 0, len(leases))
	seen := make(map[wgtypes.Key]netip.Prefix, len(leases))
	for _, l := range leases {
		d, err := ParseLeaseData(l.Attrs.BackendData)
		switch {
		case err != nil:
			refused[l.Subnet] = err.Error()
			continue
		case !l.Subnet.Addr().Is4() || l.Subnet.Bits() != nw.SubnetLen || !nw.Network.Contains(l.Subnet.Addr()):
			refused[l.Subnet] = fmt.Sprintf("not a /%d inside %s", nw.SubnetLen, nw.Network)
			continue
		case !l.Attrs.PublicIP.Is4():
			refused[l.Subnet] = "PublicIP is not IPv4"
			continue
		case own.IsValid() && l.Subnet.Overlaps(own):
			refused[l.Subnet] = "overlaps our own subnet"
			continue
		case d.PublicKey == ownPub:
			refused[l.Subnet] = "carries our own public key"
			continue
		}
		if other, dup := seen[d.PublicKey]; dup {
			refused[l.Subnet] = fmt.Sprintf("public key already used by the lease of %s", other)
			continue
		}
		seen[d.PublicKey] = l.Subnet
		port := d.Port
		if port == 0 {
			port = o.ListenPort
		}
		p := Peer{
			PublicKey:  d.PublicKey,
			Endpoint:   netip.AddrPortFrom(l.Attrs.PublicIP, uint16(port)),
			AllowedIPs: []netip.Prefix{l.Subnet.Masked()},
			Keepalive:  o.Keepalive,
			Subnet:     l.Subnet,
		}
		if o.HavePSK {
			p.PSK = o.PSK
		}
		peers = append(peers, p)
	}
	return peers, refused
}

// diffPeers returns the changes that turn the device's peers have into
// want: every peer of have not in want is removed; every peer of want
// that is missing or differs in endpoint, allowed IPs, PSK or keepalive
// is (re)configured, replacing its allowed IPs. Equal sets give no change.
func diffPeers(have []DevicePeer, want []Peer) []wgtypes.PeerConfig {
	wantBy := make(map[wgtypes.Key]*Peer, len(want))
	for i := range want {
		wantBy[want[i].PublicKey] = &want[i]
	}
	haveBy := make(map[wgtypes.Key]*DevicePeer, len(have))
	var out []wgtypes.PeerConfig
	for i := range have {
		h := &have[i]
		haveBy[h.PublicKey] = h
		if _, ok := wantBy[h.PublicKey]; !ok {
			out = append(out, wgtypes.PeerConfig{PublicKey: h.PublicKey, Remove: true})
		}
	}
	for i := range want {
		w := &want[i]
		if h, ok := haveBy[w.PublicKey]; ok && samePeer(h, w) {
			continue
		}
		psk, ka := w.PSK, w.Keepalive
		pc := wgtypes.PeerConfig{
			PublicKey:                   w.PublicKey,
			Endpoint:                    net.UDPAddrFromAddrPort(w.Endpoint),
			PresharedKey:                &psk,
			PersistentKeepaliveInterval: &ka,
			ReplaceAllowedIPs:           true,
		}
		for _, a := range w.AllowedIPs {
			pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())})
		}
		out = append(out, pc)
	}
	return out
}

func samePeer(h *DevicePeer, w *Peer) bool {
	if h.Endpoint != w.Endpoint || h.PSK != w.PSK || h.Keepalive != w.Keepalive || len(h.AllowedIPs) != len(w.AllowedIPs) {
		return false
	}
	a := slices.Clone(h.AllowedIPs)
	b := slices.Clone(w.AllowedIPs)
	cmp := func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr())*64 + x.Bits() - y.Bits() }
	slices.SortFunc(a, cmp)
	slices.SortFunc(b, cmp)
	return slices.Equal(a, b)
}
