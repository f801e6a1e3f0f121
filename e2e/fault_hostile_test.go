package e2e_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
)

// TestFaultHostileLeases writes malformed and malicious lease values into
// etcd. Each is skipped with exactly one warning and one metric increase per
// host that must refuse it; no route outside the cluster network, over the
// underlay or to a hostile subnet ever appears; the valid peers keep
// working.
func TestFaultHostileLeases(t *testing.T) {
	t.Parallel()
	l := faultLab(t, lab.Options{Hosts: 3})
	ctx := testCtx(t, 3*time.Minute)
	startWeftds(t, ctx, l.Hosts, "--reconcile-interval=1s")
	onePodPerHost(t, ctx, l)
	cli := etcdClient(t, ctx, l)
	h1 := l.Host(1)
	own1 := ownSubnet(t, ctx, h1)
	network := netip.MustParsePrefix("198.18.0.0/16")
	used := map[netip.Prefix]bool{}
	for _, h := range l.Hosts {
		used[ownSubnet(t, ctx, h)] = true
	}
	// free returns a free /24 of the network to host a hostile lease.
	next := 200
	free := func() netip.Prefix {
		for {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(next), 0}), 24)
			next++
			if !used[p] {
				return p
			}
		}
	}
	a := own1.Addr().As4()
	half := netip.PrefixFrom(netip.AddrFrom4([4]byte{a[0], a[1], a[2], 128}), 25)             // inside h1's subnet
	wide := netip.PrefixFrom(netip.AddrFrom4([4]byte{a[0], a[1], a[2] &^ 1, 0}), 23).Masked() // covers h1's subnet

	type hostile struct {
		name   string
		sn     netip.Prefix
		key    string // subnet key as it appears in the log
		value  string
		onlyH1 bool // only h1 must refuse it
	}
	mk := func(name string, sn netip.Prefix, value string, onlyH1 bool) hostile {
		return hostile{name, sn, sn.Addr().String() + "-" + fmt.Sprint(sn.Bits()), value, onlyH1}
	}
	hs := []hostile{
		mk("garbage JSON", free(), `{"PublicIP": "192.0.2.40", garbage`, false),
		mk("outside the network", netip.MustParsePrefix("198.19.5.0/24"), vxlanLease("192.0.2.41", "02:00:c0:00:02:29"), false),
		mk("overlapping h1 (/25)", half, vxlanLease("192.0.2.42", "02:00:c0:00:02:2a"), false),
		mk("covering h1 (/23)", wide, vxlanLease("192.0.2.43", "02:00:c0:00:02:2b"), false),
		mk("h1's PublicIP", free(), vxlanLease(h1.IP.String(), "02:00:c0:00:02:2c"), true),
		mk("PublicIP 0.0.0.0", free(), vxlanLease("0.0.0.0", "02:00:c0:00:02:2d"), false),
		mk("PublicIP 127.0.0.1", free(), vxlanLease("127.0.0.1", "02:00:c0:00:02:2e"), false),
		mk("wrong-length VtepMAC", free(), `{"PublicIP":"192.0.2.47","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:c0:00:02"}}`, false),
	}
	expect := func(h *lab.Host) []hostile {
		var out []hostile
		for _, x := range hs {
			if !x.onlyH1 || h == h1 {
				out = append(out, x)
			}
		}
		return out
	}
	skipped0 := map[*lab.Host]float64{}
	for _, h := range l.Hosts {
		skipped0[h] = metricSum(mustMetrics(t, ctx, h), "weft_leases_skipped_total")
	}
	for _, x := range hs {
		if _, err := cli.Put(ctx, leasePrefix+x.key, x.value); err != nil {
			t.Fatal(err)
		}
	}
	// More events, so every host re-evaluates the hostile leases a few
	// times: still one warning each.
	extra := free()
	for i := 0; i < 3; i++ {
		if _, err := cli.Put(ctx, leaseKey(extra), vxlanLease("192.0.2.48", fmt.Sprintf("02:00:c0:00:03:%02x", i))); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if _, err := cli.Delete(ctx, leaseKey(extra)); err != nil {
		t.Fatal(err)
	}

	// No forbidden route, sampled for a while.
	hostileRoute := map[netip.Prefix]string{}
	for _, x := range hs {
		hostileRoute[x.sn] = x.name
	}
	underlay := netip.MustParsePrefix("192.0.2.0/24")
	for round := 0; round < 10; round++ {
		for _, h := range l.Hosts {
			own := ownSubnet(t, ctx, h)
			rs, err := hostRoutes(ctx, h)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rs {
				dst := routeDst(r)
				switch {
				case dst == underlay && str(r, "dev") == "eth0":
				case !network.Contains(dst.Addr()) || dst.Bits() < network.Bits():
					t.Errorf("%s: route outside the cluster network: %v", h.Name, r)
				case dst == own:
				case str(r, "dev") != vxlanDev:
					t.Errorf("%s: peer route not over %s (over the underlay?): %v", h.Name, vxlanDev, r)
				}
				if name, bad := hostileRoute[dst]; bad && (h == h1 || name != "h1's PublicIP") {
					t.Errorf("%s: route for the hostile lease %q: %v", h.Name, name, r)
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}

	for _, h := range l.Hosts {
		want := expect(h)
		for _, x := range want {
			if n := len(logLines(h, "skipping lease", x.key)); n != 1 {
				t.Errorf("%s: %d warnings for the %s lease %s, want exactly 1", h.Name, n, x.name, x.key)
			}
		}
		got := metricSum(mustMetrics(t, ctx, h), "weft_leases_skipped_total") - skipped0[h]
		if int(got) != len(want) {
			t.Errorf("%s: weft_leases_skipped_total rose by %v, want %d", h.Name, got, len(want))
		}
		if !weftdRunning(h) {
			t.Errorf("%s: weftd exited", h.Name)
		}
	}
	m := l.PingMatrix(ctx)
	if !m.OK() {
		t.Errorf("valid peers stopped working:\n%s", m)
	}
}
