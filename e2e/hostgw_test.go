package e2e_test

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
)

// TestHostGWNonAdjacentPeer puts h3 in another IP subnet (198.51.100.0/24)
// reached through a router (the switch namespace, which routes between
// its two addresses). host-gw cannot serve a peer that is not on-link: h1
// and h2 must refuse h3 alone, say so once, report it in /status and
// /metrics, stay ready and keep serving each other.
func TestHostGWNonAdjacentPeer(t *testing.T) {
	l := faultLab(t, lab.Options{Hosts: 3, Backend: "host-gw"})
	ctx := testCtx(t, 2*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)

	run := func(ns string, argv ...string) {
		t.Helper()
		if out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
		}
	}
	run(l.Switch, "ip", "addr", "add", "198.51.100.1/24", "dev", "br0")
	run(l.Switch, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	run(h3.Name, "ip", "addr", "flush", "dev", "eth0")
	run(h3.Name, "ip", "addr", "add", "198.51.100.13/24", "dev", "eth0")
	run(h3.Name, "ip", "route", "add", "192.0.2.0/24", "via", "198.51.100.1")
	for _, h := range []*lab.Host{h1, h2} {
		run(h.Name, "ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1")
	}
	startWeftds(t, ctx, l.Hosts, "--reconcile-interval=500ms")

	p1, err := h1.AddPod(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	p2, err := h2.AddPod(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if res, err := p1.Ping(ctx, p2.IP, 5, 100*time.Millisecond); err != nil || !res.OK() {
		t.Fatalf("h1 pod -> h2 pod with a non-adjacent h3 in the cluster: %+v %v", res, err)
	}

	sn3 := ownSubnet(t, ctx, h3).String()
	time.Sleep(2 * time.Second) // several reconcile passes
	for _, h := range []*lab.Host{h1, h2} {
		st, err := status(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := st.PeersRefused[sn3]; !ok || len(st.PeersRefused) != 1 {
			t.Errorf("%s: refused peers %v, want exactly %s", h.Name, st.PeersRefused, sn3)
		}
		if st.PeersProgrammed != 1 || !st.Ready {
			t.Errorf("%s: programmed %d (want 1), ready %v (%s)", h.Name, st.PeersProgrammed, st.Ready, st.NotReadyReason)
		}
		if m := mustMetrics(t, ctx, h); m["weft_peers_refused"] != 1 {
			t.Errorf("%s: weft_peers_refused = %v, want 1", h.Name, m["weft_peers_refused"])
		}
		if r, _ := routeTo(ctx, h, ownSubnet(t, ctx, h3)); r != nil {
			t.Errorf("%s: has a route to the non-adjacent peer's subnet: %v", h.Name, r)
		}
		if n := len(logLines(h, sn3, "on-link")); n != 1 {
			t.Errorf("%s: the refusal of %s was logged %d times, want once:\n%s", h.Name, sn3, n, strings.Join(logLines(h, sn3), "\n"))
		}
	}
}
