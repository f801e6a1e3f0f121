package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/cni-plugin/cnitest"
	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/subnet"
)

// Control-plane lab parameters: a /15 split into /30s holds 32767
// leasable subnets, room for 2×10000 synthetic peers plus the host's own
// (a /29 split would hold only 16383).
const (
	controlNetwork   = "198.18.0.0/15"
	controlSubnetLen = 30
	subnetsPrefix    = "/coreos.com/network/subnets/"
	// txnOps is how many Puts or Deletes go into one etcd transaction; the
	// lab's etcd allows 1024.
	txnOps = 500
	// programTimeout bounds every wait for the kernel to catch up.
	programTimeout = 60 * time.Second
)

// SynthLease is one synthetic vxlan peer.
type SynthLease struct {
	Subnet netip.Prefix
	Attrs  subnet.LeaseAttrs
	MAC    net.HardwareAddr
}

// SynthLeases builds n synthetic vxlan peers with VNI 1 on the subnets
// cfg.NthSubnet(first...), skipping skip. Each peer gets a unique locally
// administered MAC; PublicIPs cycle through 203.0.113.1-254 and
// 198.51.100.1-254 (vxlan FDB entries never need the address to answer).
func SynthLeases(cfg *subnet.Config, first, n int, skip netip.Prefix) []SynthLease {
	out := make([]SynthLease, 0, n)
	for i := first; len(out) < n && i < cfg.SubnetCount(); i++ {
		sn := cfg.NthSubnet(i)
		if sn == skip {
			continue
		}
		mac := net.HardwareAddr{0x02, 0x77, 0x62, byte(i >> 16), byte(i >> 8), byte(i)}
		k := i % 508
		ip := netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + k)})
		if k >= 254 {
			ip = netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + k - 254)})
		}
		data, _ := json.Marshal(subnet.VXLANData{VNI: 1, VtepMAC: mac.String()}) // plain struct
		out = append(out, SynthLease{
			Subnet: sn,
			MAC:    mac,
			Attrs:  subnet.LeaseAttrs{PublicIP: ip, BackendType: "vxlan", BackendData: data},
		})
	}
	return out
}

// writeLeases puts the leases, txnOps per transaction, bound to etcd lease
// id.
func writeLeases(ctx context.Context, cli *clientv3.Client, ls []SynthLease, id clientv3.LeaseID) error {
	for start := 0; start < len(ls); start += txnOps {
		var ops []clientv3.Op
		for _, l := range ls[start:min(start+txnOps, len(ls))] {
			v, err := l.Attrs.MarshalJSON()
			if err != nil {
				return err
			}
			ops = append(ops, clientv3.OpPut(subnetsPrefix+subnet.SubnetKey(l.Subnet), string(v), clientv3.WithLease(id)))
		}
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := cli.Txn(tctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("write leases: %w", err)
		}
	}
	return nil
}

func deleteLeases(ctx context.Context, cli *clientv3.Client, ls []SynthLease) error {
	for start := 0; start < len(ls); start += txnOps {
		var ops []clientv3.Op
		for _, l := range ls[start:min(start+txnOps, len(ls))] {
			ops = append(ops, clientv3.OpDelete(subnetsPrefix+subnet.SubnetKey(l.Subnet)))
		}
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := cli.Txn(tctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("delete leases: %w", err)
		}
	}
	return nil
}

// peerCounter counts what the daemon programmed for a set of synthetic
// peers in a namespace: routes through the vxlan device to their subnets,
// neighbour entries for their subnet addresses and FDB entries for their
// MACs on that device. A peer is reachable only once all three exist. It
// finds the device by kind, not by name, and counts routes by their
// output device, not by weft's route protocol, so that it counts what
// flanneld programs (flannel.1, no protocol of its own) the same way.
type peerCounter struct {
	c      *nl.Conn
	routes map[netip.Prefix]bool
	neighs map[netip.Addr]bool
	macs   map[string]bool
	// dev is the vxlan device's index once it exists, else 0.
	dev int
	// rbuf and nbuf are the last dumps, reused by the next.
	rbuf []nl.Route
	nbuf []nl.Neigh
}

func newPeerCounter(c *nl.Conn) *peerCounter {
	return &peerCounter{c: c, routes: map[netip.Prefix]bool{}, neighs: map[netip.Addr]bool{}, macs: map[string]bool{}}
}

func (c *peerCounter) add(ls []SynthLease) {
	for _, l := range ls {
		c.routes[l.Subnet] = true
		c.neighs[l.Subnet.Addr()] = true
		c.macs[string(l.MAC)] = true
	}
}

// device returns the index of the namespace's vxlan device, 0 while there
// is none. The lab's host namespace has exactly one once the daemon set it
// up.
func (c *peerCounter) device() (int, error) {
	if c.dev != 0 {
		if _, err := c.c.LinkByIndex(c.dev); err == nil {
			return c.dev, nil
		} else if !errors.Is(err, nl.ErrLinkNotFound) {
			return 0, fmt.Errorf("find vxlan device: %w", err)
		}
		c.dev = 0
	}
	links, err := c.c.LinkList()
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if l.Kind == "vxlan" {
			c.dev = l.Index
			return l.Index, nil
		}
	}
	return 0, nil
}

func (c *peerCounter) countRoutes() (int, error) {
	dev, err := c.device()
	if err != nil || dev == 0 {
		return 0, err
	}
	rs, err := c.c.RouteList(nl.FamilyV4, unix.RT_TABLE_MAIN, func(r *nl.Route) bool {
		return r.LinkIndex == dev && c.routes[r.Dst]
	}, c.rbuf)
	c.rbuf = rs
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	return len(rs), nil
}

// neighbours lists the vxlan device's entries of one family; no device
// yet means none.
func (c *peerCounter) neighbours(family nl.Family) ([]nl.Neigh, error) {
	dev, err := c.device()
	if err != nil || dev == 0 {
		return nil, err
	}
	ns, err := c.c.NeighList(dev, family, c.nbuf)
	c.nbuf = ns
	if err != nil {
		return nil, fmt.Errorf("list neighbours: %w", err)
	}
	return ns, nil
}

func (c *peerCounter) countNeighs() (int, error) {
	ns, err := c.neighbours(nl.FamilyV4)
	n := 0
	for i := range ns {
		if e := &ns[i]; c.neighs[e.IP] && e.State&unix.NUD_PERMANENT != 0 {
			n++
		}
	}
	return n, err
}

func (c *peerCounter) countFDB() (int, error) {
	ns, err := c.neighbours(nl.FamilyBridge)
	n := 0
	for i := range ns {
		if e := &ns[i]; c.macs[string(e.HardwareAddr())] && e.IP.IsValid() && !e.IP.IsUnspecified() {
			n++
		}
	}
	return n, err
}

// wait polls every 20 ms until routes, neighbour entries and FDB entries
// (in that order, the order the vxlan backend programs them in) each number
// want, and returns the time since t0 at which the last was seen.
func (c *peerCounter) wait(ctx context.Context, t0 time.Time, want int, alive func() bool) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, programTimeout)
	defer cancel()
	for _, k := range []struct {
		what  string
		count func() (int, error)
	}{{"routes", c.countRoutes}, {"neighbour entries", c.countNeighs}, {"FDB entries", c.countFDB}} {
		last := -1
		for {
			n, err := k.count()
			if err != nil {
				return 0, err
			}
			if n == want {
				break
			}
			last = n
			if !alive() {
				return 0, fmt.Errorf("daemon exited with %d of %d %s programmed", last, want, k.what)
			}
			select {
			case <-ctx.Done():
				return 0, fmt.Errorf("%d of %d %s programmed after %s: %w", last, want, k.what, programTimeout, ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return time.Since(t0), nil
}

// Daemon is the program a control-plane run measures: weftd from the bin
// directory, or another binary that takes weftd's flags (flanneld) in its
// place.
type Daemon struct {
	// Name labels the run's rows: "weftd" or "flanneld".
	Name string
	// Path is the binary; empty means weftd from Options.BinDir.
	Path string
}

// Weftd is the daemon under test.
var Weftd = Daemon{Name: "weftd"}

func (d Daemon) isWeftd() bool { return d.Path == "" }

// MeasureControl runs the control-plane scenario with n peers on a fresh
// one-host vxlan lab: n leases exist before weftd starts (start-up), n more
// arrive at once (join), then those n are deleted (leave).
func MeasureControl(ctx context.Context, opts *Options, n int) ControlRun {
	return MeasureControlOf(ctx, opts, Weftd, n)
}

// MeasureControlOf runs the control-plane scenario against daemon d.
func MeasureControlOf(ctx context.Context, opts *Options, d Daemon, n int) (run ControlRun) {
	run.N = n
	run.Daemon = d.Name
	if err := measureControl(ctx, opts, d, n, &run); err != nil {
		run.Err = err
	}
	return run
}

// standInBinDir makes a temporary bin directory holding links to every
// file of binDir except weftd, which links to path instead: the lab then
// starts that binary with weftd's flags, and the lab's other programs
// (the CNI plugin) stay weft's. The caller removes the directory.
func standInBinDir(binDir, path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(abs); err != nil {
		return "", fmt.Errorf("stand-in daemon: %w", err)
	} else if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("stand-in daemon %s is not an executable file", abs)
	}
	if binDir == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", err
		}
		binDir = filepath.Dir(exe)
	}
	if binDir, err = filepath.Abs(binDir); err != nil {
		return "", err
	}
	entries, err := os.ReadDir(binDir)
	if err != nil {
		return "", fmt.Errorf("stand-in bin dir: %w", err)
	}
	dir, err := os.MkdirTemp("", "weft-bench-bin-")
	if err != nil {
		return "", err
	}
	success := false
	defer func() {
		if !success {
			os.RemoveAll(dir)
		}
	}()
	for _, e := range entries {
		if e.Name() == "weftd" {
			continue
		}
		if err := os.Symlink(filepath.Join(binDir, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			return "", err
		}
	}
	if err := os.Symlink(abs, filepath.Join(dir, "weftd")); err != nil {
		return "", err
	}
	success = true
	return dir, nil
}

func measureControl(ctx context.Context, opts *Options, d Daemon, n int, run *ControlRun) error {
	binDir := opts.BinDir
	if !d.isWeftd() {
		dir, err := standInBinDir(opts.BinDir, d.Path)
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		binDir = dir
	}
	lctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	l, err := lab.New(lctx, lab.Options{Hosts: 1, Backend: "vxlan", BinDir: binDir, Name: opts.Name,
		Network: controlNetwork, SubnetLen: controlSubnetLen, Logger: opts.Logger})
	if err != nil {
		return err
	}
	defer func() {
		if err := l.Close(); err != nil {
			opts.Logger.Warn("lab close", "err", err)
		}
	}()
	cfg, err := subnet.ParseConfig([]byte(l.NetworkConfig()))
	if err != nil {
		return err
	}
	h := l.Host(1)
	cli, err := l.Etcd(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	gctx, gcancel := context.WithTimeout(ctx, 10*time.Second)
	grant, err := cli.Grant(gctx, 3600)
	gcancel()
	if err != nil {
		return fmt.Errorf("etcd grant: %w", err)
	}

	initial := SynthLeases(cfg, 0, n, netip.Prefix{})
	if err := writeLeases(ctx, cli, initial, grant.ID); err != nil {
		return err
	}
	t := time.Now()
	gctx, gcancel = context.WithTimeout(ctx, 10*time.Second)
	if _, err := cli.Get(gctx, subnetsPrefix, clientv3.WithPrefix()); err != nil {
		gcancel()
		return fmt.Errorf("etcd list: %w", err)
	}
	gcancel()
	run.ListTime = time.Since(t)

	// The direct-netlink reference: best of two, as other load on the
	// machine only ever makes it slower.
	for i := range 2 {
		add, del, err := KernelFloor(opts.Name+"f", initial)
		if err != nil {
			return fmt.Errorf("direct netlink reference: %w", err)
		}
		if i == 0 || add < run.FloorAdd {
			run.FloorAdd = add
		}
		if i == 0 || del < run.FloorDel {
			run.FloorDel = del
		}
	}

	hns, err := netns.GetFromPath(h.NS)
	if err != nil {
		return err
	}
	defer hns.Close()
	nc, err := nl.Open(hns)
	if err != nil {
		return err
	}
	defer nc.Close()
	rc := newPeerCounter(nc)
	rc.add(initial)
	alive := func() bool { return h.WeftdPID() != 0 }

	// Start-up. weftd inherits our environment through ip netns exec:
	// GODEBUG=gctrace=1 makes its runtime log one line per GC, from which
	// the live heap is read at the end. Nothing else starts processes
	// while the control plane runs, so the change is confined to weftd.
	// A stand-in gets weftd's lab flags only: --log-level is weftd's own.
	var extraArgs []string
	if d.isWeftd() {
		extraArgs = []string{"--log-level=debug"}
		if opts.HeapProfiles != "" {
			extraArgs = append(extraArgs, "--pprof")
		}
	}
	saveHeap := func(phase string) {
		if opts.HeapProfiles == "" || !d.isWeftd() {
			return
		}
		if err := saveHeapProfile(ctx, h, filepath.Join(opts.HeapProfiles, fmt.Sprintf("weftd-%d-%s.pb.gz", n, phase))); err != nil {
			opts.Logger.Warn("heap profile", "phase", phase, "err", err)
		}
	}
	restore := setenv("GODEBUG", godebugWith("gctrace=1"))
	t0 := time.Now()
	err = h.StartWeftd(extraArgs...)
	restore()
	if err != nil {
		return err
	}
	readyc := make(chan error, 1)
	go func() {
		rctx, cancel := context.WithTimeout(ctx, programTimeout)
		defer cancel()
		err := h.WaitReady(rctx)
		run.Ready = time.Since(t0)
		readyc <- err
	}()
	run.Startup, err = rc.wait(ctx, t0, n, alive)
	if rerr := <-readyc; err == nil && rerr != nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("start-up: %w", err)
	}
	saveHeap("startup")

	// Join: n more leases at once, skipping weftd's own subnet.
	env, err := h.SubnetEnv()
	if err != nil {
		return err
	}
	extra := SynthLeases(cfg, n, n, env.LeaseSubnet())
	if len(extra) < n {
		return fmt.Errorf("network too small for %d more peers", n)
	}
	rc.add(extra)
	grant2, err := cli.Grant(ctx, 3600)
	if err != nil {
		return fmt.Errorf("etcd grant: %w", err)
	}
	t1 := time.Now()
	if err := writeLeases(ctx, cli, extra, grant2.ID); err != nil {
		return err
	}
	if run.Join, err = rc.wait(ctx, t1, 2*n, alive); err != nil {
		return fmt.Errorf("join: %w", err)
	}
	t1end := time.Now()
	saveHeap("join")

	// Leave: delete the n extra leases.
	t2 := time.Now()
	if err := deleteLeases(ctx, cli, extra); err != nil {
		return err
	}
	if run.Leave, err = rc.wait(ctx, t2, n, alive); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	t2end := time.Now()

	pid := h.WeftdPID()
	if pid == 0 {
		return errNoWeftd
	}
	status := fmt.Sprintf("/proc/%d/status", pid)
	data, err := os.ReadFile(status)
	if err != nil {
		return err
	}
	if run.RSSAtLeave, err = ProcRSS(data); err != nil {
		return err
	}
	// The figure judged is read once the pass that removed the entries
	// has returned and weftd has done what it does after a pass.
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(RSSSettle):
	}
	if data, err = os.ReadFile(status); err != nil {
		return err
	}
	if run.RSS, err = ProcRSS(data); err != nil {
		return err
	}
	if run.RSSAnon, run.RSSFile, err = ProcRSSAnon(data); err != nil {
		return err
	}
	if log, err := os.ReadFile(h.WeftdLog()); err == nil {
		run.Heap, run.HeapOK = LastGCTrace(log)
		run.StartupPasses = ParseReconciles(log, t0, t0.Add(run.Startup))
		run.JoinPasses = ParseReconciles(log, t1, t1end)
		run.LeavePasses = ParseReconciles(log, t2, t2end)
	}
	saveHeap("leave")

	// A missed time target gets CPU profiles of the slow phases, repeated
	// under perf after the measurement so sampling cannot skew the figures.
	if !d.isWeftd() || n != TargetPeers || (run.Startup <= StartupTarget && run.Join <= JoinTarget) || !PerfAvailable() {
		return nil
	}
	opts.progress("control plane with %d peers: profiling join and leave with perf", n)
	prof, err := PerfProfile(ctx, pid, l.Dir, "join", func() error {
		t := time.Now()
		if err := writeLeases(ctx, cli, extra, grant2.ID); err != nil {
			return err
		}
		_, err := rc.wait(ctx, t, 2*n, alive)
		return err
	})
	if err != nil {
		opts.Logger.Warn("profile join", "err", err)
		return nil
	}
	run.Profiles = append(run.Profiles, prof)
	prof, err = PerfProfile(ctx, pid, l.Dir, "leave", func() error {
		t := time.Now()
		if err := deleteLeases(ctx, cli, extra); err != nil {
			return err
		}
		_, err := rc.wait(ctx, t, n, alive)
		return err
	})
	if err != nil {
		opts.Logger.Warn("profile leave", "err", err)
		return nil
	}
	run.Profiles = append(run.Profiles, prof)
	return nil
}

// RSSSettle is how long after the leave was programmed weftd's RSS is
// read: the pass that removed the last entries has returned by then,
// and weftd has collected its garbage (cmd/weftd/memory.go). RSS read
// 0.25 to 20 s after the leave stayed within 0.5 MiB of this figure.
const RSSSettle = time.Second

// KernelFloor programs the peers the way the vxlan backend does (neighbour
// entry, FDB entry and route per peer) into a scratch namespace named
// nsPrefix plus random digits, then removes them, and returns both
// durations: what the kernel alone costs. It sends one request at a time
// and waits for its answer before the next, with plain routes (no nexthop
// objects): the cost of the kernel's objects, without the batching and
// nexthop objects with which weftd goes faster.
func KernelFloor(nsPrefix string, peers []SynthLease) (add, del time.Duration, err error) {
	name := cnitest.RandName(nsPrefix, 6)
	path, err := cnitest.NewNS(name)
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		if derr := cnitest.DeleteNS(name); derr != nil && err == nil {
			err = derr
		}
	}()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return 0, 0, err
	}
	defer ns.Close()
	c, err := nl.Open(ns)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if err := c.AddLink(nl.Link{Name: "weft.1", MTU: 1450, VXLAN: &nl.VXLAN{VNI: 1, Port: 8472}}); err != nil {
		return 0, 0, fmt.Errorf("add vxlan: %w", err)
	}
	link, err := c.LinkByName("weft.1")
	if err != nil {
		return 0, 0, err
	}
	if err := c.SetLinkUp(link.Index); err != nil {
		return 0, 0, err
	}
	idx := link.Index
	neighOf := func(p SynthLease) nl.NeighSpec {
		return nl.NeighSpec{LinkIndex: idx, Family: nl.FamilyV4, State: unix.NUD_PERMANENT, Type: unix.RTN_UNICAST,
			IP: p.Subnet.Addr(), MAC: p.MAC}
	}
	fdbOf := func(p SynthLease) nl.NeighSpec {
		return nl.NeighSpec{LinkIndex: idx, Family: nl.FamilyBridge, State: unix.NUD_PERMANENT, Flags: unix.NTF_SELF,
			IP: p.Attrs.PublicIP, MAC: p.MAC}
	}
	routeOf := func(p SynthLease) nl.RouteSpec {
		return nl.RouteSpec{Dst: p.Subnet, Gw: p.Subnet.Addr(), LinkIndex: idx, OnLink: true}
	}
	// setNeigh sends one neighbour or FDB request: SetNeighs with one
	// entry is one request and its answer.
	one := make([]nl.NeighSpec, 1)
	setNeigh := func(s nl.NeighSpec) error {
		one[0] = s
		return c.SetNeighs(one)[0]
	}
	t0 := time.Now()
	for _, p := range peers {
		if err := setNeigh(neighOf(p)); err != nil {
			return 0, 0, fmt.Errorf("neigh: %w", err)
		}
		if err := setNeigh(fdbOf(p)); err != nil {
			return 0, 0, fmt.Errorf("fdb: %w", err)
		}
		if err := c.ReplaceRoute(routeOf(p), backend.RouteProtocol); err != nil {
			return 0, 0, fmt.Errorf("route: %w", err)
		}
	}
	add = time.Since(t0)
	t0 = time.Now()
	for _, p := range peers {
		route := nl.Route{Dst: p.Subnet, Table: unix.RT_TABLE_MAIN, Protocol: backend.RouteProtocol, Scope: unix.RT_SCOPE_UNIVERSE}
		if err := c.DelRoute(&route); err != nil {
			return 0, 0, fmt.Errorf("del route: %w", err)
		}
		fdb := nl.Neigh{LinkIndex: idx, Family: nl.FamilyBridge, State: unix.NUD_PERMANENT, Flags: unix.NTF_SELF, IP: p.Attrs.PublicIP}
		fdb.SetHardwareAddr(p.MAC)
		if err := c.DelNeigh(&fdb); err != nil {
			return 0, 0, fmt.Errorf("del fdb: %w", err)
		}
		neigh := nl.Neigh{LinkIndex: idx, Family: nl.FamilyV4, State: unix.NUD_PERMANENT, Type: unix.RTN_UNICAST, IP: p.Subnet.Addr()}
		neigh.SetHardwareAddr(p.MAC)
		if err := c.DelNeigh(&neigh); err != nil {
			return 0, 0, fmt.Errorf("del neigh: %w", err)
		}
	}
	del = time.Since(t0)
	return add, del, nil
}

// saveHeapProfile writes the heap profile of the weftd on h, which runs
// with --pprof, to path. The profile's GC runs in weftd, so it is taken
// only between measurements.
func saveHeapProfile(ctx context.Context, h *lab.Host, path string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+h.HealthzAddr()+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return err
	}
	resp, err := lab.HTTPClient(h.NS, 10*time.Second).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", req.URL, resp.Status)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

// setenv sets an environment variable and returns a function restoring
// the previous state.
func setenv(key, value string) (restore func()) {
	old, had := os.LookupEnv(key)
	os.Setenv(key, value)
	return func() {
		if had {
			os.Setenv(key, old)
		} else {
			os.Unsetenv(key)
		}
	}
}

// godebugWith returns $GODEBUG with setting added.
func godebugWith(setting string) string {
	if old := os.Getenv("GODEBUG"); old != "" {
		return old + "," + setting
	}
	return setting
}
