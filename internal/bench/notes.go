package bench

import (
	"fmt"
	"slices"
	"strings"
)

// Notes explains how each section that ran was measured, and lists the
// missed targets, for the Markdown report.
func Notes(r Results) []string {
	var n []string
	if r.Dataplane != nil {
		n = append(n,
			"Data path: a fresh 2-host lab per backend, one pod per host. TCP throughput is `iperf3 -J` from the pod on host 1 "+
				"to an iperf3 server in the pod on host 2, receiver side, 1 and 4 streams; the physical limit is the same "+
				"traffic between the two host namespaces over the raw veth/bridge underlay (host IP to host IP), measured in "+
				"the same lab with the transfers interleaved (underlay, pod, underlay, pod, ...) and each figure the median "+
				"over the rounds (3 rounds of 5 s; 1 round of 2 s with --quick). "+
				"RTT is the median of 20 pings 50 ms apart. weftd CPU is utime+stime of both hosts' weftd during the two "+
				"transfers (/proc/<pid>/stat), as a share of one core. All hosts share this machine's cores, so the "+
				"physical limit is CPU-bound, not a wire speed.")
		n = append(n, latencyNote(r.Dataplane)...)
	}
	if r.Dataplane != nil {
		var xs []float64
		for _, l := range r.Dataplane.limits() {
			xs = append(xs, l.TCP1.BitsPerSecond)
		}
		if len(xs) > 1 {
			lo, hi, med := slices.Min(xs), slices.Max(xs), MedianFloat(xs)
			n = append(n, fmt.Sprintf("Noise: the same underlay transfer (1 stream) measured %s to %s in the %d labs of this run, "+
				"a spread of %.0f%% of its median; differences between backends smaller than that are within this machine's noise.",
				fmtGbps(lo), fmtGbps(hi), len(xs), 100*(hi-lo)/med))
		}
	}
	if len(r.Control) > 0 {
		n = append(n,
			fmt.Sprintf("Control plane: a fresh 1-host vxlan lab per N (network %s, SubnetLen %d). N synthetic vxlan leases "+
				"(unique VtepMACs, PublicIPs cycling through 203.0.113.0/24 and 198.51.100.0/24, one etcd lease with a 1 h TTL) are "+
				"written in transactions of %d Puts before weftd starts; start-up is weftd start until all N peers are programmed in the host namespace: N routes "+
				"through the vxlan device, N permanent neighbour entries and N FDB entries on it, counted by what the kernel holds (not by route protocol), polled every 20 ms through netlink in "+
				"that order (the vxlan backend's order). Join writes N more leases at once (the clock starts "+
				"before the first transaction); leave deletes them. The direct-netlink reference programs (then removes) the same N "+
				"neighbour entries, FDB entries and routes with one netlink handle in a scratch namespace, one request at a time, "+
				"best of two runs: what the kernel work alone costs when done naively, not a hard floor (batching can beat it). "+
				"Targets (issues #9 and #17): start-up and join ≤ 1 s at 5000 peers and more; RSS ≤ 30 MiB at 5000 and ≤ 40 MiB at 10000 peers; "+
				"RSS is VmRSS from /proc/<pid>/status %s after the leave phase (the pass that removed the entries has returned, and weftd has collected "+
				"and returned its garbage; the figure the moment the leave was programmed is shown next to it), and the growth per additional peer is "+
				"(RSS at the largest N − RSS at the smallest N) / (the difference in N), ≤ %d B.",
				controlNetwork, controlSubnetLen, txnOps, fmtDur(RSSSettle), PerPeerTarget))
		n = append(n, "Side by side with flanneld: `FLANNELD=/path/to/flanneld make bench` (or `weft-lab bench --flanneld PATH`) runs every "+
			"control-plane case a second time with that binary in weftd's place, started with the lab's weftd flags (etcd endpoint, "+
			"interface, subnet file, health address), and adds its rows with weftd's figure next to each. Peers are counted by what the "+
			"kernel holds, so any daemon's vxlan device counts. The bench never downloads or builds flanneld; to get one, clone "+
			"github.com/flannel-io/flannel and run `go build -o flanneld .` at the top of the checkout. "+
			"Without FLANNELD, only weftd runs.")
	}
	if r.CNI != nil {
		n = append(n,
			"CNI: libcni ADD then DEL of every pod against host 1 of the vxlan lab with weftd running (package cni-plugin/cnibench); "+
				"the plugin is forked from a thread inside the host namespace. Pod namespaces are created before and removed after the "+
				"timed calls. The floor is a VERSION call to the same plugin binary through the same exec path.")
	}
	if len(r.Restart) > 0 {
		n = append(n,
			"Restart: `ping -i 0.01` from the pod on host 1 to the pod on host 2; 1 s after it starts, host 2's weftd gets SIGTERM, "+
				"is started again and waited for (/readyz); pinging goes on for 1 s more. The baseline is 3 s of the same pinging "+
				"with no restart.")
	}
	for _, m := range r.Missed() {
		n = append(n, "Target missed: "+m+".")
	}
	for _, c := range r.Control {
		if c.Err == nil {
			n = append(n, fmt.Sprintf("weftd reconcile passes with %d peers (from its debug log, time in the vxlan backend's apply): "+
				"start-up %v; join %v; leave %v.", c.N, c.StartupPasses, c.JoinPasses, c.LeavePasses))
		}
		for _, p := range c.Profiles {
			n = append(n, fmt.Sprintf("perf profile of weftd, %s of %d peers repeated after the measurement (%s samples): "+
				"hottest own-time symbols: %s; hottest weft functions including callees: %s.",
				p.Phase, c.N, p.Samples, code(p.Self), code(p.Weft)))
		}
	}
	return n
}

func code(items []string) string {
	if len(items) == 0 {
		return "none"
	}
	out := make([]string, len(items))
	for i, s := range items {
		out[i] = "`" + s + "`"
	}
	return strings.Join(out, ", ")
}
