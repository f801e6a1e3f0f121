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

// MeasurePath measures throughput (1 and 4 streams, secs seconds each),
// median RTT over pings and, when pids is not empty, the CPU those
// processes used during the transfers.
func MeasurePath(ctx context.Context, src, dst Endpoint, secs int, pings int, pids []int) (Path, error) {
	var p Path
	srv, err := startInNS(dst.NS, "iperf3", "-s", "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return p, err
	}
	defer srv.kill()

	// Warm up: resolve neighbours and make sure the path works at all.
	if _, err := PingRTTs(ctx, src.NS, dst.IP, 3, 20*time.Millisecond); err != nil {
		return p, err
	}
	cpu0, err := cpuTicks(pids)
	if err != nil {
		return p, err
	}
	t0 := time.Now()
	if p.TCP1, err = runIperf(ctx, src.NS, dst.IP, secs, 1, srv); err != nil {
		return p, err
	}
	if p.TCP4, err = runIperf(ctx, src.NS, dst.IP, secs, 4, srv); err != nil {
		return p, err
	}
	wall := time.Since(t0)
	p.WeftdCPU = -1
	if len(pids) > 0 {
		cpu1, err := cpuTicks(pids)
		if err != nil {
			return p, err
		}
		p.WeftdCPU = 100 * float64(cpu1-cpu0) / clockTicks / wall.Seconds()
	}
	rtts, err := PingRTTs(ctx, src.NS, dst.IP, pings, 50*time.Millisecond)
	if err != nil {
		return p, err
	}
	p.RTT, p.Pings = Median(rtts), len(rtts)
	return p, nil
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
func runIperf(ctx context.Context, ns string, dst netip.Addr, secs, streams int, srv *bgProc) (Iperf, error) {
	argv := []string{"iperf3", "-c", dst.String(), "-p", strconv.Itoa(iperfPort),
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
