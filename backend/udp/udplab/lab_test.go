package udplab

import (
	"log/slog"
	"os"
	"testing"
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
