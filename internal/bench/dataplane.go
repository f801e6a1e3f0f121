package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat;
// it is 100 on every Linux architecture Go supports.
const clockTicks = 100

// bgProc is a background process inside a namespace. ip netns exec execs
// the target, so the pid is the target's own.
type bgProc struct {
	cmd    *exec.Cmd
	out    bytes.Buffer
	done   chan struct{}
	waited error
}

func startInNS(ns string, argv ...string) (*bgProc, error) {
	p := &bgProc{done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.out
	// Own process group: a ^C on the terminal reaches only weft-lab, which
	// then stops its children itself.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", argv[0], ns, err)
	}
	go func() { p.waited = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

// interrupt sends SIGINT and waits up to 5 s, then kills.
func (p *bgProc) interrupt() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.kill()
	}
}

// kill kills the process and waits for it.
func (p *bgProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// nsOutput runs argv inside namespace ns and returns stdout.
func nsOutput(ctx context.Context, ns string, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s in %s: %w: %s", strings.Join(argv, " "), ns, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Endpoint is one end of a measured path: the namespace to run tools in and
// the address it is reached at.
type Endpoint struct {
	NS string
	IP netip.Addr
}

// iperfPort is the port the iperf3 server listens on.
const iperfPort = 5201

// Route is a path to measure: traffic from Src to Dst, and the weftd
// processes whose CPU time counts against it (none for the underlay).
type Route struct {
	Src, Dst Endpoint
	PIDs     []int
}

// MeasurePaths measures several paths under the same conditions: it runs
// reps rounds, and in each round a 1-stream and then a 4-stream transfer
// of secs seconds on every path in turn, so that load from elsewhere on
// the machine hits all paths alike; each throughput is the median over
// the rounds. It then takes the median RTT of pings 50 ms apart per path.
// weftd CPU is the PIDs' utime+stime during that path's transfers.
func MeasurePaths(ctx context.Context, routes []Route, secs, reps, pings int) ([]Path, error) {
	out := make([]Path, len(routes))
	srvs := make([]*bgProc, len(routes))
	for i, r := range routes {
		// One port per route: two routes may end in one namespace (a
		// dual-stack lab measures IPv4 and IPv6 to the same pod).
		srv, err := startInNS(r.Dst.NS, "iperf3", "-s", "-p", strconv.Itoa(iperfPort+i))
		if err != nil {
			return nil, err
		}
		defer srv.kill()
		// Warm up: resolve neighbours and make sure the path works at all.
		if _, err := PingRTTs(ctx, r.Src.NS, r.Dst.IP, 3, 20*time.Millisecond); err != nil {
			return nil, err
		}
		srvs[i] = srv
	}
	tcp1 := make([][]float64, len(routes))
	tcp4 := make([][]float64, len(routes))
	retr1 := make([][]float64, len(routes))
	retr4 := make([][]float64, len(routes))
	ticks := make([]int64, len(routes))
	wall := make([]time.Duration, len(routes))
	for range reps {
		for _, streams := range []int{1, 4} {
			for i, r := range routes {
				c0, err := cpuTicks(r.PIDs)
				if err != nil {
					return nil, err
				}
				t0 := time.Now()
				res, err := runIperf(ctx, r.Src.NS, r.Dst.IP, iperfPort+i, secs, streams, srvs[i])
				if err != nil {
					return nil, err
				}
				wall[i] += time.Since(t0)
				c1, err := cpuTicks(r.PIDs)
				if err != nil {
					return nil, err
				}
				ticks[i] += c1 - c0
				if streams == 1 {
					tcp1[i] = append(tcp1[i], res.BitsPerSecond)
					retr1[i] = append(retr1[i], float64(res.Retransmits))
				} else {
					tcp4[i] = append(tcp4[i], res.BitsPerSecond)
					retr4[i] = append(retr4[i], float64(res.Retransmits))
				}
			}
		}
	}
	for i, r := range routes {
		p := &out[i]
		p.TCP1 = Iperf{BitsPerSecond: MedianFloat(tcp1[i]), Retransmits: int(MedianFloat(retr1[i])), Seconds: float64(secs)}
		p.TCP4 = Iperf{BitsPerSecond: MedianFloat(tcp4[i]), Retransmits: int(MedianFloat(retr4[i])), Seconds: float64(secs)}
		p.WeftdCPU = -1
		if len(r.PIDs) > 0 {
			p.WeftdCPU = 100 * float64(ticks[i]) / clockTicks / wall[i].Seconds()
		}
		rtts, err := PingRTTs(ctx, r.Src.NS, r.Dst.IP, pings, 50*time.Millisecond)
		if err != nil {
			return nil, err
		}
		p.RTT, p.Pings = Median(rtts), len(rtts)
	}
	return out, nil
}

func cpuTicks(pids []int) (int64, error) {
	var sum int64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, fmt.Errorf("weftd cpu time: %w", err)
		}
		t, err := ProcCPU(data)
		if err != nil {
			return 0, fmt.Errorf("weftd cpu time of %d: %w", pid, err)
		}
		sum += t
	}
	return sum, nil
}

// runIperf runs one iperf3 client, retrying while the server is not yet
// listening.
func runIperf(ctx context.Context, ns string, dst netip.Addr, port, secs, streams int, srv *bgProc) (Iperf, error) {
	argv := []string{"iperf3", "-c", dst.String(), "-p", strconv.Itoa(port),
		"-t", strconv.Itoa(secs), "-P", strconv.Itoa(streams), "-J"}
	var last error
	for attempt := 0; attempt < 30; attempt++ {
		select {
		case <-srv.done:
			return Iperf{}, fmt.Errorf("iperf3 server exited: %v: %s", srv.waited, strings.TrimSpace(srv.out.String()))
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, time.Duration(secs+20)*time.Second)
		out, err := exec.CommandContext(cctx, "ip", append([]string{"netns", "exec", ns}, argv...)...).Output()
		cancel()
		res, perr := ParseIperf3(out)
		if perr == nil {
			return res, nil
		}
		if ctx.Err() != nil {
			return Iperf{}, ctx.Err()
		}
		last = errors.Join(perr, err)
		if !strings.Contains(perr.Error(), "refused") {
			return Iperf{}, fmt.Errorf("iperf3 %d stream(s) to %s: %w", streams, dst, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return Iperf{}, fmt.Errorf("iperf3 %d stream(s) to %s: %w", streams, dst, last)
}

// PingRTTs sends count pings from namespace ns and returns the RTT of
// every reply; it fails when none came back.
func PingRTTs(ctx context.Context, ns string, dst netip.Addr, count int, interval time.Duration) ([]time.Duration, error) {
	out, _ := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "ping", "-n",
		"-c", strconv.Itoa(count), "-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64),
		"-W", "1", dst.String()).CombinedOutput()
	rtts := ParsePingRTTs(out)
	if len(rtts) == 0 {
		return nil, fmt.Errorf("ping %s from %s: no replies: %s", dst, ns, strings.TrimSpace(string(out)))
	}
	return rtts, nil
}
