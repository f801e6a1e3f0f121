package e2e_test

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/subnet"
)

// TestFaultMassStart starts 20 weftd at the same moment against a network
// with exactly 20 free subnets: all 20 get distinct subnets. Then, with 19
// free subnets, 19 get one and the last reports "out of subnets" on /readyz
// and keeps retrying without crashing.
func TestFaultMassStart(t *testing.T) {
	t.Parallel()
	const hosts = 20
	l := faultLab(t, lab.Options{Hosts: hosts, SubnetLen: 24, ExtraConfig: map[string]any{
		"SubnetMin": "198.18.1.0", "SubnetMax": "198.18.20.0",
	}})
	ctx := testCtx(t, 4*time.Minute)
	cli := etcdClient(t, ctx, l)
	args := []string{"--reconcile-interval=2s"}

	startAll := func(t *testing.T) {
		t.Helper()
		var wg sync.WaitGroup
		gate := make(chan struct{})
		errs := make([]error, hosts)
		for i, h := range l.Hosts {
			wg.Go(func() {
				<-gate
				errs[i] = h.StartWeftd(args...)
			})
		}
		close(gate)
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	// leases reads every lease key: subnet -> PublicIP.
	leases := func(t *testing.T) map[netip.Prefix]netip.Addr {
		t.Helper()
		resp, err := cli.Get(ctx, leasePrefix, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		out := map[netip.Prefix]netip.Addr{}
		for _, kv := range resp.Kvs {
			sn, _, err := subnet.ParseSubnetKey(strings.TrimPrefix(string(kv.Key), leasePrefix))
			if err != nil {
				t.Fatalf("key %s: %v", kv.Key, err)
			}
			a, err := subnet.ParseLeaseAttrs(kv.Value)
			if err != nil {
				t.Fatalf("key %s: %v", kv.Key, err)
			}
			out[sn] = a.PublicIP
		}
		return out
	}
	// distinct checks that the ready hosts hold distinct subnets matching
	// the keys in etcd.
	distinct := func(t *testing.T, ready []*lab.Host) {
		t.Helper()
		keys := leases(t)
		holder := map[netip.Prefix]string{}
		for _, h := range ready {
			sn := ownSubnet(t, ctx, h)
			if other, dup := holder[sn]; dup {
				t.Errorf("%s and %s both hold %s", other, h.Name, sn)
			}
			holder[sn] = h.Name
			if keys[sn] != h.IP {
				t.Errorf("%s holds %s but etcd says %v", h.Name, sn, keys[sn])
			}
			if env, err := h.SubnetEnv(); err != nil || env.LeaseSubnet() != sn {
				t.Errorf("%s: subnet file %v %v, want %s", h.Name, env.LeaseSubnet(), err, sn)
			}
		}
		if len(keys) != len(ready) {
			t.Errorf("%d lease keys in etcd for %d ready hosts: %v", len(keys), len(ready), keys)
		}
	}

	t.Run("20 hosts, 20 subnets", func(t *testing.T) {
		start := time.Now()
		startAll(t)
		waitAllReady(t, ctx, l.Hosts, 90*time.Second)
		t.Logf("all %d ready %s after the simultaneous start", hosts, time.Since(start).Round(time.Millisecond))
		distinct(t, l.Hosts)
	})
	if t.Failed() {
		return
	}

	t.Run("20 hosts, 19 subnets", func(t *testing.T) {
		for _, h := range l.Hosts {
			if err := h.StopWeftd(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			os.Remove(h.SubnetFile())
		}
		if _, err := cli.Delete(ctx, leasePrefix, clientv3.WithPrefix()); err != nil {
			t.Fatal(err)
		}
		if err := l.WriteConfig(strings.Replace(l.NetworkConfig(), "198.18.20.0", "198.18.19.0", 1)); err != nil {
			t.Fatal(err)
		}
		startAll(t)
		var ready, starved []*lab.Host
		if _, err := waitFor(ctx, 60*time.Second, 200*time.Millisecond, func() (bool, string) {
			ready, starved = nil, nil
			var why []string
			for _, h := range l.Hosts {
				code, body, err := readyz(ctx, h)
				if err == nil && code == http.StatusOK {
					ready = append(ready, h)
					continue
				}
				starved = append(starved, h)
				why = append(why, fmt.Sprintf("%s: %d %q %v", h.Name, code, body, err))
			}
			return len(ready) == hosts-1, strings.Join(why, "; ")
		}); err != nil {
			t.Fatalf("want %d hosts ready: %v", hosts-1, err)
		}
		if len(starved) != 1 {
			t.Fatalf("%d hosts not ready, want 1", len(starved))
		}
		distinct(t, ready)
		h := starved[0]
		// It may still be retrying a claim it lost when the others are
		// ready ("acquiring a subnet lease"); once it has seen that no
		// subnet is free it must say so, and keep saying so.
		if _, err := waitFor(ctx, 15*time.Second, 100*time.Millisecond, func() (bool, string) {
			code, body, err := readyz(ctx, h)
			return err == nil && code == http.StatusServiceUnavailable && strings.Contains(strings.ToLower(body), "out of subnets"),
				fmt.Sprintf("%s /readyz: %d %q %v", h.Name, code, body, err)
		}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			if !weftdRunning(h) {
				t.Fatalf("%s: weftd exited without a subnet:\n%s", h.Name, strings.Join(logLines(h, ""), "\n"))
			}
			code, body, err := readyz(ctx, h)
			if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(strings.ToLower(body), "out of subnets") {
				t.Errorf("%s /readyz: %d %q %v; want 503 mentioning out of subnets", h.Name, code, body, err)
			}
			time.Sleep(2 * time.Second)
		}
		for _, o := range l.Hosts {
			if !weftdRunning(o) {
				t.Errorf("%s: weftd exited", o.Name)
			}
		}
		t.Logf("%s starved as expected: %s", h.Name, func() string { _, b, _ := readyz(ctx, h); return b }())
		// It keeps retrying: once a subnet frees up, it takes it.
		gone := ready[0]
		sn := ownSubnet(t, ctx, gone)
		if err := gone.StopWeftd(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Delete(ctx, leaseKey(sn)); err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := h.WaitReady(rctx); err != nil {
			t.Errorf("%s: did not take the freed subnet %s: %v", h.Name, sn, err)
		} else if got := ownSubnet(t, ctx, h); got != sn {
			t.Errorf("%s took %s, want the freed %s", h.Name, got, sn)
		}
	})
}
