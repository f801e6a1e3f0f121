package wireguard

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/subnet"
)

func mustKey(t testing.TB) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestParseLeaseData(t *testing.T) {
	pub := mustKey(t).PublicKey()
	b64 := base64.StdEncoding.EncodeToString(pub[:])
	for _, tc := range []struct {
		name, raw string
		port      int
		wantErr   error // nil: valid; errAny: any error
	}{
		{"flannel's form", `{"PublicKey":"` + b64 + `","Port":51820}`, 51820, nil},
		{"port 0", `{"PublicKey":"` + b64 + `","Port":0}`, 0, nil},
		{"no port", `{"PublicKey":"` + b64 + `"}`, 0, nil},
		{"lower-case names", `{"publickey":"` + b64 + `","port":1}`, 1, nil},
		{"empty", ``, 0, ErrNoLeaseData},
		{"null", `null`, 0, ErrNoLeaseData},
		{"no key", `{"Port":51820}`, 0, ErrBadKey},
		{"key not base64", `{"PublicKey":"!!!","Port":51820}`, 0, ErrBadKey},
		{"key too short", `{"PublicKey":"c2hvcnQ=","Port":51820}`, 0, ErrBadKey},
		{"key too long", `{"PublicKey":"` + b64 + b64 + `","Port":51820}`, 0, ErrBadKey},
		{"key all zeros", `{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","Port":1}`, 0, ErrBadKey},
		{"port too large", `{"PublicKey":"` + b64 + `","Port":65536}`, 0, ErrBadPort},
		{"port negative", `{"PublicKey":"` + b64 + `","Port":-1}`, 0, ErrBadPort},
		{"port huge", `{"PublicKey":"` + b64 + `","Port":1e300}`, 0, ErrBadPort},
		{"port fraction", `{"PublicKey":"` + b64 + `","Port":1.5}`, 0, ErrBadPort},
		{"port a string", `{"PublicKey":"` + b64 + `","Port":"51820"}`, 0, ErrBadPort},
		{"an array", `[1,2]`, 0, errAny},
		{"too long", `{"PublicKey":"` + b64 + `","X":"` + strings.Repeat("a", 5000) + `"}`, 0, errAny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := ParseLeaseData(json.RawMessage(tc.raw))
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("ParseLeaseData: %v", err)
			case tc.wantErr == nil:
				if d.PublicKey != pub || d.Port != tc.port {
					t.Fatalf("got key %s port %d, want %s %d", d.PublicKey, d.Port, pub, tc.port)
				}
			case err == nil:
				t.Fatalf("ParseLeaseData accepted %s", tc.raw)
			case tc.wantErr != errAny && !errors.Is(err, tc.wantErr):
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
		})
	}
}

var errAny = errors.New("any")

func TestLeaseDataRoundTrip(t *testing.T) {
	d := LeaseData{PublicKey: mustKey(t).PublicKey(), Port: 51820}
	raw := d.Marshal()
	if want := `{"PublicKey":"` + d.PublicKey.String() + `","Port":51820}`; string(raw) != want {
		t.Fatalf("Marshal = %s, want flannel's %s", raw, want)
	}
	got, err := ParseLeaseData(raw)
	if err != nil || got != d {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	id, err := PeerData(subnet.LeaseAttrs{BackendType: Type, BackendData: raw})
	if err != nil || id != string(d.PublicKey[:]) {
		t.Fatalf("PeerData = %q, %v", id, err)
	}
}

// FuzzParseLeaseData: lease data comes from etcd, written by anybody who
// can write there. Parsing must never panic, and what it accepts must
// re-encode to data that parses to the same thing.
func FuzzParseLeaseData(f *testing.F) {
	f.Add([]byte(`{"PublicKey":"` + base64.StdEncoding.EncodeToString(make([]byte, 31)) + `A","Port":51820}`))
	f.Add([]byte(`{"PublicKey":"aGVsbG8=","Port":99999999999999999999}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		d, err := ParseLeaseData(raw)
		if err != nil {
			return
		}
		if d.Port < 0 || d.Port > 65535 || d.PublicKey == (wgtypes.Key{}) {
			t.Fatalf("accepted %+v from %q", d, raw)
		}
		d2, err := ParseLeaseData(d.Marshal())
		if err != nil || d2 != d {
			t.Fatalf("re-encoded %+v does not parse back: %+v, %v", d, d2, err)
		}
	})
}

func lease(t testing.TB, sn, pub string, key wgtypes.Key, port int) subnet.Lease {
	return subnet.Lease{
		Subnet: netip.MustParsePrefix(sn),
		Attrs: subnet.LeaseAttrs{
			PublicIP:    netip.MustParseAddr(pub),
			BackendType: Type,
			BackendData: LeaseData{PublicKey: key.PublicKey(), Port: port}.Marshal(),
		},
	}
}
