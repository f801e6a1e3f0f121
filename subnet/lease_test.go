package subnet

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// Byte-for-byte what flanneld writes for each backend.
var flannelValues = []string{
	`{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`,
	`{"PublicIP":"192.0.2.12","PublicIPv6":null,"BackendType":"host-gw"}`,
	`{"PublicIP":"198.51.100.7","PublicIPv6":null}`,
}

func TestLeaseJSONRoundTrip(t *testing.T) {
	for _, v := range flannelValues {
		a, err := ParseLeaseAttrs([]byte(v))
		if err != nil {
			t.Fatalf("parse %s: %v", v, err)
		}
		out, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != v {
			t.Errorf("round trip:\n got %s\nwant %s", out, v)
		}
	}
}

func TestLeaseJSONMarshal(t *testing.T) {
	d, _ := json.Marshal(VXLANData{VNI: 1, VtepMAC: "aa:bb:cc:dd:ee:ff"})
	a := LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.1"), BackendType: "vxlan", BackendData: d}
	got, _ := json.Marshal(a)
	want := `{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}`
	if string(got) != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}

func TestLeaseJSONRejects(t *testing.T) {
	for _, v := range []string{`garbage`, `{}`, `{"PublicIP":"::1"}`, `{"PublicIP":"300.1.1.1"}`, `{"PublicIP":"192.0.2.1","PublicIPv6":"1.2.3.4"}`} {
		if _, err := ParseLeaseAttrs([]byte(v)); err == nil {
			t.Errorf("%s: want an error", v)
		}
	}
}

func TestParseVXLANData(t *testing.T) {
	good := json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`)
	if d, mac, err := ParseVXLANData(good); err != nil || d.VNI != 1 || mac.String() != "c6:d2:32:6f:8f:44" {
		t.Errorf("good data: %v %v %v", d, mac, err)
	}
	// A globally administered unicast MAC and one with only the last bit set
	// are usable.
	for _, ok := range []string{"00:00:00:00:00:01", "02:00:00:00:00:00", "fe:ff:ff:ff:ff:ff"} {
		if _, _, err := ParseVXLANData(json.RawMessage(`{"VNI":1,"VtepMAC":"` + ok + `"}`)); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{``, `{"VNI":1}`, `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f"}`, `{"VNI":1,"VtepMAC":"00:00:00:00:fe:80:00:00:00:00:00:00:00:00:00:00:00:00:00:00"}`} {
		if _, _, err := ParseVXLANData(json.RawMessage(bad)); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
	unusable := []struct{ in, name string }{
		{"00:00:00:00:00:00", "00:00:00:00:00:00"},
		{"0000.0000.0000", "00:00:00:00:00:00"},
		{"00-00-00-00-00-00", "00:00:00:00:00:00"},
		{"ff:ff:ff:ff:ff:ff", "ff:ff:ff:ff:ff:ff"},
		{"FF:FF:FF:FF:FF:FF", "ff:ff:ff:ff:ff:ff"},
		{"01:00:5e:00:00:01", "01:00:5e:00:00:01"},
		{"33:33:00:00:00:01", "33:33:00:00:00:01"},
	}
	for _, tt := range unusable {
		_, mac, err := ParseVXLANData(json.RawMessage(`{"VNI":1,"VtepMAC":"` + tt.in + `"}`))
		if !errors.Is(err, ErrUnusableVtepMAC) || !strings.Contains(err.Error(), tt.name) {
			t.Errorf("%s: got mac %v err %v, want ErrUnusableVtepMAC naming %s", tt.in, mac, err, tt.name)
		}
	}
}

func TestSubnetKey(t *testing.T) {
	tests := []struct {
		key  string
		want string
		ok   bool
	}{
		{"198.18.7.0-24", "198.18.7.0/24", true},
		{"10.5.34.0-24&fc00::-64", "10.5.34.0/24", true},
		{"198.18.7.0-", "", false},
		{"198.18.7.0-033", "", false},
		{"198.18.7.1-24", "", false},
		{"198.18.7.0-33", "", false},
		{"fc00::-64", "", false},
		{"nonsense", "", false},
		{"-24", "", false},
	}
	for _, tt := range tests {
		p, err := ParseSubnetKey(tt.key)
		if (err == nil) != tt.ok {
			t.Errorf("%q: err %v, want ok=%v", tt.key, err, tt.ok)
			continue
		}
		if tt.ok {
			if p.String() != tt.want {
				t.Errorf("%q: got %s want %s", tt.key, p, tt.want)
			}
			if !strings.Contains(tt.key, "&") && SubnetKey(p) != tt.key {
				t.Errorf("SubnetKey(%s) = %s, want %s", p, SubnetKey(p), tt.key)
			}
		}
	}
}

func FuzzParseLease(f *testing.F) {
	for _, v := range flannelValues {
		f.Add("198.18.7.0-24", []byte(v))
	}
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		if p, err := ParseSubnetKey(key); err == nil {
			if p.Masked() != p || !p.Addr().Is4() {
				t.Fatalf("accepted unmasked or non-IPv4 key %q -> %s", key, p)
			}
			if q, err := ParseSubnetKey(SubnetKey(p)); err != nil || q != p {
				t.Fatalf("key %s does not round-trip", p)
			}
		}
		a, err := ParseLeaseAttrs(value)
		if err != nil {
			return
		}
		if !a.PublicIP.Is4() {
			t.Fatalf("accepted non-IPv4 PublicIP %s", a.PublicIP)
		}
		out, err := json.Marshal(a)
		if err != nil {
			return // BackendData that is not compactable JSON is refused on write
		}
		b, err := ParseLeaseAttrs(out)
		if err != nil || b.PublicIP != a.PublicIP || b.BackendType != a.BackendType {
			t.Fatalf("re-parse of %s: %v", out, err)
		}
	})
}

func BenchmarkParseLeaseAttrs(b *testing.B) {
	v := []byte(flannelValues[0])
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseLeaseAttrs(v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMarshalLeaseAttrs(b *testing.B) {
	a, _ := ParseLeaseAttrs([]byte(flannelValues[0]))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.MarshalJSON(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseSubnetKey(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseSubnetKey("198.18.7.0-24"); err != nil {
			b.Fatal(err)
		}
	}
}
