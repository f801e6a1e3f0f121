package wireguard

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/subnet"
)

func testNetwork(t testing.TB) *subnet.Config {
	t.Helper()
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","Backend":{"Type":"wireguard"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestDesiredPeers(t *testing.T) {
	nw := testNetwork(t)
	own := mustKey(t)
	a, b, c := mustKey(t), mustKey(t), mustKey(t)
	bad := lease(t, "198.18.9.0/24", "192.0.2.9", a, 1)
	bad.Attrs.BackendData = json.RawMessage(`{"PublicKey":"!!!","Port":1}`)
	o := Options{ListenPort: 51820, Keepalive: 25 * time.Second, PSK: wgtypes.Key{1}, HavePSK: true}
	leases := []subnet.Lease{
		lease(t, "198.18.2.0/24", "192.0.2.2", a, 51820),
		lease(t, "198.18.3.0/24", "192.0.2.3", b, 0), // Port 0: our port
		bad,
		lease(t, "198.18.4.0/24", "192.0.2.4", a, 51820), // a's key again
		lease(t, "198.18.5.0/24", "192.0.2.5", own, 51820),
		lease(t, "198.18.1.0/24", "192.0.2.6", c, 51820), // our subnet
		lease(t, "198.19.0.0/24", "192.0.2.7", c, 51820), // outside the network
	}
	peers, refused := desiredPeers(nw, netip.MustParsePrefix("198.18.1.0/24"), own.PublicKey(), o, subnet.Pointers(leases))
	if len(peers) != 2 {
		t.Fatalf("peers = %+v, want a and b", peers)
	}
	if p := peers[0]; p.PublicKey != a.PublicKey() || p.Endpoint != netip.MustParseAddrPort("192.0.2.2:51820") ||
		len(p.AllowedIPs) != 1 || p.AllowedIPs[0] != netip.MustParsePrefix("198.18.2.0/24") || p.PSK != o.PSK || p.Keepalive != o.Keepalive {
		t.Errorf("peer a = %+v", p)
	}
	if p := peers[1]; p.Endpoint != netip.MustParseAddrPort("192.0.2.3:51820") {
		t.Errorf("peer b with Port 0 has endpoint %s, want our listen port", p.Endpoint)
	}
	for sn, why := range map[string]string{
		"198.18.9.0/24": "not base64",
		"198.18.4.0/24": "already used",
		"198.18.5.0/24": "our own public key",
		"198.18.1.0/24": "overlaps our own",
		"198.19.0.0/24": "inside",
	} {
		if got := refused[netip.MustParsePrefix(sn)]; !strings.Contains(got, why) {
			t.Errorf("refusal of %s = %q, want it to say %q", sn, got, why)
		}
	}
}

func TestDiffPeers(t *testing.T) {
	a, b, c := mustKey(t).PublicKey(), mustKey(t).PublicKey(), mustKey(t).PublicKey()
	want := func(k wgtypes.Key, ep string, sn string) Peer {
		return Peer{PublicKey: k, Endpoint: netip.MustParseAddrPort(ep), AllowedIPs: []netip.Prefix{netip.MustParsePrefix(sn)}}
	}
	have := func(p Peer) DevicePeer {
		return DevicePeer{PublicKey: p.PublicKey, Endpoint: p.Endpoint, AllowedIPs: p.AllowedIPs, PSK: p.PSK, Keepalive: p.Keepalive, LastHandshake: time.Now()}
	}
	pa := want(a, "192.0.2.2:51820", "198.18.2.0/24")
	pb := want(b, "192.0.2.3:51820", "198.18.3.0/24")
	pc := want(c, "192.0.2.4:51820", "198.18.4.0/24")
	moved := pb
	moved.Endpoint = netip.MustParseAddrPort("192.0.2.33:51820")
	psk := pa
	psk.PSK = wgtypes.Key{7}

	type change struct {
		key    wgtypes.Key
		remove bool
	}
	for _, tc := range []struct {
		name string
		have []DevicePeer
		want []Peer
		out  []change
	}{
		{"equal sets: nothing", []DevicePeer{have(pa), have(pb)}, []Peer{pb, pa}, nil},
		{"empty device: add all", nil, []Peer{pa, pb}, []change{{a, false}, {b, false}}},
		{"lease gone: remove", []DevicePeer{have(pa), have(pb)}, []Peer{pa}, []change{{b, true}}},
		{"key changed: old removed, new added", []DevicePeer{have(pa), have(pb)}, []Peer{pa, {PublicKey: c, Endpoint: pb.Endpoint, AllowedIPs: pb.AllowedIPs}}, []change{{b, true}, {c, false}}},
		{"endpoint changed: reconfigured", []DevicePeer{have(pa), have(pb)}, []Peer{pa, moved}, []change{{b, false}}},
		{"psk changed: reconfigured", []DevicePeer{have(pa)}, []Peer{psk}, []change{{a, false}}},
		{"allowed IPs changed", []DevicePeer{have(pc)}, []Peer{want(c, "192.0.2.4:51820", "198.18.40.0/24")}, []change{{c, false}}},
		{"all gone", []DevicePeer{have(pa), have(pb), have(pc)}, nil, []change{{a, true}, {b, true}, {c, true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := diffPeers(tc.have, tc.want)
			if len(got) != len(tc.out) {
				t.Fatalf("got %d changes, want %d: %+v", len(got), len(tc.out), got)
			}
			for i, c := range tc.out {
				g := got[i]
				if g.PublicKey != c.key || g.Remove != c.remove {
					t.Errorf("change %d = %s remove=%v, want %s remove=%v", i, g.PublicKey, g.Remove, c.key, c.remove)
				}
				if !g.Remove && (!g.ReplaceAllowedIPs || g.Endpoint == nil || g.PresharedKey == nil || g.PersistentKeepaliveInterval == nil) {
					t.Errorf("change %d does not set every attribute: %+v", i, g)
				}
			}
			// Applying the changes gives want: a second diff is empty.
			after := applyChanges(tc.have, got)
			if again := diffPeers(after, tc.want); len(again) != 0 {
				t.Errorf("not idempotent: second diff %+v", again)
			}
		})
	}
}

// applyChanges is what a device does with the changes (a model of
// wireguard-go's set operation).
func applyChanges(have []DevicePeer, cs []wgtypes.PeerConfig) []DevicePeer {
	m := map[wgtypes.Key]DevicePeer{}
	var order []wgtypes.Key
	for _, h := range have {
		m[h.PublicKey] = h
		order = append(order, h.PublicKey)
	}
	for _, c := range cs {
		if c.Remove {
			delete(m, c.PublicKey)
			continue
		}
		p, ok := m[c.PublicKey]
		if !ok {
			order = append(order, c.PublicKey)
		}
		p.PublicKey = c.PublicKey
		p.Endpoint = c.Endpoint.AddrPort()
		p.PSK = *c.PresharedKey
		p.Keepalive = *c.PersistentKeepaliveInterval
		p.AllowedIPs = nil
		for _, a := range c.AllowedIPs {
			pr, _ := netipPrefix(a.IP, a.Mask)
			p.AllowedIPs = append(p.AllowedIPs, pr)
		}
		m[c.PublicKey] = p
	}
	var out []DevicePeer
	for _, k := range order {
		if p, ok := m[k]; ok {
			out = append(out, p)
			delete(m, k)
		}
	}
	return out
}

func TestUAPIRoundTrip(t *testing.T) {
	a := mustKey(t).PublicKey()
	psk := wgtypes.Key{9}
	ka := 25 * time.Second
	cs := diffPeers(nil, []Peer{{PublicKey: a, Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}, PSK: psk, Keepalive: ka}})
	set := uapiSet(cs)
	for _, line := range []string{"public_key=", "endpoint=192.0.2.2:51820", "replace_allowed_ips=true", "allowed_ip=198.18.2.0/24", "persistent_keepalive_interval=25"} {
		if !strings.Contains(set, line) {
			t.Errorf("set operation lacks %q:\n%s", line, set)
		}
	}
	// A get response as wireguard-go writes it.
	get := "private_key=" + strings.Repeat("ab", 32) + "\nlisten_port=51820\n" + strings.ReplaceAll(set, "replace_allowed_ips=true\n", "") +
		"last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n"
	ps, err := parseUAPIPeers(get)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].PublicKey != a || ps[0].PSK != psk || ps[0].Keepalive != ka || ps[0].LastHandshake.Unix() != 1700000000 {
		t.Fatalf("parsed %+v", ps)
	}
	if len(diffPeers(ps, []Peer{{PublicKey: a, Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}, PSK: psk, Keepalive: ka}})) != 0 {
		t.Error("parsed device peer differs from the peer it was set from")
	}
	set2 := uapiSet([]wgtypes.PeerConfig{{PublicKey: a, Remove: true}})
	if !strings.Contains(set2, "remove=true") {
		t.Errorf("remove: %s", set2)
	}
}
