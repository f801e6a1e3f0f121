package e2e_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/weftnet/weft/internal/doctor"
	"github.com/weftnet/weft/internal/lab"
)

// TestObservability is issue #6 on a live cluster: /readyz flips from 503
// to 200 once the config exists and every peer is programmed, /metrics
// parses as Prometheus text and moves when leases change, and weftctl
// doctor is clean on a healthy host and reports exactly a route deleted by
// hand while weftd is paused.
func TestObservability(t *testing.T) {
	l := faultLab(t, lab.Options{Hosts: 3, Backend: "vxlan", NoConfig: true})
	ctx := testCtx(t, 3*time.Minute)
	h1 := l.Host(1)
	for _, h := range l.Hosts {
		if err := h.StartWeftd(); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("readyz 503 then 200", func(t *testing.T) {
		_, err := waitFor(ctx, 10*time.Second, 100*time.Millisecond, func() (bool, string) {
			code, body, err := readyz(ctx, h1)
			return err == nil && code == http.StatusServiceUnavailable && strings.Contains(body, "network config"), body
		})
		if err != nil {
			t.Fatalf("/readyz before any config: %v", err)
		}
		if err := l.WriteConfig(`{"Network":"198.18.0.0/16","SubnetMax":"198.18.199.0","Backend":{"Type":"vxlan"}}`); err != nil {
			t.Fatal(err)
		}
		waitAllReady(t, ctx, l.Hosts, 20*time.Second)
		// The hosts start together: one may be ready before the last
		// lease appears, then briefly program it. Each must settle on
		// ready with both peers programmed.
		for _, h := range l.Hosts {
			if _, err := waitFor(ctx, 10*time.Second, 50*time.Millisecond, func() (bool, string) {
				st, err := status(ctx, h)
				return err == nil && st.Ready && st.PeersKnown == 2 && st.PeersProgrammed == 2,
					fmt.Sprintf("%s: %d of %d peers programmed, ready=%v (%s) %v", h.Name, st.PeersProgrammed, st.PeersKnown, st.Ready, st.NotReadyReason, err)
			}); err != nil {
				t.Error(err)
			}
		}
	})

	parse := func() map[string]*dto.MetricFamily {
		t.Helper()
		code, body, err := httpGet(ctx, h1, "/metrics")
		if err != nil || code != 200 {
			t.Fatalf("/metrics: %d %v", code, err)
		}
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(strings.NewReader(body))
		if err != nil {
			t.Fatalf("/metrics does not parse as Prometheus text: %v", err)
		}
		for name := range fams {
			if !strings.HasPrefix(name, "weft_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
				t.Errorf("metric %s is not named weft_...", name)
			}
		}
		return fams
	}
	value := func(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
		t.Helper()
		f, ok := fams[name]
		if !ok {
			t.Fatalf("metric %s missing", name)
		}
		for _, m := range f.Metric {
			match := true
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.Label {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				match = match && found
			}
			if !match {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
		t.Fatalf("metric %s%v has no matching series", name, labels)
		return 0
	}

	t.Run("metrics parse and move", func(t *testing.T) {
		before := parse()
		for _, name := range []string{"weft_peers_programmed", "weft_reconcile_duration_seconds", "weft_etcd_errors_total",
			"weft_lease_expiry_seconds", "weft_config_invalid", "weft_leases_invalid"} {
			value(before, name)
		}
		if got := value(before, "weft_leases_known"); got != 3 {
			t.Errorf("weft_leases_known = %v, want 3", got)
		}
		if got := value(before, "weft_peers_programmed"); got != 2 {
			t.Errorf("weft_peers_programmed = %v, want 2", got)
		}
		if exp := value(before, "weft_lease_expiry_seconds"); exp < 23*3600 || exp > 24*3600 {
			t.Errorf("weft_lease_expiry_seconds = %v, want about 24 h", exp)
		}
		skipped := value(before, "weft_leases_skipped_total", "reason", "unparsable")
		if err := l.Put(leasePrefix+"198.18.200.0-24", vxlanLease("192.0.2.200", "aa:bb:cc:dd:ee:01")); err != nil {
			t.Fatal(err)
		}
		if err := l.Put(leasePrefix+"198.18.201.0-24", "this is not json"); err != nil {
			t.Fatal(err)
		}
		_, err := waitFor(ctx, 5*time.Second, 100*time.Millisecond, func() (bool, string) {
			return value(parse(), "weft_peers_programmed") == 3, "peers programmed did not reach 3"
		})
		if err != nil {
			t.Fatal(err)
		}
		after := parse()
		if got := value(after, "weft_leases_known"); got != 5 {
			t.Errorf("weft_leases_known = %v after adding two leases, want 5", got)
		}
		if got := value(after, "weft_leases_skipped_total", "reason", "unparsable"); got != skipped+1 {
			t.Errorf("weft_leases_skipped_total{reason=unparsable} = %v, want %v", got, skipped+1)
		}
		if value(after, "weft_reconcile_duration_seconds") <= value(before, "weft_reconcile_duration_seconds") {
			t.Error("weft_reconcile_duration_seconds did not count the reconcile for the new peer")
		}
		cli := etcdClient(t, ctx, l)
		for _, k := range []string{"198.18.200.0-24", "198.18.201.0-24"} {
			if _, err := cli.Delete(ctx, leasePrefix+k); err != nil {
				t.Fatal(err)
			}
		}
		_, err = waitFor(ctx, 5*time.Second, 100*time.Millisecond, func() (bool, string) {
			return value(parse(), "weft_peers_programmed") == 2, "peers programmed did not return to 2"
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	runDoctor := func(h *lab.Host) (doctor.Report, string, error) {
		out, err := h.Exec(ctx, filepath.Join(binDir, "weftctl"), "--etcd-endpoints="+lab.EtcdEndpoint, "doctor",
			"--subnet-file="+h.SubnetFile(), "-o", "json")
		var rep doctor.Report
		if jerr := json.Unmarshal(out, &rep); jerr != nil {
			t.Fatalf("%s: doctor output is not JSON (%v): %s", h.Name, jerr, out)
		}
		return rep, string(out), err
	}

	t.Run("doctor", func(t *testing.T) {
		for _, h := range l.Hosts {
			rep, out, err := runDoctor(h)
			if err != nil || !rep.OK() || rep.Peers != 2 {
				t.Errorf("%s: doctor on a healthy host: %v\n%s", h.Name, err, out)
			}
		}
		// Pause weftd so it cannot repair, delete one route, ask the doctor.
		victim := ownSubnet(t, ctx, l.Host(2))
		if err := syscall.Kill(h1.WeftdPID(), syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		resumed := false
		resume := func() {
			if !resumed {
				syscall.Kill(h1.WeftdPID(), syscall.SIGCONT)
				resumed = true
			}
		}
		defer resume()
		if out, err := h1.Exec(ctx, "ip", "route", "del", victim.String()); err != nil {
			t.Fatalf("ip route del: %v %s", err, out)
		}
		rep, out, err := runDoctor(h1)
		if err == nil {
			t.Errorf("doctor exited 0 with a route missing:\n%s", out)
		}
		if len(rep.Problems) != 1 || rep.Problems[0].Area != "route" || !strings.Contains(rep.Problems[0].What, victim.String()) {
			t.Fatalf("doctor should report exactly the route to %s:\n%s", victim, out)
		}
		if !strings.Contains(rep.Problems[0].Fix, "ip route replace "+victim.String()) {
			t.Errorf("fix does not say how to restore the route: %q", rep.Problems[0].Fix)
		}
		resume()
		_, err = waitFor(ctx, 5*time.Second, 100*time.Millisecond, func() (bool, string) {
			rep, out, _ := runDoctor(h1)
			return rep.OK(), out
		})
		if err != nil {
			t.Fatalf("weftd did not repair the route after resuming: %v", err)
		}
	})
}
