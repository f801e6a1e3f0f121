package dist

import (
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// TestMetricsDocumented holds the metrics section of running.md to what
// weftd's /metrics serves: the weft_* metrics named in cmd/weftd/metrics.go,
// and the go_* and process_* metrics of the Prometheus client's Go and
// process collectors, which weftd registers with their default options.
// Every metric is documented, and every documented metric exists.
func TestMetricsDocumented(t *testing.T) {
	src, err := os.ReadFile("../cmd/weftd/metrics.go")
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]bool{}
	for _, m := range regexp.MustCompile(`"(weft_[a-z_]+)"`).FindAllStringSubmatch(string(src), -1) {
		served[m[1]] = true
	}
	if len(served) < 10 {
		t.Fatalf("found only %d weft_ metrics in cmd/weftd/metrics.go", len(served))
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		served[f.GetName()] = true
	}

	doc, err := os.ReadFile("../Documentation/running.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n### Metrics\n")
	if !ok {
		t.Fatal("running.md has no ### Metrics section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("`((?:weft|go|process)_[a-z_]+)(?:\\{[^}`]*\\})?`").FindAllStringSubmatch(section, -1) {
		documented[m[1]] = true
	}
	var missing, stale []string
	for name := range served {
		if !documented[name] {
			missing = append(missing, name)
		}
	}
	for name := range documented {
		if !served[name] {
			stale = append(stale, name)
		}
	}
	sort.Strings(missing)
	sort.Strings(stale)
	if len(missing) > 0 {
		t.Errorf("served by weftd but not documented in running.md's Metrics section: %s", strings.Join(missing, ", "))
	}
	if len(stale) > 0 {
		t.Errorf("documented in running.md's Metrics section but not served: %s", strings.Join(stale, ", "))
	}
}
