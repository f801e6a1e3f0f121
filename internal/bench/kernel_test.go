package bench

import (
	"os"
	"strings"
	"testing"

	"github.com/weftnet/weft/subnet"
)

func TestKernelFloor(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/15","SubnetLen":29}`))
	if err != nil {
		t.Fatal(err)
	}
	before := namespaces(t)
	add, del, err := KernelFloor("wbt", SynthLeases(cfg, 0, 200, cfg.NthSubnet(0)))
	if err != nil {
		t.Fatal(err)
	}
	if add <= 0 || del <= 0 {
		t.Errorf("add %v, del %v", add, del)
	}
	for n := range namespaces(t) {
		if strings.HasPrefix(n, "wbt") && !before[n] {
			t.Errorf("namespace %s left behind", n)
		}
	}
}

func namespaces(t *testing.T) map[string]bool {
	t.Helper()
	es, err := os.ReadDir("/var/run/netns")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range es {
		out[e.Name()] = true
	}
	return out
}
