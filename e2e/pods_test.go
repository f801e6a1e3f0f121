package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/subnet"
)

// TestLabPods checks pod attachment through libcni and the weft plugin
// without weftd: the test writes each host's subnet.env and host-gw style
// routes by hand, then expects a full ping matrix, and DelPod to remove
// the pod namespace.
func TestLabPods(t *testing.T) {
	needBins(t, "weft-lab", "weft")
	l := newLab(t, lab.Options{Hosts: 2, Logger: testLogger(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	network := netip.MustParsePrefix("198.18.0.0/16")
	for _, h := range l.Hosts {
		sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(h.Index), 0}), 24)
		env := subnet.Env{Network: network, Subnet: subnet.GatewayPrefix(sn), MTU: 1500}
		if err := subnet.WriteEnvFile(h.SubnetFile(), env); err != nil {
			t.Fatal(err)
		}
		for _, o := range l.Hosts {
			if o == h {
				continue
			}
			dst := fmt.Sprintf("198.18.%d.0/24", o.Index)
			if out, err := h.Exec(ctx, "ip", "route", "add", dst, "via", o.IP.String()); err != nil {
				t.Fatalf("%s: %v %s", h.Name, err, out)
			}
		}
	}
	var pods []*lab.Pod
	for _, h := range l.Hosts {
		for k := 0; k < 2; k++ {
			p, err := h.AddPod(ctx, "")
			if err != nil {
				t.Fatalf("AddPod on %s: %v", h.Name, err)
			}
			env, _ := h.SubnetEnv()
			if !env.LeaseSubnet().Contains(p.IP) {
				t.Errorf("pod %s got %s outside its host's subnet %s", p.Name, p.IP, env.LeaseSubnet())
			}
			pods = append(pods, p)
		}
	}
	m, err := l.WaitConnectivity(ctx, 20*time.Second)
	t.Logf("ping matrix:\n%s", m)
	if err != nil {
		t.Fatal(err)
	}
	m = l.PingMatrix(ctx)
	if !m.OK() {
		t.Fatalf("ping matrix not full:\n%s", m)
	}
	for _, row := range m.Results {
		for _, r := range row {
			if r.Sent > 0 && r.RTTs.Avg <= 0 {
				t.Errorf("ping result without RTT: %+v", r)
			}
		}
	}

	gone := pods[0]
	if err := gone.Host.DelPod(ctx, gone); err != nil {
		t.Fatalf("DelPod: %v", err)
	}
	if _, err := os.Stat(gone.NS); err == nil {
		t.Errorf("pod namespace %s still exists after DelPod", gone.NS)
	}
	if n := len(l.Pods()); n != len(pods)-1 {
		t.Errorf("lab has %d pods after DelPod, want %d", n, len(pods)-1)
	}
	res, err := pods[1].Ping(ctx, gone.IP, 2, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if res.Received != 0 {
		t.Errorf("deleted pod %s still answers: %+v", gone.IP, res)
	}
}
