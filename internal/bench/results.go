package bench

import (
	"fmt"
	"slices"
	"time"

	"github.com/weftnet/weft/cni-plugin/cnibench"
)

// Targets of the control plane (issues #9 and #17). The time targets
// apply at TargetPeers and more, the RSS targets at TargetPeers and
// LargePeers, and the growth target between the smallest and the largest
// N of a run.
const (
	StartupTarget  = time.Second
	JoinTarget     = time.Second
	RSSTarget      = 30 << 20
	RSSTargetLarge = 40 << 20
	// PerPeerTarget bounds the RSS each additional peer costs, bytes.
	PerPeerTarget = 1024
	TargetPeers   = 5000
	LargePeers    = 10000
)

// rssTarget is the RSS target at n peers, if there is one.
func rssTarget(n int) (int64, bool) {
	switch n {
	case TargetPeers:
		return RSSTarget, true
	case LargePeers:
		return RSSTargetLarge, true
	}
	return 0, false
}

// IPv6ThroughputTarget is the least share of a backend's IPv4 pod→pod
// throughput its IPv6 path must reach in the same run (issue 14: within
// 15 %).
const IPv6ThroughputTarget = 0.85

// Path is one measured network path: TCP throughput with 1 and 4 streams,
// median ping RTT and the CPU weftd used on both hosts while the two
// transfers ran.
type Path struct {
	TCP1, TCP4 Iperf
	RTT        time.Duration // median of the pings
	Pings      int           // replies the median was taken over
	// WeftdCPU is weftd's CPU time (utime+stime, both hosts) during the
	// transfers, as a percentage of one core over the transfer time. It is
	// negative when not measured (the underlay has no weftd in the path).
	WeftdCPU float64
}

// BackendPath is a backend's pod-to-pod path and the physical limit
// measured in the same lab right before it.
type BackendPath struct {
	Backend string
	Limit   Path // host → host over the raw veth underlay
	Path    Path
	// Path6 is the same pod→pod path over IPv6, measured in the same lab
	// (a dual-stack one) for the backends that carry IPv6; nil otherwise.
	Path6 *Path
	Err   error
	// Latency is the pod→pod ping RTT at idle and under load (latency.go);
	// nil when not measured or when LatencyErr is set.
	Latency    *Latency
	LatencyErr error
}

// Dataplane holds every backend's path.
type Dataplane struct {
	Backends []BackendPath
	// Wakeup is this machine's thread wake-up cost; nil when not
	// measured.
	Wakeup *WakeupCost
}

// limits returns the limits of the backends measured without error.
func (d *Dataplane) limits() []Path {
	var out []Path
	for _, b := range d.Backends {
		if b.Err == nil {
			out = append(out, b.Limit)
		}
	}
	return out
}

// ControlRun is the control-plane run for one N.
type ControlRun struct {
	N int
	// Daemon is the program measured: "weftd" (or empty, the same) or
	// "flanneld" in the side-by-side mode.
	Daemon  string
	Startup time.Duration // weftd start → N peers programmed (route, neighbour, FDB)
	Ready   time.Duration // weftd start → /readyz answered 200
	Join    time.Duration // N more leases written → all programmed
	Leave   time.Duration // those N leases deleted → all their entries gone
	RSS     int64         // weftd VmRSS RSSSettle after the leave was programmed, bytes
	// RSSAtLeave is VmRSS the moment the leave was programmed, while
	// the pass that removed the entries may still be returning.
	RSSAtLeave int64
	// RSSAnon and RSSFile split RSS into anonymous memory and mapped
	// files; Heap is the last GC's heap figures (GODEBUG=gctrace=1).
	RSSAnon, RSSFile int64
	Heap             GCTrace
	HeapOK           bool
	// The vxlan backend's reconcile passes during each phase, from
	// weftd's debug log.
	StartupPasses, JoinPasses, LeavePasses Reconciles
	// Floor is the kernel's own cost: the same N peers (neighbour, FDB
	// entry and route each) programmed and removed by one netlink handle
	// in a scratch namespace, with no etcd and no daemon.
	FloorAdd, FloorDel time.Duration
	// ListTime is how long one etcd range read of the N leases takes.
	ListTime time.Duration
	// Profiles holds perf profiles of the join and leave phases, taken
	// when a time target was missed.
	Profiles []Profile
	Err      error
}

// daemon is the run's daemon name, "weftd" when unset.
func (c ControlRun) daemon() string {
	if c.Daemon == "" {
		return "weftd"
	}
	return c.Daemon
}

func (c ControlRun) isWeftd() bool { return c.daemon() == "weftd" }

// RSSGrowth is how a daemon's RSS grew between the smallest and the
// largest N of a run.
type RSSGrowth struct {
	Daemon   string
	From, To ControlRun
	PerPeer  float64 // bytes per additional peer
}

// RSSGrowth returns daemon's RSS growth per additional peer between its
// smallest and largest successful runs; ok is false with fewer than two
// distinct N.
func (r Results) RSSGrowth(daemon string) (g RSSGrowth, ok bool) {
	g.Daemon = daemon
	found := false
	for _, c := range r.Control {
		if c.Err != nil || c.daemon() != daemon {
			continue
		}
		if !found || c.N < g.From.N {
			g.From = c
		}
		if !found || c.N > g.To.N {
			g.To = c
		}
		found = true
	}
	if !found || g.To.N == g.From.N {
		return g, false
	}
	g.PerPeer = float64(g.To.RSS-g.From.RSS) / float64(g.To.N-g.From.N)
	return g, true
}

// controlDaemons lists the daemons of the control-plane runs in order of
// first appearance.
func (r Results) controlDaemons() []string {
	var ds []string
	for _, c := range r.Control {
		if !slices.Contains(ds, c.daemon()) {
			ds = append(ds, c.daemon())
		}
	}
	return ds
}

// weftdRun returns weftd's successful run with n peers, for the
// side-by-side rows.
func (r Results) weftdRun(n int) (ControlRun, bool) {
	for _, c := range r.Control {
		if c.isWeftd() && c.N == n && c.Err == nil {
			return c, true
		}
	}
	return ControlRun{}, false
}

// CNI holds ADD/DEL latencies through libcni.
type CNI struct {
	Seq, Par cnibench.Result
	Parallel int
	// Floor is the median latency of a VERSION call to the plugin through
	// the same libcni exec path: process start-up cost with no work.
	Floor time.Duration
	Err   error
}

// Restart is the packet loss during one weftd restart on the receiving
// host, with a run without restart as the baseline.
type Restart struct {
	Backend            string
	Sent, Received     int
	Downtime           time.Duration // SIGTERM → restarted weftd ready
	Window             time.Duration // how long ping ran across the restart
	BaseSent, BaseRecv int
	BaseWindow         time.Duration
	Err                error
}

// Results is everything one run measured. Nil sections were not run.
type Results struct {
	Dataplane *Dataplane
	Control   []ControlRun
	CNI       *CNI
	Restart   []Restart
}

// Table builds the result table.
func (r Results) Table() Table {
	var t Table
	add := func(row Row) { t.Rows = append(t.Rows, row) }
	if dp := r.Dataplane; dp != nil {
		const area = "data path"
		if lims := dp.limits(); len(lims) > 0 {
			spread := func(f func(Path) float64, format func(float64) string) string {
				var xs []float64
				for _, l := range lims {
					xs = append(xs, f(l))
				}
				s := format(MedianFloat(xs))
				if len(xs) > 1 {
					s += fmt.Sprintf(" (%s–%s over %d labs)", format(slices.Min(xs)), format(slices.Max(xs)), len(xs))
				}
				return s
			}
			gbps := func(x float64) string { return fmtGbps(x) }
			dur := func(x float64) string { return fmtDur(time.Duration(x)) }
			c := "underlay host→host"
			add(Row{area, c, "TCP, 1 stream", spread(func(p Path) float64 { return p.TCP1.BitsPerSecond }, gbps), "", "physical limit"})
			add(Row{area, c, "TCP, 4 streams", spread(func(p Path) float64 { return p.TCP4.BitsPerSecond }, gbps), "", "physical limit"})
			add(Row{area, c, "ping RTT, median", spread(func(p Path) float64 { return float64(p.RTT) }, dur), "", "physical limit"})
		}
		var vx *Path
		for _, b := range dp.Backends {
			if b.Backend == "vxlan" && b.Err == nil {
				vx = &b.Path
			}
		}
		for _, b := range dp.Backends {
			c := b.Backend + " pod→pod"
			if b.Err != nil {
				add(Row{area, c, "all", "error: " + b.Err.Error(), "", ""})
				continue
			}
			p, lim := b.Path, b.Limit
			tput := func(metric string, got, limit Iperf, vxv *Iperf) {
				v := pct(got.BitsPerSecond, limit.BitsPerSecond) + " of limit"
				if (b.Backend == "udp" || b.Backend == "wireguard") && vxv != nil {
					v += ", " + pct(got.BitsPerSecond, vxv.BitsPerSecond) + " of vxlan"
				}
				if b.Backend == "wireguard" && vxv != nil && metric == "TCP, 1 stream" {
					v += fmt.Sprintf("; target ≥ %.0f%% of vxlan: %s", WireGuardTCPShare*100, verdict(wgTCPMet(got, *vxv)))
				}
				add(Row{area, c, metric, fmtGbps(got.BitsPerSecond), fmtGbps(limit.BitsPerSecond) + " underlay, same lab", v})
			}
			var vx1, vx4 *Iperf
			if vx != nil {
				vx1, vx4 = &vx.TCP1, &vx.TCP4
			}
			tput("TCP, 1 stream", p.TCP1, lim.TCP1, vx1)
			tput("TCP, 4 streams", p.TCP4, lim.TCP4, vx4)
			add(Row{area, c, "ping RTT, median", fmtDur(p.RTT), fmtDur(lim.RTT) + " underlay, same lab",
				fmt.Sprintf("+%s", fmtDur(max(0, p.RTT-lim.RTT)))})
			add(Row{area, c, "weftd CPU during transfers", fmt.Sprintf("%.1f%% of a core", p.WeftdCPU), "", "both hosts"})
			if p6 := b.Path6; p6 != nil {
				c6 := b.Backend + " pod→pod over IPv6"
				v6 := func(metric string, got, v4 Iperf) {
					ratio := got.BitsPerSecond / v4.BitsPerSecond
					add(Row{area, c6, metric, fmtGbps(got.BitsPerSecond), fmtGbps(v4.BitsPerSecond) + " over IPv4, same lab",
						pct(got.BitsPerSecond, v4.BitsPerSecond) + " of IPv4: " + verdict(ratio >= IPv6ThroughputTarget)})
				}
				v6("TCP, 1 stream", p6.TCP1, p.TCP1)
				v6("TCP, 4 streams", p6.TCP4, p.TCP4)
				add(Row{area, c6, "ping RTT, median", fmtDur(p6.RTT), fmtDur(p.RTT) + " over IPv4, same lab", ""})
			}
		}
		t.Rows = append(t.Rows, dp.latencyRows()...)
	}
	t.Rows = append(t.Rows, r.controlRows()...)
	if c := r.CNI; c != nil {
		const area = "CNI"
		if c.Err != nil {
			add(Row{area, "libcni → weft plugin", "all", "error: " + c.Err.Error(), "", ""})
		} else {
			floor := fmt.Sprintf("%s plugin exec (VERSION)", fmtDur(c.Floor))
			lat := func(cs, metric string, ds []time.Duration) {
				add(Row{area, cs, metric, fmt.Sprintf("p50 %s, p99 %s", fmtDur(Percentile(ds, 0.5)), fmtDur(Percentile(ds, 0.99))), floor, ""})
			}
			seq := fmt.Sprintf("%d pods, sequential", len(c.Seq.Add))
			par := fmt.Sprintf("%d pods, %d in parallel", len(c.Par.Add), c.Parallel)
			lat(seq, "ADD latency", c.Seq.Add)
			lat(seq, "DEL latency", c.Seq.Del)
			lat(par, "ADD latency", c.Par.Add)
			lat(par, "DEL latency", c.Par.Del)
		}
	}
	for _, rs := range r.Restart {
		const area = "restart"
		cs := rs.Backend + ", weftd SIGTERM + start on receiver"
		if rs.Err != nil {
			add(Row{area, cs, "all", "error: " + rs.Err.Error(), "", ""})
			continue
		}
		metric := "pings lost (ping -i 0.01)"
		if rs.BaseWindow > 0 {
			metric = fmt.Sprintf("pings lost (ping -i 0.01: %.0f/s achieved)", float64(rs.BaseSent)/rs.BaseWindow.Seconds())
		}
		add(Row{area, cs, metric,
			fmt.Sprintf("%d of %d (restart→ready %s)", rs.Sent-rs.Received, rs.Sent, fmtDur(rs.Downtime)),
			fmt.Sprintf("%d of %d without restart", rs.BaseSent-rs.BaseRecv, rs.BaseSent),
			outage(rs)})
	}
	return t
}

// Missed lists the targets that were not met (control plane, udp RTT),
// for the summary and exit status.
func (r Results) Missed() []string {
	var out []string
	if r.Dataplane != nil {
		out = append(out, r.Dataplane.latencyMissed()...)
		out = append(out, r.Dataplane.wireguardMissed()...)
		for _, b := range r.Dataplane.Backends {
			if b.Err != nil || b.Path6 == nil || b.Path.TCP1.BitsPerSecond == 0 {
				continue
			}
			if ratio := b.Path6.TCP1.BitsPerSecond / b.Path.TCP1.BitsPerSecond; ratio < IPv6ThroughputTarget {
				out = append(out, fmt.Sprintf("%s IPv6 TCP 1 stream: %s is %.0f%% of IPv4's %s (target ≥ %.0f%%)", b.Backend,
					fmtGbps(b.Path6.TCP1.BitsPerSecond), 100*ratio, fmtGbps(b.Path.TCP1.BitsPerSecond), 100*IPv6ThroughputTarget))
			}
		}
	}
	for _, c := range r.Control {
		if !c.isWeftd() || c.Err != nil {
			continue
		}
		if c.N >= TargetPeers && c.Startup > StartupTarget {
			out = append(out, fmt.Sprintf("start-up with %d peers: %s > %s", c.N, fmtDur(c.Startup), fmtDur(StartupTarget)))
		}
		if c.N >= TargetPeers && c.Join > JoinTarget {
			out = append(out, fmt.Sprintf("join of %d peers: %s > %s", c.N, fmtDur(c.Join), fmtDur(JoinTarget)))
		}
		if want, ok := rssTarget(c.N); ok && c.RSS > want {
			out = append(out, fmt.Sprintf("RSS with %d peers: %s > %s", c.N, fmtMiB(c.RSS), fmtMiB(want)))
		}
	}
	if g, ok := r.RSSGrowth("weftd"); ok && g.PerPeer > PerPeerTarget {
		out = append(out, fmt.Sprintf("RSS growth from %d to %d peers: %.0f B per peer > %d B", g.From.N, g.To.N, g.PerPeer, PerPeerTarget))
	}
	return out
}

// outage converts a restart's lost pings, beyond what the baseline run
// lost at the same rate, into time without replies at the send rate ping
// actually achieved.
func outage(rs Restart) string {
	if rs.Sent == 0 {
		return "n/a"
	}
	lost := float64(rs.Sent - rs.Received)
	if rs.BaseSent > 0 {
		lost -= float64(rs.BaseSent-rs.BaseRecv) * float64(rs.Sent) / float64(rs.BaseSent)
	}
	if lost < 0.5 {
		return "no loss beyond baseline"
	}
	return fmt.Sprintf("≈ %s without replies", fmtDur(time.Duration(float64(rs.Window)*lost/float64(rs.Sent))))
}

// Failed lists the measurements that ended in an error, as
// "section case: error".
func (r Results) Failed() []string {
	var out []string
	if r.Dataplane != nil {
		for _, b := range r.Dataplane.Backends {
			if b.Err != nil {
				out = append(out, fmt.Sprintf("data path %s: %v", b.Backend, b.Err))
			}
			if b.LatencyErr != nil {
				out = append(out, fmt.Sprintf("data path %s latency: %v", b.Backend, b.LatencyErr))
			}
		}
	}
	for _, c := range r.Control {
		if c.Err != nil {
			if c.isWeftd() {
				out = append(out, fmt.Sprintf("control plane %d peers: %v", c.N, c.Err))
			} else {
				out = append(out, fmt.Sprintf("control plane %d peers, %s: %v", c.N, c.daemon(), c.Err))
			}
		}
	}
	if r.CNI != nil && r.CNI.Err != nil {
		out = append(out, fmt.Sprintf("CNI: %v", r.CNI.Err))
	}
	for _, rs := range r.Restart {
		if rs.Err != nil {
			out = append(out, fmt.Sprintf("restart %s: %v", rs.Backend, rs.Err))
		}
	}
	return out
}

// controlRows renders the control-plane runs: weftd's rows as without a
// side-by-side daemon, the other daemon's rows after each weftd run of
// the same N with weftd's figure next to theirs, then the RSS growth per
// additional peer.
func (r Results) controlRows() []Row {
	var rows []Row
	add := func(row Row) { rows = append(rows, row) }
	const area = "control plane"
	for _, c := range r.Control {
		d := c.daemon()
		cs := fmt.Sprintf("vxlan, %d peers", c.N)
		if !c.isWeftd() {
			cs += ", " + d
		}
		if c.Err != nil {
			add(Row{area, cs, "all", "error: " + c.Err.Error(), "", ""})
			continue
		}
		floorAdd := fmt.Sprintf("%s direct netlink", fmtDur(c.FloorAdd))
		w, haveW := r.weftdRun(c.N)
		// verdict is the target for weftd's rows, weftd's figure for the
		// other daemon's.
		timeVerdict := func(got, want time.Duration, weft time.Duration) string {
			if !c.isWeftd() {
				if !haveW {
					return ""
				}
				return fmt.Sprintf("weftd %s", fmtDur(weft))
			}
			if c.N < TargetPeers {
				return ""
			}
			return fmt.Sprintf("target ≤ %s: %s", fmtDur(want), verdict(got <= want))
		}
		add(Row{area, cs, fmt.Sprintf("start-up: %s start → all programmed", d), fmtDur(c.Startup),
			fmt.Sprintf("%s; etcd list %s", floorAdd, fmtDur(c.ListTime)), timeVerdict(c.Startup, StartupTarget, w.Startup)})
		ready := Row{area, cs, fmt.Sprintf("start-up: %s start → /readyz 200", d), fmtDur(c.Ready), "", ""}
		if !c.isWeftd() {
			ready.Metric = fmt.Sprintf("start-up: %s start → ready (/readyz 200, or subnet file written)", d)
		}
		add(ready)
		add(Row{area, cs, fmt.Sprintf("join: %d more leases → programmed", c.N), fmtDur(c.Join), floorAdd, timeVerdict(c.Join, JoinTarget, w.Join)})
		leave := ""
		if !c.isWeftd() && haveW {
			leave = "weftd " + fmtDur(w.Leave)
		}
		add(Row{area, cs, fmt.Sprintf("leave: %d leases deleted → removed", c.N), fmtDur(c.Leave),
			fmt.Sprintf("%s direct netlink", fmtDur(c.FloorDel)), leave})
		rss := Row{area, cs, d + " RSS afterwards", fmtMiB(c.RSS), fmt.Sprintf("anon %s + file %s", fmtMiB(c.RSSAnon), fmtMiB(c.RSSFile)), ""}
		if c.HeapOK {
			rss.Baseline += fmt.Sprintf("; Go heap %d MB live, %d MB GC goal", c.Heap.HeapLive, c.Heap.Goal)
		}
		if c.RSSAtLeave > 0 {
			rss.Baseline += fmt.Sprintf("; %s when the leave was programmed", fmtMiB(c.RSSAtLeave))
		}
		if want, ok := rssTarget(c.N); ok && c.isWeftd() {
			rss.Verdict = fmt.Sprintf("target ≤ %s: %s", fmtMiB(want), verdict(c.RSS <= want))
		} else if !c.isWeftd() && haveW {
			rss.Verdict = "weftd " + fmtMiB(w.RSS)
		}
		add(rss)
	}
	for _, d := range r.controlDaemons() {
		g, ok := r.RSSGrowth(d)
		if !ok {
			continue
		}
		cs := fmt.Sprintf("vxlan, %d → %d peers", g.From.N, g.To.N)
		v := ""
		if d == "weftd" {
			v = fmt.Sprintf("target ≤ %d B: %s", PerPeerTarget, verdict(g.PerPeer <= PerPeerTarget))
		} else {
			cs += ", " + d
			if wg, ok := r.RSSGrowth("weftd"); ok && wg.From.N == g.From.N && wg.To.N == g.To.N {
				v = fmt.Sprintf("weftd %.0f B", wg.PerPeer)
			}
		}
		add(Row{area, cs, d + " RSS per additional peer", fmt.Sprintf("%.0f B", g.PerPeer),
			fmt.Sprintf("RSS %s at %d → %s at %d", fmtMiB(g.From.RSS), g.From.N, fmtMiB(g.To.RSS), g.To.N), v})
	}
	return rows
}
