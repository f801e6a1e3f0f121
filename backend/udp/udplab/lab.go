// Package udplab builds a two-host lab in throwaway network namespaces for
// the udp backend's kernel tests and throughput benchmark:
//
//	pod p1 (198.18.1.2) --veth-- host h1 (192.0.2.1) ==veth underlay== host h2 (192.0.2.2) --veth-- pod p2 (198.18.2.2)
//
// Each host forwards between its pod and the overlay. The overlay is
// either weft's udp backend, run in-process with Config.Netns set to the
// host namespace, or a hand-made kernel vxlan device (the baseline).
// Nothing is created in the root namespace; every name starts with "wud"
// and a random suffix. Needs root.
package udplab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/backend/udp"
	"github.com/weftnet/weft/subnet"
)

// NetworkConfig is the cluster network config the lab uses.
const NetworkConfig = `{"Network":"198.18.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"}}`

// Lab is two hosts and two pods.
type Lab struct {
	Host   [2]string // host namespace names
	Pod    [2]string // pod namespace names
	HostIP [2]netip.Addr
	PodIP  [2]netip.Addr
	Subnet [2]netip.Prefix

	hostNS [2]netns.NsHandle
	mu     sync.Mutex
	procs  []*exec.Cmd
}

func run(name string, args ...string) (string, error) {
	var out, errb bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Exec runs a command inside namespace ns.
func Exec(ns string, args ...string) (string, error) {
	return run("ip", append([]string{"netns", "exec", ns}, args...)...)
}

// New builds the namespaces, the underlay and the pods. Pod links get
// podMTU. Close removes everything, also after a failed New.
func New(podMTU int) (l *Lab, err error) {
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	base := "wud" + hex.EncodeToString(rnd[:])
	l = &Lab{}
	defer func() {
		if err != nil {
			l.Close()
			l = nil
		}
	}()
	for i := range 2 {
		l.Host[i] = fmt.Sprintf("%sh%d", base, i+1)
		l.Pod[i] = fmt.Sprintf("%sp%d", base, i+1)
		l.HostIP[i] = netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)})
		l.PodIP[i] = netip.AddrFrom4([4]byte{198, 18, byte(i + 1), 2})
		l.Subnet[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i + 1), 0}), 24)
	}
	for _, ns := range append(l.Host[:], l.Pod[:]...) {
		if _, err := run("ip", "netns", "add", ns); err != nil {
			return l, err
		}
		if _, err := run("ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
			return l, err
		}
	}
	for i := range 2 {
		if l.hostNS[i], err = netns.GetFromName(l.Host[i]); err != nil {
			return l, fmt.Errorf("open netns %s: %w", l.Host[i], err)
		}
	}
	h1, h2 := l.Host[0], l.Host[1]
	steps := [][]string{
		{"ip", "-n", h1, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", h2},
	}
	for i := range 2 {
		h, p := l.Host[i], l.Pod[i]
		gw := netip.PrefixFrom(l.Subnet[i].Addr().Next(), 24)
		steps = append(steps,
			[]string{"ip", "-n", h, "addr", "add", l.HostIP[i].String() + "/24", "dev", "eth0"},
			[]string{"ip", "-n", h, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", h, "link", "add", "pod0", "mtu", fmt.Sprint(podMTU), "type", "veth", "peer", "name", "eth0", "netns", p},
			[]string{"ip", "-n", p, "link", "set", "eth0", "mtu", fmt.Sprint(podMTU)},
			[]string{"ip", "-n", h, "addr", "add", gw.String(), "dev", "pod0"},
			[]string{"ip", "-n", h, "link", "set", "pod0", "up"},
			[]string{"ip", "-n", p, "addr", "add", l.PodIP[i].String() + "/24", "dev", "eth0"},
			[]string{"ip", "-n", p, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", p, "route", "add", "default", "via", gw.Addr().String()},
			[]string{"ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		)
	}
	for _, s := range steps {
		if _, err := run(s[0], s[1:]...); err != nil {
			return l, err
		}
	}
	return l, nil
}

// HostNS returns the namespace handle of host i (owned by the lab).
func (l *Lab) HostNS(i int) netns.NsHandle { return l.hostNS[i] }

// Close kills the lab's processes and deletes its namespaces.
func (l *Lab) Close() error {
	l.mu.Lock()
	for _, c := range l.procs {
		if c.Process != nil {
			c.Process.Kill()
			c.Wait()
		}
	}
	l.procs = nil
	l.mu.Unlock()
	var errs []error
	for i := range 2 {
		if l.hostNS[i].IsOpen() {
			l.hostNS[i].Close()
		}
	}
	for _, ns := range append(l.Host[:], l.Pod[:]...) {
		if ns == "" {
			continue
		}
		if _, err := run("ip", "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Leases returns the own lease and peer leases of host i.
func (l *Lab) Leases(i int) (subnet.Lease, []*subnet.Lease) {
	lease := func(j int) *subnet.Lease {
		return &subnet.Lease{Subnet: l.Subnet[j], Attrs: subnet.LeaseAttrs{PublicIP: l.HostIP[j]}}
	}
	return *lease(i), []*subnet.Lease{lease(1 - i)}
}

// Node is a udp backend running in-process for one lab host.
type Node struct {
	Backend backend.Backend
	cancel  context.CancelFunc
	done    chan error
	once    sync.Once
	err     error
}

// Stop ends the backend's Run and returns its result. It is idempotent.
func (n *Node) Stop() error {
	n.once.Do(func() {
		n.cancel()
		n.err = <-n.done
	})
	return n.err
}

// Offloads returns the offloads the node's data path uses.
func (n *Node) Offloads() string {
	if o, ok := n.Backend.(interface{ Offloads() string }); ok {
		return o.Offloads()
	}
	return ""
}

// StartUDP builds, sets up and runs a udp backend for host i with the given
// backend options (nil for defaults).
func (l *Lab) StartUDP(i int, opts json.RawMessage, logger *slog.Logger) (*Node, error) {
	nw, err := subnet.ParseConfig([]byte(NetworkConfig))
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	b, err := udp.New(backend.Config{
		Network: nw,
		Options: opts,
		Ext:     backend.ExternalInterface{Name: "eth0", Addr: l.HostIP[i], PublicIP: l.HostIP[i], MTU: 1500},
		Netns:   l.hostNS[i],
		Logger:  logger.With("host", l.Host[i]),
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := b.Setup(ctx); err != nil {
		cancel()
		return nil, err
	}
	own, peers := l.Leases(i)
	b.SetDesired(own, peers)
	n := &Node{Backend: b, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- b.Run(ctx) }()
	// Wait for the first reconcile.
	deadline := time.Now().Add(5 * time.Second)
	for b.Status().LastReconcile.IsZero() {
		if time.Now().After(deadline) {
			n.Stop()
			return nil, errors.New("udp backend did not reconcile within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if e := b.Status().LastError; e != "" {
		n.Stop()
		return nil, fmt.Errorf("udp backend reconcile: %s", e)
	}
	return n, nil
}

// SetupVXLAN programs a kernel vxlan overlay by hand, the way flannel's
// vxlan backend would (static neighbour, FDB and route per peer).
func (l *Lab) SetupVXLAN() error {
	mac := func(i int) string { return fmt.Sprintf("02:77:75:64:00:%02x", i+1) }
	for i := range 2 {
		h, j := l.Host[i], 1-i
		steps := [][]string{
			{"ip", "-n", h, "link", "add", "vx0", "address", mac(i), "mtu", "1450", "type", "vxlan", "id", "1", "dstport", "8472",
				"local", l.HostIP[i].String(), "dev", "eth0", "nolearning"},
			{"ip", "-n", h, "addr", "add", l.Subnet[i].Addr().String() + "/32", "dev", "vx0"},
			{"ip", "-n", h, "link", "set", "vx0", "up"},
			{"ip", "-n", h, "neigh", "add", l.Subnet[j].Addr().String(), "lladdr", mac(j), "dev", "vx0", "nud", "permanent"},
			{"bridge", "-n", h, "fdb", "append", mac(j), "dev", "vx0", "dst", l.HostIP[j].String(), "self", "permanent"},
			{"ip", "-n", h, "route", "add", l.Subnet[j].String(), "via", l.Subnet[j].Addr().String(), "dev", "vx0", "onlink"},
		}
		for _, s := range steps {
			if _, err := run(s[0], s[1:]...); err != nil {
				return err
			}
		}
	}
	return nil
}

// Ping sends count pings at the given interval from namespace ns to dst and
// returns how many were sent and received.
func Ping(ns string, dst netip.Addr, count int, interval time.Duration) (sent, recv int, err error) {
	out, err := Exec(ns, "ping", "-n", "-q", "-c", fmt.Sprint(count), "-i", fmt.Sprintf("%.3f", interval.Seconds()), "-W", "1", dst.String())
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "packets transmitted") {
			if _, serr := fmt.Sscanf(line, "%d packets transmitted, %d received", &sent, &recv); serr == nil {
				return sent, recv, nil
			}
		}
	}
	if err == nil {
		err = fmt.Errorf("no ping summary in %q", out)
	}
	return 0, 0, err
}

// Iperf runs a single-stream iperf3 TCP test for secs seconds from
// namespace from to a server in namespace to at dst and returns Gbit/s as
// received.
func (l *Lab) Iperf(from, to string, dst netip.Addr, secs int) (float64, error) {
	srv := exec.Command("ip", "netns", "exec", to, "iperf3", "-s", "-1", "-B", dst.String())
	if err := srv.Start(); err != nil {
		return 0, err
	}
	l.mu.Lock()
	l.procs = append(l.procs, srv)
	l.mu.Unlock()
	defer func() {
		srv.Process.Kill()
		srv.Wait()
	}()
	var out string
	var err error
	for try := 0; try < 50; try++ {
		time.Sleep(100 * time.Millisecond)
		out, err = Exec(from, "iperf3", "-c", dst.String(), "-t", fmt.Sprint(secs), "-J")
		if err == nil || !strings.Contains(out+err.Error(), "connect") {
			break
		}
	}
	if err != nil {
		return 0, err
	}
	return parseIperf(out)
}

// parseIperf returns the Gbit/s received from iperf3 -J output.
func parseIperf(out string) (float64, error) {
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return 0, fmt.Errorf("parse iperf3 output: %w", err)
	}
	if res.Error != "" {
		return 0, errors.New("iperf3: " + res.Error)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}

// Result is one throughput comparison.
type Result struct {
	RawGbps   float64 // host to host over the veth underlay
	VXLANGbps float64 // pod to pod over kernel vxlan
	UDPGbps   float64 // pod to pod over weft's udp backend
	PlainGbps float64 // the same without offloads: one packet per syscall, like flannel
	Offloads  string  // offloads the udp data path used
}

// Ratio is UDPGbps / VXLANGbps.
func (r Result) Ratio() float64 {
	if r.VXLANGbps == 0 {
		return 0
	}
	return r.UDPGbps / r.VXLANGbps
}

func (r Result) String() string {
	return fmt.Sprintf("raw veth %.2f Gbit/s, kernel vxlan %.2f Gbit/s, weft udp %.2f Gbit/s, udp/vxlan %.1f%% (offloads: %s); without offloads %.2f Gbit/s (%.1f%% of vxlan)",
		r.RawGbps, r.VXLANGbps, r.UDPGbps, 100*r.Ratio(), r.Offloads, r.PlainGbps, 100*r.PlainGbps/max(r.VXLANGbps, 1e-9))
}

// BenchThroughput measures single-stream iperf3 TCP throughput over the
// raw underlay, a kernel vxlan overlay and the udp backend. The vxlan lab
// and the udp lab exist side by side, and the runs alternate (vxlan, udp,
// vxlan, udp, ...) for the given number of rounds of secs seconds each,
// so that load from elsewhere on the machine hits both alike; the result
// holds the means. A last run measures the udp backend without offloads
// (flannel's one-packet-per-syscall model). Needs root and iperf3.
func BenchThroughput(secs, rounds int, logger *slog.Logger) (Result, error) {
	var r Result
	if rounds < 1 {
		rounds = 1
	}
	vx, ul, nodes, closeAll, err := newPair(logger)
	if err != nil {
		return r, err
	}
	defer closeAll()
	r.Offloads = nodes[0].Offloads()
	if r.RawGbps, err = vx.Iperf(vx.Host[0], vx.Host[1], vx.HostIP[1], secs); err != nil {
		return r, fmt.Errorf("raw underlay: %w", err)
	}
	for range rounds {
		g, err := vx.Iperf(vx.Pod[0], vx.Pod[1], vx.PodIP[1], secs)
		if err != nil {
			return r, fmt.Errorf("vxlan: %w", err)
		}
		r.VXLANGbps += g / float64(rounds)
		if g, err = ul.Iperf(ul.Pod[0], ul.Pod[1], ul.PodIP[1], secs); err != nil {
			return r, fmt.Errorf("udp: %w", err)
		}
		r.UDPGbps += g / float64(rounds)
	}
	// The udp backend again, re-attached without offloads.
	for _, n := range nodes {
		n.Stop() // idempotent: closeAll stops them again harmlessly
	}
	for i := range 2 {
		n, err := ul.StartUDP(i, json.RawMessage(`{"DisableOffloads":true}`), logger)
		if err != nil {
			return r, err
		}
		defer n.Stop()
	}
	if r.PlainGbps, err = ul.Iperf(ul.Pod[0], ul.Pod[1], ul.PodIP[1], secs); err != nil {
		return r, fmt.Errorf("udp without offloads: %w", err)
	}
	return r, nil
}

// newPair builds the two labs the benchmarks compare: a vxlan baseline and
// a udp lab with the backend running on both hosts. closeAll stops the
// nodes and removes both labs; it is valid (a no-op for what was not
// built) even when err is not nil.
func newPair(logger *slog.Logger) (vx, ul *Lab, nodes []*Node, closeAll func(), err error) {
	var closers []func()
	closeAll = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	if vx, err = New(1450); err != nil {
		return nil, nil, nil, closeAll, err
	}
	closers = append(closers, func() { vx.Close() })
	if err = vx.SetupVXLAN(); err != nil {
		return nil, nil, nil, closeAll, fmt.Errorf("vxlan baseline: %w", err)
	}
	if ul, err = New(1500 - 28); err != nil {
		return nil, nil, nil, closeAll, err
	}
	closers = append(closers, func() { ul.Close() })
	for i := range 2 {
		n, err := ul.StartUDP(i, nil, logger)
		if err != nil {
			return nil, nil, nil, closeAll, err
		}
		nodes = append(nodes, n)
		closers = append(closers, func() { n.Stop() })
	}
	return vx, ul, nodes, closeAll, nil
}
