package subnet

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strconv"
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
		key    string
		v4, v6 string // "" for invalid
		errHas string // for a refused key: what the error must say
	}{
		{"198.18.7.0-24", "198.18.7.0/24", "", ""},
		{"0.0.0.0-0", "0.0.0.0/0", "", ""},
		{"10.5.34.0-24&fc00::-64", "10.5.34.0/24", "fc00::/64", ""},
		{"198.18.1.0-24&2001:db8:1:2::-64", "198.18.1.0/24", "2001:db8:1:2::/64", ""},
		{"198.18.1.0-24&2001:db8:100:5::10-124", "198.18.1.0/24", "2001:db8:100:5::10/124", ""},
		{"198.18.1.0-24&2001:db8::1-128", "198.18.1.0/24", "2001:db8::1/128", ""},
		{"198.18.7.0-", "", "", "prefix length"},
		{"198.18.7.0-033", "", "", "prefix length"},
		{"198.18.7.0-+24", "", "", "prefix length"},
		{"198.18.7.1-24", "", "", "host bits"},
		{"198.18.7.0-33", "", "", "prefix length"},
		{"fc00::-64", "", "", "not an IPv4 address"},
		{"nonsense", "", "", "want"},
		{"-24", "", "", "want"},
		{"", "", "", "want"},
		// Bad IPv6 parts: the whole key is refused, not cut at '&'.
		{"198.18.7.0-24&", "", "", "want"},
		{"198.18.7.0-24&fc00::", "", "", "want"},
		{"198.18.7.0-24&-64", "", "", "want"},
		{"198.18.7.0-24&198.18.7.0-24", "", "", "not an IPv6 address"},
		{"198.18.7.0-24&::ffff:198.18.7.0-120", "", "", "not an IPv6 address"},
		{"198.18.7.0-24&fe80::%eth0-64", "", "", "not an IPv6 address"},
		{"198.18.7.0-24&fc00::1-64", "", "", "host bits"},
		{"198.18.7.0-24&fc00::-129", "", "", "prefix length"},
		{"198.18.7.0-24&fc00::-064", "", "", "prefix length"},
		{"198.18.7.0-24&fc00::-64x", "", "", "prefix length"},
		{"198.18.7.0-24&fc00::-64 ", "", "", "prefix length"},
		{"198.18.7.0-24&fc00::-64&fd00::-64", "", "", "more than one '&'"},
		{"198.18.7.0-24&&fc00::-64", "", "", "more than one '&'"},
		{"198.18.7.0-24&FC00::-64", "", "", "canonical"},
		{"198.18.7.0-24&fc00:0::-64", "", "", "canonical"},
		{"198.18.7.0-24&nonsense", "", "", "want"},
		{"198.18.7.1-24&fc00::-64", "", "", "host bits"},
	}
	for _, tt := range tests {
		v4, v6, err := ParseSubnetKey(tt.key)
		if tt.errHas != "" {
			if err == nil {
				t.Errorf("%q: accepted as %s %s", tt.key, v4, v6)
			} else if !strings.Contains(err.Error(), tt.errHas) || !strings.Contains(err.Error(), strconv.Quote(tt.key)) {
				t.Errorf("%q: error %q does not say %q and name the key", tt.key, err, tt.errHas)
			}
			if v4.IsValid() || v6.IsValid() {
				t.Errorf("%q: error with prefixes %s %s", tt.key, v4, v6)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.key, err)
			continue
		}
		got6 := ""
		if v6.IsValid() {
			got6 = v6.String()
		}
		if v4.String() != tt.v4 || got6 != tt.v6 {
			t.Errorf("%q: got %s %q, want %s %q", tt.key, v4, got6, tt.v4, tt.v6)
		}
		if k := (Lease{Subnet: v4, IPv6Subnet: v6}).Key(); k != tt.key {
			t.Errorf("%q: Lease.Key() = %q", tt.key, k)
		}
	}
}

func FuzzParseLease(f *testing.F) {
	for _, v := range flannelValues {
		f.Add("198.18.7.0-24", []byte(v))
	}
	f.Add("198.18.1.0-24&2001:db8:1:2::-64", []byte(`{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1"}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		checkSubnetKey(t, key)
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

// FuzzParseSubnetKey checks that every key ParseSubnetKey accepts is well
// formed and is exactly the key its lease writes, and that refusals name the
// key.
func FuzzParseSubnetKey(f *testing.F) {
	for _, k := range []string{"198.18.7.0-24", "198.18.1.0-24&2001:db8:1:2::-64", "10.5.34.0-24&fc00::-64",
		"198.18.7.0-24&fc00::-64&", "198.18.7.0-24&::ffff:1.2.3.4-128", "0.0.0.0-0&::-0", "1.2.3.4-32&fe80::%x-64"} {
		f.Add(k)
	}
	f.Fuzz(checkSubnetKey)
}

func checkSubnetKey(t *testing.T, key string) {
	v4, v6, err := ParseSubnetKey(key)
	if err != nil {
		if v4.IsValid() || v6.IsValid() {
			t.Fatalf("%q: error %v with prefixes %s %s", key, err, v4, v6)
		}
		if !strings.Contains(err.Error(), strconv.Quote(key)) {
			t.Fatalf("%q: error %q does not name the key", key, err)
		}
		return
	}
	if !v4.IsValid() || !v4.Addr().Is4() || v4.Masked() != v4 {
		t.Fatalf("%q: accepted IPv4 part %s", key, v4)
	}
	if strings.Contains(key, "&") != v6.IsValid() {
		t.Fatalf("%q: IPv6 part %s", key, v6)
	}
	if v6.IsValid() && (!v6.Addr().Is6() || v6.Addr().Is4In6() || v6.Addr().Zone() != "" || v6.Masked() != v6) {
		t.Fatalf("%q: accepted IPv6 part %s", key, v6)
	}
	if k := (Lease{Subnet: v4, IPv6Subnet: v6}).Key(); k != key {
		t.Fatalf("%q parses to %s %s, whose key is %q", key, v4, v6, k)
	}
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
		if _, _, err := ParseSubnetKey("198.18.7.0-24"); err != nil {
			b.Fatal(err)
		}
	}
}
