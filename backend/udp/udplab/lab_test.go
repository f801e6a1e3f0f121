package udplab

import (
	"log/slog"
	"os"
	"testing"
	"time"
)

// BenchmarkThroughput reports single-stream TCP Gbit/s over the raw
// underlay, kernel vxlan and the udp backend (two alternating 5 s rounds
// each), and their ratio:
//
//	go test -run '^$' -bench Throughput -benchtime 1x ./backend/udp/udplab/
func BenchmarkThroughput(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: builds network namespaces")
	}
	for b.Loop() {
		r, err := BenchThroughput(5, 2, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
		if err != nil {
			b.Fatal(err)
		}
		b.Log(r)
		b.ReportMetric(r.RawGbps, "raw-Gbit/s")
		b.ReportMetric(r.VXLANGbps, "vxlan-Gbit/s")
		b.ReportMetric(r.UDPGbps, "udp-Gbit/s")
		b.ReportMetric(100*r.Ratio(), "udp/vxlan-%")
		b.ReportMetric(r.PlainGbps, "udp-no-offload-Gbit/s")
	}
}

// BenchmarkLatency reports pod-to-pod ping RTT (median and p99) over
// kernel vxlan and the udp backend side by side, idle and during a
// single-stream TCP transfer (200 pings 10 ms apart each, two
// alternating rounds):
//
//	go test -run '^$' -bench Latency -benchtime 1x ./backend/udp/udplab/
func BenchmarkLatency(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: builds network namespaces")
	}
	for b.Loop() {
		l, err := BenchLatency(200, 10*time.Millisecond, 2, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
		if err != nil {
			b.Fatal(err)
		}
		b.Log(l)
		us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
		b.ReportMetric(us(l.VXLANIdle.Median), "vxlan-idle-µs")
		b.ReportMetric(us(l.UDPIdle.Median), "udp-idle-µs")
		b.ReportMetric(us(l.UDPIdle.P99), "udp-idle-p99-µs")
		b.ReportMetric(us(l.VXLANLoad.Median), "vxlan-load-µs")
		b.ReportMetric(us(l.UDPLoad.Median), "udp-load-µs")
		b.ReportMetric(l.UDPGbps, "udp-load-Gbit/s")
	}
}
