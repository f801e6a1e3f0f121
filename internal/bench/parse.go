package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Iperf is the summary of one iperf3 client run.
type Iperf struct {
	// BitsPerSecond is what the receiver got, summed over all streams.
	BitsPerSecond float64
	// Retransmits is the sender's TCP retransmission count.
	Retransmits int
	Seconds     float64
}

// Gbps returns the throughput in Gbit/s.
func (r Iperf) Gbps() float64 { return r.BitsPerSecond / 1e9 }

// ParseIperf3 parses the output of `iperf3 -c ... -J`. An "error" field
// (connection refused, server busy, ...) becomes an error.
func ParseIperf3(data []byte) (Iperf, error) {
	var doc struct {
		End struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Seconds       float64 `json:"seconds"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return Iperf{}, fmt.Errorf("parse iperf3 json: %w", err)
	}
	if doc.Error != "" {
		return Iperf{}, fmt.Errorf("iperf3: %s", doc.Error)
	}
	r := doc.End.SumReceived
	if r.Seconds <= 0 || r.BitsPerSecond <= 0 {
		return Iperf{}, errors.New("iperf3 json has no receiver summary")
	}
	return Iperf{BitsPerSecond: r.BitsPerSecond, Retransmits: doc.End.SumSent.Retransmits, Seconds: r.Seconds}, nil
}

var pingTimeRE = regexp.MustCompile(`time[=<]([\d.]+) ms`)

// ParsePingRTTs returns the round-trip time of every reply line
// ("... time=0.123 ms") in iputils ping output, in order.
func ParsePingRTTs(out []byte) []time.Duration {
	var rtts []time.Duration
	for _, m := range pingTimeRE.FindAllSubmatch(out, -1) {
		f, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			continue
		}
		rtts = append(rtts, time.Duration(f*float64(time.Millisecond)))
	}
	return rtts
}

// Percentile returns the p-th percentile (0 < p ≤ 1) of ds by the
// nearest-rank method; 0 for an empty slice. ds is not modified.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(rank, len(s)-1))]
}

// Median is the 50th percentile (nearest rank, the lower middle for an
// even count).
func Median(ds []time.Duration) time.Duration { return Percentile(ds, 0.5) }

// MedianFloat returns the median of xs (mean of the two middle values for
// an even count); 0 for none.
func MedianFloat(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// ProcSchedstat parses /proc/<pid>/task/<tid>/schedstat ("run_ns
// wait_ns timeslices") and returns the thread's time on a CPU and how
// many times it was switched in.
func ProcSchedstat(data []byte) (run time.Duration, switches int64, err error) {
	f := strings.Fields(string(data))
	if len(f) != 3 {
		return 0, 0, fmt.Errorf("schedstat: %d fields, want 3", len(f))
	}
	ns, err1 := strconv.ParseInt(f[0], 10, 64)
	n, err2 := strconv.ParseInt(f[2], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("schedstat: %w", err)
	}
	return time.Duration(ns), n, nil
}

// ProcCPU parses /proc/<pid>/stat and returns utime+stime in clock ticks.
// The command name may contain spaces and parentheses, so fields are
// counted from the last ')'.
func ProcCPU(stat []byte) (int64, error) {
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("proc stat: no command name")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("proc stat: %d fields after the command name", len(f))
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("proc stat: %w", err)
	}
	return u + st, nil
}

// ProcRSS parses /proc/<pid>/status and returns VmRSS in bytes.
func ProcRSS(status []byte) (int64, error) { return procStatusKB(status, "VmRSS") }

// ProcRSSAnon parses /proc/<pid>/status and returns RssAnon (heap, stacks
// and other anonymous memory) and RssFile (mapped files, mostly the
// binary's own pages) in bytes.
func ProcRSSAnon(status []byte) (anon, file int64, err error) {
	anon, err1 := procStatusKB(status, "RssAnon")
	file, err2 := procStatusKB(status, "RssFile")
	return anon, file, errors.Join(err1, err2)
}

func procStatusKB(status []byte, field string) (int64, error) {
	for line := range strings.SplitSeq(string(status), "\n") {
		rest, ok := strings.CutPrefix(line, field+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("proc status: odd %s line %q", field, line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("proc status: %w", err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("proc status: no %s line", field)
}

// GCTrace is one line of GODEBUG=gctrace=1 output.
type GCTrace struct {
	// HeapStart, HeapEnd and HeapLive are the heap size at GC start, at GC
	// end and the live heap marked, in MB; Goal is the next GC's target.
	HeapStart, HeapEnd, HeapLive, Goal int
}

var gcTraceRE = regexp.MustCompile(`(?m)^gc \d+ @.*?(\d+)->(\d+)->(\d+) MB, (\d+) MB goal`)

// LastGCTrace returns the last gctrace line in log.
func LastGCTrace(log []byte) (GCTrace, bool) {
	ms := gcTraceRE.FindAllSubmatch(log, -1)
	if len(ms) == 0 {
		return GCTrace{}, false
	}
	m := ms[len(ms)-1]
	n := func(b []byte) int { v, _ := strconv.Atoi(string(b)); return v }
	return GCTrace{HeapStart: n(m[1]), HeapEnd: n(m[2]), HeapLive: n(m[3]), Goal: n(m[4])}, true
}
