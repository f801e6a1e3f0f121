package etcd

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/subnet"
)

// StoreConfig configures a Store.
type StoreConfig struct {
	// TTL and RenewMargin are the Holder's (zero: flannel's defaults).
	TTL, RenewMargin time.Duration
	Logger           *slog.Logger
}

// Store is the etcd lease store of weftd's node core: a Holder for our
// lease, a Watcher for everyone's, and the config key.
type Store struct {
	reg    *Registry
	cfg    StoreConfig
	holder atomic.Pointer[Holder]
}

// NewStore returns a Store over reg.
func NewStore(reg *Registry, cfg StoreConfig) *Store {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Store{reg: reg, cfg: cfg}
}

// Hold claims a lease as spec says and keeps it until ctx ends (see Holder): own is called with each lease
// held, waiting with the reason of each failed attempt.
func (s *Store) Hold(ctx context.Context, spec subnet.HoldSpec, own func(subnet.Lease), waiting func(string)) error {
	h := NewHolder(s.reg, HolderConfig{
		Network:         spec.Network,
		Attrs:           spec.Attrs,
		PreviousSubnet:  spec.Previous,
		PreviousSubnet6: spec.Previous6,
		TTL:             s.cfg.TTL,
		RenewMargin:     s.cfg.RenewMargin,
		Logger:          s.cfg.Logger.With("component", "lease"),
		OnChange:        own,
		OnWaiting:       waiting,
	})
	s.holder.Store(h)
	return h.Run(ctx)
}

// Lease returns the lease held now, with its expiration as of the last
// renewal (renewals do not call Hold's own).
func (s *Store) Lease() (subnet.Lease, bool) {
	if h := s.holder.Load(); h != nil {
		return h.Lease()
	}
	return subnet.Lease{}, false
}

// Watch calls leases with every complete set of leases until ctx ends.
// Keys that do not parse are named by their suffix under
// <prefix>/subnets/, as parsed ones are.
func (s *Store) Watch(ctx context.Context, leases func(subnet.LeaseSet)) error {
	w := NewWatcher(s.reg, s.cfg.Logger.With("component", "watch"))
	return w.Run(ctx, func(snap Snapshot) { leases(s.LeaseSet(snap)) })
}

// LeaseSet converts a Snapshot.
func (s *Store) LeaseSet(snap Snapshot) subnet.LeaseSet {
	invalid := make([]subnet.InvalidLease, len(snap.Invalid))
	for i, inv := range snap.Invalid {
		invalid[i] = subnet.InvalidLease{Key: strings.TrimPrefix(inv.Key, s.reg.subnetsPrefix), Value: inv.Value, Err: inv.Err}
	}
	return subnet.LeaseSet{Leases: snap.Leases, Invalid: invalid, Revision: snap.Revision}
}

// Leases lists every lease now, with expirations.
func (s *Store) Leases(ctx context.Context) (subnet.LeaseSet, error) {
	snap, err := s.reg.Leases(ctx)
	if err != nil {
		return subnet.LeaseSet{}, err
	}
	return s.LeaseSet(snap), nil
}

// LastContact is when etcd last answered.
func (s *Store) LastContact() time.Time { return s.reg.LastContact() }

// Config reads the raw network config; the error wraps subnet.ErrNoConfig
// when the key is absent.
func (s *Store) Config(ctx context.Context) ([]byte, error) {
	raw, _, err := s.reg.ConfigRaw(ctx)
	return raw, err
}
