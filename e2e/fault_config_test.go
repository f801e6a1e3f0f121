package e2e_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
)

// TestFaultConfigChange changes the network config in etcd while the
// cluster runs. An invalid config leaves the data path exactly as it was
// (routes identical, pings continue, nothing torn down) and /readyz answers
// 503 naming the invalid field; a valid config with another backend makes
// /readyz say a restart is needed and sets weft_restart_needed to 1.
func TestFaultConfigChange(t *testing.T) {
	t.Parallel()
	l := faultLab(t, lab.Options{Hosts: 2})
	ctx := testCtx(t, 3*time.Minute)
	startWeftds(t, ctx, l.Hosts, "--reconcile-interval=1s")
	pods := onePodPerHost(t, ctx, l)
	valid := l.NetworkConfig()

	// The config is polled, so allow a few seconds for weftd to notice.
	const notice = 8 * time.Second
	routesOf := func(h *lab.Host) string {
		rs, err := hostRoutes(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, r := range rs {
			fmt.Fprintf(&b, "%s via %s dev %s proto %v\n", str(r, "dst"), str(r, "gateway"), str(r, "dev"), r["protocol"])
		}
		return b.String()
	}
	routes0 := map[*lab.Host]string{}
	for _, h := range l.Hosts {
		routes0[h] = routesOf(h)
	}
	sameRoutes := func(t *testing.T) {
		t.Helper()
		for _, h := range l.Hosts {
			if got := routesOf(h); got != routes0[h] {
				t.Errorf("%s: routes changed:\n%s\nwant:\n%s", h.Name, got, routes0[h])
			}
		}
	}
	waitReadyz := func(t *testing.T, h *lab.Host, code int, words ...string) string {
		t.Helper()
		var last string
		if _, err := waitFor(ctx, notice, 200*time.Millisecond, func() (bool, string) {
			c, body, err := readyz(ctx, h)
			last = body
			if err != nil || c != code {
				return false, fmt.Sprintf("%d %q %v", c, body, err)
			}
			for _, w := range words {
				if !strings.Contains(body, w) {
					return false, fmt.Sprintf("%d %q lacks %q", c, body, w)
				}
			}
			return true, ""
		}); err != nil {
			t.Fatalf("%s /readyz: want %d mentioning %q: %v", h.Name, code, words, err)
		}
		return last
	}
	waitMetric := func(t *testing.T, h *lab.Host, name string, want float64) {
		t.Helper()
		if _, err := waitFor(ctx, 3*time.Second, 200*time.Millisecond, func() (bool, string) {
			got, ok := mustMetrics(t, ctx, h)[name]
			return ok && got == want, fmt.Sprintf("%s = %v (present %v)", name, got, ok)
		}); err != nil {
			t.Errorf("%s: want %s %v: %v", h.Name, name, want, err)
		}
	}

	t.Run("invalid config keeps the data path", func(t *testing.T) {
		pgs := pingAll(t, pods, 150, 100*time.Millisecond) // 15 s at 10/s
		time.Sleep(time.Second)
		if err := l.WriteConfig(`{"Network":"198.18.0.0/16","SubnetLen":40,"Backend":{"Type":"vxlan"}}`); err != nil {
			t.Fatal(err)
		}
		for _, h := range l.Hosts {
			body := waitReadyz(t, h, http.StatusServiceUnavailable, "SubnetLen")
			t.Logf("%s /readyz: %s", h.Name, body)
			waitMetric(t, h, "weft_config_invalid", 1)
		}
		for i := 0; i < 5; i++ {
			sameRoutes(t)
			time.Sleep(500 * time.Millisecond)
		}
		expectNoLoss(t, ctx, pgs)
		for _, h := range l.Hosts {
			if !weftdRunning(h) {
				t.Errorf("%s: weftd exited on an invalid config", h.Name)
			}
		}
		if err := l.WriteConfig(valid); err != nil {
			t.Fatal(err)
		}
		for _, h := range l.Hosts {
			waitReadyz(t, h, http.StatusOK)
			waitMetric(t, h, "weft_config_invalid", 0)
		}
		sameRoutes(t)
	})

	t.Run("backend change needs a restart", func(t *testing.T) {
		changed := strings.Replace(valid, `"Type":"vxlan"`, `"Type":"host-gw"`, 1)
		if changed == valid {
			t.Fatalf("cannot switch the backend in %s", valid)
		}
		if err := l.WriteConfig(changed); err != nil {
			t.Fatal(err)
		}
		for _, h := range l.Hosts {
			body := waitReadyz(t, h, http.StatusServiceUnavailable, "restart")
			t.Logf("%s /readyz: %s", h.Name, body)
			waitMetric(t, h, "weft_restart_needed", 1)
			s, err := status(ctx, h)
			if err != nil || !s.RestartNeeded || s.Backend != "vxlan" {
				t.Errorf("%s /status: restartNeeded %v backend %q err %v", h.Name, s.RestartNeeded, s.Backend, err)
			}
		}
		sameRoutes(t)
		if m := l.PingMatrix(ctx); !m.OK() {
			t.Errorf("pings after the backend change:\n%s", m)
		}
		if err := l.WriteConfig(valid); err != nil {
			t.Fatal(err)
		}
		for _, h := range l.Hosts {
			waitReadyz(t, h, http.StatusOK)
			waitMetric(t, h, "weft_restart_needed", 0)
		}
	})
}
