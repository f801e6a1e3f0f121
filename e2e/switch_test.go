package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
)

// TestSwitchBackends is issue #3's switch: a running 3-host cluster goes
// vxlan -> host-gw -> vxlan by editing the config and restarting the
// daemons. Each step ends with full pod connectivity, the same subnets,
// leases carrying the new backend, and nothing of the old backend left in
// any host namespace.
func TestSwitchBackends(t *testing.T) {
	l := faultLab(t, lab.Options{Hosts: 3, Backend: "vxlan"})
	ctx := testCtx(t, 4*time.Minute)
	startWeftds(t, ctx, l.Hosts, "--reconcile-interval=1s")
	onePodPerHost(t, ctx, l)
	subnets := map[string]string{}
	for _, h := range l.Hosts {
		subnets[h.Name] = ownSubnet(t, ctx, h).String()
	}
	cli := etcdClient(t, ctx, l)

	for _, next := range []string{"host-gw", "vxlan"} {
		if err := l.WriteConfig(fmt.Sprintf(`{"Network":"198.18.0.0/16","Backend":{"Type":%q}}`, next)); err != nil {
			t.Fatal(err)
		}
		// Every daemon notices and says a restart is needed, but keeps running.
		for _, h := range l.Hosts {
			_, err := waitFor(ctx, 15*time.Second, 200*time.Millisecond, func() (bool, string) {
				code, body, err := readyz(ctx, h)
				return err == nil && code == 503 && strings.Contains(body, "restart"), fmt.Sprintf("%d %q %v", code, body, err)
			})
			if err != nil {
				t.Fatalf("%s: /readyz after the config changed to %s: %v", h.Name, next, err)
			}
			if m := mustMetrics(t, ctx, h); m["weft_restart_needed"] != 1 {
				t.Errorf("%s: weft_restart_needed = %v, want 1", h.Name, m["weft_restart_needed"])
			}
		}
		for _, h := range l.Hosts {
			if err := h.StopWeftd(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := h.StartWeftd("--reconcile-interval=1s"); err != nil {
				t.Fatal(err)
			}
		}
		waitAllReady(t, ctx, l.Hosts, 30*time.Second)
		if m, err := l.WaitConnectivity(ctx, 20*time.Second); err != nil {
			t.Fatalf("after switching to %s: %v\n%s", next, err, m)
		}
		for _, h := range l.Hosts {
			if got := ownSubnet(t, ctx, h).String(); got != subnets[h.Name] {
				t.Errorf("%s: subnet changed from %s to %s when switching to %s", h.Name, subnets[h.Name], got, next)
			}
			sn := ownSubnet(t, ctx, h)
			attrs, _, err := getLease(ctx, cli, sn)
			if err != nil || attrs == nil {
				t.Fatalf("%s: lease %s: %v", h.Name, sn, err)
			}
			if attrs.BackendType != next {
				t.Errorf("%s: lease BackendType %q, want %q", h.Name, attrs.BackendType, next)
			}
			if next == "host-gw" && len(attrs.BackendData) != 0 {
				t.Errorf("%s: host-gw lease still carries BackendData %s", h.Name, attrs.BackendData)
			}
			assertOnlyBackend(t, ctx, h, next, l.Hosts)
		}
	}
}

// assertOnlyBackend checks h's links and routes hold the state of backend
// typ and nothing of the others.
func assertOnlyBackend(t *testing.T, ctx context.Context, h *lab.Host, typ string, hosts []*lab.Host) {
	t.Helper()
	links, err := h.Exec(ctx, "ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	hasVXLAN := strings.Contains(string(links), vxlanDev+":")
	hasTUN := strings.Contains(string(links), "weft0:")
	if hasTUN {
		t.Errorf("%s: udp's weft0 device exists on %s", h.Name, typ)
	}
	if hasVXLAN != (typ == "vxlan") {
		t.Errorf("%s: vxlan device present=%v on backend %s:\n%s", h.Name, hasVXLAN, typ, links)
	}
	routes, err := hostRoutes(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	peers := 0
	for _, r := range routes {
		dst := routeDst(r)
		if !dst.IsValid() || !netip.MustParsePrefix("198.18.0.0/16").Contains(dst.Addr()) || str(r, "protocol") == "kernel" {
			continue
		}
		peers++
		dev, gw := str(r, "dev"), str(r, "gateway")
		switch typ {
		case "vxlan":
			if dev != vxlanDev || gw != dst.Addr().String() {
				t.Errorf("%s: on vxlan, route %s dev %s via %s (want dev %s via %s)", h.Name, dst, dev, gw, vxlanDev, dst.Addr())
			}
		case "host-gw":
			if dev != "eth0" || !strings.HasPrefix(gw, "192.0.2.") {
				t.Errorf("%s: on host-gw, route %s dev %s via %s (want via a host address on eth0)", h.Name, dst, dev, gw)
			}
		}
	}
	if peers != len(hosts)-1 {
		t.Errorf("%s: %d peer routes on %s, want %d: %v", h.Name, peers, typ, len(hosts)-1, routes)
	}
}
