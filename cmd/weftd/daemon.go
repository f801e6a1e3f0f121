package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sdaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/cmd/weftd/node"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/nftables"
	"github.com/weftnet/weft/subnet"
	"github.com/weftnet/weft/subnet/etcd"
)

// daemon starts weftd: it picks the external interface, connects to etcd,
// waits for a valid network config, sets the backend up and then hands the
// steady state to the node core (package node), which owns it. What daemon
// keeps is read-only once published in wired.
type daemon struct {
	cfg      *Config
	backends map[string]backendEntry
	logger   *slog.Logger
	metrics  *metrics
	started  time.Time
	// collector, when set, collects garbage after large reconcile
	// passes (memory.go); nil when $GOGC is set, which weftd then leaves
	// to the runtime.
	collector *passCollector

	// startup is why weftd is not running its core yet.
	startup atomic.Pointer[string]
	// configError is the start-up config problem, "" when none.
	configError atomic.Pointer[string]
	// wired is set once the core runs; never changed afterwards.
	wired atomic.Pointer[wiring]
}

// leaseStore is a node.Store that weftd can also list leases from at
// start-up and ask about etcd contact and lease expiry.
type leaseStore interface {
	node.Store
	// Leases lists every lease now.
	Leases(ctx context.Context) (subnet.LeaseSet, error)
	// Lease is the lease held now, with its expiry as of the last renewal.
	Lease() (subnet.Lease, bool)
	// LastContact is when the store last answered.
	LastContact() time.Time
}

var _ leaseStore = (*etcd.Store)(nil)

// wiring is what start-up built.
type wiring struct {
	netcfg *subnet.Config
	ext    backend.ExternalInterface
	be     backend.Backend
	store  leaseStore
	ipt    ruleKeeper
	core   *node.Core
}

func newDaemon(cfg *Config, backends map[string]backendEntry, logger *slog.Logger) *daemon {
	d := &daemon{
		cfg:      cfg,
		backends: backends,
		logger:   logger,
		metrics:  newMetrics(),
		started:  time.Now(),
	}
	d.setReason("connecting to etcd")
	d.setConfigError("")
	return d
}

// afterPass records a reconcile pass in the metrics and lets the
// collector run.
func (d *daemon) afterPass(took time.Duration, err error) {
	d.metrics.observeReconcile(took, err)
	if d.collector != nil {
		d.collector.afterPass()
	}
}

func (d *daemon) setReason(format string, args ...any) {
	r := fmt.Sprintf(format, args...)
	d.startup.Store(&r)
}

func (d *daemon) setConfigError(e string) { d.configError.Store(&e) }

// Run starts weftd and returns when ctx is done (nil) or start-up failed
// for good (an error). Transient etcd failures never end it.
func (d *daemon) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if d.cfg.HealthzPort > 0 {
		srv, err := d.startHTTP()
		if err != nil {
			return err
		}
		wg.Go(func() {
			<-ctx.Done()
			shut, c := context.WithTimeout(context.Background(), 2*time.Second)
			defer c()
			srv.Shutdown(shut)
		})
	}

	var kc *kubeConn // Kubernetes mode; before the interface, whose public IP it may set
	if d.cfg.Kube.Enabled {
		conn, err := d.kubeConnect(ctx) // kube.go
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			return err
		}
		kc = conn
	}
	ext, err := chooseInterface(d.cfg)
	if err != nil {
		return fmt.Errorf("choose external interface: %w", err)
	}
	d.logger.Info("using external interface", "iface", ext.Name, "addr", ext.Addr, "public-ip", ext.PublicIP, "mtu", ext.MTU)

	var store leaseStore
	if d.cfg.Kube.Enabled {
		ks, err := d.kubeStore(kc) // kube.go
		if err != nil {
			return err
		}
		wg.Go(func() { ks.Run(ctx) })
		store = ks
	} else {
		opts := d.cfg.Etcd
		opts.DialOptions = append(opts.DialOptions,
			grpc.WithChainUnaryInterceptor(d.metrics.countEtcdErrors),
			grpc.WithChainStreamInterceptor(d.metrics.countEtcdStreamErrors))
		cli, err := etcd.NewClient(opts)
		if err != nil {
			return fmt.Errorf("etcd client: %w", err)
		}
		defer cli.Close()
		reg := etcd.NewRegistry(cli, d.cfg.EtcdPrefix)
		store = etcd.NewStore(reg, etcd.StoreConfig{
			TTL:         d.cfg.LeaseTTL,
			RenewMargin: d.cfg.RenewMargin,
			Logger:      d.logger,
		})
	}

	netcfg, err := d.waitForConfig(ctx, store, ext)
	if err != nil {
		return nil // ctx ended
	}
	entry := d.backends[netcfg.BackendType] // checkConfig made sure it exists
	if netcfg.BackendDefaulted {
		d.logger.Warn("the network config has no Backend; using vxlan. flanneld would pick udp here, so in a mixed cluster set Backend.Type explicitly")
	}

	// Switching backends: remove whatever another backend left behind.
	types := make([]string, 0, len(d.backends))
	for t := range d.backends {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, t := range types {
		if t == netcfg.BackendType {
			continue
		}
		if err := d.backends[t].Cleanup(ctx, netns.None(), d.logger.With("backend", t)); err != nil {
			return fmt.Errorf("remove leftovers of backend %s: %w", t, err)
		}
	}

	prevSubnet, prevSubnet6, prevAttrs, peerAttrs := d.previous(ctx, store, netcfg, ext)
	be, err := entry.New(backend.Config{
		Network:        netcfg,
		Options:        netcfg.Backend,
		Ext:            ext,
		Netns:          netns.None(),
		Previous:       prevAttrs,
		PeerAttrs:      peerAttrs,
		ResyncInterval: d.cfg.ReconcileEvery,
		Logger:         d.logger, // the backend adds its own "backend" attribute
		OnReconcile:    d.afterPass,
		WireGuard:      backend.WireGuardHost{KeyFile: d.cfg.WireGuardKeyFile, Driver: d.cfg.WireGuardDriver},
	})
	if err != nil {
		return fmt.Errorf("backend %s: %w", netcfg.BackendType, err)
	}
	d.setReason("setting up the %s backend", netcfg.BackendType)
	attrs, err := be.Setup(ctx)
	if err != nil {
		return fmt.Errorf("set up backend %s: %w", netcfg.BackendType, err)
	}
	attrs.PublicIP = ext.PublicIP
	if netcfg.EnableIPv6 {
		attrs.PublicIPv6 = ext.PublicIPv6
	}

	ipt, err := d.newRuleKeeper(netcfg)
	if err != nil {
		return err
	}
	var rules hostRules
	if ipt != nil {
		rules = append(rules, ipt)
	}
	bh, err := d.blackholeRoute()
	if err != nil {
		return err
	}
	if bh != nil {
		rules = append(rules, bh)
	}

	core := node.New(node.Config{
		Network:     netcfg,
		Peers:       entry.PeerRules(),
		SameOptions: entry.SameOptions,
		Previous:    prevSubnet,
		Previous6:   prevSubnet6,
		Check:       func(raw []byte) (*subnet.Config, error) { return d.checkConfig(raw, ext) },
		Attrs:       attrs,
		IPMasq:      d.cfg.IPMasq,
		OnRefusal: func(r subnet.Refusal) {
			d.metrics.leasesSkipped.WithLabelValues(r.Reason).Inc()
		},
		Logger: d.logger,
	}, store, be, rules.edge(), envFile(d.cfg.SubnetFile))
	d.wired.Store(&wiring{netcfg: netcfg, ext: ext, be: be, store: store, ipt: ipt, core: core})

	wg.Go(func() {
		if err := be.Run(ctx); err != nil {
			d.logger.Error("backend stopped", "backend", netcfg.BackendType, "err", err)
			cancel()
		}
	})
	wg.Go(func() {
		if err := core.Run(ctx); err != nil && ctx.Err() == nil {
			d.logger.Error("node core stopped", "err", err)
			cancel()
		}
	})
	if ipt != nil {
		wg.Go(func() { ipt.Run(ctx, d.cfg.IPTablesResync) })
	}
	if bh != nil {
		wg.Go(func() { bh.Run(ctx, d.cfg.IPTablesResync) })
	}
	wg.Go(func() { d.notifyWhenReady(ctx) })

	<-ctx.Done()
	return nil
}

// envFile is the subnet file at a path.
type envFile string

// Write implements node.SubnetFile.
func (f envFile) Write(e subnet.Env) error { return subnet.WriteEnvFile(string(f), e) }

// waitForConfig polls the network config until a valid one appears. A
// missing or invalid config is logged once per distinct problem, not once
// per attempt.
func (d *daemon) waitForConfig(ctx context.Context, store leaseStore, ext backend.ExternalInterface) (*subnet.Config, error) {
	var lastProblem string
	delay := 250 * time.Millisecond
	for {
		cctx, c := context.WithTimeout(ctx, 5*time.Second)
		raw, err := store.Config(cctx)
		c()
		var cfg *subnet.Config
		var cfgErr error
		if err == nil {
			cfg, cfgErr = d.checkConfig(raw, ext)
		}
		var problem string
		switch {
		case err == nil && cfgErr == nil:
			d.setConfigError("")
			return cfg, nil
		case errors.Is(err, subnet.ErrNoConfig):
			d.setConfigError("")
			d.setReason("waiting for the network config at %s", d.configSource())
			problem = err.Error()
		case err != nil:
			d.setConfigError("")
			d.setReason("cannot reach etcd: %v", err)
			problem = "etcd unreachable"
		default:
			err = cfgErr
			problem = cfgErr.Error()
			d.setConfigError(problem)
		}
		if problem != lastProblem {
			d.logger.Warn("waiting for a valid network config; retrying", "err", err)
			lastProblem = problem
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 2*time.Second)
	}
}

// checkConfig parses a network config and checks everything that would
// make it unusable on this host before anything is built from it: an
// unknown backend type, options the backend's own parser refuses, and a
// network that contains our underlay address (its routes would capture
// the host's own traffic, etcd's included).
func (d *daemon) checkConfig(raw []byte, ext backend.ExternalInterface) (*subnet.Config, error) {
	cfg, err := subnet.ParseConfig(raw)
	if err != nil {
		return nil, err
	}
	entry, ok := d.backends[cfg.BackendType]
	if !ok {
		types := make([]string, 0, len(d.backends))
		for t := range d.backends {
			types = append(types, t)
		}
		sort.Strings(types)
		return nil, fmt.Errorf("config field Backend.Type: unknown backend %q (want one of %s)", cfg.BackendType, strings.Join(types, ", "))
	}
	if cfg.EnableIPv6 && !entry.DualStack {
		return nil, fmt.Errorf("config field EnableIPv6: backend %s carries IPv4 only (dual stack runs on vxlan and host-gw)", cfg.BackendType)
	}
	if cfg.EnableIPv6 && d.cfg.Kube.Enabled {
		return nil, errors.New("config field EnableIPv6: dual stack with --kube-subnet-mgr is not supported yet (it is in etcd mode)")
	}
	if cfg.EnableIPv6 && !ext.PublicIPv6.IsValid() {
		return nil, fmt.Errorf("config field EnableIPv6: this host has no global IPv6 address on %s; add one or set --public-ipv6", ext.Name)
	}
	if err := cfg.CheckUnderlay(ext.Addr, ext.PublicIP, ext.Addr6, ext.PublicIPv6); err != nil {
		return nil, fmt.Errorf("%w (the address of %s on this host)", err, ext.Name)
	}
	// A Factory validates its options and touches no kernel state.
	if _, err := entry.New(backend.Config{Network: cfg, Options: cfg.Backend, Ext: ext, Netns: netns.None(),
		Logger: slog.New(slog.DiscardHandler)}); err != nil {
		return nil, fmt.Errorf("config field Backend: %w", err)
	}
	return cfg, nil
}

// previous returns the subnets from an earlier subnet file (if they belong
// to this network), the attributes of our earlier lease in the store, if
// any, and the attributes of every other host's lease.
func (d *daemon) previous(ctx context.Context, store leaseStore, netcfg *subnet.Config, ext backend.ExternalInterface) (netip.Prefix, netip.Prefix, subnet.LeaseAttrs, []subnet.LeaseAttrs) {
	var prevSubnet, prevSubnet6 netip.Prefix
	if env, err := subnet.ReadEnvFile(d.cfg.SubnetFile); err == nil && env.Network == netcfg.Network {
		prevSubnet = env.LeaseSubnet()
		if netcfg.EnableIPv6 && env.IPv6Network == netcfg.IPv6.Network {
			prevSubnet6 = env.LeaseSubnet6()
		}
	}
	cctx, c := context.WithTimeout(ctx, 5*time.Second)
	defer c()
	snap, err := store.Leases(cctx)
	if err != nil {
		return prevSubnet, prevSubnet6, subnet.LeaseAttrs{}, nil
	}
	var prev subnet.LeaseAttrs
	found := false
	others := make([]subnet.LeaseAttrs, 0, len(snap.Leases))
	for _, l := range snap.Leases {
		if l.Attrs.PublicIP != ext.PublicIP {
			others = append(others, l.Attrs)
			continue
		}
		// Ours by PublicIP: prefer the lease in our previous subnet.
		if l.Attrs.BackendType == d.backends[netcfg.BackendType].LeaseType && (!found || l.Subnet == prevSubnet) {
			prev, found = l.Attrs, true
		}
	}
	return prevSubnet, prevSubnet6, prev, others
}

// notifyWhenReady tells systemd READY=1 the first time weftd is ready.
func (d *daemon) notifyWhenReady(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if ok, _ := d.readiness(); ok {
			if _, err := sdaemon.SdNotify(false, sdaemon.SdNotifyReady); err != nil {
				d.logger.Warn("sd_notify READY=1", "err", err)
			}
			d.logger.Info("ready", "after", time.Since(d.started).Round(time.Millisecond))
			return
		}
	}
}

// readiness reports whether weftd is ready, with a one-line reason when
// it is not: during start-up the start-up step, then the core's verdict.
func (d *daemon) readiness() (bool, string) {
	w := d.wired.Load()
	if w == nil {
		if e := *d.configError.Load(); e != "" {
			return false, "network config is invalid: " + e
		}
		return false, *d.startup.Load()
	}
	return node.Readiness(w.core.State(), w.be.Status())
}

// blackholeRoute returns the keeper of the blackhole route for our subnet
// with --ip-blackhole-route (it is re-checked every --iptables-resync, as
// flanneld does), and otherwise removes weft's blackhole routes and
// returns nil.
func (d *daemon) blackholeRoute() (*blackhole, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle for the blackhole route: %w", err)
	}
	if !d.cfg.IPBlackholeRoute {
		defer h.Close()
		if err := removeBlackholes(h); err != nil {
			d.logger.Warn("remove old blackhole routes", "err", err)
		}
		return nil, nil
	}
	return newBlackhole(h, d.logger.With("component", "blackhole")), nil
}

// ruleKeeper keeps the masquerade and forward rules in place:
// *iptables.Manager or *nftables.Manager.
type ruleKeeper interface {
	// Set installs the rules for the network and our subnet (node.Rules).
	Set(network, own netip.Prefix) error
	// Set6 does the same for the IPv6 network and subnet of a dual-stack
	// network (node.Rules6).
	Set6(network6, own6 netip.Prefix) error
	// Run re-checks and repairs the rules every interval until ctx ends.
	Run(ctx context.Context, interval time.Duration) error
	// Repairs counts the rules restored after Set installed them.
	Repairs() uint64
}

var (
	_ ruleKeeper = (*iptables.Manager)(nil)
	_ ruleKeeper = (*nftables.Manager)(nil)
)

// newRuleKeeper builds the keeper of the rules in the mode chosen, after
// removing the other mode's rules (and both modes' when both rule sets are
// off), as switching backends removes the other backends' leftovers. It
// returns nil when there are no rules to keep.
func (d *daemon) newRuleKeeper(netcfg *subnet.Config) (ruleKeeper, error) {
	sys, iptErr := iptables.New()
	// ip6tables: kept on a dual-stack network, else only cleaned up.
	sys6, ipt6Err := iptables.New6()
	kern := nftables.NewKernel(0)
	nft, why := d.cfg.UseNFTables(netcfg.EnableNFTables, iptErr == nil)
	want := d.cfg.IPMasq || d.cfg.IPTablesForward
	if !nft || !want {
		if err := nftables.Remove(kern); err != nil {
			d.logger.Warn("remove old nftables rules (tables ip weft and ip6 weft)", "err", err)
		}
	}
	// In nftables mode the fallback keeps WEFT-FWD while iptables' FORWARD
	// policy drops, and removes it otherwise.
	remove := iptables.Remove
	if want && d.cfg.IPTablesForward {
		remove = iptables.RemoveMasq
	}
	if iptErr == nil && (nft || !want) {
		if err := remove(sys); err != nil {
			d.logger.Warn("remove old iptables rules", "err", err)
		}
	}
	if ipt6Err == nil && (nft || !want || !netcfg.EnableIPv6) {
		rm6 := remove
		if !netcfg.EnableIPv6 {
			rm6 = iptables.Remove // IPv4-only: no IPv6 rules at all
		}
		if err := rm6(sys6); err != nil {
			d.logger.Warn("remove old ip6tables rules", "err", err)
		}
	}
	if !want {
		return nil, nil
	}
	if !nft {
		if iptErr != nil {
			return nil, fmt.Errorf("%w (%s; --nftables=on needs no binary)", iptErr, why)
		}
		d.logger.Info("masquerade and forward rules in iptables", "why", why)
		m := iptables.NewManager(sys, d.cfg.IPMasq, d.cfg.IPTablesForward, d.logger.With("component", "iptables"))
		if d.cfg.IPMasqPlain {
			m.DisableFullyRandom()
		}
		if netcfg.EnableIPv6 {
			if ipt6Err != nil {
				return nil, fmt.Errorf("dual stack in iptables mode needs ip6tables: %w (or run with --nftables=on)", ipt6Err)
			}
			m.EnableIPv6(sys6)
		}
		return m, nil
	}
	var fallback, fallback6 nftables.ForwardFallback
	if iptErr == nil {
		fallback = iptables.NewForwardFallback(sys)
	}
	if ipt6Err == nil && netcfg.EnableIPv6 {
		fallback6 = iptables.NewForwardFallback(sys6)
	}
	d.logger.Info("masquerade and forward rules in nftables, table ip weft (and ip6 weft on a dual-stack network)", "why", why)
	return nftables.NewManager(kern, nftables.Config{
		Masq: d.cfg.IPMasq, Forward: d.cfg.IPTablesForward, PlainMasq: d.cfg.IPMasqPlain, Fallback: fallback, Fallback6: fallback6,
		Logger: d.logger.With("component", "nftables"),
	}), nil
}
