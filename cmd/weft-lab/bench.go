package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/e2e/lab"
)

// benchConfig is what `weft-lab bench` was asked for.
type benchConfig struct {
	backends []string
	seconds  int
	pods     int
	binDir   string
	out      string
}

func parseBench(args []string, stderr io.Writer) (benchConfig, error) {
	var c benchConfig
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	backends := fs.String("backends", "vxlan,host-gw,udp", "comma-separated backends to measure")
	fs.IntVar(&c.seconds, "seconds", 5, "duration of each iperf3 run")
	fs.IntVar(&c.pods, "pods", 10, "pods to attach and detach for the CNI figures")
	fs.StringVar(&c.binDir, "bin-dir", "", "directory holding weftd, weft and weft-lab (default: this executable's directory)")
	fs.StringVar(&c.out, "out", "", "also write the Markdown report to this file")
	if err := fs.Parse(args); err != nil {
		return c, fmt.Errorf("%w: %v", errUsage, err)
	}
	for _, b := range strings.Split(*backends, ",") {
		switch b = strings.TrimSpace(b); b {
		case "vxlan", "host-gw", "udp":
			c.backends = append(c.backends, b)
		case "":
		default:
			return c, fmt.Errorf("%w: unknown backend %q", errUsage, b)
		}
	}
	if c.seconds < 1 || c.seconds > 60 {
		return c, fmt.Errorf("%w: --seconds must be 1..60", errUsage)
	}
	if c.pods < 1 || c.pods > 50 {
		return c, fmt.Errorf("%w: --pods must be 1..50", errUsage)
	}
	if c.binDir == "" {
		exe, err := os.Executable()
		if err != nil {
			return c, err
		}
		c.binDir = filepath.Dir(exe)
	}
	return c, nil
}

// dataPathResult is one row of the data path table.
type dataPathResult struct {
	name       string
	mtu        int
	gbps       float64
	retrans    int
	rttAvg     time.Duration
	rttMdev    time.Duration
	pingLoss   int
	pingSent   int
	measureErr error
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseBench(args, stderr)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("bench needs root: it creates network namespaces")
	}
	if err := lab.CheckTools("ip", "iptables", "ping", "iperf3", "sysctl"); err != nil {
		return err
	}
	if err := checkBins(c.binDir, "weftd", "weft", "weft-lab"); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	progress := func(format string, a ...any) { fmt.Fprintf(stderr, "bench: "+format+"\n", a...) }

	var report strings.Builder
	fmt.Fprintf(&report, "## Lab benchmarks (`weft-lab bench`)\n\n")
	fmt.Fprintf(&report, "Measured %s on %d CPUs, kernel %s. Hosts are network namespaces joined by veth pairs on one bridge (underlay MTU %d), so figures compare data paths with each other, not with real NICs.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.NumCPU(), kernel(), lab.UnderlayMTU)

	// Data path.
	var rows []dataPathResult
	for _, b := range c.backends {
		progress("data path: %s", b)
		base, r, err := benchDataPath(ctx, c, b, logger, len(rows) == 0)
		if err != nil {
			return fmt.Errorf("bench %s: %w", b, err)
		}
		if base != nil {
			rows = append(rows, *base)
		}
		rows = append(rows, r)
	}
	fmt.Fprintf(&report, "### Data path: pod on host 1 → pod on host 2\n\n")
	fmt.Fprintf(&report, "TCP throughput: `iperf3 -t %d`, one stream. Latency: 200 pings 5 ms apart.\n\n", c.seconds)
	fmt.Fprintf(&report, "| path | MTU | throughput | TCP retransmits | RTT avg | RTT mdev | ping loss |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		if r.measureErr != nil {
			fmt.Fprintf(&report, "| %s | %d | error: %v | | | | |\n", r.name, r.mtu, r.measureErr)
			continue
		}
		fmt.Fprintf(&report, "| %s | %d | %.2f Gbit/s | %d | %s | %s | %d/%d |\n",
			r.name, r.mtu, r.gbps, r.retrans, ms(r.rttAvg), ms(r.rttMdev), r.pingLoss, r.pingSent)
	}

	// Control plane and CNI, on vxlan (or the first backend asked for).
	cb := c.backends[0]
	if slices.Contains(c.backends, "vxlan") {
		cb = "vxlan"
	}
	progress("control plane and CNI: %s", cb)
	if err := benchControlPlane(ctx, c, cb, logger, &report); err != nil {
		return fmt.Errorf("bench control plane: %w", err)
	}

	fmt.Fprint(stdout, report.String())
	if c.out != "" {
		if err := os.WriteFile(c.out, []byte(report.String()), 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d.Microseconds())/1000) }

// benchDataPath measures pod-to-pod throughput and latency on one backend;
// with baseline it also measures host-to-host over the bare underlay.
func benchDataPath(ctx context.Context, c benchConfig, backend string, logger *slog.Logger, baseline bool) (*dataPathResult, dataPathResult, error) {
	r := dataPathResult{name: backend}
	l, err := lab.New(ctx, lab.Options{Hosts: 2, Backend: backend, BinDir: c.binDir, Name: "wb", Logger: logger})
	if err != nil {
		return nil, r, err
	}
	defer l.Close()
	var base *dataPathResult
	if baseline {
		b := dataPathResult{name: "underlay (host eth0 → host eth0, no overlay)", mtu: lab.UnderlayMTU}
		b.gbps, b.retrans, b.measureErr = iperf(ctx, l.Host(1).Name, l.Host(2).Name, l.Host(2).IP, c.seconds)
		base = &b
	}
	for _, h := range l.Hosts {
		if err := h.StartWeftd(); err != nil {
			return nil, r, err
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var pods []*lab.Pod
	for _, h := range l.Hosts {
		if err := h.WaitReady(rctx); err != nil {
			return nil, r, err
		}
		p, err := h.AddPod(rctx, "")
		if err != nil {
			return nil, r, err
		}
		pods = append(pods, p)
	}
	env, err := l.Host(1).SubnetEnv()
	if err != nil {
		return nil, r, err
	}
	r.mtu = env.MTU
	if _, err := l.WaitConnectivity(rctx, 20*time.Second); err != nil {
		return nil, r, err
	}
	pr, err := pods[0].Ping(ctx, pods[1].IP, 200, 5*time.Millisecond)
	if err != nil {
		return nil, r, err
	}
	r.rttAvg, r.rttMdev, r.pingLoss, r.pingSent = pr.RTTs.Avg, pr.RTTs.Mdev, pr.Lost(), pr.Sent
	if base != nil {
		bp, err := pingNS(ctx, l.Host(1).Name, l.Host(2).IP)
		if err == nil {
			base.rttAvg, base.rttMdev, base.pingLoss, base.pingSent = bp.RTTs.Avg, bp.RTTs.Mdev, bp.Lost(), bp.Sent
		}
	}
	r.gbps, r.retrans, r.measureErr = iperf(ctx, pods[0].NSName, pods[1].NSName, pods[1].IP, c.seconds)
	return base, r, nil
}

func pingNS(ctx context.Context, ns string, dst netip.Addr) (lab.PingResult, error) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", "200", "-i", "0.005", dst.String()).CombinedOutput()
	r, perr := lab.ParsePing(out)
	if perr != nil {
		return r, fmt.Errorf("ping: %v: %w", err, perr)
	}
	return r, nil
}

// iperf runs an iperf3 server in serverNS and a client in clientNS.
func iperf(ctx context.Context, clientNS, serverNS string, dst netip.Addr, seconds int) (gbps float64, retrans int, err error) {
	srv := exec.Command("ip", "netns", "exec", serverNS, "iperf3", "-s", "-1", "-B", dst.String())
	srv.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := srv.Start(); err != nil {
		return 0, 0, fmt.Errorf("iperf3 server: %w", err)
	}
	defer func() {
		_ = srv.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { srv.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			_ = srv.Process.Kill()
			<-done
		}
	}()
	var out []byte
	for attempt := 0; attempt < 50; attempt++ {
		out, err = exec.CommandContext(ctx, "ip", "netns", "exec", clientNS,
			"iperf3", "-c", dst.String(), "-t", fmt.Sprint(seconds), "-J").Output()
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // server not listening yet
	}
	var res struct {
		End struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		return 0, 0, fmt.Errorf("iperf3 client: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if res.Error != "" {
		return 0, 0, fmt.Errorf("iperf3: %s", res.Error)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, res.End.SumSent.Retransmits, nil
}

// benchControlPlane measures how fast a joining host becomes reachable,
// how fast a removed lease disappears, how long a weftd restart takes, and
// CNI ADD/DEL latency through libcni.
func benchControlPlane(ctx context.Context, c benchConfig, backend string, logger *slog.Logger, report *strings.Builder) error {
	l, err := lab.New(ctx, lab.Options{Hosts: 3, Backend: backend, BinDir: c.binDir, Name: "wb", Logger: logger})
	if err != nil {
		return err
	}
	defer l.Close()
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()

	coldStart := time.Now()
	for _, h := range []*lab.Host{h1, h2} {
		if err := h.StartWeftd(); err != nil {
			return err
		}
	}
	for _, h := range []*lab.Host{h1, h2} {
		if err := h.WaitReady(rctx); err != nil {
			return err
		}
	}
	cold := time.Since(coldStart)

	// Join: start weftd on h3, wait until h1 and h2 route its subnet.
	joinStart := time.Now()
	if err := h3.StartWeftd(); err != nil {
		return err
	}
	var sn netip.Prefix
	if err := poll(rctx, func() bool {
		env, err := h3.SubnetEnv()
		sn = env.LeaseSubnet()
		return err == nil
	}); err != nil {
		return fmt.Errorf("h3 subnet file: %w", err)
	}
	leased := time.Since(joinStart)
	if err := poll(rctx, func() bool { return routed(rctx, h1, sn) && routed(rctx, h2, sn) }); err != nil {
		return fmt.Errorf("peers route %s: %w", sn, err)
	}
	joined := time.Since(joinStart)
	if err := h3.WaitReady(rctx); err != nil {
		return err
	}
	ready3 := time.Since(joinStart)

	// Restart: SIGTERM then start, until ready.
	restartStart := time.Now()
	if err := h3.StopWeftd(syscall.SIGTERM); err != nil {
		return err
	}
	if err := h3.StartWeftd(); err != nil {
		return err
	}
	if err := h3.WaitReady(rctx); err != nil {
		return err
	}
	restart := time.Since(restartStart)

	// Removal: stop h3, delete its lease, wait until the routes are gone.
	if err := h3.StopWeftd(syscall.SIGTERM); err != nil {
		return err
	}
	cli, err := l.Etcd(rctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	removeStart := time.Now()
	if _, err := cli.Delete(rctx, "/coreos.com/network/subnets/"+sn.Addr().String()+"-"+fmt.Sprint(sn.Bits())); err != nil {
		return err
	}
	if err := poll(rctx, func() bool { return !routed(rctx, h1, sn) && !routed(rctx, h2, sn) }); err != nil {
		return fmt.Errorf("routes to %s removed: %w", sn, err)
	}
	removed := time.Since(removeStart)

	fmt.Fprintf(report, "\n### Control plane (%s, 3 hosts, etcd in the lab)\n\n", backend)
	fmt.Fprintf(report, "| event | time |\n|---|---|\n")
	fmt.Fprintf(report, "| cold start: weftd on 2 hosts until both /readyz answer 200 | %s |\n", cold.Round(time.Millisecond))
	fmt.Fprintf(report, "| join: weftd start on host 3 until it has written subnet.env | %s |\n", leased.Round(time.Millisecond))
	fmt.Fprintf(report, "| join: weftd start on host 3 until hosts 1 and 2 route its subnet | %s |\n", joined.Round(time.Millisecond))
	fmt.Fprintf(report, "| join: weftd start on host 3 until its /readyz answers 200 | %s |\n", ready3.Round(time.Millisecond))
	fmt.Fprintf(report, "| restart: SIGTERM, start, until /readyz answers 200 | %s |\n", restart.Round(time.Millisecond))
	fmt.Fprintf(report, "| removal: lease deleted in etcd until hosts 1 and 2 drop the route | %s |\n", removed.Round(time.Millisecond))

	// CNI: ADD and DEL through libcni, the lab's wrapper and ip netns exec.
	var adds, dels []time.Duration
	var pods []*lab.Pod
	for i := 0; i < c.pods; i++ {
		t0 := time.Now()
		p, err := h1.AddPod(rctx, "")
		if err != nil {
			return err
		}
		adds = append(adds, time.Since(t0))
		pods = append(pods, p)
	}
	for _, p := range pods {
		t0 := time.Now()
		if err := h1.DelPod(rctx, p); err != nil {
			return err
		}
		dels = append(dels, time.Since(t0))
	}
	fmt.Fprintf(report, "\n### CNI (%d pods on one host, through libcni; includes `ip netns exec` and namespace creation/deletion)\n\n", c.pods)
	fmt.Fprintf(report, "| command | median | p90 | max |\n|---|---|---|---|\n")
	for _, row := range []struct {
		name string
		ds   []time.Duration
	}{{"ADD (pod namespace + plugin)", adds}, {"DEL (plugin + namespace removal)", dels}} {
		slices.Sort(row.ds)
		q := func(p float64) time.Duration { return row.ds[min(len(row.ds)-1, int(p*float64(len(row.ds))))] }
		fmt.Fprintf(report, "| %s | %s | %s | %s |\n", row.name, ms(q(0.5)), ms(q(0.9)), ms(row.ds[len(row.ds)-1]))
	}
	return nil
}

func routed(ctx context.Context, h *lab.Host, sn netip.Prefix) bool {
	out, err := h.Exec(ctx, "ip", "-4", "route", "show", "exact", sn.String())
	return err == nil && strings.TrimSpace(string(out)) != ""
}

// poll checks cond every 10 ms until it holds or ctx ends.
func poll(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

func kernel() string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return "unknown"
	}
	var b strings.Builder
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	return b.String()
}
