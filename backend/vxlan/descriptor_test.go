package vxlan

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/subnet"
)

func TestPeerData(t *testing.T) {
	for _, tc := range []struct {
		data string
		want string // MAC, or "" for an error
	}{
		{`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`, "c6:d2:32:6f:8f:44"},
		{`{"VNI":1, "VtepMAC":"C6:D2:32:6F:8F:44"}`, "c6:d2:32:6f:8f:44"}, // not canonical: the full parser
		{`{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}`, ""},
		{`{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}`, ""},
		{`{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`, ""},
		{`{"VNI":1,"VtepMAC":"junk"}`, ""},
		{``, ""},
	} {
		id, err := PeerData(subnet.LeaseAttrs{BackendData: []byte(tc.data)})
		got := ""
		if err == nil {
			got = fmt.Sprintf("%x:%x:%x:%x:%x:%x", id[0], id[1], id[2], id[3], id[4], id[5])
		}
		if tc.want == "" && err == nil || tc.want != "" && (err != nil || len(id) != 6 || fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", id[0], id[1], id[2], id[3], id[4], id[5]) != tc.want) {
			t.Errorf("PeerData(%s) = %q %v, want %q", tc.data, got, err, tc.want)
		}
	}
}

// FuzzPeerData holds the fast VtepMAC reader to subnet.ParseVXLANData:
// whatever it accepts, the full parser accepts with the same MAC, and no
// unusable MAC gets through.
func FuzzPeerData(f *testing.F) {
	f.Add([]byte(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`))
	f.Add([]byte(`{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}`))
	f.Add([]byte(`{"VNI":16777215,"VtepMAC":"C6:D2:32:6F:8F:44"}`))
	f.Add([]byte(`{"VNI":1,"VtepMAC":"c6-d2-32-6f-8f-44"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		id, err := PeerData(subnet.LeaseAttrs{BackendData: raw})
		if err != nil {
			return
		}
		_, hw, err2 := subnet.ParseVXLANData(raw)
		if err2 != nil {
			t.Fatalf("PeerData accepted %q, ParseVXLANData refused it: %v", raw, err2)
		}
		if string(hw) != id {
			t.Fatalf("%q: PeerData %x, ParseVXLANData %s", raw, id, hw)
		}
		if !usableMAC([]byte(id)) {
			t.Fatalf("%q: unusable MAC %x accepted", raw, id)
		}
	})
}

// BenchmarkFilterPeers5000 judges 5000 vxlan peers with the backend's own
// rules, as weftd does on every lease set.
func BenchmarkFilterPeers5000(b *testing.B) {
	c, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/15","SubnetLen":28,"Backend":{"Type":"vxlan"}}`))
	if err != nil {
		b.Fatal(err)
	}
	lease := func(a uint32, pub, mac string) subnet.Lease {
		return subnet.Lease{
			Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), 28),
			Attrs:  subnet.LeaseAttrs{PublicIP: netip.MustParseAddr(pub), BackendType: Type, BackendData: []byte(`{"VNI":1,"VtepMAC":"` + mac + `"}`)},
		}
	}
	own := lease(uint32(198)<<24|uint32(19)<<16|0xff00, "192.0.2.1", "02:00:00:00:00:01")
	leases := make([]subnet.Lease, 0, 5000)
	for i := range 5000 {
		leases = append(leases, lease(uint32(198)<<24|uint32(18)<<16|uint32(i+1)<<4,
			fmt.Sprintf("203.0.%d.%d", i>>8, i&255), fmt.Sprintf("02:00:00:01:%02x:%02x", i>>8, i&255)))
	}
	rules := Descriptor.PeerRules()
	b.ReportAllocs()
	for b.Loop() {
		peers, refused := subnet.FilterPeers(c, rules, own, subnet.Pointers(leases), nil)
		if len(peers) != 5000 || len(refused) != 0 {
			b.Fatalf("%d peers, %d refused", len(peers), len(refused))
		}
	}
}
