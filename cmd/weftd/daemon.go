package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	sdaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/vishvananda/netns"
	"google.golang.org/grpc"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/subnet"
	"github.com/weftnet/weft/subnet/etcd"
)

// daemon wires leases, the backend and the host's rules together.
//
// Data flow: etcd watch -> Watcher snapshot -> applySnapshot filters out our
// own and invalid leases -> backend.SetDesired -> the backend's Run loop
// makes the kernel match. Our own lease flows the same way through
// onLeaseChange, which also rewrites subnet.env and the iptables rules.
type daemon struct {
	cfg      *Config
	backends map[string]backendEntry
	logger   *slog.Logger
	metrics  *metrics
	started  time.Time

	mu            sync.Mutex
	reason        string // why we are not ready yet, "" once past start-up
	netcfg        *subnet.Config
	ext           backend.ExternalInterface
	be            backend.Backend
	reg           *etcd.Registry
	holder        *etcd.Holder
	ipt           *iptables.Manager
	lease         subnet.Lease
	haveLease     bool
	fileWritten   bool
	lastSnap      *etcd.Snapshot
	peersKnown    int
	logged        map[string]string // lease key -> refusal already logged
	refused       []subnet.Refusal  // the filter's refusals for lastSnap
	leasesSkipped int               // refusals of broken leases (not conflicts)
	restartNeeded bool
	configError   string
	notified      bool
}

func newDaemon(cfg *Config, backends map[string]backendEntry, logger *slog.Logger) *daemon {
	return &daemon{
		cfg:      cfg,
		backends: backends,
		logger:   logger,
		metrics:  newMetrics(),
		started:  time.Now(),
		reason:   "connecting to etcd",
		logged:   map[string]string{},
	}
}

func (d *daemon) setReason(format string, args ...any) {
	d.mu.Lock()
	d.reason = fmt.Sprintf(format, args...)
	d.mu.Unlock()
}

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

	ext, err := chooseInterface(d.cfg)
	if err != nil {
		return fmt.Errorf("choose external interface: %w", err)
	}
	d.logger.Info("using external interface", "iface", ext.Name, "addr", ext.Addr, "public-ip", ext.PublicIP, "mtu", ext.MTU)

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

	netcfg, raw, err := d.waitForConfig(ctx, reg, ext)
	if err != nil {
		return nil // ctx ended
	}
	entry, ok := d.backends[netcfg.BackendType]
	if !ok {
		return fmt.Errorf("config field Backend.Type: unknown backend %q", netcfg.BackendType)
	}
	if netcfg.BackendDefaulted {
		d.logger.Warn("the network config has no Backend; using vxlan. flanneld would pick udp here, so in a mixed cluster set Backend.Type explicitly")
	}
	logger := d.logger.With("backend", netcfg.BackendType)

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

	prevSubnet, prevAttrs, peerAttrs := d.previous(ctx, reg, netcfg, ext)
	be, err := entry.New(backend.Config{
		Network:        netcfg,
		Options:        netcfg.Backend,
		Ext:            ext,
		Netns:          netns.None(),
		Previous:       prevAttrs,
		PeerAttrs:      peerAttrs,
		ResyncInterval: d.cfg.ReconcileEvery,
		Logger:         logger,
		OnReconcile:    d.metrics.observeReconcile,
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

	var ipt *iptables.Manager
	if d.cfg.IPMasq || d.cfg.IPTablesForward {
		sys, err := iptables.New()
		if err != nil {
			return err
		}
		ipt = iptables.NewManager(sys, d.cfg.IPMasq, d.cfg.IPTablesForward, d.logger.With("component", "iptables"))
	} else if sys, err := iptables.New(); err == nil {
		// Both rule sets are off: remove any that an earlier run installed.
		if err := iptables.Remove(sys); err != nil {
			d.logger.Warn("remove old iptables rules", "err", err)
		}
	}

	holder := etcd.NewHolder(reg, etcd.HolderConfig{
		Network:        netcfg,
		Attrs:          attrs,
		PreviousSubnet: prevSubnet,
		TTL:            d.cfg.LeaseTTL,
		RenewMargin:    d.cfg.RenewMargin,
		Logger:         d.logger.With("component", "lease"),
		OnChange:       d.onLeaseChange,
	})
	d.mu.Lock()
	d.netcfg, d.ext, d.be, d.reg, d.holder, d.ipt = netcfg, ext, be, reg, holder, ipt
	d.mu.Unlock()

	lease, err := d.acquire(ctx, holder)
	if err != nil {
		return nil // ctx ended
	}
	if err := d.applyLease(lease); err != nil {
		return err
	}
	d.setReason("")

	wg.Go(func() {
		if err := be.Run(ctx); err != nil {
			logger.Error("backend stopped", "err", err)
			cancel()
		}
	})
	wg.Go(func() {
		if err := holder.Run(ctx); err != nil && ctx.Err() == nil {
			d.logger.Error("lease holder stopped", "err", err)
			cancel()
		}
	})
	wg.Go(func() {
		w := etcd.NewWatcher(reg, d.logger.With("component", "watch"))
		if err := w.Run(ctx, d.applySnapshot); err != nil && ctx.Err() == nil {
			d.logger.Error("lease watcher stopped", "err", err)
			cancel()
		}
	})
	if ipt != nil {
		wg.Go(func() { ipt.Run(ctx, d.cfg.IPTablesResync) })
	}
	wg.Go(func() { d.watchConfig(ctx, reg, raw, ext) })
	wg.Go(func() { d.notifyWhenReady(ctx) })

	<-ctx.Done()
	return nil
}

// waitForConfig polls the network config until a valid one appears. A
// missing or invalid config is logged once per distinct problem, not once
// per attempt.
func (d *daemon) waitForConfig(ctx context.Context, reg *etcd.Registry, ext backend.ExternalInterface) (*subnet.Config, []byte, error) {
	var lastProblem string
	delay := 250 * time.Millisecond
	for {
		cctx, c := context.WithTimeout(ctx, 5*time.Second)
		raw, _, err := reg.ConfigRaw(cctx)
		c()
		var cfg *subnet.Config
		var cfgErr error
		if err == nil {
			cfg, cfgErr = d.checkConfig(raw, ext)
		}
		var problem string
		switch {
		case err == nil && cfgErr == nil:
			d.metrics.configInvalid.Set(0)
			d.mu.Lock()
			d.configError = ""
			d.mu.Unlock()
			return cfg, raw, nil
		case errors.Is(err, etcd.ErrNoConfig):
			d.setReason("waiting for the network config at %s/config", d.cfg.EtcdPrefix)
			problem = err.Error()
		case err != nil:
			d.setReason("cannot reach etcd: %v", err)
			problem = "etcd unreachable"
		default:
			err = cfgErr
			problem = cfgErr.Error()
			d.metrics.configInvalid.Set(1)
			d.setReason("network config is invalid: %v", cfgErr)
			d.mu.Lock()
			d.configError = problem
			d.mu.Unlock()
		}
		if problem != lastProblem {
			d.logger.Warn("waiting for a valid network config; retrying", "err", err)
			lastProblem = problem
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
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
	if err := cfg.CheckUnderlay(ext.Addr, ext.PublicIP); err != nil {
		return nil, fmt.Errorf("%w (the address of %s on this host)", err, ext.Name)
	}
	// A Factory validates its options and touches no kernel state.
	if _, err := entry.New(backend.Config{Network: cfg, Options: cfg.Backend, Ext: ext, Netns: netns.None(),
		Logger: slog.New(slog.DiscardHandler)}); err != nil {
		return nil, fmt.Errorf("config field Backend: %w", err)
	}
	return cfg, nil
}

// previous returns the subnet from an earlier subnet file (if it belongs to
// this network), the attributes of our earlier lease in etcd, if any, and
// the attributes of every other host's lease.
func (d *daemon) previous(ctx context.Context, reg *etcd.Registry, netcfg *subnet.Config, ext backend.ExternalInterface) (netip.Prefix, subnet.LeaseAttrs, []subnet.LeaseAttrs) {
	var prevSubnet netip.Prefix
	if env, err := subnet.ReadEnvFile(d.cfg.SubnetFile); err == nil && env.Network == netcfg.Network {
		prevSubnet = env.LeaseSubnet()
	}
	cctx, c := context.WithTimeout(ctx, 5*time.Second)
	defer c()
	snap, err := reg.Leases(cctx)
	if err != nil {
		return prevSubnet, subnet.LeaseAttrs{}, nil
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
		if l.Attrs.BackendType == subnet.LeaseBackendType(netcfg.BackendType) && (!found || l.Subnet == prevSubnet) {
			prev, found = l.Attrs, true
		}
	}
	return prevSubnet, prev, others
}

// acquire claims our lease, retrying with backoff until it succeeds or ctx
// ends. Running out of subnets is reported on /readyz and retried.
func (d *daemon) acquire(ctx context.Context, h *etcd.Holder) (subnet.Lease, error) {
	delay := 500 * time.Millisecond
	var last string
	for {
		lease, err := h.Acquire(ctx)
		if err == nil {
			d.logger.Info("holding subnet lease", "subnet", lease.Subnet, "reservation", lease.Reservation)
			return lease, nil
		}
		if ctx.Err() != nil {
			return subnet.Lease{}, ctx.Err()
		}
		if errors.Is(err, subnet.ErrOutOfSubnets) {
			d.setReason("out of subnets: every subnet of the network is leased or reserved; retrying")
		} else {
			d.setReason("acquiring a subnet lease: %v", err)
		}
		if err.Error() != last {
			d.logger.Error("cannot acquire a subnet lease; retrying", "err", err)
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return subnet.Lease{}, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// onLeaseChange is called by the holder when it re-acquired our lease.
func (d *daemon) onLeaseChange(l subnet.Lease) {
	d.mu.Lock()
	old := d.lease
	d.mu.Unlock()
	if old.Subnet.IsValid() && old.Subnet != l.Subnet {
		d.logger.Warn("our subnet changed: pods on the old subnet lose connectivity until they are re-created", "old", old.Subnet, "new", l.Subnet)
	}
	if err := d.applyLease(l); err != nil {
		d.logger.Error("apply new lease", "subnet", l.Subnet, "err", err)
	}
}

// applyLease writes subnet.env and the rules for our lease and hands the
// backend the new desired state.
func (d *daemon) applyLease(l subnet.Lease) error {
	d.mu.Lock()
	d.lease, d.haveLease = l, true
	netcfg, be, ipt := d.netcfg, d.be, d.ipt
	d.mu.Unlock()

	env := subnet.Env{
		Network: netcfg.Network,
		Subnet:  subnet.GatewayPrefix(l.Subnet),
		MTU:     be.MTU(),
		IPMasq:  d.cfg.IPMasq,
	}
	if err := subnet.WriteEnvFile(d.cfg.SubnetFile, env); err != nil {
		return err
	}
	d.mu.Lock()
	d.fileWritten = true
	d.mu.Unlock()
	if ipt != nil {
		if err := ipt.Set(netcfg.Network, l.Subnet); err != nil {
			d.logger.Error("install iptables rules; will retry", "err", err)
		}
	}
	d.pushDesired()
	return nil
}

// applySnapshot receives the full set of leases from the watcher.
func (d *daemon) applySnapshot(s etcd.Snapshot) {
	d.mu.Lock()
	d.lastSnap = &s
	d.mu.Unlock()
	d.pushDesired()
}

// pushDesired judges the last snapshot against our lease and the network
// (subnet.FilterPeers, the one place where peers are judged) and hands the
// peers to the backend. Each refusal is logged and counted once per
// distinct reason, not on every snapshot. Linear in the number of keys.
func (d *daemon) pushDesired() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.haveLease || d.be == nil {
		return
	}
	s := d.lastSnap
	if s == nil {
		d.be.SetDesired(d.lease, nil)
		return
	}
	invalid := make([]subnet.InvalidLease, len(s.Invalid))
	subnets := d.reg.Prefix() + "/subnets/"
	for i, inv := range s.Invalid {
		invalid[i] = subnet.InvalidLease{Key: strings.TrimPrefix(inv.Key, subnets), Value: inv.Value, Err: inv.Err}
	}
	peers, refused := subnet.FilterPeers(d.netcfg, d.lease, s.Leases, invalid)
	logged := make(map[string]string, len(refused))
	broken := 0
	for _, r := range refused {
		why := r.Reason + ": " + r.Err.Error()
		if d.logged[r.Key] != why {
			d.metrics.leasesSkipped.WithLabelValues(r.Reason).Inc()
			d.logger.Warn("skipping lease", "key", r.Key, "reason", r.Reason, "err", r.Err)
		}
		logged[r.Key] = why
		if !subnet.Conflict(r.Reason) {
			broken++
		}
	}
	d.logged = logged
	d.refused = refused
	d.metrics.leasesKnown.Set(float64(len(s.Leases) + len(s.Invalid)))
	d.peersKnown = len(peers)
	d.leasesSkipped = broken
	d.metrics.leasesInvalid.Set(float64(broken))
	d.be.SetDesired(d.lease, peers)
}

// watchConfig notices config changes made while we run. A valid new config
// needs a restart to apply; an invalid one is reported, and in both cases
// the data path keeps running as it is.
func (d *daemon) watchConfig(ctx context.Context, reg *etcd.Registry, startRaw []byte, ext backend.ExternalInterface) {
	start, _ := subnet.ParseConfig(startRaw)
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	var last []byte = startRaw
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, c := context.WithTimeout(ctx, 5*time.Second)
		raw, _, err := reg.ConfigRaw(cctx)
		c()
		if err != nil && !errors.Is(err, etcd.ErrNoConfig) {
			continue // etcd unreachable: nothing to compare
		}
		if bytes.Equal(raw, last) {
			continue
		}
		last = raw
		if raw == nil {
			d.logger.Warn("the network config was deleted from etcd; keeping the current data path")
			continue
		}
		cfg, perr := d.checkConfig(raw, ext)
		d.mu.Lock()
		if perr != nil {
			d.configError = perr.Error()
			d.metrics.configInvalid.Set(1)
			d.mu.Unlock()
			d.logger.Error("the network config in etcd is now invalid; keeping the current data path", "err", perr)
			continue
		}
		d.configError = ""
		d.metrics.configInvalid.Set(0)
		changed := !sameConfig(start, cfg)
		d.restartNeeded = changed
		d.mu.Unlock()
		if changed {
			d.metrics.restartNeeded.Set(1)
			d.logger.Warn("the network config in etcd changed; restart weftd to apply it", "backend", cfg.BackendType, "network", cfg.Network)
		} else {
			d.metrics.restartNeeded.Set(0)
		}
	}
}

func sameConfig(a, b *subnet.Config) bool {
	if a == nil || b == nil {
		return a == b
	}
	var ab, bb bytes.Buffer
	// Compare semantics, not formatting: the derived fields and the backend
	// object with whitespace removed.
	_ = json.Compact(&ab, a.Backend)
	_ = json.Compact(&bb, b.Backend)
	return a.Network == b.Network && a.SubnetLen == b.SubnetLen && a.SubnetMin == b.SubnetMin &&
		a.SubnetMax == b.SubnetMax && a.BackendType == b.BackendType && bytes.Equal(ab.Bytes(), bb.Bytes())
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

// readiness reports whether we hold a lease, wrote the subnet file and
// programmed every known peer, with a one-line reason when not.
func (d *daemon) readiness() (bool, string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.reason != "":
		return false, d.reason
	case !d.haveLease:
		return false, "no subnet lease held"
	case !d.fileWritten:
		return false, "subnet file not written yet"
	case d.lastSnap == nil:
		return false, "waiting for the first list of leases from etcd"
	case d.configError != "":
		return false, "network config in etcd is invalid (data path kept as it was): " + d.configError
	case d.restartNeeded:
		return false, "network config in etcd changed; restart weftd to apply it"
	}
	st := d.be.Status()
	if st.LastReconcile.IsZero() {
		return false, "backend has not reconciled yet"
	}
	if want := d.peersKnown - len(st.Refused); st.PeersProgrammed < want {
		return false, fmt.Sprintf("%d of %d peers programmed", st.PeersProgrammed, want)
	}
	if st.PeersWanted != d.peersKnown {
		return false, fmt.Sprintf("backend has %d of %d peers queued", st.PeersWanted, d.peersKnown)
	}
	return true, ""
}
