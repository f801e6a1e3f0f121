package etcd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/subnet"
)

// Defaults for HolderConfig, as flannel.
const (
	DefaultTTL         = 24 * time.Hour
	DefaultRenewMargin = 60 * time.Minute
)

// HolderConfig configures a Holder.
type HolderConfig struct {
	Network *subnet.Config
	// Attrs is what we publish (PublicIP, BackendType, BackendData).
	Attrs subnet.LeaseAttrs
	// PreviousSubnet comes from an old subnet file; it may be zero.
	PreviousSubnet netip.Prefix
	// PreviousSubnet6 is the IPv6 subnet of an old subnet file, preferred
	// on a dual-stack network; it may be zero.
	PreviousSubnet6 netip.Prefix
	TTL             time.Duration // default 24h
	RenewMargin     time.Duration // default 60m: renew when less than this is left
	Logger          *slog.Logger
	// OnChange is called from Run's goroutine whenever our lease is
	// re-acquired or its subnet changes.
	OnChange func(subnet.Lease)
	// OnWaiting, if set, is called from Run's goroutine with a one-line
	// reason each time acquiring a lease fails and is retried.
	OnWaiting func(reason string)
}

// Holder claims and keeps this host's lease. Its life cycle:
//
//	          Acquire: reuse our key (same PublicIP), else the previous
//	          subnet, else a random free one; claim = Grant + Txn(key absent)
//	free ──────────────────────────────────────────────────────────▶ held
//	held ──remaining TTL < RenewMargin: KeepAliveOnce (no PUT)──────▶ held
//	held ──our value overwritten, our PublicIP kept: put ours back──▶ held
//	held ──key deleted / etcd lease expired / key taken over────────▶ lost
//	lost ──Acquire with PreviousSubnet = our subnet, OnChange───────▶ held
//
// A reservation (a key with no etcd lease) carrying our PublicIP is used as
// is and never renewed; it stays a reservation. A key of ours in the wrong
// shape for the config (plain on a dual-stack network, dual-stack on an
// IPv4-only one) is rewritten in place, keeping its IPv4 subnet (see
// convert).
//
// Every retry waits a bounded, jittered exponential backoff (retryBackoff):
// re-listing after lost races, acquire failures, renewal failures, watch
// restarts, restoring our value, and re-acquiring after losses in quick
// succession. Hostile keys and values therefore cost etcd a few requests,
// not a loop.
type Holder struct {
	reg    *Registry
	cfg    HolderConfig
	logger *slog.Logger

	mu       sync.Mutex
	lease    subnet.Lease
	have     bool
	attrs    subnet.LeaseAttrs
	renewals int
	// ttl is the TTL etcd granted the current etcd lease, as last reported
	// (0: unknown, assume cfg.TTL). An adopted key may carry a shorter one.
	ttl time.Duration
	// warned holds the log lines already written once.
	warned map[string]bool

	// Used by Run's goroutine only: when the last loss was, and the wait
	// before re-acquiring after losses in quick succession.
	lastLoss  time.Time
	lossRetry retryBackoff
}

// Bounds of the holder's retry loops (see retryBackoff).
const (
	// Re-listing after a lost race or a key that changed under us.
	acquireRetryMin, acquireRetryMax = 50 * time.Millisecond, 2 * time.Second
	// maxClaimsPerList bounds the claims tried on one listing before
	// listing again (after a wait).
	maxClaimsPerList = 4
	// Acquire failures (etcd errors, no free subnet).
	acquireLoopMin, acquireLoopMax = time.Second, 10 * time.Second
	// Renewal failures.
	renewRetryMin, renewRetryMax = time.Second, 30 * time.Second
	// Restarting the watch of our key.
	watchRetryMin, watchRetryMax = 250 * time.Millisecond, 10 * time.Second
	// Restoring our value after someone else overwrote it.
	restoreRetryMin, restoreRetryMax = 100 * time.Millisecond, 30 * time.Second
	// Re-acquiring after a loss that came within lossWindow of the last.
	lossRetryMin, lossRetryMax = time.Second, 30 * time.Second
	lossWindow                 = time.Minute
)

// NewHolder returns a Holder; nothing is claimed until Acquire or Run.
func NewHolder(reg *Registry, cfg HolderConfig) *Holder {
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.RenewMargin <= 0 {
		cfg.RenewMargin = DefaultRenewMargin
	}
	if cfg.RenewMargin >= cfg.TTL {
		// Renewing "when less than a margin longer than the TTL is left"
		// would renew in a tight loop; renew at half-life instead.
		cfg.RenewMargin = cfg.TTL / 2
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Holder{
		reg:       reg,
		cfg:       cfg,
		logger:    cfg.Logger,
		attrs:     cfg.Attrs,
		warned:    map[string]bool{},
		lossRetry: newBackoff(lossRetryMin, lossRetryMax),
	}
}

// warnOnce logs msg at warning level the first time it is called with this
// id, so that a retry loop does not repeat it.
func (h *Holder) warnOnce(id, msg string, args ...any) {
	h.mu.Lock()
	seen := h.warned[id]
	h.warned[id] = true
	h.mu.Unlock()
	if !seen {
		h.logger.Warn(msg, args...)
	}
}

func (h *Holder) setTTL(d time.Duration) {
	h.mu.Lock()
	h.ttl = d
	h.mu.Unlock()
}

// renewMargin is how long before expiry to renew a lease whose etcd lease
// has the given TTL: RenewMargin, or half the TTL when the TTL is not longer
// than the margin (a key adopted with a short etcd lease), so that renewing
// never turns into a tight loop.
func (h *Holder) renewMargin() time.Duration {
	h.mu.Lock()
	ttl := h.ttl
	h.mu.Unlock()
	if ttl <= 0 {
		ttl = h.cfg.TTL
	}
	if h.cfg.RenewMargin >= ttl {
		return ttl / 2
	}
	return h.cfg.RenewMargin
}

// Lease returns our current lease, if we hold one.
func (h *Holder) Lease() (subnet.Lease, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lease, h.have
}

func (h *Holder) currentAttrs() subnet.LeaseAttrs {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.attrs
}

func (h *Holder) setLease(l subnet.Lease) {
	h.mu.Lock()
	h.lease, h.have = l, true
	h.mu.Unlock()
}

// Acquire claims a lease (see Holder for the rules). When every subnet is
// taken it returns an error wrapping subnet.ErrOutOfSubnets; the caller
// retries.
func (h *Holder) Acquire(ctx context.Context) (subnet.Lease, error) {
	prev := h.cfg.PreviousSubnet
	if l, ok := h.Lease(); ok {
		prev = l.Subnet
	}
	l, err := h.acquire(ctx, prev)
	if err != nil {
		return subnet.Lease{}, err
	}
	h.setLease(l)
	return l, nil
}

var errLostRace = errors.New("lost the race for the key")

func (h *Holder) acquire(ctx context.Context, prev netip.Prefix) (subnet.Lease, error) {
	attrs := h.currentAttrs()
	value, err := attrs.MarshalJSON()
	if err != nil {
		return subnet.Lease{}, fmt.Errorf("acquire lease: %w", err)
	}
	nw := h.cfg.Network
	prev6 := h.previous6()
	// tried holds the keys of ours that could not be rewritten into the
	// shape the config wants (see convert) during this call: they are not
	// offered again, so that a key that keeps failing costs one attempt.
	tried := map[string]bool{}
	retry := newBackoff(acquireRetryMin, acquireRetryMax)
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return subnet.Lease{}, fmt.Errorf("acquire lease: %w", err)
		}
		// Lost a race, or a key changed under us: list again, after a
		// wait that grows if it keeps happening.
		if attempt > 0 && !retry.wait(ctx) {
			return subnet.Lease{}, fmt.Errorf("acquire lease: %w", ctx.Err())
		}
		snap, err := h.reg.list(ctx, false)
		if err != nil {
			return subnet.Lease{}, fmt.Errorf("acquire lease: %w", err)
		}

		taken6 := h.taken6(snap)

		// Rule 1: the key that already carries our PublicIP, in the shape
		// the config wants, or rewritten into it.
		if mine, fits, ok := h.findMine(snap, prev, tried); ok {
			var l subnet.Lease
			if fits {
				l, err = h.reuse(ctx, mine, attrs, value)
			} else {
				sn6 := netip.Prefix{}
				if nw.EnableIPv6 {
					if sn6, err = h.pick6(mine, prev6, taken6); err != nil {
						return subnet.Lease{}, fmt.Errorf("acquire lease in %s: %w", nw.IPv6.Network, err)
					}
				}
				l, err = h.convert(ctx, mine, sn6, attrs, value)
				if errors.Is(err, errLostRace) {
					tried[mine.Key()] = true
				}
			}
			if errors.Is(err, errLostRace) {
				prev = mine.Subnet
				continue
			}
			if err == nil {
				h.retireStale(ctx, snap, l)
			}
			return l, err
		}

		taken := map[netip.Prefix]bool{}
		for _, l := range snap.Leases {
			taken[l.Subnet] = true
		}
		// garbageAt is the mod revision of prev's plain key when that key
		// holds a value that does not parse; prevClaims counts the keys
		// that claim prev.
		var garbageAt int64
		prevClaims := 0
		for _, l := range snap.Leases {
			if l.Subnet == prev {
				prevClaims++
			}
		}
		for _, inv := range snap.Invalid {
			// A key that does not parse may still be someone's claim on
			// its IPv4 subnet (a dual-stack key with a bad IPv6 part):
			// never create a second key for that subnet.
			sn, err := claimedSubnet(h.reg.subnetsPrefix, inv.Key)
			if err != nil {
				continue
			}
			taken[sn] = true
			if sn == prev {
				prevClaims++
				if inv.Key == h.reg.LeaseKey(prev) {
					garbageAt = inv.ModRevision
				}
			}
		}

		// Rule 2: the subnet we had before, if still ours to take. Our own
		// key holding garbage (overwritten while we were down) is nobody's
		// claim: take it back, replacing exactly that garbage. A
		// dual-stack key is a new key, so garbage is only ever replaced on
		// an IPv4-only network.
		candidates := 0
		if garbageAt != 0 && prevClaims == 1 && nw.InRange(prev) && !nw.EnableIPv6 {
			taken[prev] = false
			h.logger.Warn("our previous subnet's key holds an unparsable value; taking it back",
				"key", h.reg.LeaseKey(prev))
		} else {
			garbageAt = 0
		}
		claim := func(sn netip.Prefix, garbageAt int64) (subnet.Lease, error) {
			sn6 := netip.Prefix{}
			if nw.EnableIPv6 {
				var err error
				if sn6, err = h.pick6(subnet.Lease{}, prev6, taken6); err != nil {
					return subnet.Lease{}, fmt.Errorf("acquire lease in %s: %w", nw.IPv6.Network, err)
				}
			}
			l, err := h.claim(ctx, sn, sn6, garbageAt, attrs, value)
			if errors.Is(err, errLostRace) && sn6.IsValid() {
				taken6[sn6] = true
			}
			return l, err
		}
		if prev.IsValid() && nw.InRange(prev) && !taken[prev] {
			l, err := claim(prev, garbageAt)
			if err == nil {
				return l, nil
			}
			if !errors.Is(err, errLostRace) {
				return subnet.Lease{}, err
			}
			taken[prev] = true
			candidates++
		}

		// Rule 3: a random free subnet; on losing a race, pick again, a
		// few times, then list again.
		for candidates < maxClaimsPerList {
			sn, err := nw.RandomFree(taken, nil)
			if err != nil {
				if candidates > 0 {
					break // lost races: list again, keys may have changed
				}
				return subnet.Lease{}, fmt.Errorf("acquire lease in %s: %w", nw.Network, err)
			}
			l, err := claim(sn, 0)
			if err == nil {
				return l, nil
			}
			if !errors.Is(err, errLostRace) {
				return subnet.Lease{}, err
			}
			h.logger.Debug("lost the race for a subnet; picking another", "subnet", sn)
			taken[sn] = true
			candidates++
		}
	}
}

// previous6 is the IPv6 subnet to prefer: the one held now, else the one
// of the old subnet file.
func (h *Holder) previous6() netip.Prefix {
	if l, ok := h.Lease(); ok && l.IPv6Subnet.IsValid() {
		return l.IPv6Subnet
	}
	return h.cfg.PreviousSubnet6
}

// taken6 is every IPv6 subnet a key claims, parsed or not.
func (h *Holder) taken6(snap Snapshot) map[netip.Prefix]bool {
	taken := map[netip.Prefix]bool{}
	if !h.cfg.Network.EnableIPv6 {
		return taken
	}
	for _, l := range snap.Leases {
		if l.IPv6Subnet.IsValid() {
			taken[l.IPv6Subnet] = true
		}
	}
	for _, inv := range snap.Invalid {
		name := strings.TrimPrefix(inv.Key, h.reg.subnetsPrefix)
		if _, part6, ok := strings.Cut(name, "&"); ok {
			if _, v6, err := subnet.ParseSubnetKey("0.0.0.0-0&" + part6); err == nil {
				taken[v6] = true
			}
		}
	}
	return taken
}

// pick6 chooses the IPv6 subnet for a new key on a dual-stack network: the
// one mine already names if it fits the IPv6 pool, else prev6 if it is
// free and in range, else a random free one. mine's own subnet counts as
// free: mine is the key being rewritten.
func (h *Holder) pick6(mine subnet.Lease, prev6 netip.Prefix, taken map[netip.Prefix]bool) (netip.Prefix, error) {
	pool := h.cfg.Network.IPv6
	if sn := mine.IPv6Subnet; sn.IsValid() && h.fits6(mine) {
		return sn, nil
	}
	if prev6.IsValid() && pool.InRange(prev6) && !taken[prev6] {
		return prev6, nil
	}
	return pool.RandomFree(taken, nil)
}

// fits6 reports whether l's IPv6 part is what the config wants: none on an
// IPv4-only network, a subnet of the IPv6 pool on a dual-stack one (any
// subnet of the right length inside the network for a reservation).
func (h *Holder) fits6(l subnet.Lease) bool {
	nw := h.cfg.Network
	if !nw.EnableIPv6 {
		return !l.IPv6Subnet.IsValid()
	}
	if l.Reservation {
		return nw.IPv6.Contains(l.IPv6Subnet) && l.IPv6Subnet.Bits() == nw.IPv6.SubnetLen
	}
	return nw.IPv6.InRange(l.IPv6Subnet)
}

// findMine picks the key carrying our PublicIP: the one in prev, our
// previous subnet (the pods on this host use it), else a reservation, else
// the most recently written lease. A key in the shape the config wants
// (plain on an IPv4-only network, "<v4>-<len>&<v6>-<len>" with a subnet of
// the IPv6 pool on a dual-stack one) is preferred; fits is false when the
// key found must be rewritten into that shape first (see convert), which
// happens when the network config gained or lost IPv6. Keys in skip are
// left out.
func (h *Holder) findMine(snap Snapshot, prev netip.Prefix, skip map[string]bool) (best subnet.Lease, fits, found bool) {
	ip := h.currentAttrs().PublicIP
	nw := h.cfg.Network
	for _, l := range snap.Leases {
		if l.Attrs.PublicIP != ip || skip[l.Key()] {
			continue
		}
		usable := nw.InRange(l.Subnet)
		if l.Reservation {
			usable = nw.Contains(l.Subnet) && l.Subnet.Bits() == nw.SubnetLen
		}
		if !usable {
			h.warnOnce("unfit:"+l.Key(), "ignoring a key with our public IP that does not fit the network config",
				"key", l.Key(), "network", nw.Network, "subnet_len", nw.SubnetLen)
			continue
		}
		f := h.fits6(*l)
		switch {
		case !found,
			f && !fits,
			f == fits && best.Subnet != prev && l.Subnet == prev,
			f == fits && best.Subnet != prev && l.Reservation && !best.Reservation,
			f == fits && best.Subnet != prev && l.Reservation == best.Reservation && l.ModRevision > best.ModRevision:
			best, fits, found = *l, f, true
		}
	}
	return best, fits, found
}

// retireStale deletes the other leases that carry our PublicIP once we hold
// kept: our own earlier leases (from before a reboot that lost the subnet
// file, say), which would otherwise live on until their TTL with our VTEP
// MAC, so that peers keep the older of the two and refuse the one we use.
// Reservations (an operator's) are left alone. A key that changed since
// the listing is left alone too: it is not stale.
func (h *Holder) retireStale(ctx context.Context, snap Snapshot, kept subnet.Lease) {
	for _, l := range snap.Leases {
		if l.Attrs.PublicIP != kept.Attrs.PublicIP || l.Reservation || l.Key() == kept.Key() {
			continue
		}
		key := h.reg.keyOf(*l)
		var resp *clientv3.TxnResponse
		err := h.reg.call(ctx, func(ctx context.Context) (err error) {
			resp, err = h.reg.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.ModRevision(key), "=", l.ModRevision)).
				Then(clientv3.OpDelete(key)).Commit()
			return err
		})
		switch {
		case err != nil:
			h.logger.Warn("cannot remove our stale lease; it expires by itself", "key", key, "err", err)
		case resp.Succeeded:
			h.logger.Warn("removed our own stale lease: we hold another key now", "stale", l.Key(), "held", kept.Key())
		}
	}
}

// reuse takes over the key that carries our PublicIP, keeping its etcd
// lease and rewriting the value only if it differs.
func (h *Holder) reuse(ctx context.Context, l subnet.Lease, attrs subnet.LeaseAttrs, value []byte) (subnet.Lease, error) {
	key := h.reg.keyOf(l)
	old, _ := l.Attrs.MarshalJSON()
	if !l.Reservation {
		ttl, err := h.keepAliveOnce(ctx, l.EtcdLease)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return subnet.Lease{}, errLostRace // expired since the list: claim it afresh
		}
		if err != nil {
			return subnet.Lease{}, fmt.Errorf("acquire lease %s: renew etcd lease %x: %w", l.Subnet, l.EtcdLease, err)
		}
		l.Expiration = time.Now().Add(ttl)
		h.setTTL(ttl)
	}
	if !bytes.Equal(old, value) {
		var opts []clientv3.OpOption
		if !l.Reservation {
			opts = append(opts, clientv3.WithLease(clientv3.LeaseID(l.EtcdLease)))
		}
		var resp *clientv3.TxnResponse
		err := h.reg.call(ctx, func(ctx context.Context) (err error) {
			resp, err = h.reg.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.ModRevision(key), "=", l.ModRevision)).
				Then(clientv3.OpPut(key, string(value), opts...)).Commit()
			return err
		})
		if err != nil {
			return subnet.Lease{}, fmt.Errorf("acquire lease %s: update value: %w", l.Subnet, err)
		}
		if !resp.Succeeded {
			return subnet.Lease{}, errLostRace
		}
		l.ModRevision = resp.Header.Revision
	}
	l.Attrs = attrs
	kind := "lease"
	if l.Reservation {
		kind = "reservation"
	}
	h.logger.Info("reusing our existing "+kind, "key", l.Key(), "etcd_lease", fmt.Sprintf("%x", l.EtcdLease),
		"value_rewritten", !bytes.Equal(old, value))
	return l, nil
}

// convert rewrites our key l into the shape the config wants, keeping its
// IPv4 subnet, its etcd lease (or its being a reservation): to
// "<v4>-<len>&<v6>-<len>" with sn6 when the network is dual-stack, to the
// plain "<v4>-<len>" when sn6 is invalid. The old key is deleted and the
// new one written in one transaction, only if the old key is unchanged and
// the new one absent, so that peers never see two keys for our subnet and
// the subnet is never free in between. errLostRace means either condition
// failed.
func (h *Holder) convert(ctx context.Context, l subnet.Lease, sn6 netip.Prefix, attrs subnet.LeaseAttrs, value []byte) (subnet.Lease, error) {
	oldKey := h.reg.keyOf(l)
	nl := l
	nl.IPv6Subnet = sn6
	newKey := h.reg.keyOf(nl)
	var opts []clientv3.OpOption
	if !l.Reservation {
		ttl, err := h.keepAliveOnce(ctx, l.EtcdLease)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return subnet.Lease{}, errLostRace
		}
		if err != nil {
			return subnet.Lease{}, fmt.Errorf("acquire lease %s: renew etcd lease %x: %w", l.Subnet, l.EtcdLease, err)
		}
		nl.Expiration = time.Now().Add(ttl)
		h.setTTL(ttl)
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(l.EtcdLease)))
	}
	var resp *clientv3.TxnResponse
	err := h.reg.call(ctx, func(ctx context.Context) (err error) {
		resp, err = h.reg.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(oldKey), "=", l.ModRevision),
				clientv3.Compare(clientv3.CreateRevision(newKey), "=", 0)).
			Then(clientv3.OpDelete(oldKey), clientv3.OpPut(newKey, string(value), opts...)).Commit()
		return err
	})
	if err != nil {
		return subnet.Lease{}, fmt.Errorf("acquire lease %s: rewrite key %s as %s: %w", l.Subnet, l.Key(), nl.Key(), err)
	}
	if !resp.Succeeded {
		h.logger.Warn("cannot rewrite our key for the network config: it changed, or the new key exists; not trying it again now",
			"key", l.Key(), "want", nl.Key())
		return subnet.Lease{}, errLostRace
	}
	nl.Attrs = attrs
	nl.ModRevision = resp.Header.Revision
	nl.CreateRevision = resp.Header.Revision
	h.logger.Info("rewrote our key for the network config, keeping our subnet", "old", l.Key(), "new", nl.Key(),
		"reservation", l.Reservation)
	return nl, nil
}

// claim grants an etcd lease and creates the key for sn (and sn6 on a
// dual-stack network) bound to it, only if the key is absent, or, when
// garbageAt is not 0, only if the key still holds the unparsable value
// written at that revision. A grant that did not end up holding the key is
// revoked.
func (h *Holder) claim(ctx context.Context, sn, sn6 netip.Prefix, garbageAt int64, attrs subnet.LeaseAttrs, value []byte) (subnet.Lease, error) {
	l := subnet.Lease{Subnet: sn, IPv6Subnet: sn6, Attrs: attrs}
	key := h.reg.keyOf(l)
	cond := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	if garbageAt != 0 {
		cond = clientv3.Compare(clientv3.ModRevision(key), "=", garbageAt)
	}
	var grant *clientv3.LeaseGrantResponse
	err := h.reg.call(ctx, func(ctx context.Context) (err error) {
		grant, err = h.reg.cli.Grant(ctx, int64((h.cfg.TTL+time.Second-1)/time.Second))
		return err
	})
	if err != nil {
		return subnet.Lease{}, fmt.Errorf("acquire lease %s: grant: %w", l.Key(), err)
	}
	// A dual-stack key must also find sn's plain key absent, so that a
	// host still claiming plain keys cannot take sn in the same moment.
	conds := []clientv3.Cmp{cond}
	if sn6.IsValid() {
		conds = append(conds, clientv3.Compare(clientv3.CreateRevision(h.reg.LeaseKey(sn)), "=", 0))
	}
	var resp *clientv3.TxnResponse
	err = h.reg.call(ctx, func(ctx context.Context) (err error) {
		resp, err = h.reg.cli.Txn(ctx).
			If(conds...).
			Then(clientv3.OpPut(key, string(value), clientv3.WithLease(grant.ID))).Commit()
		return err
	})
	if err != nil || !resp.Succeeded {
		// Never leak the grant. After a failed (possibly applied) txn,
		// revoking also removes the key if it was written; we retry anyway.
		h.revoke(ctx, int64(grant.ID))
		if err != nil {
			return subnet.Lease{}, fmt.Errorf("acquire lease %s: %w", l.Key(), err)
		}
		return subnet.Lease{}, errLostRace
	}
	l.Expiration = time.Now().Add(time.Duration(grant.TTL) * time.Second)
	l.EtcdLease = int64(grant.ID)
	l.ModRevision = resp.Header.Revision
	l.CreateRevision = resp.Header.Revision
	if garbageAt != 0 {
		l.CreateRevision = 0 // the key is older than our claim; unknown here
	}
	h.setTTL(time.Duration(grant.TTL) * time.Second)
	h.logger.Info("claimed lease", "key", l.Key(), "etcd_lease", fmt.Sprintf("%x", grant.ID), "ttl", time.Duration(grant.TTL)*time.Second)
	return l, nil
}

// revoke revokes an etcd lease even when ctx has ended; errors are logged.
func (h *Holder) revoke(ctx context.Context, id int64) {
	if id == 0 {
		return
	}
	err := h.reg.call(context.WithoutCancel(ctx), func(ctx context.Context) error {
		_, err := h.reg.cli.Revoke(ctx, clientv3.LeaseID(id))
		return err
	})
	if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		h.logger.Warn("cannot revoke an unused etcd lease; it will expire on its own", "etcd_lease", fmt.Sprintf("%x", id), "err", err)
	}
}

// keepAliveOnce renews etcd lease id once and returns its new TTL, or
// ErrLeaseNotFound once it has expired.
func (h *Holder) keepAliveOnce(ctx context.Context, id int64) (time.Duration, error) {
	return h.leaseTTL(ctx, id, true)
}

// leaseTTL returns the remaining TTL of etcd lease id, renewing it first
// when renew is set, or ErrLeaseNotFound once it has expired.
func (h *Holder) leaseTTL(ctx context.Context, id int64, renew bool) (time.Duration, error) {
	var ttl int64
	err := h.reg.call(ctx, func(ctx context.Context) error {
		if renew {
			resp, err := h.reg.cli.KeepAliveOnce(ctx, clientv3.LeaseID(id))
			if err == nil {
				ttl = resp.TTL
			}
			return err
		}
		resp, err := h.reg.cli.TimeToLive(ctx, clientv3.LeaseID(id))
		if err == nil {
			ttl = resp.TTL
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	if ttl <= 0 {
		return 0, rpctypes.ErrLeaseNotFound
	}
	return time.Duration(ttl) * time.Second, nil
}

// Run keeps our lease: it renews it before expiry, watches our own key and
// re-acquires the lease when it is lost. It returns nil when ctx ends and
// never on transient etcd errors.
func (h *Holder) Run(ctx context.Context) error {
	if _, ok := h.Lease(); !ok {
		l, ok := h.acquireLoop(ctx, h.cfg.PreviousSubnet)
		if !ok {
			return nil
		}
		h.changed(l)
	}
	for ctx.Err() == nil {
		h.hold(ctx)
	}
	return nil
}

func (h *Holder) changed(l subnet.Lease) {
	h.setLease(l)
	if h.cfg.OnChange != nil {
		h.cfg.OnChange(l)
	}
}

// acquireLoop retries acquire with backoff until it succeeds or ctx ends.
func (h *Holder) acquireLoop(ctx context.Context, prev netip.Prefix) (subnet.Lease, bool) {
	retry := newBackoff(acquireLoopMin, acquireLoopMax)
	for {
		l, err := h.acquire(ctx, prev)
		if err == nil {
			return l, true
		}
		if ctx.Err() != nil {
			return subnet.Lease{}, false
		}
		d := retry.next()
		reason := "acquiring a subnet lease: " + err.Error()
		if errors.Is(err, subnet.ErrOutOfSubnets) {
			reason = "out of subnets: every subnet of the network is leased or reserved; retrying"
			h.logger.Error("cannot acquire a lease: no free subnet; retrying", "err", err, "retry_in", d.Round(time.Millisecond))
		} else {
			h.logger.Warn("cannot acquire a lease; retrying", "err", err, "retry_in", d.Round(time.Millisecond))
		}
		if h.cfg.OnWaiting != nil {
			h.cfg.OnWaiting(reason)
		}
		if !sleepCtx(ctx, d) {
			return subnet.Lease{}, false
		}
	}
}

// lossReason says why hold gave up the current lease.
type lossReason int

const (
	lossNone lossReason = iota
	lossDeleted
	lossExpired
	lossTakenOver
)

// hold keeps the current lease until it is lost (then re-acquires it) or
// ctx ends. Every retry in it waits with a bounded, jittered backoff:
// renewals that fail, restarts of the watch, and restoring our value after
// someone else overwrote it.
func (h *Holder) hold(ctx context.Context) {
	cur, _ := h.Lease()
	key := h.reg.keyOf(cur)
	nextRev := cur.ModRevision + 1
	cancelWatch := func() {}
	defer func() { cancelWatch() }()
	watch := func() clientv3.WatchChan {
		cancelWatch()
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		cancelWatch = cancel
		return h.reg.cli.Watch(wctx, key, clientv3.WithRev(nextRev))
	}
	wch := watch()
	var rewatch <-chan time.Time // armed while the watch waits to restart
	watchRetry := newBackoff(watchRetryMin, watchRetryMax)
	renewRetry := newBackoff(renewRetryMin, renewRetryMax)
	restoreRetry := newBackoff(restoreRetryMin, restoreRetryMax)
	var restore <-chan time.Time // armed while our value waits to be restored
	var lastOverwrite time.Time

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	h.resetTimer(timer, cur)
	loss := lossNone
	var detail string

	for loss == lossNone {
		select {
		case <-ctx.Done():
			return

		case <-timer.C:
			ttl, err := h.keepAliveOnce(ctx, cur.EtcdLease)
			switch {
			case errors.Is(err, rpctypes.ErrLeaseNotFound):
				loss, detail = lossExpired, "etcd lease is gone"
				continue
			case err != nil:
				d := renewRetry.next()
				left := time.Until(cur.Expiration)
				h.logger.Warn("cannot renew our lease; retrying", "subnet", cur.Subnet, "err", err,
					"left", left.Round(time.Second), "retry_in", d.Round(time.Millisecond))
				timer.Reset(d)
				continue
			}
			renewRetry.reset()
			h.setTTL(ttl)
			cur.Expiration = time.Now().Add(ttl)
			h.mu.Lock()
			h.renewals++
			h.lease.Expiration = cur.Expiration
			h.mu.Unlock()
			h.logger.Debug("renewed lease", "subnet", cur.Subnet, "ttl", ttl)
			timer.Reset(time.Until(h.renewTime(cur)))

		case <-restore:
			restore = nil
			if !h.differs(cur) {
				continue // put back meanwhile, by us or by whoever changed it
			}
			if err := h.rewrite(ctx, &cur); err != nil {
				d := restoreRetry.next()
				h.logger.Warn("cannot restore our lease value; retrying", "subnet", cur.Subnet, "err", err,
					"retry_in", d.Round(time.Millisecond))
				restore = time.After(d)
				continue
			}
			h.logger.Info("restored our lease value", "subnet", cur.Subnet)

		case <-rewatch:
			rewatch = nil
			wch = watch()

		case resp, ok := <-wch:
			if !ok || resp.Err() != nil {
				if ctx.Err() != nil {
					return
				}
				compacted := ok && errors.Is(resp.Err(), rpctypes.ErrCompacted)
				if compacted {
					// Our key's last write is older than the compaction
					// (a lease reused after weeks): check the key directly,
					// then watch from the oldest revision etcd still has.
					h.logger.Info("history of our lease key was compacted; checking the key directly",
						"subnet", cur.Subnet, "compact_revision", resp.CompactRevision)
					v := h.check(ctx, &cur)
					loss, detail = v.loss, v.detail
					if v.restore {
						restore, lastOverwrite = h.scheduleRestore(restore, &restoreRetry, lastOverwrite)
					}
					nextRev = max(cur.ModRevision+1, resp.CompactRevision)
				}
				if loss != lossNone {
					continue
				}
				cancelWatch()
				wch = nil
				d := watchRetry.next()
				if !compacted {
					h.logger.Warn("watch of our lease key broke; restarting it", "subnet", cur.Subnet, "err", resp.Err(),
						"retry_in", d.Round(time.Millisecond))
				}
				rewatch = time.After(d)
				continue
			}
			h.reg.touch()
			watchRetry.reset()
			for _, ev := range resp.Events {
				nextRev = ev.Kv.ModRevision + 1
				if loss != lossNone {
					break
				}
				v := h.onOwnEvent(ctx, &cur, ev)
				loss, detail = v.loss, v.detail
				if v.restore {
					restore, lastOverwrite = h.scheduleRestore(restore, &restoreRetry, lastOverwrite)
				}
			}
			h.resetTimer(timer, cur)
		}
	}

	// The lease is lost.
	switch loss {
	case lossDeleted:
		h.logger.Error("OUR LEASE KEY WAS DELETED by someone else; re-acquiring", "subnet", cur.Subnet, "detail", detail)
	case lossTakenOver:
		h.logger.Error("OUR LEASE KEY WAS TAKEN OVER by another host; acquiring a new subnet", "subnet", cur.Subnet, "detail", detail)
	case lossExpired:
		h.logger.Warn("OUR LEASE EXPIRED (etcd unreachable for longer than the TTL?); re-acquiring", "subnet", cur.Subnet, "detail", detail)
	}
	if !cur.Reservation && loss != lossExpired {
		h.revoke(ctx, cur.EtcdLease)
	}
	// Losses in quick succession (someone deleting our key again and
	// again) must not turn into a loop of listings and claims.
	if !h.lastLoss.IsZero() && time.Since(h.lastLoss) < lossWindow {
		d := h.lossRetry.next()
		h.logger.Warn("lost our lease again soon after the last loss; waiting before re-acquiring",
			"subnet", cur.Subnet, "retry_in", d.Round(time.Millisecond))
		if !sleepCtx(ctx, d) {
			return
		}
	} else {
		h.lossRetry.reset()
	}
	h.lastLoss = time.Now()
	l, ok := h.acquireLoop(ctx, cur.Subnet)
	if !ok {
		return
	}
	if l.Subnet != cur.Subnet {
		h.logger.Warn("LEASE RE-ACQUIRED ON A DIFFERENT SUBNET: pods on the old subnet lose connectivity",
			"old", cur.Subnet, "new", l.Subnet)
	} else {
		h.logger.Info("lease re-acquired", "subnet", l.Subnet)
	}
	h.changed(l)
}

// scheduleRestore arms the restore of our value after someone else
// overwrote it, unless one is armed already. The wait grows while the
// overwrites keep coming (two hosts claiming one PublicIP would otherwise
// rewrite the key back and forth as fast as etcd allows) and starts over
// after a quiet spell.
func (h *Holder) scheduleRestore(armed <-chan time.Time, b *retryBackoff, last time.Time) (<-chan time.Time, time.Time) {
	now := time.Now()
	if now.Sub(last) > 2*restoreRetryMax {
		b.reset()
	}
	if armed != nil {
		return armed, now
	}
	return time.After(b.next()), now
}

// resetTimer arms the renewal timer for cur, or stops it for a reservation.
func (h *Holder) resetTimer(t *time.Timer, cur subnet.Lease) {
	if cur.Reservation {
		t.Stop()
		return
	}
	t.Reset(time.Until(h.renewTime(cur)))
}

// renewTime is when the lease should next be renewed.
func (h *Holder) renewTime(l subnet.Lease) time.Time {
	return l.Expiration.Add(-h.renewMargin())
}

// ownVerdict is what a change to our own key means.
type ownVerdict struct {
	loss   lossReason
	detail string
	// restore: the key is still ours but holds another value than ours;
	// put ours back (rate limited, see scheduleRestore).
	restore bool
}

// onOwnEvent interprets a change to our own key and updates cur to match
// what etcd now holds.
func (h *Holder) onOwnEvent(ctx context.Context, cur *subnet.Lease, ev *clientv3.Event) ownVerdict {
	if ev.Type == clientv3.EventTypeDelete {
		if cur.Reservation {
			return ownVerdict{loss: lossDeleted, detail: "our reservation was released"}
		}
		// Tell an operator's delete from an expiry.
		if _, err := h.leaseTTL(ctx, cur.EtcdLease, false); err == nil {
			return ownVerdict{loss: lossDeleted, detail: "key deleted while our etcd lease is alive"}
		}
		return ownVerdict{loss: lossExpired, detail: "key removed with our etcd lease"}
	}
	if ev.Kv.ModRevision == cur.ModRevision {
		return ownVerdict{} // our own write
	}
	attrs, err := subnet.ParseLeaseAttrs(ev.Kv.Value)
	if err != nil {
		// Garbage is nobody's claim: the key stays ours, on our etcd lease
		// (a plain put may have unbound it), and our value goes back.
		// cur.Attrs is cleared so that the stored value differs from ours;
		// what others see through Lease() is left as it was.
		h.logger.Warn("OUR LEASE KEY WAS OVERWRITTEN with an unparsable value; putting our value back on the same key",
			"key", h.reg.keyOf(*cur), "value", excerpt(ev.Kv.Value), "err", err)
		cur.ModRevision = ev.Kv.ModRevision
		cur.Attrs = subnet.LeaseAttrs{}
		return ownVerdict{restore: true}
	}
	if attrs.PublicIP != h.currentAttrs().PublicIP {
		return ownVerdict{loss: lossTakenOver, detail: fmt.Sprintf("now held by %s", attrs.PublicIP)}
	}
	switch {
	case ev.Kv.Lease == 0 && !cur.Reservation:
		h.logger.Info("our lease was converted to a reservation", "subnet", cur.Subnet)
		h.revoke(ctx, cur.EtcdLease)
		cur.Reservation, cur.EtcdLease, cur.Expiration = true, 0, time.Time{}
	case ev.Kv.Lease != 0 && ev.Kv.Lease != cur.EtcdLease:
		h.logger.Warn("our key was re-bound to another etcd lease; adopting it", "subnet", cur.Subnet,
			"etcd_lease", fmt.Sprintf("%x", ev.Kv.Lease))
		cur.Reservation, cur.EtcdLease, cur.Expiration = false, ev.Kv.Lease, time.Now()
		h.setTTL(0)
	}
	cur.ModRevision = ev.Kv.ModRevision
	cur.Attrs = attrs
	h.setLease(*cur)
	return ownVerdict{restore: h.differs(*cur)}
}

// excerpt quotes at most 64 bytes of an etcd value for a log line.
func excerpt(v []byte) string {
	const n = 64
	if len(v) > n {
		return strconv.Quote(string(v[:n])) + "..."
	}
	return strconv.Quote(string(v))
}

// differs reports whether cur's stored value is not the one we publish.
func (h *Holder) differs(cur subnet.Lease) bool {
	want, err := h.currentAttrs().MarshalJSON()
	if err != nil {
		return false
	}
	have, _ := cur.Attrs.MarshalJSON()
	return !bytes.Equal(want, have)
}

// check reads our key after the watch lost events.
func (h *Holder) check(ctx context.Context, cur *subnet.Lease) ownVerdict {
	kv, err := h.reg.getKV(ctx, h.reg.keyOf(*cur))
	if err != nil {
		return ownVerdict{}
	}
	if kv == nil {
		return ownVerdict{loss: lossDeleted, detail: "key absent after the watch was compacted"}
	}
	return h.onOwnEvent(ctx, cur, &clientv3.Event{Type: clientv3.EventTypePut, Kv: kv})
}

// rewrite puts our current attrs if the stored value differs.
func (h *Holder) rewrite(ctx context.Context, cur *subnet.Lease) error {
	attrs := h.currentAttrs()
	want, err := attrs.MarshalJSON()
	if err != nil {
		return err
	}
	have, _ := cur.Attrs.MarshalJSON()
	if bytes.Equal(want, have) {
		return nil
	}
	key := h.reg.keyOf(*cur)
	var opts []clientv3.OpOption
	if !cur.Reservation {
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(cur.EtcdLease)))
	}
	var resp *clientv3.TxnResponse
	err = h.reg.call(ctx, func(ctx context.Context) (err error) {
		resp, err = h.reg.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", cur.ModRevision)).
			Then(clientv3.OpPut(key, string(want), opts...)).Commit()
		return err
	})
	if err != nil {
		return fmt.Errorf("update lease %s: %w", cur.Subnet, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("update lease %s: the key changed meanwhile", cur.Subnet)
	}
	cur.ModRevision = resp.Header.Revision
	cur.Attrs = attrs
	h.setLease(*cur)
	return nil
}
