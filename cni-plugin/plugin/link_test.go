package plugin

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// TestPlanBridgeAddrs: which addresses of an existing bridge are replaced
// and which make the plugin refuse the bridge.
func TestPlanBridgeAddrs(t *testing.T) {
	pp := netip.MustParsePrefix
	want, lease := pp("198.18.5.1/24"), pp("198.18.5.0/24")
	cases := []struct {
		name       string
		have, ours []netip.Prefix
		remove     []netip.Prefix
		foreign    []netip.Prefix // refused when set
	}{
		{"new bridge", nil, nil, nil, nil},
		{"steady state", []netip.Prefix{want}, []netip.Prefix{want}, nil, nil},
		{"steady state before the record existed", []netip.Prefix{want}, nil, nil, nil},
		{"gateway with another prefix length", []netip.Prefix{pp("198.18.5.1/16")}, nil, []netip.Prefix{pp("198.18.5.1/16")}, nil},
		{"stale address inside the lease", []netip.Prefix{want, pp("198.18.5.77/24")}, nil, []netip.Prefix{pp("198.18.5.77/24")}, nil},
		{"our old gateway after a lease change", []netip.Prefix{pp("198.18.7.1/24")}, []netip.Prefix{pp("198.18.7.1/24")}, []netip.Prefix{pp("198.18.7.1/24")}, nil},
		{"host address", []netip.Prefix{pp("192.0.2.10/24")}, nil, nil, []netip.Prefix{pp("192.0.2.10/24")}},
		{"host address next to ours", []netip.Prefix{want, pp("192.0.2.10/24"), pp("203.0.113.9/24")}, []netip.Prefix{want}, nil, []netip.Prefix{pp("192.0.2.10/24"), pp("203.0.113.9/24")}},
		{"old gateway not recorded (before the upgrade)", []netip.Prefix{pp("198.18.7.1/24")}, nil, nil, []netip.Prefix{pp("198.18.7.1/24")}},
		{"cluster address, other prefix than recorded", []netip.Prefix{pp("198.18.7.1/16")}, []netip.Prefix{pp("198.18.7.1/24")}, nil, []netip.Prefix{pp("198.18.7.1/16")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			remove, err := planBridgeAddrs("cni0", tc.have, want, lease, tc.ours)
			if tc.foreign != nil {
				var fe *ForeignAddressError
				if !errors.As(err, &fe) || !slices.Equal(fe.Addrs, tc.foreign) || fe.Bridge != "cni0" {
					t.Fatalf("got %v %v, want a refusal naming %v", remove, err, tc.foreign)
				}
				for _, a := range tc.foreign {
					if !strings.Contains(err.Error(), a.String()) || !strings.Contains(err.Error(), "bridge cni0") {
						t.Errorf("message %q does not name the bridge and %s", err, a)
					}
				}
				return
			}
			if err != nil || !slices.Equal(remove, tc.remove) {
				t.Fatalf("got remove=%v err=%v, want remove=%v", remove, err, tc.remove)
			}
		})
	}
}
