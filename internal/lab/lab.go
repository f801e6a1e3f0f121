package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Fixed addresses of the lab underlay.
const (
	// SwitchIP is the switch namespace's address on br0, where etcd listens.
	SwitchIP = "192.0.2.1"
	// UnderlayPrefixLen is the prefix length of every underlay address.
	UnderlayPrefixLen = 24
	// EtcdPort is etcd's client port inside the switch namespace.
	EtcdPort = 2379
	// HealthzPort is where weftd serves /healthz and /readyz (on 127.0.0.1
	// inside each host namespace).
	HealthzPort = 8471
	// UnderlayMTU is the MTU of every eth0 and of br0.
	UnderlayMTU = 1500
	// MaxHosts bounds Options.Hosts so every host fits the underlay /24.
	MaxHosts = 200
	// ConfigKey is where the network config lives with the default prefix.
	ConfigKey = "/coreos.com/network/config"
)

// EtcdEndpoint is the client URL of the lab's etcd.
var EtcdEndpoint = fmt.Sprintf("http://%s:%d", SwitchIP, EtcdPort)

// Options configures a lab. The zero value is a 3-host vxlan lab.
type Options struct {
	// Hosts is the number of host namespaces; default 3.
	Hosts int
	// Backend is the backend type written to the network config: "vxlan"
	// (default), "host-gw" or "udp".
	Backend string
	// BinDir holds weftd, weft (the CNI plugin), weftctl and weft-lab.
	// Default: the directory of the running executable.
	BinDir string
	// Network is the overlay network; default 198.18.0.0/16.
	Network string
	// SubnetLen, if non-zero, is written as the config's SubnetLen.
	SubnetLen int
	// ExtraConfig holds extra top-level fields of the network config, e.g.
	// {"SubnetMin": "198.18.10.0"}. A "Backend" entry holding an object is
	// merged into the backend object, e.g. {"Backend": {"VNI": 7}}.
	ExtraConfig map[string]any
	// Logger receives progress messages; default discards.
	Logger *slog.Logger
	// Name is the namespace name prefix; a random 4-hex-digit suffix is
	// appended. Default "wl". Keep it short: host link names are derived
	// from it and must fit in 15 characters.
	Name string
	// NoConfig leaves etcd empty instead of writing the network config
	// built from the options.
	NoConfig bool
	// IPv6 gives every host an IPv6 underlay address as well (Host.IP6,
	// 2001:db8::<10+i>/64) and makes the network dual-stack: the config
	// gets EnableIPv6 and IPv6Network (Network6, default
	// 2001:db8:100::/48), unless ExtraConfig sets them.
	IPv6 bool
	// Network6 is the IPv6 overlay network with IPv6; default
	// 2001:db8:100::/48.
	Network6 string
}

// Fixed IPv6 addresses of the lab underlay (Options.IPv6).
const (
	// SwitchIP6 is the switch namespace's IPv6 address on br0.
	SwitchIP6 = "2001:db8::1"
	// UnderlayPrefixLen6 is the prefix length of every IPv6 underlay
	// address.
	UnderlayPrefixLen6 = 64
)

// Lab is a running virtual cluster. Its methods are safe for concurrent use
// unless stated otherwise.
type Lab struct {
	Name     string  // e.g. "wl3f9a"
	Switch   string  // switch namespace name, e.g. "wl3f9a-sw"
	SwitchNS string  // /var/run/netns/<Switch>
	Hosts    []*Host // h1..hN
	Dir      string  // temp dir holding every file the lab writes
	BinDir   string

	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	etcd      *proc
	etcdPause bool
	pods      []*Pod
	extraNS   []string // namespaces to delete on Close besides sw/hosts/pods
	closed    bool
	kept      bool
	created   time.Time
	closeErr  error
}

// New builds the topology, starts etcd and, unless opts.NoConfig, writes
// the network config. On error everything built so far is removed.
func New(ctx context.Context, opts Options) (_ *Lab, err error) {
	if opts.Hosts == 0 {
		opts.Hosts = 3
	}
	if opts.Hosts < 1 || opts.Hosts > MaxHosts {
		return nil, fmt.Errorf("lab: hosts must be 1..%d, got %d", MaxHosts, opts.Hosts)
	}
	if opts.Backend == "" {
		opts.Backend = "vxlan"
	}
	if opts.Network == "" {
		opts.Network = "198.18.0.0/16"
	}
	if opts.Name == "" {
		opts.Name = "wl"
	}
	if opts.IPv6 && opts.Network6 == "" {
		opts.Network6 = "2001:db8:100::/48"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.BinDir == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("lab: find bin dir: %w", err)
		}
		opts.BinDir = filepath.Dir(exe)
	}
	bin, err := filepath.Abs(opts.BinDir)
	if err != nil {
		return nil, fmt.Errorf("lab: bin dir: %w", err)
	}
	if err := CheckTools("ip"); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(bin, "weft-lab")); err != nil {
		return nil, fmt.Errorf("lab: etcd runs as %s/weft-lab etcd: %w", bin, err)
	}

	suffix := make([]byte, 2)
	if _, err := rand.Read(suffix); err != nil {
		return nil, fmt.Errorf("lab: random name: %w", err)
	}
	name := opts.Name + hex.EncodeToString(suffix)
	// Longest derived name: <name>-h<N>p<k> must stay ≤ 15 characters.
	if len(name)+len(fmt.Sprint(opts.Hosts))+5 > 15 {
		return nil, fmt.Errorf("lab: name prefix %q too long for 15-character namespace names", opts.Name)
	}
	dir, err := os.MkdirTemp("", "weft-lab-"+name+"-")
	if err != nil {
		return nil, fmt.Errorf("lab: temp dir: %w", err)
	}
	l := &Lab{
		Name:     name,
		Switch:   name + "-sw",
		SwitchNS: nsPath(name + "-sw"),
		Dir:      dir,
		BinDir:   bin,
		opts:     opts,
		log:      opts.Logger.With("lab", name),
		created:  time.Now().UTC(),
	}
	defer func() {
		if err != nil {
			if cerr := l.Close(); cerr != nil {
				l.log.Warn("cleanup after failed start", "err", cerr)
			}
		}
	}()
	if err := l.saveState(); err != nil {
		return nil, err
	}
	if err := l.buildTopology(ctx); err != nil {
		return nil, fmt.Errorf("lab: build topology: %w", err)
	}
	if err := l.StartEtcd(); err != nil {
		return nil, err
	}
	if !opts.NoConfig {
		if err := l.WriteConfig(l.NetworkConfig()); err != nil {
			return nil, err
		}
	}
	l.log.Info("lab up", "hosts", opts.Hosts, "backend", opts.Backend, "dir", dir)
	return l, nil
}

// Options returns the options the lab was built with, defaults filled in.
func (l *Lab) Options() Options { return l.opts }

// NetworkConfig renders the network config JSON built from the options.
func (l *Lab) NetworkConfig() string {
	backend := map[string]any{"Type": l.opts.Backend}
	cfg := map[string]any{"Network": l.opts.Network}
	if l.opts.SubnetLen != 0 {
		cfg["SubnetLen"] = l.opts.SubnetLen
	}
	if l.opts.IPv6 {
		cfg["EnableIPv6"] = true
		cfg["IPv6Network"] = l.opts.Network6
	}
	for k, v := range l.opts.ExtraConfig {
		if b, ok := v.(map[string]any); ok && strings.EqualFold(k, "Backend") {
			for bk, bv := range b {
				backend[bk] = bv
			}
			continue
		}
		cfg[k] = v
	}
	cfg["Backend"] = backend
	out, _ := json.Marshal(cfg) // maps of plain values always marshal
	return string(out)
}

func nsPath(name string) string { return filepath.Join("/var/run/netns", name) }

// buildTopology creates the switch, the hosts and the veth cables.
func (l *Lab) buildTopology(ctx context.Context) error {
	sw := l.Switch
	if err := l.addNS(ctx, sw); err != nil {
		return err
	}
	if err := runAll(ctx,
		[]string{"ip", "-n", sw, "link", "set", "lo", "up"},
		[]string{"ip", "-n", sw, "link", "add", "br0", "mtu", fmt.Sprint(UnderlayMTU), "type", "bridge"},
		[]string{"ip", "-n", sw, "addr", "add", SwitchIP + "/24", "dev", "br0"},
		[]string{"ip", "-n", sw, "link", "set", "br0", "up"},
	); err != nil {
		return err
	}
	if l.opts.IPv6 {
		if err := run(ctx, "ip", "-n", sw, "addr", "add", fmt.Sprintf("%s/%d", SwitchIP6, UnderlayPrefixLen6), "dev", "br0", "nodad"); err != nil {
			return err
		}
	}
	for i := 1; i <= l.opts.Hosts; i++ {
		h := &Host{
			Name:  fmt.Sprintf("%s-h%d", l.Name, i),
			Index: i,
			IP:    netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}),
			lab:   l,
		}
		h.NS = nsPath(h.Name)
		h.Dir = filepath.Join(l.Dir, fmt.Sprintf("h%d", i))
		if err := os.MkdirAll(h.Dir, 0o755); err != nil {
			return err
		}
		if err := l.addNS(ctx, h.Name); err != nil {
			return err
		}
		l.Hosts = append(l.Hosts, h)
		port := fmt.Sprintf("h%d", i) // link name inside the switch ns
		if err := runAll(ctx,
			[]string{"ip", "-n", h.Name, "link", "set", "lo", "up"},
			[]string{"ip", "netns", "exec", h.Name, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"},
			[]string{"ip", "-n", sw, "link", "add", port, "mtu", fmt.Sprint(UnderlayMTU), "type", "veth",
				"peer", "name", "eth0", "mtu", fmt.Sprint(UnderlayMTU), "netns", h.Name},
			[]string{"ip", "-n", sw, "link", "set", port, "master", "br0"},
			[]string{"ip", "-n", sw, "link", "set", port, "up"},
			[]string{"ip", "-n", h.Name, "addr", "add", fmt.Sprintf("%s/%d", h.IP, UnderlayPrefixLen), "dev", "eth0"},
			[]string{"ip", "-n", h.Name, "link", "set", "eth0", "up"},
		); err != nil {
			return err
		}
		if l.opts.IPv6 {
			h.IP6 = netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", 0x10+i))
			if err := runAll(ctx,
				[]string{"ip", "netns", "exec", h.Name, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"},
				[]string{"ip", "-n", h.Name, "addr", "add", fmt.Sprintf("%s/%d", h.IP6, UnderlayPrefixLen6), "dev", "eth0", "nodad"},
			); err != nil {
				return err
			}
		}
		if err := h.writeCNIWrapper(); err != nil {
			return err
		}
	}
	return nil
}

// addNS creates a namespace and records it before anything else can fail,
// so that Close always deletes it.
func (l *Lab) addNS(ctx context.Context, name string) error {
	if err := run(ctx, "ip", "netns", "add", name); err != nil {
		return err
	}
	l.mu.Lock()
	l.extraNS = append(l.extraNS, name)
	l.mu.Unlock()
	return l.saveState()
}

// namespaces returns every namespace the lab created, pods first.
func (l *Lab) namespaces() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.extraNS))
	for i := len(l.extraNS) - 1; i >= 0; i-- {
		out = append(out, l.extraNS[i])
	}
	return out
}

// Close tears everything down: weftd and etcd are stopped, any other process
// left in a lab namespace is killed, every namespace is deleted and the temp
// dir and state file are removed. It is idempotent; later calls return the
// first call's result.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return l.closeErr
	}
	l.closed = true
	l.mu.Unlock()

	var errs []error
	var wg sync.WaitGroup
	for _, h := range l.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.mu.Lock()
			p := h.weftd
			h.mu.Unlock()
			if p != nil {
				p.stop(5 * time.Second)
			}
		}()
	}
	wg.Wait()
	l.mu.Lock()
	etcd := l.etcd
	l.mu.Unlock()
	if etcd != nil {
		etcd.stop(5 * time.Second)
	}
	nss := l.namespaces()
	if err := destroyNamespaces(nss); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(l.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", l.Dir, err))
	}
	if err := removeState(l.Name); err != nil {
		errs = append(errs, err)
	}
	l.mu.Lock()
	l.closeErr = errors.Join(errs...)
	l.mu.Unlock()
	l.log.Info("lab down")
	return l.closeErr
}

// destroyNamespaces kills every process inside the namespaces, then deletes
// them. Namespaces that are already gone are ignored.
func destroyNamespaces(names []string) error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range names {
		killNSProcesses(ctx, n)
	}
	for _, n := range names {
		if _, err := os.Stat(nsPath(n)); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := run(ctx, "ip", "netns", "delete", n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// run runs a command and returns an error holding its output on failure.
func run(ctx context.Context, argv ...string) error {
	_, err := output(ctx, argv...)
	return err
}

func output(ctx context.Context, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(string(out))
		}
		return out, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, msg)
	}
	return out, nil
}

func runAll(ctx context.Context, cmds ...[]string) error {
	for _, c := range cmds {
		if err := run(ctx, c...); err != nil {
			return err
		}
	}
	return nil
}

// DumpLogs writes the tail of etcd's and every weftd's log to w.
func (l *Lab) DumpLogs(w io.Writer) {
	files := []string{filepath.Join(l.Dir, "etcd.log")}
	for _, h := range l.Hosts {
		files = append(files, h.WeftdLog(), h.CNILog())
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		fmt.Fprintf(w, "==== %s (last 60 lines) ====\n%s\n", f, tail(data, 60))
	}
}

func tail(data []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Host returns host i (1-based).
func (l *Lab) Host(i int) *Host { return l.Hosts[i-1] }

// Pods returns every pod attached so far, in creation order.
func (l *Lab) Pods() []*Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Pod(nil), l.pods...)
}
