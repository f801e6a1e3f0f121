package etcd

import (
	"net/netip"
	"strings"
	"testing"
)

// TestReserveFirstSubnet: the network's first subnet is never leased, so a
// reservation of it would never be used; it is refused, unless SubnetMin
// names it.
func TestReserveFirstSubnet(t *testing.T) {
	owner := netip.MustParseAddr("192.0.2.11")
	for _, tc := range []struct {
		name, cfg string
		sn        string
		refused   bool
	}{
		{"default SubnetMin", `{"Network":"198.18.0.0/16"}`, "198.18.0.0/24", true},
		{"second subnet", `{"Network":"198.18.0.0/16"}`, "198.18.1.0/24", false},
		{"SubnetMin above it", `{"Network":"198.18.0.0/24","SubnetLen":26,"SubnetMin":"198.18.0.128"}`, "198.18.0.0/26", true},
		// Below SubnetMin but not the first: a reservation may lie outside
		// [SubnetMin, SubnetMax]; its owner uses it all the same.
		{"below SubnetMin, not the first", `{"Network":"198.18.0.0/24","SubnetLen":26,"SubnetMin":"198.18.0.128"}`, "198.18.0.64/26", false},
		{"SubnetMin names it", `{"Network":"198.18.0.0/16","SubnetMin":"198.18.0.0"}`, "198.18.0.0/24", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, reg, _ := setup(t, tc.cfg)
			sn := netip.MustParsePrefix(tc.sn)
			err := reg.Reserve(testCtx(t), sn, owner)
			if !tc.refused {
				if err != nil {
					t.Fatalf("Reserve %s: %v", sn, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "first subnet") || !strings.Contains(err.Error(), "never leased") {
				t.Fatalf("Reserve %s: %v, want a refusal naming the first subnet", sn, err)
			}
			if _, _, _, ok := getKV(t, cli, reg, sn); ok {
				t.Fatal("the refused reservation was written")
			}
		})
	}
}
