package bench

import (
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestLatencyRows(t *testing.T) {
	us := func(x int) time.Duration { return time.Duration(x) * time.Microsecond }
	lat := func(idle, load int) *Latency {
		return &Latency{
			Idle:    RTTs{Median: us(idle), P99: us(2 * idle), Replies: 200, Sent: 200},
			Load:    RTTs{Median: us(load), P99: us(3 * load), Replies: 200, Sent: 200},
			LoadTCP: Iperf{BitsPerSecond: 4e9},
		}
	}
	for _, tc := range []struct {
		name    string
		udp     int // idle median, µs
		verdict string
		missed  bool
	}{
		{"met", 300, "+150 µs; target ≤ vxlan + 150 µs: met", false},
		{"missed", 301, "+151 µs; target ≤ vxlan + 150 µs: MISSED", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := sampleResults()
			bs := r.Dataplane.Backends
			bs[0].Latency = lat(150, 60)                    // vxlan
			bs[1].LatencyErr = errors.New("ping: no reply") // host-gw
			bs[2].Latency = lat(tc.udp, 2500)               // udp
			bs[2].Latency.IdleWeftd = &WeftdCost{Switches: 3.14, CPU: us(212)}
			r.Dataplane.Wakeup = &WakeupCost{OtherCPU: us(65), SameCPU: us(12), Rounds: 200, Gap: 10 * time.Millisecond}
			rows := map[string]Row{}
			for _, row := range r.Table().Rows {
				rows[row.Case+" / "+row.Metric] = row
			}
			get := func(k string) Row {
				t.Helper()
				row, ok := rows[k]
				if !ok {
					t.Fatalf("no row %q", k)
				}
				return row
			}
			if row := get("vxlan pod→pod / ping RTT idle, median (200 × 10 ms)"); row.Result != "150 µs (p99 300 µs)" || row.Verdict != "" {
				t.Errorf("vxlan idle: %+v", row)
			}
			if row := get("udp pod→pod / ping RTT idle, median (200 × 10 ms)"); row.Verdict != tc.verdict ||
				row.Baseline != "vxlan 150 µs (p99 300 µs), same run" {
				t.Errorf("udp idle: %+v", row)
			}
			if row := get("udp pod→pod / ping RTT under 1-stream TCP, median"); row.Result != "2.50 ms (p99 7.50 ms) at 4.00 Gbit/s" ||
				row.Baseline != "vxlan 60 µs (p99 180 µs) at 4.00 Gbit/s, same run" || row.Verdict != "+2440 µs" {
				t.Errorf("udp under load: %+v", row)
			}
			if row := get("this machine / thread wake-up, median (pipe ping-pong, 200 × 10 ms)"); row.Result != "65 µs onto another, idle CPU; 12 µs on the writer's CPU" {
				t.Errorf("wake-up row: %+v", row)
			}
			if row := get("udp pod→pod / weftd per idle ping, both hosts"); row.Result != "3.1 switches onto a CPU, 212 µs on CPU" || row.Baseline != "" {
				t.Errorf("udp weftd cost: %+v", row)
			}
			if _, ok := rows["vxlan pod→pod / weftd per idle ping, both hosts"]; ok {
				t.Error("vxlan weftd cost row without a measurement")
			}
			bs[0].Latency.IdleWeftd = &WeftdCost{Switches: 0.04, CPU: us(3)}
			for _, row := range r.Table().Rows {
				rows[row.Case+" / "+row.Metric] = row
			}
			if row := get("this machine / thread wake-up, median (pipe ping-pong, 200 × 10 ms)"); row.Result != "65 µs onto another, idle CPU; 12 µs on the writer's CPU" {
				t.Errorf("wake-up row: %+v", row)
			}
			if row := get("udp pod→pod / weftd per idle ping, both hosts"); row.Baseline != "vxlan 0.0 switches onto a CPU, 3 µs on CPU, same run (weftd not on its path)" {
				t.Errorf("udp weftd cost against vxlan's: %+v", row)
			}
			if row := get("vxlan pod→pod / weftd per idle ping, both hosts"); row.Result != "0.0 switches onto a CPU, 3 µs on CPU" || row.Baseline != "" {
				t.Errorf("vxlan weftd cost: %+v", row)
			}
			if row := get("host-gw pod→pod / ping RTT"); row.Result != "error: ping: no reply" {
				t.Errorf("host-gw: %+v", row)
			}
			missed := strings.Join(r.Missed(), "\n")
			if got := strings.Contains(missed, "udp idle ping RTT"); got != tc.missed {
				t.Errorf("Missed = %q", missed)
			}
			if f := strings.Join(r.Failed(), "\n"); !strings.Contains(f, "data path host-gw latency: ping: no reply") {
				t.Errorf("Failed = %q", f)
			}
			if n := strings.Join(Notes(r), "\n"); !strings.Contains(n, "Latency: after the transfers, 200 pings 10 ms apart") {
				t.Errorf("notes: %s", n)
			}
		})
	}
	// Not measured: no rows, no target.
	r := sampleResults()
	for _, row := range r.Table().Rows {
		if strings.HasPrefix(row.Metric, "ping RTT idle") || strings.HasPrefix(row.Metric, "ping RTT under") {
			t.Errorf("row without a measurement: %+v", row)
		}
	}
}

func TestMeasureWakeup(t *testing.T) {
	w, err := MeasureWakeup(20, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if w.SameCPU <= 0 || w.SameCPU > time.Second {
		t.Errorf("same-CPU wake-up %v", w.SameCPU)
	}
	if runtime.NumCPU() > 1 && (w.OtherCPU <= 0 || w.OtherCPU > time.Second) {
		t.Errorf("cross-CPU wake-up %v", w.OtherCPU)
	}
	t.Logf("wake-up: %s", w)
}
