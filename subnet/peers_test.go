package subnet

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// macRules stands in for the vxlan backend's rules (backend/vxlan cannot be
// imported here): the identity is the VtepMAC, and unusable MACs are
// refused.
var macRules = PeerRules{LeaseType: "vxlan", PeerData: func(a LeaseAttrs) (string, error) {
	_, mac, err := ParseVXLANData(a.BackendData)
	return string(mac), err
}}

func rulesFor(backend string) PeerRules {
	if backend == "vxlan" {
		return macRules
	}
	return PeerRules{LeaseType: backend}
}

func testConfig(t testing.TB, backend string) *Config {
	t.Helper()
	c, err := ParseConfig([]byte(`{"Network":"198.18.0.0/16","Backend":{"Type":"` + backend + `"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// vx builds a vxlan lease for 198.18.<third>.0/24.
func vx(third int, publicIP, mac string, createRev int64) Lease {
	return Lease{
		Subnet:         netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(third), 0}), 24),
		Attrs:          LeaseAttrs{PublicIP: netip.MustParseAddr(publicIP), BackendType: "vxlan", BackendData: []byte(`{"VNI":1,"VtepMAC":"` + mac + `"}`)},
		CreateRevision: createRev,
		ModRevision:    createRev,
	}
}

func keysOf(ls []*Lease) []string {
	out := []string{}
	for _, l := range ls {
		out = append(out, l.Key())
	}
	return out
}

func refusalsOf(rs []Refusal) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.Key+" "+r.Reason)
	}
	return out
}

func TestFilterPeers(t *testing.T) {
	own := vx(1, "192.0.2.1", "02:00:00:00:00:01", 1)
	dual := func(l Lease) Lease {
		l.IPv6Subnet = netip.MustParsePrefix("2001:db8:0:" + fmt.Sprint(l.Subnet.Addr().As4()[2]) + "::/64")
		return l
	}
	tests := []struct {
		name    string
		backend string
		leases  []Lease
		invalid []InvalidLease
		peers   []string
		refused []string
	}{{
		name:   "own key is neither peer nor refusal",
		leases: []Lease{own, vx(2, "192.0.2.2", "02:00:00:00:00:02", 2)},
		peers:  []string{"198.18.2.0-24"},
	}, {
		name:    "unparsable keys are refused",
		invalid: []InvalidLease{{Key: "garbage", Err: errors.New("bad")}},
		leases:  []Lease{vx(2, "192.0.2.2", "02:00:00:00:00:02", 2)},
		peers:   []string{"198.18.2.0-24"},
		refused: []string{"garbage unparsable"},
	}, {
		name:    "a second key for our subnet is refused, not taken as ours",
		leases:  []Lease{own, dual(vx(1, "192.0.2.9", "02:00:00:00:00:09", 9))},
		refused: []string{"198.18.1.0-24&2001:db8:0:1::-64 invalid"},
	}, {
		name:    "plain and dual-stack keys for one subnet: the older wins",
		leases:  []Lease{vx(2, "192.0.2.2", "02:00:00:00:00:02", 2), dual(vx(2, "192.0.2.3", "02:00:00:00:00:03", 5))},
		peers:   []string{"198.18.2.0-24"},
		refused: []string{"198.18.2.0-24&2001:db8:0:2::-64 duplicate-subnet"},
	}, {
		name:    "plain and dual-stack keys for one subnet: the older wins (other order)",
		leases:  []Lease{vx(2, "192.0.2.2", "02:00:00:00:00:02", 7), dual(vx(2, "192.0.2.3", "02:00:00:00:00:03", 5))},
		peers:   []string{"198.18.2.0-24&2001:db8:0:2::-64"},
		refused: []string{"198.18.2.0-24 duplicate-subnet"},
	}, {
		name:    "two leases with one VtepMAC: the older wins",
		leases:  []Lease{vx(2, "192.0.2.2", "02:00:00:00:00:02", 2), vx(3, "192.0.2.3", "02:00:00:00:00:02", 3), vx(4, "192.0.2.4", "02:00:00:00:00:04", 4)},
		peers:   []string{"198.18.2.0-24", "198.18.4.0-24"},
		refused: []string{"198.18.3.0-24 duplicate-mac"},
	}, {
		name:    "three leases with one VtepMAC: only the oldest is a peer",
		leases:  []Lease{vx(5, "192.0.2.5", "02:00:00:00:00:02", 9), vx(3, "192.0.2.3", "02:00:00:00:00:02", 3), vx(4, "192.0.2.4", "02:00:00:00:00:02", 4)},
		peers:   []string{"198.18.3.0-24"},
		refused: []string{"198.18.4.0-24 duplicate-mac", "198.18.5.0-24 duplicate-mac"},
	}, {
		name:    "a peer with our own VtepMAC is refused",
		leases:  []Lease{own, vx(2, "192.0.2.2", "02:00:00:00:00:01", 2)},
		refused: []string{"198.18.2.0-24 duplicate-mac"},
	}, {
		name:    "an invalid lease does not win a conflict",
		leases:  []Lease{vx(2, "192.0.2.2", "02:00:00:00:00:02", 2), dual(vx(2, "127.0.0.1", "02:00:00:00:00:03", 9))},
		peers:   []string{"198.18.2.0-24"},
		refused: []string{"198.18.2.0-24&2001:db8:0:2::-64 invalid"},
	}, {
		name:    "a broken lease does not take a MAC from a valid one",
		leases:  []Lease{vx(2, "192.0.2.2", "02:00:00:00:00:02", 2), vx(3, "192.0.2.1", "02:00:00:00:00:02", 9)},
		peers:   []string{"198.18.2.0-24"},
		refused: []string{"198.18.3.0-24 invalid"}, // our PublicIP
	}, {
		name:    "another backend's lease is refused",
		leases:  []Lease{{Subnet: netip.MustParsePrefix("198.18.2.0/24"), Attrs: LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.2"), BackendType: "host-gw"}}},
		refused: []string{"198.18.2.0-24 backend-data"},
	}, {
		name: "an untaken reservation is neither peer nor refusal",
		leases: []Lease{{Subnet: netip.MustParsePrefix("198.18.2.0/24"), Reservation: true,
			Attrs: LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.2")}}},
	}, {
		name:    "host-gw ignores MACs",
		backend: "host-gw",
		leases: []Lease{
			{Subnet: netip.MustParsePrefix("198.18.2.0/24"), Attrs: LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.2"), BackendType: "host-gw"}},
			{Subnet: netip.MustParsePrefix("198.18.3.0/24"), Attrs: LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.3"), BackendType: "host-gw"}},
		},
		peers: []string{"198.18.2.0-24", "198.18.3.0-24"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			be := tc.backend
			if be == "" {
				be = "vxlan"
			}
			c := testConfig(t, be)
			o := own
			if be != "vxlan" {
				o.Attrs.BackendType, o.Attrs.BackendData = be, nil
			}
			peers, refused := FilterPeers(c, rulesFor(be), o, Pointers(tc.leases), tc.invalid)
			if got := keysOf(peers); !reflect.DeepEqual(got, append([]string{}, tc.peers...)) {
				t.Errorf("peers = %q, want %q", got, tc.peers)
			}
			if got := refusalsOf(refused); !reflect.DeepEqual(got, append([]string{}, tc.refused...)) {
				t.Errorf("refused = %q, want %q", got, tc.refused)
			}
			for _, r := range refused {
				if r.Err == nil || r.Err.Error() == "" {
					t.Errorf("refusal of %s has no reason", r.Key)
				}
			}
		})
	}
}

// TestFilterPeersOrderIndependent shuffles conflicting leases: whatever
// order etcd (or a watch burst) delivers them in, the same leases win.
func TestFilterPeersOrderIndependent(t *testing.T) {
	c := testConfig(t, "vxlan")
	own := vx(1, "192.0.2.1", "02:00:00:00:00:01", 1)
	rng := rand.New(rand.NewPCG(1, 2))
	var leases []Lease
	keys := map[string]bool{} // etcd keys are unique
	for i := 2; i < 60; i++ {
		// Few distinct MACs and some repeated subnets: many conflicts.
		l := vx(2+rng.IntN(30), fmt.Sprintf("192.0.2.%d", i), fmt.Sprintf("02:00:00:00:00:%02x", 2+rng.IntN(20)), int64(rng.IntN(5)))
		if rng.IntN(3) == 0 {
			l.IPv6Subnet = netip.MustParsePrefix(fmt.Sprintf("2001:db8:%x::/64", i))
		}
		if keys[l.Key()] {
			continue
		}
		keys[l.Key()] = true
		leases = append(leases, l)
	}
	wantPeers, wantRefused := FilterPeers(c, macRules, own, Pointers(leases), nil)
	if len(wantRefused) == 0 {
		t.Fatal("the test set has no conflicts")
	}
	seenSubnet, seenMAC := map[netip.Prefix]bool{}, map[string]bool{}
	for _, p := range wantPeers {
		_, mac, _ := ParseVXLANData(p.Attrs.BackendData)
		if seenSubnet[p.Subnet] || seenMAC[mac.String()] {
			t.Fatalf("two peers share subnet %s or MAC %s", p.Subnet, mac)
		}
		seenSubnet[p.Subnet], seenMAC[mac.String()] = true, true
	}
	if len(wantPeers)+len(wantRefused) != len(leases) {
		t.Fatalf("%d peers + %d refusals for %d leases", len(wantPeers), len(wantRefused), len(leases))
	}
	for range 50 {
		shuffled := append([]Lease(nil), leases...)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		peers, refused := FilterPeers(c, macRules, own, Pointers(shuffled), nil)
		if !reflect.DeepEqual(keysOf(peers), keysOf(wantPeers)) || !reflect.DeepEqual(refusalsOf(refused), refusalsOf(wantRefused)) {
			t.Fatalf("order changed the outcome:\n got %q %q\nwant %q %q", keysOf(peers), refusalsOf(refused), keysOf(wantPeers), refusalsOf(wantRefused))
		}
	}
}

// TestFilterPeersLinear checks that garbage keys cost linear time: 16000
// of them must not take much more than 16 times what 1000 take.
func TestFilterPeersLinear(t *testing.T) {
	if testing.Short() {
		t.Skip("timing comparison")
	}
	c := testConfig(t, "vxlan")
	own := vx(1, "192.0.2.1", "02:00:00:00:00:01", 1)
	run := func(n int) time.Duration {
		inv := make([]InvalidLease, n)
		for i := range inv {
			inv[i] = InvalidLease{Key: fmt.Sprintf("garbage-%d", i), Value: []byte("x"), Err: errors.New("bad")}
		}
		best := time.Duration(1 << 62)
		for range 5 {
			t0 := time.Now()
			FilterPeers(c, macRules, own, nil, inv)
			best = min(best, time.Since(t0))
		}
		return best
	}
	small, big := run(1000), run(16000)
	// Linear is 16x; the quadratic pruning this replaces was 256x (862 ms
	// at 16000). The bound leaves room for a loaded machine.
	if big > 100*small+20*time.Millisecond {
		t.Errorf("16000 garbage keys took %v, 1000 took %v: not linear", big, small)
	}
}

// bytesRules takes the raw BackendData as the identity: the filter's own
// cost, without a backend's parser (backend/vxlan benchmarks its own).
var bytesRules = PeerRules{LeaseType: "vxlan", PeerData: func(a LeaseAttrs) (string, error) { return string(a.BackendData), nil }}

func BenchmarkFilterPeers5000(b *testing.B) {
	// A /15 split into /28s holds 8192 subnets.
	c, err := ParseConfig([]byte(`{"Network":"198.18.0.0/15","SubnetLen":28,"Backend":{"Type":"vxlan"}}`))
	if err != nil {
		b.Fatal(err)
	}
	own := vx(1, "192.0.2.1", "02:00:00:00:00:01", 1)
	own.Subnet = netip.MustParsePrefix("198.19.255.0/28")
	leases := make([]Lease, 0, 5000)
	for i := range 5000 {
		a := uint32(198)<<24 | uint32(18)<<16 | uint32(i+1)<<4
		l := vx(0, fmt.Sprintf("203.0.%d.%d", i>>8, i&255), fmt.Sprintf("02:00:00:01:%02x:%02x", i>>8, i&255), int64(i))
		l.Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), 28)
		leases = append(leases, l)
	}
	b.ReportAllocs()
	for b.Loop() {
		peers, refused := FilterPeers(c, bytesRules, own, Pointers(leases), nil)
		if len(peers) != 5000 || len(refused) != 0 {
			b.Fatalf("%d peers, %d refused: %s", len(peers), len(refused), strings.Join(refusalsOf(refused), ","))
		}
	}
}

// dualRules adds the IPv6 VTEP MAC (BackendV6Data) as the IPv6 identity.
var dualRules = PeerRules{LeaseType: "vxlan", PeerData: macRules.PeerData, PeerData6: func(a LeaseAttrs) (string, error) {
	if len(a.BackendV6Data) == 0 {
		return "", nil
	}
	_, mac, err := ParseVXLANData(a.BackendV6Data)
	return string(mac), err
}}

// vx6 is vx with an IPv6 subnet 2001:db8:100:<third>::/64, a PublicIPv6
// and an IPv6 VTEP MAC.
func vx6(third int, publicIP, publicIPv6, mac, mac6 string, createRev int64) Lease {
	l := vx(third, publicIP, mac, createRev)
	l.IPv6Subnet = netip.MustParsePrefix(fmt.Sprintf("2001:db8:100:%x::/64", third))
	if publicIPv6 != "" {
		l.Attrs.PublicIPv6 = netip.MustParseAddr(publicIPv6)
	}
	if mac6 != "" {
		l.Attrs.BackendV6Data = []byte(`{"VNI":1,"VtepMAC":"` + mac6 + `"}`)
	}
	return l
}

// The IPv6 half of a dual-stack lease is judged like the IPv4 one, on a
// dual-stack network only; a plain lease beside dual-stack ones is a valid
// (IPv4-only) peer.
func TestFilterPeersDualStack(t *testing.T) {
	c, err := ParseConfig([]byte(`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	own := vx6(1, "192.0.2.1", "2001:db8::1", "02:00:00:00:00:01", "02:00:00:00:06:01", 1)
	outside := vx6(5, "192.0.2.5", "2001:db8::5", "02:00:00:00:00:05", "02:00:00:00:06:05", 5)
	outside.IPv6Subnet = netip.MustParsePrefix("2001:db8:200:5::/64")
	overlap := vx6(6, "192.0.2.6", "2001:db8::6", "02:00:00:00:00:06", "02:00:00:00:06:06", 6)
	overlap.IPv6Subnet = own.IPv6Subnet
	wrongLen := vx6(7, "192.0.2.7", "2001:db8::7", "02:00:00:00:00:07", "02:00:00:00:06:07", 7)
	wrongLen.IPv6Subnet = netip.MustParsePrefix("2001:db8:100:7::/80")
	dupOlder := vx6(8, "192.0.2.8", "2001:db8::8", "02:00:00:00:00:08", "02:00:00:00:06:08", 8)
	dupNewer := vx6(9, "192.0.2.9", "2001:db8::9", "02:00:00:00:00:09", "02:00:00:00:06:09", 9)
	dupNewer.IPv6Subnet = dupOlder.IPv6Subnet
	leases := []Lease{
		own,
		vx6(2, "192.0.2.2", "2001:db8::2", "02:00:00:00:00:02", "02:00:00:00:06:02", 2), // valid
		vx(3, "192.0.2.3", "02:00:00:00:00:03", 3),                                      // IPv4-only peer: valid
		vx6(4, "192.0.2.4", "fe80::4", "02:00:00:00:00:04", "02:00:00:00:06:04", 4),     // link-local PublicIPv6
		outside, overlap, wrongLen, dupOlder, dupNewer,
		vx6(10, "192.0.2.10", "2001:db8::1", "02:00:00:00:00:0a", "02:00:00:00:06:0a", 10),  // our PublicIPv6
		vx6(11, "192.0.2.11", "2001:db8::11", "02:00:00:00:00:0b", "02:00:00:00:06:02", 11), // IPv6 MAC of 2
		vx6(12, "192.0.2.12", "2001:db8::12", "02:00:00:00:00:0c", "02:00:00:00:06:01", 12), // our IPv6 MAC
		vx6(13, "192.0.2.13", "2001:db8:100:99::1", "02:00:00:00:00:0d", "", 13),            // PublicIPv6 inside the network
		vx6(14, "192.0.2.14", "2001:db8::14", "02:00:00:00:00:0e", "00:00:00:00:00:00", 14), // unusable IPv6 MAC
	}
	peers, refused := FilterPeers(c, dualRules, own, Pointers(leases), nil)
	wantPeers := []string{"198.18.2.0-24&2001:db8:100:2::-64", "198.18.3.0-24", "198.18.8.0-24&2001:db8:100:8::-64"}
	if got := keysOf(peers); !reflect.DeepEqual(got, wantPeers) {
		t.Errorf("peers %q, want %q", got, wantPeers)
	}
	wantRefused := []string{
		"198.18.10.0-24&2001:db8:100:a::-64 invalid",
		"198.18.11.0-24&2001:db8:100:b::-64 duplicate-mac",
		"198.18.12.0-24&2001:db8:100:c::-64 duplicate-mac",
		"198.18.13.0-24&2001:db8:100:d::-64 invalid",
		"198.18.14.0-24&2001:db8:100:e::-64 backend-data",
		"198.18.4.0-24&2001:db8:100:4::-64 invalid",
		"198.18.5.0-24&2001:db8:200:5::-64 invalid",
		"198.18.6.0-24&2001:db8:100:1::-64 invalid",
		"198.18.7.0-24&2001:db8:100:7::-80 invalid",
		"198.18.9.0-24&2001:db8:100:8::-64 duplicate-subnet",
	}
	if got := refusalsOf(refused); !reflect.DeepEqual(got, wantRefused) {
		t.Errorf("refused:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantRefused, "\n"))
	}

	// On an IPv4-only network the IPv6 half is not looked at: the leases
	// refused for it alone are peers.
	c4 := testConfig(t, "vxlan")
	peers, refused = FilterPeers(c4, dualRules, own, Pointers(leases), nil)
	for _, want := range []string{"198.18.5.0-24&2001:db8:200:5::-64", "198.18.7.0-24&2001:db8:100:7::-80", "198.18.14.0-24&2001:db8:100:e::-64"} {
		if !strings.Contains(strings.Join(keysOf(peers), " "), want) {
			t.Errorf("IPv4-only network: %s is not a peer; refused %q", want, refusalsOf(refused))
		}
	}
}
