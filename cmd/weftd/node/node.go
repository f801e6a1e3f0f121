// Package node is weftd's core: it joins this host's lease, everyone
// else's leases and the network config into the state the edges act on,
// the backend's desired peers, the subnet file, the host rules and
// readiness.
//
// One goroutine (Core.Run) owns that state. The lease store, the config
// poll and the callers of Status only send it events or read a published
// copy, so there is no shared mutex and no lock order to keep. Each event
// is handled in three steps: update the state, act on the edges that the
// change concerns, publish a new copy.
//
//	store.Hold ──our lease──▶ ┐
//	store.Watch ──leases────▶ ├─▶ Run: state ──▶ subnet file, rules (our lease)
//	config poll ──raw───────▶ ┘          │  └──▶ FilterPeers ─▶ backend.SetDesired
//	                                     └──▶ published State ─▶ Readiness, /status
//
// The edges are small interfaces defined here, with fakes in the tests, so
// that sequences of events can be played without root, etcd or a kernel.
package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/subnet"
)

// Store is where the leases live: etcd (subnet/etcd.Store) today, the
// Kubernetes API next. Implementations call back from their own goroutines.
type Store interface {
	// Hold claims a lease as spec says and keeps it until ctx ends. It
	// calls own with every lease it comes to hold: the first, and each one
	// re-acquired after a loss (which may be another subnet). While it
	// holds none it calls waiting with a one-line reason. It returns nil
	// when ctx ends, an error only when holding is impossible for good.
	Hold(ctx context.Context, spec subnet.HoldSpec, own func(subnet.Lease), waiting func(reason string)) error
	// Watch calls leases with every complete set of leases (ours included)
	// until ctx ends; nil then, an error only when watching is impossible
	// for good.
	Watch(ctx context.Context, leases func(subnet.LeaseSet)) error
	// Config reads the raw network config; subnet.ErrNoConfig when there
	// is none.
	Config(ctx context.Context) ([]byte, error)
}

// Backend is the part of a backend.Backend the core drives; the backend's
// own Run loop is started beside the core.
type Backend interface {
	// SetDesired hands over our lease and the peers to program; it never
	// blocks on the kernel.
	SetDesired(own subnet.Lease, peers []*subnet.Lease)
	// Status reports what is programmed.
	Status() backend.Status
	// MTU is the MTU for pods.
	MTU() int
}

// Rules are the host's masquerade and forward rules (internal/iptables).
type Rules interface {
	// Set installs the rules for the network and our subnet.
	Set(network, own netip.Prefix) error
}

// Rules6 is a Rules edge that also keeps IPv6 rules; on a dual-stack
// network the core calls Set6 with the IPv6 network and our IPv6 subnet
// after each Set.
type Rules6 interface {
	// Set6 installs the rules for the IPv6 network and our IPv6 subnet.
	Set6(network6, own6 netip.Prefix) error
}

// SubnetFile is subnet.env.
type SubnetFile interface {
	// Write replaces the file atomically.
	Write(subnet.Env) error
}

// Config is what a Core is built from.
type Config struct {
	// Network is the validated config weftd started with; Raw its bytes.
	Network *subnet.Config
	// Peers are the backend's rules for judging peers (its lease type and
	// peer data), from its backend.Descriptor.
	Peers subnet.PeerRules
	// SameOptions compares two Backend objects by meaning, defaults
	// applied (backend.Descriptor.SameOptions); nil compares their keys.
	SameOptions func(a, b json.RawMessage) bool
	// Check validates a config read while running, as at start (backend
	// options, underlay); nil means subnet.ParseConfig.
	Check func(raw []byte) (*subnet.Config, error)
	// Attrs is what our lease publishes: PublicIP, BackendType, BackendData.
	Attrs subnet.LeaseAttrs
	// Previous and Previous6 are the subnets of an earlier subnet file, if
	// any.
	Previous, Previous6 netip.Prefix
	// IPMasq is written to the subnet file (FLANNEL_IPMASQ).
	IPMasq bool
	// ConfigPoll is how often the config is re-read; zero means 5 s.
	ConfigPoll time.Duration
	// OnRefusal, if set, is called once for every new or changed refusal
	// (for a counter); it must not block.
	OnRefusal func(subnet.Refusal)
	Logger    *slog.Logger
}

// State is the core's view of the node, published after every event. The
// slices are never modified after publication.
type State struct {
	// Waiting is why there is no lease yet, "" once one is held.
	Waiting string
	// Lease is our lease; valid once HaveLease.
	Lease     subnet.Lease
	HaveLease bool
	// FileWritten is true once subnet.env holds our current lease.
	FileWritten bool
	// FileError is the last error writing subnet.env, "" if none.
	FileError string
	// HaveLeases is true once the store delivered its first lease set.
	HaveLeases bool
	// Leases is the last lease set the store delivered (never modified).
	Leases subnet.LeaseSet
	// LeasesKnown counts every key in the last set, ours and broken ones.
	LeasesKnown int
	// Peers is the number of peers handed to the backend.
	Peers int
	// Peers6 is how many of them have an IPv6 subnet to program (on a
	// dual-stack network).
	Peers6 int
	// Refused are the leases the filter refused in the last set.
	Refused []subnet.Refusal
	// ConfigError is set while the config in the store is invalid.
	ConfigError string
	// RestartNeeded names the fields of a valid changed config that only a
	// restart applies; nil when the running config matches the store's.
	RestartNeeded []string
}

// Core is the node's state machine. Build it with New, then Run it.
type Core struct {
	cfg   Config
	store Store
	be    Backend
	rules Rules
	file  SubnetFile
	log   *slog.Logger

	events chan func(*state)
	pub    atomic.Pointer[State]
}

// state is the State plus what only Run's goroutine needs.
type state struct {
	State
	peerSet subnet.LeaseSet
	logged  map[string]string // lease key -> refusal already reported
}

// New returns a core for the given edges. rules may be nil (no host rules).
func New(cfg Config, store Store, be Backend, rules Rules, file SubnetFile) *Core {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ConfigPoll <= 0 {
		cfg.ConfigPoll = 5 * time.Second
	}
	if cfg.Check == nil {
		cfg.Check = subnet.ParseConfig
	}
	c := &Core{cfg: cfg, store: store, be: be, rules: rules, file: file, log: cfg.Logger, events: make(chan func(*state), 16)}
	c.pub.Store(&State{Waiting: "acquiring a subnet lease"})
	return c
}

// State returns the latest published state. Safe for concurrent use.
func (c *Core) State() State { return *c.pub.Load() }

// Run drives the node until ctx ends. It returns only after every
// goroutine it started has ended: nil when ctx ended, an error when the
// store gave up for good.
func (c *Core) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	errc := make(chan error, 2)
	send := func(f func(*state)) {
		select {
		case c.events <- f:
		case <-ctx.Done():
		}
	}
	wg.Go(func() {
		err := c.store.Hold(ctx, subnet.HoldSpec{Network: c.cfg.Network, Attrs: c.cfg.Attrs,
			Previous: c.cfg.Previous, Previous6: c.cfg.Previous6},
			func(l subnet.Lease) { send(func(s *state) { c.onLease(s, l) }) },
			func(why string) { send(func(s *state) { s.Waiting = why }) })
		if err != nil {
			errc <- fmt.Errorf("hold our lease: %w", err)
		}
	})
	wg.Go(func() {
		if err := c.store.Watch(ctx, func(set subnet.LeaseSet) { send(func(s *state) { c.onLeases(s, set) }) }); err != nil {
			errc <- fmt.Errorf("watch leases: %w", err)
		}
	})
	wg.Go(func() { c.pollConfig(ctx, send) })

	s := &state{State: *c.pub.Load(), logged: map[string]string{}}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case f := <-c.events:
			f(s)
			c.publish(s)
		}
	}
}

func (c *Core) publish(s *state) {
	st := s.State
	c.pub.Store(&st)
}

// onLease handles a lease the store now holds for us: the subnet file and
// the rules follow it, then the peers are judged against it.
func (c *Core) onLease(s *state, l subnet.Lease) {
	if s.HaveLease && (s.Lease.Subnet != l.Subnet || s.Lease.IPv6Subnet != l.IPv6Subnet) {
		c.log.Warn("our subnet changed: pods on the old subnet lose connectivity until they are re-created", "old", s.Lease.Key(), "new", l.Key())
	}
	if !s.HaveLease || s.Lease.Key() != l.Key() {
		c.log.Info("holding subnet lease", "key", l.Key(), "reservation", l.Reservation)
	}
	s.Lease, s.HaveLease, s.Waiting = l, true, ""
	env := subnet.Env{
		Network: c.cfg.Network.Network,
		Subnet:  subnet.GatewayPrefix(l.Subnet),
		MTU:     c.be.MTU(),
		IPMasq:  c.cfg.IPMasq,
	}
	if c.cfg.Network.EnableIPv6 && l.IPv6Subnet.IsValid() {
		env.IPv6Network, env.IPv6Subnet = c.cfg.Network.IPv6.Network, subnet.GatewayPrefix(l.IPv6Subnet)
	}
	if err := c.file.Write(env); err != nil {
		if s.FileError != err.Error() {
			c.log.Error("write the subnet file", "err", err)
		}
		s.FileWritten, s.FileError = false, err.Error()
	} else {
		s.FileWritten, s.FileError = true, ""
	}
	if c.rules != nil {
		if err := c.rules.Set(c.cfg.Network.Network, l.Subnet); err != nil {
			c.log.Error("install host rules; they are retried on every resync", "err", err)
		}
		if r6, ok := c.rules.(Rules6); ok && c.cfg.Network.HasIPv6(l) {
			if err := r6.Set6(c.cfg.Network.IPv6.Network, l.IPv6Subnet); err != nil {
				c.log.Error("install IPv6 host rules; they are retried on every resync", "err", err)
			}
		}
	}
	c.push(s)
}

// onLeases handles a new complete set of leases.
func (c *Core) onLeases(s *state, set subnet.LeaseSet) {
	s.peerSet, s.HaveLeases, s.Leases = set, true, set
	s.LeasesKnown = len(set.Leases) + len(set.Invalid)
	c.push(s)
}

// push judges the last lease set against our lease and hands the peers to
// the backend. Each refusal is reported once per distinct reason.
func (c *Core) push(s *state) {
	if !s.HaveLease {
		return
	}
	peers, refused := subnet.FilterPeers(c.cfg.Network, c.cfg.Peers, s.Lease, s.peerSet.Leases, s.peerSet.Invalid)
	logged := make(map[string]string, len(refused))
	for _, r := range refused {
		why := r.Reason + ": " + r.Err.Error()
		if s.logged[r.Key] != why {
			c.log.Warn("skipping lease", "key", r.Key, "reason", r.Reason, "err", r.Err)
			if c.cfg.OnRefusal != nil {
				c.cfg.OnRefusal(r)
			}
		}
		logged[r.Key] = why
	}
	s.logged, s.Refused, s.Peers, s.Peers6 = logged, refused, len(peers), 0
	for i := range peers {
		if c.cfg.Network.HasIPv6(*peers[i]) {
			s.Peers6++
		}
	}
	c.be.SetDesired(s.Lease, peers)
}

// pollConfig re-reads the network config and reports a change.
func (c *Core) pollConfig(ctx context.Context, send func(func(*state))) {
	t := time.NewTicker(c.cfg.ConfigPoll)
	defer t.Stop()
	var last []byte
	lastErr := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		raw, err := c.store.Config(cctx)
		cancel()
		switch {
		case errors.Is(err, subnet.ErrNoConfig):
			if lastErr != "deleted" {
				c.log.Warn("the network config was deleted; keeping the current data path")
				lastErr = "deleted"
			}
			continue
		case err != nil:
			continue // the store is unreachable: nothing to compare
		}
		if last != nil && string(raw) == string(last) {
			continue
		}
		last, lastErr = raw, ""
		send(func(s *state) { c.onConfig(s, raw) })
	}
}

// onConfig compares a config read while running with the one weftd runs.
func (c *Core) onConfig(s *state, raw []byte) {
	cfg, err := c.cfg.Check(raw)
	if err != nil {
		if s.ConfigError != err.Error() {
			c.log.Error("the network config is now invalid; keeping the current data path", "err", err)
		}
		s.ConfigError = err.Error()
		return
	}
	s.ConfigError = ""
	changed := subnet.ConfigDiff(c.cfg.Network, cfg, c.cfg.SameOptions)
	if len(changed) > 0 && fmt.Sprint(changed) != fmt.Sprint(s.RestartNeeded) {
		c.log.Warn("the network config changed; restart weftd to apply it", "changed", changed)
	}
	s.RestartNeeded = changed
}

// Readiness reports whether the node is ready, with a one-line reason
// when it is not: the lease is held, subnet.env written, the config valid
// and applied, and every peer the backend can program is programmed.
// Peers that were refused (by the filter, the backend or the kernel) never
// hold readiness back.
func Readiness(s State, b backend.Status) (bool, string) {
	switch {
	case !s.HaveLease && s.Waiting != "":
		return false, s.Waiting
	case !s.HaveLease:
		return false, "no subnet lease held"
	case !s.FileWritten && s.FileError != "":
		return false, "cannot write the subnet file: " + s.FileError
	case !s.FileWritten:
		return false, "subnet file not written yet"
	case !s.HaveLeases:
		return false, "waiting for the first list of leases"
	case s.ConfigError != "":
		return false, "network config is invalid (data path kept as it was): " + s.ConfigError
	case len(s.RestartNeeded) > 0:
		return false, fmt.Sprintf("network config changed (%s); restart weftd to apply it", joinFields(s.RestartNeeded))
	case b.LastReconcile.IsZero():
		return false, "backend has not reconciled yet"
	case b.PeersWanted != s.Peers:
		return false, fmt.Sprintf("backend has %d of %d peers queued", b.PeersWanted, s.Peers)
	}
	if want := s.Peers - len(b.Refused); b.PeersProgrammed < want {
		msg := fmt.Sprintf("%d of %d peers programmed", b.PeersProgrammed, want)
		if b.LastError != "" {
			msg += ": " + b.LastError
		}
		return false, msg
	}
	return true, ""
}

func joinFields(fs []string) string {
	out := ""
	for i, f := range fs {
		if i > 0 {
			out += ", "
		}
		out += f
	}
	return out
}
