// Package bench measures weft end to end in the virtual lab (package
// internal/lab) for `weft-lab bench` and `make bench`: the data path of every
// backend against the raw underlay, the control plane with thousands of
// synthetic peers against the kernel's own programming cost, CNI ADD/DEL
// latency against a bare plugin exec, and packet loss across a weftd
// restart against a run without one. Each measurement is a function that
// returns a typed result; Results.Table and Document render them.
//
// Everything runs in namespaces the lab (or this package) creates and
// removes again, also when the context is cancelled.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/weftnet/weft/internal/lab"
)

// Sections that can be selected with Options.Only.
const (
	SectionDataplane = "dataplane"
	SectionControl   = "control"
	SectionCNI       = "cni"
	SectionRestart   = "restart"
)

// AllSections lists every section in run order.
var AllSections = []string{SectionDataplane, SectionControl, SectionCNI, SectionRestart}

// Backends are measured in this order; vxlan first so udp and wireguard
// can be compared with it.
var Backends = []string{"vxlan", "host-gw", "udp", "wireguard"}

// DualStackBackends carry IPv6: their labs run dual-stack and their IPv6
// pod→pod path is measured too.
var DualStackBackends = map[string]bool{"vxlan": true, "host-gw": true}

// Options configures a run.
type Options struct {
	BinDir string   // weftd, weft, weft-lab; default: the lab's default
	Name   string   // lab namespace prefix; default "wb"
	Only   []string // sections to run; default all
	Quick  bool     // shorter transfers and fewer pods
	Logger *slog.Logger
	// Progress receives one line per step; default discards.
	Progress io.Writer
	// Flanneld, when set, is a flanneld binary (or anything taking weftd's
	// flags) whose control plane is measured next to weftd's in the same
	// run (`FLANNELD=... make bench`).
	Flanneld string
	// ControlPeers are the peer counts of the control-plane section;
	// default ControlPeerCounts.
	ControlPeers []int
	// HeapProfiles, when set, is a directory: weftd runs with --pprof and
	// the control plane saves its heap profile after start-up, join and
	// leave there (weftd-<N>-<phase>.pb.gz), after the measurements.
	HeapProfiles string
}

// ControlPeerCounts are the control-plane section's peer counts: the RSS
// growth per peer is taken between the first and the last.
var ControlPeerCounts = []int{1000, TargetPeers, LargePeers}

func (o *Options) fill() {
	if o.Name == "" {
		o.Name = "wb"
	}
	if len(o.Only) == 0 {
		o.Only = AllSections
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if len(o.ControlPeers) == 0 {
		o.ControlPeers = ControlPeerCounts
	}
}

// daemons lists the control plane's daemons: weftd, then the side-by-side
// flanneld if any.
func (o *Options) daemons() []Daemon {
	ds := []Daemon{Weftd}
	if o.Flanneld != "" {
		ds = append(ds, Daemon{Name: "flanneld", Path: o.Flanneld})
	}
	return ds
}

func (o *Options) has(s string) bool { return slices.Contains(o.Only, s) }

// iperfSeconds is the length of one iperf3 transfer.
func (o *Options) iperfSeconds() int {
	if o.Quick {
		return 2
	}
	return 5
}

// reps is how many interleaved rounds of transfers each path gets.
func (o *Options) reps() int {
	if o.Quick {
		return 1
	}
	return 3
}

// CheckSections validates section names.
func CheckSections(names []string) error {
	for _, n := range names {
		if !slices.Contains(AllSections, n) {
			return fmt.Errorf("unknown section %q (want one of %v)", n, AllSections)
		}
	}
	return nil
}

func (o *Options) progress(format string, args ...any) {
	fmt.Fprintf(o.Progress, "bench: "+format+"\n", args...)
}

// Run runs the selected sections. A failing measurement is recorded in its
// result and the run goes on; Run returns an error only when ctx ends.
func Run(ctx context.Context, opts Options) (Results, error) {
	opts.fill()
	if err := CheckSections(opts.Only); err != nil {
		return Results{}, err
	}
	var res Results
	if opts.has(SectionDataplane) {
		res.Dataplane = &Dataplane{}
		// The machine's wake-up cost, before any lab loads it: the floor
		// under udp's idle RTT above vxlan's.
		opts.progress("thread wake-ups on this machine (pipe ping-pong)")
		rounds := latencyPings
		if opts.Quick {
			rounds /= 2
		}
		if w, err := MeasureWakeup(rounds, latencyInterval); err != nil {
			opts.Logger.Warn("wake-up cost", "err", err)
		} else {
			res.Dataplane.Wakeup = &w
		}
	}
	if opts.has(SectionCNI) {
		res.CNI = &CNI{}
	}
	// One two-host lab per backend serves the data path, the restart
	// measurement and (on the vxlan lab) the CNI measurement.
	for _, b := range Backends {
		needLab := opts.has(SectionDataplane) || opts.has(SectionRestart) || (b == "vxlan" && opts.has(SectionCNI))
		if !needLab {
			continue
		}
		err := backendLab(ctx, &opts, b, &res)
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		if err != nil {
			// The lab itself failed: mark every section that needed it.
			if res.Dataplane != nil {
				res.Dataplane.Backends = append(res.Dataplane.Backends, BackendPath{Backend: b, Err: err})
			}
			if opts.has(SectionRestart) {
				res.Restart = append(res.Restart, Restart{Backend: b, Err: err})
			}
			if b == "vxlan" && res.CNI != nil && res.CNI.Err == nil && len(res.CNI.Seq.Add) == 0 {
				res.CNI.Err = err
			}
		}
	}
	if opts.has(SectionControl) {
		for _, n := range opts.ControlPeers {
			for _, d := range opts.daemons() {
				opts.progress("control plane with %d peers: %s", n, d.Name)
				run := MeasureControlOf(ctx, &opts, d, n)
				if ctx.Err() != nil {
					return res, ctx.Err()
				}
				res.Control = append(res.Control, run)
			}
		}
	}
	return res, nil
}

// backendLab builds a two-host lab for backend b with one pod per host and
// runs the measurements that need it. It returns an error only when the
// lab could not be brought up; measurement errors land in res.
func backendLab(ctx context.Context, opts *Options, b string, res *Results) error {
	opts.progress("%s: building a 2-host lab", b)
	lctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	// The backends that carry IPv6 run dual-stack, so that their IPv6
	// path is measured beside IPv4 in the same lab.
	dual := DualStackBackends[b]
	l, err := lab.New(lctx, lab.Options{Hosts: 2, Backend: b, BinDir: opts.BinDir, Name: opts.Name, Logger: opts.Logger, IPv6: dual})
	if err != nil {
		return err
	}
	defer func() {
		if err := l.Close(); err != nil {
			opts.Logger.Warn("lab close", "err", err)
		}
	}()
	pods, err := startCluster(lctx, l)
	if err != nil {
		return err
	}
	h1, h2 := l.Host(1), l.Host(2)
	src := Endpoint{NS: pods[0].NSName, IP: pods[0].IP}
	dst := Endpoint{NS: pods[1].NSName, IP: pods[1].IP}
	secs := opts.iperfSeconds()
	if dp := res.Dataplane; dp != nil {
		bp := BackendPath{Backend: b}
		reps := opts.reps()
		opts.progress("%s: pod→pod and underlay host→host, %d round(s) of %d s transfers", b, reps, secs)
		routes := []Route{
			{Src: Endpoint{NS: h1.Name, IP: h1.IP}, Dst: Endpoint{NS: h2.Name, IP: h2.IP}},
			{Src: src, Dst: dst, PIDs: []int{h1.WeftdPID(), h2.WeftdPID()}},
		}
		if dual {
			routes = append(routes, Route{Src: Endpoint{NS: pods[0].NSName, IP: pods[0].IP6}, Dst: Endpoint{NS: pods[1].NSName, IP: pods[1].IP6},
				PIDs: []int{h1.WeftdPID(), h2.WeftdPID()}})
		}
		paths, err := MeasurePaths(ctx, routes, secs, reps, 20)
		if err != nil {
			bp.Err = err
		} else {
			bp.Limit, bp.Path = paths[0], paths[1]
			if dual {
				bp.Path6 = &paths[2]
			}
			opts.progress("%s: pod→pod ping RTT, idle and under a 1-stream transfer", b)
			if l, err := MeasureLatency(ctx, src, dst, opts.latencyPings(), latencyInterval, []int{h1.WeftdPID(), h2.WeftdPID()}); err != nil {
				bp.LatencyErr = err
			} else {
				bp.Latency = &l
			}
		}
		dp.Backends = append(dp.Backends, bp)
	}
	if b == "vxlan" && res.CNI != nil && ctx.Err() == nil {
		seq, par := 100, 100
		if opts.Quick {
			seq, par = 40, 40
		}
		opts.progress("CNI: %d pods sequential, %d pods 20 in parallel", seq, par)
		*res.CNI = MeasureCNI(ctx, h1, l.BinDir, opts.Name+"c", seq, par, 20)
	}
	if opts.has(SectionRestart) && ctx.Err() == nil {
		opts.progress("%s: weftd restart under ping -i 0.01", b)
		r := MeasureRestart(ctx, pods[0], pods[1], h2)
		r.Backend = b
		res.Restart = append(res.Restart, r)
	}
	return nil
}

// startCluster starts weftd on every host, attaches one pod per host and
// waits for pod-to-pod connectivity.
func startCluster(ctx context.Context, l *lab.Lab) ([]*lab.Pod, error) {
	for _, h := range l.Hosts {
		if err := h.StartWeftd(); err != nil {
			return nil, err
		}
	}
	for _, h := range l.Hosts {
		if err := h.WaitReady(ctx); err != nil {
			return nil, err
		}
	}
	var pods []*lab.Pod
	for _, h := range l.Hosts {
		p, err := h.AddPod(ctx, "")
		if err != nil {
			return nil, err
		}
		pods = append(pods, p)
	}
	if _, err := l.WaitConnectivity(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	if l.Options().IPv6 {
		if _, err := l.WaitConnectivity6(ctx, 30*time.Second); err != nil {
			return nil, err
		}
	}
	return pods, nil
}

var errNoWeftd = errors.New("weftd is not running")
