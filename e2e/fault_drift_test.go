package e2e_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
)

// TestFaultDrift breaks weftd's kernel state by hand on one host, one object
// at a time: each must be restored within the reconcile interval (the
// iptables resync period for rules) and counted in
// weft_repairs_total{kind}.
func TestFaultDrift(t *testing.T) {
	t.Parallel()
	const interval = 2 * time.Second
	const slack = time.Second // for the checks themselves under load
	l := faultLab(t, lab.Options{Hosts: 2})
	ctx := testCtx(t, 3*time.Minute)
	startWeftds(t, ctx, l.Hosts, "--reconcile-interval=2s", "--ip-masq", "--iptables-resync=1")
	onePodPerHost(t, ctx, l)
	h, peer := l.Host(1), l.Host(2)
	psn := ownSubnet(t, ctx, peer)
	pmac := linkMAC(ctx, peer, vxlanDev)
	mac := linkMAC(ctx, h, vxlanDev)
	pip := peer.IP.String()

	entries := func() (bool, string) {
		r, n, f, err := peerEntries(ctx, h, psn, pmac, pip)
		return r && n && f, fmt.Sprintf("route %v neigh %v fdb %v err %v", r, n, f, err)
	}
	devUp := func() (bool, string) {
		ls, err := ipJSON(ctx, h, "ip", "link", "show", "dev", vxlanDev)
		if err != nil || len(ls) == 0 {
			return false, fmt.Sprintf("device missing: %v", err)
		}
		if got := str(ls[0], "address"); got != mac {
			return false, fmt.Sprintf("device MAC %s, want %s", got, mac)
		}
		flags := fmt.Sprint(ls[0]["flags"])
		if !strings.Contains(flags, "UP") {
			return false, "device flags " + flags
		}
		ok, why := entries()
		return ok, why
	}
	masqRules := func() int {
		out, err := h.Exec(ctx, "iptables", "-w", "-t", "nat", "-S", "WEFT-POSTRTG")
		if err != nil {
			return -1
		}
		return strings.Count(string(out), "-A WEFT-POSTRTG")
	}
	rules0 := masqRules()
	if rules0 < 1 {
		t.Fatalf("no rules in WEFT-POSTRTG with --ip-masq (%d)", rules0)
	}

	cases := []struct {
		name, kind string
		argv       []string
		restored   func() (bool, string)
		within     time.Duration
	}{
		{"route deleted", "route", []string{"ip", "route", "del", psn.String()}, entries, interval},
		{"neighbour deleted", "neigh", []string{"ip", "neigh", "del", psn.Addr().String(), "dev", vxlanDev}, entries, interval},
		{"fdb entry deleted", "fdb", []string{"bridge", "fdb", "del", pmac, "dev", vxlanDev, "dst", pip}, entries, interval},
		{"device deleted", "device", []string{"ip", "link", "del", vxlanDev}, devUp, interval},
		{"device set down", "device", []string{"ip", "link", "set", vxlanDev, "down"}, devUp, interval},
		{"iptables rule deleted", "iptables", []string{"iptables", "-w", "-t", "nat", "-D", "WEFT-POSTRTG", "1"}, func() (bool, string) {
			n := masqRules()
			return n == rules0, fmt.Sprintf("%d rules in WEFT-POSTRTG, want %d", n, rules0)
		}, time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			metric := fmt.Sprintf(`weft_repairs_total{kind=%q}`, tc.kind)
			before := mustMetrics(t, ctx, h)[metric]
			if out, err := h.Exec(ctx, tc.argv...); err != nil {
				t.Fatalf("%v %s", err, out)
			}
			d, err := waitFor(ctx, tc.within+slack+3*time.Second, 10*time.Millisecond, tc.restored)
			switch {
			case err != nil:
				t.Fatalf("not restored: %v", err)
			case d > tc.within+slack:
				t.Errorf("restored after %s, want within %s", d, tc.within)
			default:
				t.Logf("restored after %s", d.Round(time.Millisecond))
			}
			if _, err := waitFor(ctx, 2*time.Second, 100*time.Millisecond, func() (bool, string) {
				got := mustMetrics(t, ctx, h)[metric]
				return got > before, fmt.Sprintf("%s = %v, was %v", metric, got, before)
			}); err != nil {
				t.Errorf("repair not counted: %v", err)
			}
		})
	}
	if m, err := l.WaitConnectivity(ctx, 5*time.Second); err != nil {
		t.Errorf("after the repairs: %v\n%s", err, m)
	}
}
