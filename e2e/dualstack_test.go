package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/doctor"
	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/subnet"
)

// TestDualStack runs three dual-stack hosts (IPv6 underlay 2001:db8::/64,
// pods in 198.18.0.0/16 and 2001:db8:100::/48) on each backend that carries
// IPv6: pods reach each other over both families, a TCP transfer runs over
// IPv6, a restart keeps both subnets, and deleting a host's lease withdraws
// both families' routes from the others.
func TestDualStack(t *testing.T) {
	needBins(t, "weft-lab", "weftd", "weft")
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			l := newLab(t, lab.Options{Hosts: 3, Backend: backend, IPv6: true, Logger: testLogger(t)})
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			startAll(ctx, t, l)
			seen := map[netip.Prefix]bool{}
			for _, h := range l.Hosts {
				env := mustEnv(t, h)
				sn6 := env.LeaseSubnet6()
				if env.IPv6Network.String() != "2001:db8:100::/48" || !sn6.IsValid() || seen[sn6] {
					t.Fatalf("%s: subnet.env IPv6 network %s subnet %s (seen before: %v)", h.Name, env.IPv6Network, env.IPv6Subnet, seen[sn6])
				}
				seen[sn6] = true
				if env.IPv6Subnet.Addr() != sn6.Addr().Next() {
					t.Errorf("%s: FLANNEL_IPV6_SUBNET=%s is not the subnet's first address", h.Name, env.IPv6Subnet)
				}
				if _, err := h.AddPod(ctx, ""); err != nil {
					t.Fatal(err)
				}
			}
			m, err := l.WaitConnectivity(ctx, 30*time.Second)
			t.Logf("IPv4 ping matrix:\n%s", m)
			if err != nil {
				t.Fatal(err)
			}
			m6, err := l.WaitConnectivity6(ctx, 30*time.Second)
			t.Logf("IPv6 ping matrix:\n%s", m6)
			if err != nil {
				t.Fatal(err)
			}
			pods := l.Pods()

			t.Run("tcp over IPv6", func(t *testing.T) {
				n := tcpTransfer(ctx, t, pods[0], pods[1].NSName, pods[1].IP6, 20<<20)
				t.Logf("%s → %s: %d bytes over TCP/IPv6", pods[0].IP6, pods[1].IP6, n)
			})

			t.Run("doctor checks both families", func(t *testing.T) {
				h1 := l.Host(1)
				runDoctor := func() (doctor.Report, string, error) {
					out, err := h1.Exec(ctx, filepath.Join(l.BinDir, "weftctl"), "--etcd-endpoints="+lab.EtcdEndpoint, "doctor",
						"--subnet-file="+h1.SubnetFile(), "-o", "json")
					var rep doctor.Report
					if jerr := json.Unmarshal(out, &rep); jerr != nil {
						t.Fatalf("doctor output is not JSON (%v): %s", jerr, out)
					}
					return rep, string(out), err
				}
				if rep, out, err := runDoctor(); err != nil || !rep.OK() {
					t.Fatalf("doctor on a healthy dual-stack host: %v\n%s", err, out)
				}
				victim := mustEnv(t, l.Host(2)).LeaseSubnet6()
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
				if out, err := h1.Exec(ctx, "ip", "-6", "route", "del", victim.String()); err != nil {
					t.Fatalf("ip route del: %v %s", err, out)
				}
				rep, out, err := runDoctor()
				if err == nil || len(rep.Problems) != 1 || rep.Problems[0].Area != "route" || !strings.Contains(rep.Problems[0].What, victim.String()) {
					t.Fatalf("doctor should report exactly the IPv6 route to %s: %v\n%s", victim, err, out)
				}
				resume()
				if _, err := eventually(ctx, 10*time.Second, func() error {
					if rep, out, _ := runDoctor(); !rep.OK() {
						return fmt.Errorf("doctor: %s", out)
					}
					return nil
				}); err != nil {
					t.Fatalf("weftd did not repair the IPv6 route: %v", err)
				}
			})

			t.Run("restart keeps both subnets", func(t *testing.T) {
				h := l.Host(1)
				before := mustEnv(t, h)
				if err := h.StopWeftd(syscall.SIGTERM); err != nil {
					t.Errorf("stop weftd: %v", err)
				}
				if err := h.StartWeftd(); err != nil {
					t.Fatal(err)
				}
				rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
				defer rcancel()
				if err := h.WaitReady(rctx); err != nil {
					t.Fatal(err)
				}
				after := mustEnv(t, h)
				if after.Subnet != before.Subnet || after.IPv6Subnet != before.IPv6Subnet {
					t.Fatalf("subnets changed across restart: %s %s → %s %s", before.Subnet, before.IPv6Subnet, after.Subnet, after.IPv6Subnet)
				}
				if m6, err := l.WaitConnectivity6(ctx, 20*time.Second); err != nil {
					t.Fatalf("%v\n%s", err, m6)
				}
			})

			t.Run("deleted lease withdraws both families", func(t *testing.T) {
				gone := l.Host(3)
				env := mustEnv(t, gone)
				sn, sn6 := env.LeaseSubnet(), env.LeaseSubnet6()
				for _, h := range l.Hosts[:2] {
					if !hasRoute(ctx, t, h, sn) || !hasRoute(ctx, t, h, sn6) {
						t.Fatalf("%s lacks a route to %s or %s to begin with", h.Name, sn, sn6)
					}
				}
				if err := gone.StopWeftd(syscall.SIGTERM); err != nil {
					t.Errorf("stop weftd: %v", err)
				}
				cli, err := l.Etcd(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer cli.Close()
				key := "/coreos.com/network/subnets/" + subnet.Lease{Subnet: sn, IPv6Subnet: sn6}.Key()
				dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
				resp, err := cli.Delete(dctx, key)
				dcancel()
				if err != nil || resp.Deleted != 1 {
					t.Fatalf("delete %s: %v (deleted %v)", key, err, resp)
				}
				took, err := eventually(ctx, 15*time.Second, func() error {
					for _, h := range l.Hosts[:2] {
						for _, p := range []netip.Prefix{sn, sn6} {
							if hasRoute(ctx, t, h, p) {
								return fmt.Errorf("%s still routes %s", h.Name, p)
							}
						}
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("routes to %s and %s withdrawn after %v", sn, sn6, took.Round(time.Millisecond))
				r, err := pods[0].Ping(ctx, pods[1].IP6, 3, 50*time.Millisecond)
				if err != nil || !r.OK() {
					t.Errorf("h1 → h2 over IPv6 after removing h3: %+v %v", r, err)
				}
			})
		})
	}
}

// TestDualStackMixed upgrades a running IPv4-only cluster to dual stack one
// host at a time, as a rolling restart does: the upgraded host's key
// becomes dual-stack for the same IPv4 subnet, IPv4 keeps working between
// all hosts throughout, IPv6 is routed only between hosts that both have
// it, and once every host is restarted IPv6 works everywhere.
func TestDualStackMixed(t *testing.T) {
	needBins(t, "weft-lab", "weftd", "weft")
	l := newLab(t, lab.Options{Hosts: 2, IPv6: true, NoConfig: true, Logger: testLogger(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := l.WriteConfig(`{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan"}}`); err != nil {
		t.Fatal(err)
	}
	startAll(ctx, t, l)
	h1, h2 := l.Host(1), l.Host(2)
	v4Before := mustEnv(t, h1).Subnet

	// The config turns dual-stack; only h1 restarts.
	if err := l.WriteConfig(l.NetworkConfig()); err != nil {
		t.Fatal(err)
	}
	if err := h1.StopWeftd(syscall.SIGTERM); err != nil {
		t.Errorf("stop weftd: %v", err)
	}
	if err := h1.StartWeftd(); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
	if err := h1.WaitReady(rctx); err != nil {
		rcancel()
		t.Fatal(err)
	}
	rcancel()
	env1 := mustEnv(t, h1)
	if env1.Subnet != v4Before || !env1.IPv6Subnet.IsValid() {
		t.Fatalf("h1 after the upgrade: %s %s, want %s and an IPv6 subnet", env1.Subnet, env1.IPv6Subnet, v4Before)
	}
	if env2 := mustEnv(t, h2); env2.IPv6Subnet.IsValid() {
		t.Fatalf("h2 has not restarted but has an IPv6 subnet %s", env2.IPv6Subnet)
	}
	p1, err := h1.AddPod(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	p2, err := h2.AddPod(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if !p1.IP6.IsValid() || p2.IP6.IsValid() {
		t.Fatalf("pod addresses: h1 %s %s, h2 %s %s", p1.IP, p1.IP6, p2.IP, p2.IP6)
	}
	if m, err := l.WaitConnectivity(ctx, 30*time.Second); err != nil {
		t.Fatalf("IPv4 between a dual-stack and an IPv4-only host: %v\n%s", err, m)
	}
	// h2 runs the IPv4-only config it started with: no IPv6 route to h1.
	if hasRoute(ctx, t, h2, env1.LeaseSubnet6()) {
		t.Errorf("IPv4-only h2 routes h1's IPv6 subnet %s", env1.LeaseSubnet6())
	}

	// h2 restarts too: both families everywhere, h2 keeps its subnet.
	v4h2 := mustEnv(t, h2).Subnet
	if err := h2.StopWeftd(syscall.SIGTERM); err != nil {
		t.Errorf("stop weftd: %v", err)
	}
	if err := h2.StartWeftd(); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel = context.WithTimeout(ctx, 30*time.Second)
	defer rcancel()
	if err := h2.WaitReady(rctx); err != nil {
		t.Fatal(err)
	}
	if env2 := mustEnv(t, h2); env2.Subnet != v4h2 || !env2.IPv6Subnet.IsValid() {
		t.Fatalf("h2 after the upgrade: %s %s, want %s and an IPv6 subnet", env2.Subnet, env2.IPv6Subnet, v4h2)
	}
	p2b, err := h2.AddPod(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	r, err := p1.Ping(ctx, p2b.IP6, 3, 50*time.Millisecond)
	for end := time.Now().Add(20 * time.Second); (err != nil || !r.OK()) && time.Now().Before(end); {
		time.Sleep(200 * time.Millisecond)
		r, err = p1.Ping(ctx, p2b.IP6, 1, 50*time.Millisecond)
	}
	if err != nil || !r.OK() {
		t.Fatalf("IPv6 h1 → h2 after both upgraded: %+v %v", r, err)
	}
	if m, err := l.WaitConnectivity(ctx, 20*time.Second); err != nil {
		t.Fatalf("IPv4 after both upgraded: %v\n%s", err, m)
	}
}

// tcpTransfer sends size bytes over TCP from pod src to dst (in namespace
// dstNS) with iperf3 and returns the bytes sent.
func tcpTransfer(ctx context.Context, t *testing.T, src *lab.Pod, dstNS string, dst netip.Addr, size int) int {
	t.Helper()
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatalf("iperf3 is needed (apt-get install iperf3): %v", err)
	}
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", dstNS, "iperf3", "-s", "-1", "-B", dst.String(), "-p", "5299")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	// The sender counts every byte TCP delivered (iperf3 -n ends when
	// all were sent and acknowledged); the receiver's summary may stop
	// short of the last segments, so it only has to have seen traffic. A
	// run that moved nothing (the server not listening yet) is retried.
	type summary struct {
		End struct {
			SumSent struct {
				Bytes int `json:"bytes"`
			} `json:"sum_sent"`
			SumReceived struct {
				Bytes int `json:"bytes"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	var res summary
	var out []byte
	var err error
	for end := time.Now().Add(10 * time.Second); ; {
		out, err = src.Exec(ctx, "iperf3", "-c", dst.String(), "-p", "5299", "-n", fmt.Sprint(size), "-J")
		res = summary{}
		jerr := json.Unmarshal(out, &res)
		if err == nil && jerr == nil && res.End.SumSent.Bytes > 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("iperf3 to %s: %v (%v)\n%s", dst, err, jerr, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if sent, got := res.End.SumSent.Bytes, res.End.SumReceived.Bytes; sent < size || got == 0 {
		t.Fatalf("iperf3 to %s: %d bytes sent of %d, %d received", dst, sent, size, got)
	}
	return res.End.SumSent.Bytes
}
