package routes

import (
	"testing"

	"github.com/weftnet/weft/internal/nl"
)

// TestPackRoute checks that packing keeps what tells routes apart: each
// spec packs to its own value and gives its destination back.
func TestPackRoute(t *testing.T) {
	specs := []nl.RouteSpec{
		{Dst: pfx("198.18.1.0/24"), Gw: addr("198.18.1.0"), LinkIndex: 5, OnLink: true},
		{Dst: pfx("198.18.1.0/24"), Gw: addr("198.18.1.0"), LinkIndex: 5},
		{Dst: pfx("198.18.1.0/24"), Gw: addr("198.18.1.0"), LinkIndex: 6, OnLink: true},
		{Dst: pfx("198.18.1.0/24"), Gw: addr("192.0.2.1"), LinkIndex: 5, OnLink: true},
		{Dst: pfx("198.18.1.0/24"), Gw: addr("::ffff:192.0.2.1"), LinkIndex: 5, OnLink: true},
		{Dst: pfx("198.18.1.0/24"), LinkIndex: 5},
		{Dst: pfx("198.18.1.0/25"), Gw: addr("198.18.1.0"), LinkIndex: 5, OnLink: true},
		{Dst: pfx("198.18.2.0/24"), Gw: addr("198.18.1.0"), LinkIndex: 5, OnLink: true},
		{Dst: pfx("::ffff:198.18.1.0/120"), Gw: addr("198.18.1.0"), LinkIndex: 5, OnLink: true},
		{Dst: pfx("2001:db8:100:1::/64"), Gw: addr("2001:db8:100:1::"), LinkIndex: 5, OnLink: true},
		{Dst: pfx("2001:db8:100:1::/64"), Gw: addr("2001:db8::1"), LinkIndex: 5, OnLink: true},
		{Dst: pfx("::/0"), Gw: addr("2001:db8::1"), LinkIndex: 5},
		{Dst: pfx("0.0.0.0/0"), Gw: addr("192.0.2.1"), LinkIndex: 5},
	}
	seen := map[installedRoute]nl.RouteSpec{}
	for _, w := range specs {
		ir := packRoute(w)
		if got := ir.Dst(); got != w.Dst {
			t.Errorf("%+v: destination %s after packing", w, got)
		}
		if prev, dup := seen[ir]; dup {
			t.Errorf("%+v and %+v pack the same", prev, w)
		}
		seen[ir] = w
		if packRoute(w) != ir {
			t.Errorf("%+v packs differently twice", w)
		}
	}
}
