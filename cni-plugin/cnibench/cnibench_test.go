package cnibench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/weftnet/weft/cni-plugin/cnitest"
	"github.com/weftnet/weft/subnet"
)

func TestSummarize(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	s := Summarize(ds)
	if s.N != 100 || s.P50 != 50*time.Millisecond || s.P99 != 99*time.Millisecond || s.Max != 100*time.Millisecond {
		t.Fatalf("got %+v", s)
	}
	if Summarize(nil) != (Stats{}) {
		t.Fatal("empty input")
	}
}

// setup builds the plugins and makes a host namespace and a subnet file,
// with an IPv6 lease too when dual is set.
func setup(t testing.TB, ipMasq, dual bool) Config {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	dir := t.TempDir()
	if err := cnitest.BuildPlugins(dir); err != nil {
		t.Fatal(err)
	}
	host := cnitest.RandName("wcn-bh", 8)
	hostNS, err := cnitest.NewNS(host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cnitest.DeleteNS(host) })
	env := subnet.Env{
		Network: netip.MustParsePrefix("198.18.0.0/16"),
		Subnet:  netip.MustParsePrefix("198.18.5.1/24"),
		MTU:     1450,
		IPMasq:  !ipMasq, // the plugin's ipMasq defaults to the opposite
	}
	if dual {
		env.IPv6Network = netip.MustParsePrefix("2001:db8:100::/48")
		env.IPv6Subnet = netip.MustParsePrefix("2001:db8:100:59::1/64")
	}
	sf := filepath.Join(dir, "subnet.env")
	if err := subnet.WriteEnvFile(sf, env); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","plugins":[{"type":"weft","subnetFile":%q,"dataDir":%q,"logFile":%q}]}`,
		sf, filepath.Join(dir, "data"), os.Getenv("WCN_BENCH_LOG"))
	return Config{HostNS: hostNS, PluginDir: dir, ConfList: []byte(conf)}
}

// TestLatency prints ADD/DEL latency: go test -v -run TestLatency ./cni-plugin/cnibench
// It runs only with -v, so that plain test runs do not spend a minute of CPU
// on it. WCN_BENCH_LOG=<file> makes the plugin log its step timings there.
func TestLatency(t *testing.T) {
	if testing.Short() || !testing.Verbose() {
		t.Skip("benchmark: run with go test -v -run TestLatency")
	}
	for _, c := range []struct{ masq, dual bool }{{true, false}, {false, false}, {true, true}} {
		cfg := setup(t, c.masq, c.dual)
		for _, par := range []int{1, 20} {
			cfg.Pods, cfg.Parallel = 100, par
			res, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Add) != cfg.Pods || len(res.Del) != cfg.Pods {
				t.Fatalf("got %d/%d samples", len(res.Add), len(res.Del))
			}
			t.Logf("ipMasq=%v dualStack=%v parallel=%d pods=%d: %v", c.masq, c.dual, par, cfg.Pods, res)
		}
	}
}

// BenchmarkAddDel reports the p50 of ADD and DEL over b.N pods.
func BenchmarkAddDel(b *testing.B) {
	cfg := setup(b, true, false)
	cfg.Pods = max(b.N, 1)
	b.ResetTimer()
	res, err := Run(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(Summarize(res.Add).P50.Microseconds())/1000, "add-p50-ms")
	b.ReportMetric(float64(Summarize(res.Del).P50.Microseconds())/1000, "del-p50-ms")
}
