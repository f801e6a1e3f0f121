package udplab

import (
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// RTT summarises the round-trip times of one run of pings.
type RTT struct {
	Median, P99 time.Duration
	Replies     int // replies the figures were taken over
	Sent        int
}

func (r RTT) String() string {
	return fmt.Sprintf("median %s, p99 %s (%d of %d)", us(r.Median), us(r.P99), r.Replies, r.Sent)
}

func us(d time.Duration) string { return fmt.Sprintf("%d µs", d.Microseconds()) }

// Summarise returns the median and 99th percentile (nearest rank) of rtts.
func Summarise(rtts []time.Duration, sent int) RTT {
	r := RTT{Replies: len(rtts), Sent: sent}
	if len(rtts) == 0 {
		return r
	}
	s := slices.Clone(rtts)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		return s[max(0, min(int(math.Ceil(p*float64(len(s))))-1, len(s)-1))]
	}
	r.Median, r.P99 = rank(0.5), rank(0.99)
	return r
}

// ParsePing returns the RTT of every reply line ("... time=0.123 ms") of
// iputils ping output, in order, and how many echo requests the summary
// says were sent (0 without a summary).
func ParsePing(out string) (rtts []time.Duration, sent int) {
	for _, line := range strings.Split(out, "\n") {
		if i := strings.Index(line, "time="); i >= 0 && strings.Contains(line, "icmp_seq=") {
			f := strings.Fields(line[i+len("time="):])
			if len(f) == 0 {
				continue
			}
			v, err := strconv.ParseFloat(f[0], 64)
			if err != nil || v < 0 || len(f) < 2 || f[1] != "ms" {
				continue
			}
			rtts = append(rtts, time.Duration(v*float64(time.Millisecond)))
			continue
		}
		if strings.Contains(line, "packets transmitted") {
			fmt.Sscanf(line, "%d packets transmitted", &sent)
		}
	}
	return rtts, sent
}

// PingTimes sends count pings interval apart from namespace ns to dst
// and returns the RTT of every reply and how many were sent. It fails
// when none came back.
func PingTimes(ns string, dst netip.Addr, count int, interval time.Duration) ([]time.Duration, int, error) {
	out, err := Exec(ns, "ping", "-n", "-c", strconv.Itoa(count), "-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64),
		"-W", "1", dst.String())
	rtts, sent := ParsePing(out)
	if len(rtts) == 0 {
		return nil, sent, fmt.Errorf("ping %s from %s: no replies: %v", dst, ns, err)
	}
	return rtts, sent, nil
}

// PingUnderLoad runs a single-stream iperf3 TCP transfer from pod 1 to
// pod 2 and, once it has ramped up (1 s), pings pod 2 from pod 1 count
// times interval apart while it runs. It returns the RTTs, how many
// pings were sent and the transfer's Gbit/s.
func (l *Lab) PingUnderLoad(count int, interval time.Duration) ([]time.Duration, int, float64, error) {
	from, to, dst := l.Pod[0], l.Pod[1], l.PodIP[1]
	secs := int(math.Ceil((time.Duration(count)*interval + 3*time.Second).Seconds()))
	srv := exec.Command("ip", "netns", "exec", to, "iperf3", "-s", "-1", "-B", dst.String())
	if err := srv.Start(); err != nil {
		return nil, 0, 0, err
	}
	l.mu.Lock()
	l.procs = append(l.procs, srv)
	l.mu.Unlock()
	defer func() {
		srv.Process.Kill()
		srv.Wait()
	}()
	type result struct {
		gbps float64
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var out string
		var err error
		for try := 0; try < 50; try++ {
			time.Sleep(100 * time.Millisecond)
			out, err = Exec(from, "iperf3", "-c", dst.String(), "-t", strconv.Itoa(secs), "-J")
			if err == nil || !strings.Contains(out+err.Error(), "connect") {
				break
			}
		}
		if err != nil {
			done <- result{err: err}
			return
		}
		g, err := parseIperf(out)
		done <- result{gbps: g, err: err}
	}()
	time.Sleep(1200 * time.Millisecond)
	rtts, sent, perr := PingTimes(from, dst, count, interval)
	res := <-done
	if perr != nil {
		return nil, 0, 0, perr
	}
	if res.err != nil {
		return nil, 0, 0, fmt.Errorf("iperf3 under ping: %w", res.err)
	}
	return rtts, sent, res.gbps, nil
}

// Latency compares the udp backend's RTT with kernel vxlan's, measured in
// the same run.
type Latency struct {
	VXLANIdle, UDPIdle RTT
	VXLANLoad, UDPLoad RTT     // pinged during a single-stream TCP transfer
	VXLANGbps, UDPGbps float64 // those transfers
}

// Target is the udp median RTT this run must stay under: vxlan's plus
// 150 µs (issue 17).
func (l Latency) Target() time.Duration { return l.VXLANIdle.Median + 150*time.Microsecond }

func (l Latency) String() string {
	return fmt.Sprintf("idle: vxlan %s, udp %s (target udp median ≤ %s: %v); under a 1-stream transfer: vxlan %s at %.2f Gbit/s, udp %s at %.2f Gbit/s",
		l.VXLANIdle, l.UDPIdle, us(l.Target()), l.UDPIdle.Median <= l.Target(), l.VXLANLoad, l.VXLANGbps, l.UDPLoad, l.UDPGbps)
}

// BenchLatency measures pod-to-pod ping RTT over kernel vxlan and the udp
// backend, side by side in one run: count pings interval apart on an idle
// path, then the same during a single-stream iperf3 transfer on that path.
// The vxlan and udp runs alternate for the given number of rounds, and
// each figure pools the pings of every round. Needs root, ping and iperf3.
func BenchLatency(count int, interval time.Duration, rounds int, logger *slog.Logger) (Latency, error) {
	var lat Latency
	vx, ul, _, closeAll, err := newPair(logger)
	if err != nil {
		return lat, err
	}
	defer closeAll()
	labs := []*Lab{vx, ul}
	for _, l := range labs { // neighbours resolved, both paths work
		if _, _, err := PingTimes(l.Pod[0], l.PodIP[1], 3, 20*time.Millisecond); err != nil {
			return lat, err
		}
	}
	var idle, load [2][]time.Duration
	var idleSent, loadSent [2]int
	var gbps [2]float64
	rounds = max(rounds, 1)
	for range rounds {
		for k, l := range labs {
			rtts, sent, err := PingTimes(l.Pod[0], l.PodIP[1], count, interval)
			if err != nil {
				return lat, err
			}
			idle[k], idleSent[k] = append(idle[k], rtts...), idleSent[k]+sent
		}
		for k, l := range labs {
			rtts, sent, g, err := l.PingUnderLoad(count, interval)
			if err != nil {
				return lat, err
			}
			load[k], loadSent[k] = append(load[k], rtts...), loadSent[k]+sent
			gbps[k] += g / float64(rounds)
		}
	}
	lat.VXLANIdle, lat.UDPIdle = Summarise(idle[0], idleSent[0]), Summarise(idle[1], idleSent[1])
	lat.VXLANLoad, lat.UDPLoad = Summarise(load[0], loadSent[0]), Summarise(load[1], loadSent[1])
	lat.VXLANGbps, lat.UDPGbps = gbps[0], gbps[1]
	return lat, nil
}
