package bench

import (
	"errors"
	"math"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/cni-plugin/cnibench"
	"github.com/weftnet/weft/subnet"
)

func TestParseIperf3(t *testing.T) {
	data, err := os.ReadFile("testdata/iperf3-2streams.json")
	if err != nil {
		t.Fatal(err)
	}
	r, err := ParseIperf3(data)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(r.BitsPerSecond-9199969649.63712) > 1 || r.Retransmits != 13 || math.Abs(r.Seconds-1.003217) > 1e-9 {
		t.Errorf("got %+v", r)
	}
	if g := r.Gbps(); math.Abs(g-9.19997) > 1e-4 {
		t.Errorf("Gbps = %v", g)
	}

	data, err = os.ReadFile("testdata/iperf3-refused.json")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseIperf3(data); err == nil || !strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("refused: err = %v", err)
	}
	for name, in := range map[string]string{
		"empty":      "",
		"not json":   "iperf3: error - unable to connect",
		"no summary": `{"start":{},"end":{}}`,
	} {
		if _, err := ParseIperf3([]byte(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestParsePingRTTs(t *testing.T) {
	out := `PING 198.18.3.2 (198.18.3.2) 56(84) bytes of data.
64 bytes from 198.18.3.2: icmp_seq=1 ttl=62 time=0.512 ms
64 bytes from 198.18.3.2: icmp_seq=2 ttl=62 time=0.101 ms
From 198.18.3.1 icmp_seq=3 Destination Host Unreachable
64 bytes from 198.18.3.2: icmp_seq=4 ttl=62 time=1.25 ms

--- 198.18.3.2 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 3ms
rtt min/avg/max/mdev = 0.101/0.621/1.250/0.470 ms
`
	got := ParsePingRTTs([]byte(out))
	want := []time.Duration{512 * time.Microsecond, 101 * time.Microsecond, 1250 * time.Microsecond}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("rtt %d = %v, want %v", i, got[i], want[i])
		}
	}
	if Median(got) != 512*time.Microsecond {
		t.Errorf("median = %v", Median(got))
	}
	if n := len(ParsePingRTTs([]byte("connect: Network is unreachable"))); n != 0 {
		t.Errorf("%d RTTs from an error", n)
	}
}

func TestPercentile(t *testing.T) {
	ms := func(xs ...int) []time.Duration {
		var out []time.Duration
		for _, x := range xs {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // reversed: the input order must not matter
	}
	tests := []struct {
		name string
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one", ms(7), 0.99, 7 * time.Millisecond},
		{"median odd", ms(3, 1, 2), 0.5, 2 * time.Millisecond},
		{"median even takes lower", ms(4, 1, 3, 2), 0.5, 2 * time.Millisecond},
		{"p99 of 100", ms(hundred...), 0.99, 99 * time.Millisecond},
		{"p50 of 100", ms(hundred...), 0.5, 50 * time.Millisecond},
		{"p100", ms(hundred...), 1, 100 * time.Millisecond},
		{"p99 of 10 is max", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.99, 10 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]time.Duration(nil), tt.in...)
			if got := Percentile(tt.in, tt.p); got != tt.want {
				t.Errorf("Percentile(%v) = %v, want %v", tt.p, got, tt.want)
			}
			for i := range in {
				if in[i] != tt.in[i] {
					t.Fatal("input was modified")
				}
			}
		})
	}
	if m := MedianFloat([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("MedianFloat = %v", m)
	}
}

func TestProcParsers(t *testing.T) {
	// Field 2 holds spaces and parentheses; utime=1234, stime=56.
	stat := "4242 (we ft) d) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1234 56 0 0 20 0 9 0 100 1000000 500 18446744073709551615\n"
	got, err := ProcCPU([]byte(stat))
	if err != nil || got != 1290 {
		t.Errorf("ProcCPU = %d, %v; want 1290", got, err)
	}
	if _, err := ProcCPU([]byte("4242 (weftd) S 1 2")); err == nil {
		t.Error("short stat: no error")
	}
	status := "Name:\tweftd\nVmPeak:\t  900000 kB\nVmRSS:\t   21504 kB\nThreads:\t9\n"
	rss, err := ProcRSS([]byte(status))
	if err != nil || rss != 21504*1024 {
		t.Errorf("ProcRSS = %d, %v", rss, err)
	}
	if _, err := ProcRSS([]byte("Name:\tweftd\n")); err == nil {
		t.Error("no VmRSS: no error")
	}
	anon, file, err := ProcRSSAnon([]byte(status + "RssAnon:\t   15360 kB\nRssFile:\t    6144 kB\n"))
	if err != nil || anon != 15<<20 || file != 6<<20 {
		t.Errorf("ProcRSSAnon = %d, %d, %v", anon, file, err)
	}
	if _, _, err := ProcRSSAnon([]byte(status)); err == nil {
		t.Error("no RssAnon: no error")
	}
	run, sw, err := ProcSchedstat([]byte("52375011 1930221 417\n"))
	if err != nil || run != 52375011*time.Nanosecond || sw != 417 {
		t.Errorf("ProcSchedstat = %v, %d, %v", run, sw, err)
	}
	for _, bad := range []string{"", "1 2", "1 2 x", "x 2 3"} {
		if _, _, err := ProcSchedstat([]byte(bad)); err == nil {
			t.Errorf("ProcSchedstat(%q): no error", bad)
		}
	}
}

func TestLastGCTrace(t *testing.T) {
	log := `time=2026-11-26T04:00:00Z level=INFO msg="lease acquired"
gc 1 @0.012s 1%: 0.010+0.35+0.002 ms clock, 0.021+0.10/0.20/0.30+0.005 ms cpu, 4->4->1 MB, 4 MB goal, 0 MB stacks, 0 MB globals, 2 P
time=2026-11-26T04:00:01Z level=INFO msg="peers" n=5000
gc 12 @3.201s 4%: 0.05+12+0.01 ms clock, 0.1+1.2/5.1/0+0.03 ms cpu, 45->47->21 MB, 46 MB goal, 0 MB stacks, 0 MB globals, 2 P
`
	g, ok := LastGCTrace([]byte(log))
	if !ok || g != (GCTrace{HeapStart: 45, HeapEnd: 47, HeapLive: 21, Goal: 46}) {
		t.Errorf("got %+v, %v", g, ok)
	}
	if _, ok := LastGCTrace([]byte("no gc here\n")); ok {
		t.Error("found a trace in a log without one")
	}
}

func TestParseCPUModel(t *testing.T) {
	in := "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n"
	if got := ParseCPUModel([]byte(in)); got != "AMD EPYC 7B13" {
		t.Errorf("got %q", got)
	}
	if got := ParseCPUModel([]byte("processor: 0\n")); got != "unknown" {
		t.Errorf("got %q", got)
	}
}

func TestSynthLeases(t *testing.T) {
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/15","SubnetLen":29,"Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.SubnetCount() < 10001 {
		t.Fatalf("only %d subnets: 2×5000 peers plus our own do not fit", cfg.SubnetCount())
	}
	skip := cfg.NthSubnet(5)
	ls := SynthLeases(cfg, 0, 5000, skip)
	if len(ls) != 5000 {
		t.Fatalf("%d leases", len(ls))
	}
	subnets, macs := map[netip.Prefix]bool{}, map[string]bool{}
	for _, l := range ls {
		if l.Subnet == skip {
			t.Fatalf("skipped subnet %s used", skip)
		}
		if subnets[l.Subnet] || macs[l.MAC.String()] {
			t.Fatalf("duplicate subnet or MAC in %+v", l)
		}
		subnets[l.Subnet], macs[l.MAC.String()] = true, true
		// Every lease must pass weft's own validation.
		if err := cfg.ValidatePeer(subnet.Lease{Subnet: l.Subnet, Attrs: l.Attrs}, netip.Prefix{}, netip.MustParseAddr("192.0.2.11")); err != nil {
			t.Fatalf("lease %s: %v", l.Subnet, err)
		}
		raw, err := l.Attrs.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		back, err := subnet.ParseLeaseAttrs(raw)
		if err != nil {
			t.Fatal(err)
		}
		d, mac, err := subnet.ParseVXLANData(back.BackendData)
		if err != nil || d.VNI != 1 || mac.String() != l.MAC.String() {
			t.Fatalf("lease %s: vxlan data %+v %v %v", l.Subnet, d, mac, err)
		}
		ip := l.Attrs.PublicIP
		if !netip.MustParsePrefix("203.0.113.0/24").Contains(ip) && !netip.MustParsePrefix("198.51.100.0/24").Contains(ip) {
			t.Fatalf("PublicIP %s outside the documentation ranges", ip)
		}
	}
	// A second batch continues where the first ended, without overlap.
	more := SynthLeases(cfg, 5001, 5000, netip.Prefix{})
	for _, l := range more {
		if subnets[l.Subnet] {
			t.Fatalf("second batch reuses %s", l.Subnet)
		}
	}
}

func sampleResults() Results {
	gb := func(x float64) Iperf { return Iperf{BitsPerSecond: x * 1e9, Seconds: 5} }
	ms := func(x float64) time.Duration { return time.Duration(x * float64(time.Millisecond)) }
	lat := func(xs ...float64) []time.Duration {
		var out []time.Duration
		for _, x := range xs {
			out = append(out, ms(x))
		}
		return out
	}
	return Results{
		Dataplane: &Dataplane{
			Backends: []BackendPath{
				{Backend: "vxlan", Limit: Path{TCP1: gb(20), TCP4: gb(30), RTT: ms(0.05), WeftdCPU: -1},
					Path: Path{TCP1: gb(10), TCP4: gb(15), RTT: ms(0.08), WeftdCPU: 0.2}},
				{Backend: "host-gw", Limit: Path{TCP1: gb(22), TCP4: gb(32), RTT: ms(0.05), WeftdCPU: -1},
					Path: Path{TCP1: gb(18), TCP4: gb(27), RTT: ms(0.06), WeftdCPU: 0}},
				{Backend: "udp", Limit: Path{TCP1: gb(20), TCP4: gb(30), RTT: ms(0.04), WeftdCPU: -1},
					Path: Path{TCP1: gb(5), TCP4: gb(6), RTT: ms(0.2), WeftdCPU: 95}},
			},
		},
		Control: []ControlRun{
			{N: 1000, Startup: ms(300), Ready: ms(250), Join: ms(200), Leave: ms(150), RSS: 20 << 20, FloorAdd: ms(40), FloorDel: ms(30)},
			{N: 5000, Startup: ms(1500), Ready: ms(400), Join: ms(900), Leave: ms(700), RSS: 25 << 20, RSSAtLeave: 27 << 20, RSSAnon: 20 << 20, RSSFile: 5 << 20,
				Heap: GCTrace{HeapLive: 9, Goal: 18}, HeapOK: true, FloorAdd: ms(200), FloorDel: ms(150)},
		},
		CNI: &CNI{
			Seq:      cnibench.Result{Add: lat(10, 20, 30), Del: lat(5, 6, 7)},
			Par:      cnibench.Result{Add: lat(40, 50), Del: lat(8, 9)},
			Parallel: 20,
			Floor:    ms(2),
		},
		Restart: []Restart{
			{Backend: "vxlan", Sent: 250, Received: 240, Window: 2500 * time.Millisecond, Downtime: ms(400), BaseSent: 300, BaseRecv: 300, BaseWindow: 3 * time.Second},
			{Backend: "udp", Err: errors.New("lab exploded")},
		},
	}
}

func TestTable(t *testing.T) {
	tab := sampleResults().Table()
	find := func(cs, metric string) Row {
		t.Helper()
		for _, r := range tab.Rows {
			if r.Case == cs && r.Metric == metric {
				return r
			}
		}
		t.Fatalf("no row %q / %q in\n%s", cs, metric, tab.Text())
		return Row{}
	}
	if r := find("vxlan pod→pod", "TCP, 1 stream"); r.Result != "10.00 Gbit/s" || r.Verdict != "50% of limit" || r.Baseline != "20.00 Gbit/s underlay, same lab" {
		t.Errorf("vxlan 1 stream: %+v", r)
	}
	if r := find("udp pod→pod", "TCP, 4 streams"); r.Verdict != "20% of limit, 40% of vxlan" {
		t.Errorf("udp 4 streams: %+v", r)
	}
	if r := find("host-gw pod→pod", "ping RTT, median"); r.Result != "60 µs" || r.Verdict != "+10 µs" {
		t.Errorf("host-gw rtt: %+v", r)
	}
	if r := find("host-gw pod→pod", "TCP, 1 stream"); r.Verdict != "82% of limit" {
		t.Errorf("host-gw is compared with its own lab's underlay: %+v", r)
	}
	if r := find("underlay host→host", "TCP, 1 stream"); r.Result != "20.00 Gbit/s (20.00 Gbit/s–22.00 Gbit/s over 3 labs)" {
		t.Errorf("underlay summary: %+v", r)
	}
	if r := find("vxlan, 5000 peers", "start-up: weftd start → all programmed"); r.Verdict != "target ≤ 1.00 s: MISSED" {
		t.Errorf("start-up 5000: %+v", r)
	}
	if r := find("vxlan, 5000 peers", "join: 5000 more leases → programmed"); r.Verdict != "target ≤ 1.00 s: met" {
		t.Errorf("join 5000: %+v", r)
	}
	if r := find("vxlan, 1000 peers", "start-up: weftd start → all programmed"); r.Verdict != "" {
		t.Errorf("targets apply only at 5000 peers: %+v", r)
	}
	if r := find("vxlan, 5000 peers", "weftd RSS afterwards"); r.Result != "25.0 MiB" || r.Verdict != "target ≤ 30.0 MiB: met" ||
		r.Baseline != "anon 20.0 MiB + file 5.0 MiB; Go heap 9 MB live, 18 MB GC goal; 27.0 MiB when the leave was programmed" {
		t.Errorf("rss: %+v", r)
	}
	if r := find("3 pods, sequential", "ADD latency"); r.Result != "p50 20 ms, p99 30 ms" || r.Baseline != "2.00 ms plugin exec (VERSION)" {
		t.Errorf("cni seq add: %+v", r)
	}
	if r := find("vxlan, weftd SIGTERM + start on receiver", "pings lost (ping -i 0.01: 100/s achieved)"); r.Result != "10 of 250 (restart→ready 400 ms)" || r.Verdict != "≈ 100 ms without replies" {
		t.Errorf("restart: %+v", r)
	}
	for _, tc := range []struct {
		rs   Restart
		want string
	}{
		{Restart{Sent: 100, Received: 100, BaseSent: 100, BaseRecv: 100, Window: time.Second}, "no loss beyond baseline"},
		{Restart{Sent: 100, Received: 98, BaseSent: 200, BaseRecv: 194, Window: time.Second}, "no loss beyond baseline"},
		{Restart{Sent: 100, Received: 80, BaseSent: 200, BaseRecv: 200, Window: 2 * time.Second}, "≈ 400 ms without replies"},
	} {
		if got := outage(tc.rs); got != tc.want {
			t.Errorf("outage(%+v) = %q, want %q", tc.rs, got, tc.want)
		}
	}
	if r := find("udp, weftd SIGTERM + start on receiver", "all"); r.Result != "error: lab exploded" {
		t.Errorf("restart error: %+v", r)
	}
	if f := sampleResults().Failed(); len(f) != 1 || f[0] != "restart udp: lab exploded" {
		t.Errorf("Failed = %q", f)
	}
	missed := sampleResults().Missed()
	if len(missed) != 2 || !strings.Contains(missed[0], "start-up with 5000 peers") ||
		missed[1] != "RSS growth from 1000 to 5000 peers: 1311 B per peer > 1024 B" {
		t.Errorf("Missed = %q", missed)
	}
}

func TestNotes(t *testing.T) {
	notes := strings.Join(Notes(sampleResults()), "\n")
	for _, want := range []string{
		"measured 20.00 Gbit/s to 22.00 Gbit/s in the 3 labs of this run, a spread of 10% of its median",
		"Target missed: start-up with 5000 peers",
		"Restart:",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
}

func TestRender(t *testing.T) {
	tab := Table{Rows: []Row{
		{"data path", "vxlan pod→pod", "TCP, 1 stream", "1.00 Gbit/s", "a|b", ""},
		{"CNI", "x", "y", "z", "", "met"},
	}}
	txt := tab.Text()
	lines := strings.Split(strings.TrimRight(txt, "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("text has %d lines:\n%s", len(lines), txt)
	}
	// Aligned: the Metric column starts at the same rune offset everywhere.
	col := func(line, s string) int { return len([]rune(line[:strings.Index(line, s)])) }
	if a, b := col(lines[0], "Metric"), col(lines[2], "TCP, 1 stream"); a != b {
		t.Errorf("columns not aligned (%d vs %d):\n%s", a, b, txt)
	}
	md := tab.Markdown()
	want := "| Area | Case | Metric | Result | Baseline (same run) | Comparison |\n" +
		"|---|---|---|---|---|---|\n" +
		"| data path | vxlan pod→pod | TCP, 1 stream | 1.00 Gbit/s | a\\|b |   |\n" +
		"| CNI | x | y | z |   | met |\n"
	if md != want {
		t.Errorf("markdown:\n%s\nwant:\n%s", md, want)
	}
	doc := Document{
		Env:     Env{Date: time.Date(2026, 11, 26, 4, 30, 0, 0, time.UTC), Kernel: "6.18.44", CPU: "AMD EPYC", Cores: 2, GoVersion: "go1.26.8"},
		Table:   tab,
		Command: "make bench",
		Elapsed: 500 * time.Second,
		Notes:   []string{"a note"},
	}
	out := doc.Markdown()
	for _, s := range []string{"2026-11-26 04:30 UTC", "Kernel: 6.18.44", "CPU: AMD EPYC, 2 cores", "Go: go1.26.8", "`make bench`", "8m20s", md, "- a note\n"} {
		if !strings.Contains(out, s) {
			t.Errorf("document lacks %q:\n%s", s, out)
		}
	}
}

func TestCheckSections(t *testing.T) {
	if err := CheckSections([]string{"dataplane", "cni"}); err != nil {
		t.Error(err)
	}
	if err := CheckSections([]string{"dataplane", "wire"}); err == nil {
		t.Error("unknown section accepted")
	}
}

func TestParsePerfReport(t *testing.T) {
	self := `# Total Lost Samples: 0
#
# Samples: 1K of event 'cpu-clock:ppp'
# Event count (approx.): 2004008000
#
# Overhead  Symbol                                   Shared Object  Source:Line
# ........  .......................................  .............
#
     6.24%  [.] runtime.tryDeferToSpanScan          -      -
     5.60%  [.] encoding/json.checkValid             -      -
     2.68%  [k] _raw_spin_unlock_irqrestore          -      -

`
	got := ParsePerfReport(self)
	want := [][2]string{{"6.24%", "runtime.tryDeferToSpanScan"}, {"5.60%", "encoding/json.checkValid"}, {"2.68%", "_raw_spin_unlock_irqrestore"}}
	if len(got) != len(want) {
		t.Fatalf("got %q", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d = %q, want %q", i, got[i], want[i])
		}
	}
	if s := perfSamples(self); s != "1K" {
		t.Errorf("samples = %q", s)
	}
	children := `# Children      Self  Symbol
    44.44%     0.10%  [.] github.com/weftnet/weft/backend/vxlan.(*Backend).apply  -  -
    30.00%    30.00%  [.] syscall.Syscall6  -  -
    20.36%     1.00%  [.] github.com/weftnet/weft/subnet/etcd.parseLeaseKV  -  -
`
	top := topN(children, 8, func(s string) bool { return strings.Contains(s, "weftnet/weft/") })
	if len(top) != 2 || top[0] != "44.44% github.com/weftnet/weft/backend/vxlan.(*Backend).apply" {
		t.Errorf("weft top = %q", top)
	}
}

func TestParseReconciles(t *testing.T) {
	log := `time=2026-11-26T04:00:00.100Z level=INFO msg="weftd starting"
time=2026-11-26T04:00:00.200Z level=DEBUG msg=reconciled backend=vxlan peers=5000 programmed=5000 took=300ms routes=100ms neigh=120ms fdb=80ms
time=2026-11-26T04:00:01.500Z level=DEBUG msg=reconciled backend=vxlan peers=6000 programmed=6000 took=150.5ms routes=50ms neigh=60ms fdb=40.5ms
time=2026-11-26T04:00:09.000Z level=DEBUG msg=reconciled backend=vxlan peers=10000 programmed=10000 took=1s routes=1s
`
	from := time.Date(2026, 11, 26, 4, 0, 0, 0, time.UTC)
	r := ParseReconciles([]byte(log), from, from.Add(2*time.Second))
	if r.Passes != 2 || r.Total != 450500*time.Microsecond {
		t.Errorf("passes %d total %v", r.Passes, r.Total)
	}
	if r.Steps["routes"] != 150*time.Millisecond || r.Steps["fdb"] != 120500*time.Microsecond {
		t.Errorf("steps %v", r.Steps)
	}
	if got := r.String(); got != "2 pass(es), 450 ms (routes 150 ms, neigh 180 ms, fdb 120 ms)" {
		t.Errorf("String = %q", got)
	}
	if got := ParseReconciles([]byte(log), from.Add(time.Hour), from.Add(2*time.Hour)); got.Passes != 0 || got.String() != "no reconcile passes logged" {
		t.Errorf("empty window: %+v", got)
	}
}

// TestWireGuardTargets: the wireguard row is compared with vxlan's in the
// same run, and a single stream under 30 % of vxlan's, or an idle RTT
// more than 150 µs above vxlan's, is a missed target.
func TestWireGuardTargets(t *testing.T) {
	gb := func(x float64) Iperf { return Iperf{BitsPerSecond: x * 1e9, Seconds: 5} }
	us := func(x int) time.Duration { return time.Duration(x) * time.Microsecond }
	lat := func(median time.Duration) *Latency {
		return &Latency{Idle: RTTs{Sent: 10, Replies: 10, Median: median}}
	}
	for _, tc := range []struct {
		name       string
		wgTCP      float64
		wgRTT      time.Duration
		missed     int
		tcpVerdict string
	}{
		{"both met", 4, us(200), 0, "met"},
		{"throughput missed", 2.9, us(200), 1, "MISSED"},
		{"rtt missed", 4, us(251), 1, "met"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Results{Dataplane: &Dataplane{Backends: []BackendPath{
				{Backend: "vxlan", Limit: Path{TCP1: gb(20)}, Path: Path{TCP1: gb(10), RTT: us(100)}, Latency: lat(us(100))},
				{Backend: "wireguard", Limit: Path{TCP1: gb(20)}, Path: Path{TCP1: gb(tc.wgTCP), RTT: tc.wgRTT}, Latency: lat(tc.wgRTT)},
			}}}
			if m := r.Missed(); len(m) != tc.missed {
				t.Errorf("Missed() = %q, want %d", m, tc.missed)
			}
			for _, row := range r.Table().Rows {
				if row.Case == "wireguard pod→pod" && row.Metric == "TCP, 1 stream" && !strings.HasSuffix(row.Verdict, "target ≥ 30% of vxlan: "+tc.tcpVerdict) {
					t.Errorf("verdict %q, want one ending in %s", row.Verdict, tc.tcpVerdict)
				}
			}
		})
	}
}
