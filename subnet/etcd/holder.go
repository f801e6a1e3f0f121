package etcd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
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
	TTL            time.Duration // default 24h
	RenewMargin    time.Duration // default 60m: renew when less than this is left
	Logger         *slog.Logger
	// OnChange is called from Run's goroutine whenever our lease is
	// re-acquired or its subnet changes.
	OnChange func(subnet.Lease)
}

// Holder claims and keeps this host's lease. Its life cycle:
//
//	          Acquire: reuse our key (same PublicIP), else the previous
//	          subnet, else a random free one; claim = Grant + Txn(key absent)
//	free ──────────────────────────────────────────────────────────▶ held
//	held ──remaining TTL < RenewMargin: KeepAliveOnce (no PUT)──────▶ held
//	held ──key deleted / etcd lease expired / key taken over────────▶ lost
//	lost ──Acquire with PreviousSubnet = our subnet, OnChange───────▶ held
//
// A reservation (a key with no etcd lease) carrying our PublicIP is used as
// is and never renewed; it stays a reservation.
type Holder struct {
	reg    *Registry
	cfg    HolderConfig
	logger *slog.Logger
	rng    *rand.Rand

	mu       sync.Mutex
	lease    subnet.Lease
	have     bool
	attrs    subnet.LeaseAttrs
	renewals int

	attrsCh chan struct{}
}

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
		reg:     reg,
		cfg:     cfg,
		logger:  cfg.Logger,
		attrs:   cfg.Attrs,
		attrsCh: make(chan struct{}, 1),
	}
}

// Lease returns our current lease, if we hold one.
func (h *Holder) Lease() (subnet.Lease, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lease, h.have
}

// SetAttrs changes what we publish; Run rewrites our value when it differs.
func (h *Holder) SetAttrs(a subnet.LeaseAttrs) {
	h.mu.Lock()
	h.attrs = a
	h.mu.Unlock()
	select {
	case h.attrsCh <- struct{}{}:
	default:
	}
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
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return subnet.Lease{}, fmt.Errorf("acquire lease: %w", err)
		}
		snap, err := h.reg.list(ctx, false)
		if err != nil {
			return subnet.Lease{}, fmt.Errorf("acquire lease: %w", err)
		}

		// Rule 1: the key that already carries our PublicIP.
		if mine, ok := h.findMine(snap); ok {
			l, err := h.reuse(ctx, mine, attrs, value)
			if errors.Is(err, errLostRace) {
				prev = mine.Subnet
				continue
			}
			return l, err
		}

		taken := map[netip.Prefix]bool{}
		for _, l := range snap.Leases {
			taken[l.Subnet] = true
		}
		for _, inv := range snap.Invalid {
			if sn, err := subnetFromKey(h.reg.subnetsPrefix, []byte(inv.Key)); err == nil {
				taken[sn] = true
			}
		}

		// Rule 2: the subnet we had before, if still ours to take.
		candidates := 0
		if prev.IsValid() && nw.InRange(prev) && !taken[prev] {
			l, err := h.claim(ctx, prev, attrs, value)
			if err == nil {
				return l, nil
			}
			if !errors.Is(err, errLostRace) {
				return subnet.Lease{}, err
			}
			taken[prev] = true
			candidates++
		}

		// Rule 3: a random free subnet; on losing a race, pick again.
		for {
			sn, err := nw.RandomFree(taken, h.rng)
			if err != nil {
				if candidates > 0 {
					break // lost races: list again, keys may have changed
				}
				return subnet.Lease{}, fmt.Errorf("acquire lease in %s: %w", nw.Network, err)
			}
			l, err := h.claim(ctx, sn, attrs, value)
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

// findMine picks the key carrying our PublicIP: a reservation first, then
// the most recently written lease.
func (h *Holder) findMine(snap Snapshot) (subnet.Lease, bool) {
	ip := h.currentAttrs().PublicIP
	nw := h.cfg.Network
	var best subnet.Lease
	found := false
	for _, l := range snap.Leases {
		if l.Attrs.PublicIP != ip {
			continue
		}
		usable := nw.InRange(l.Subnet)
		if l.Reservation {
			usable = nw.Contains(l.Subnet) && l.Subnet.Bits() == nw.SubnetLen
		}
		if !usable {
			h.logger.Warn("ignoring a key with our public IP that does not fit the network config",
				"subnet", l.Subnet, "network", nw.Network, "subnet_len", nw.SubnetLen)
			continue
		}
		switch {
		case !found,
			l.Reservation && !best.Reservation,
			l.Reservation == best.Reservation && l.ModRevision > best.ModRevision:
			best, found = l, true
		}
	}
	return best, found
}

// reuse takes over the key that carries our PublicIP, keeping its etcd
// lease and rewriting the value only if it differs.
func (h *Holder) reuse(ctx context.Context, l subnet.Lease, attrs subnet.LeaseAttrs, value []byte) (subnet.Lease, error) {
	key := h.reg.LeaseKey(l.Subnet)
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
	h.logger.Info("reusing our existing "+kind, "subnet", l.Subnet, "etcd_lease", fmt.Sprintf("%x", l.EtcdLease),
		"value_rewritten", !bytes.Equal(old, value))
	return l, nil
}

// claim grants an etcd lease and creates the key bound to it, only if the
// key is absent. A grant that did not end up holding the key is revoked.
func (h *Holder) claim(ctx context.Context, sn netip.Prefix, attrs subnet.LeaseAttrs, value []byte) (subnet.Lease, error) {
	key := h.reg.LeaseKey(sn)
	var grant *clientv3.LeaseGrantResponse
	err := h.reg.call(ctx, func(ctx context.Context) (err error) {
		grant, err = h.reg.cli.Grant(ctx, int64((h.cfg.TTL+time.Second-1)/time.Second))
		return err
	})
	if err != nil {
		return subnet.Lease{}, fmt.Errorf("acquire lease %s: grant: %w", sn, err)
	}
	var resp *clientv3.TxnResponse
	err = h.reg.call(ctx, func(ctx context.Context) (err error) {
		resp, err = h.reg.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(value), clientv3.WithLease(grant.ID))).Commit()
		return err
	})
	if err != nil || !resp.Succeeded {
		// Never leak the grant. After a failed (possibly applied) txn,
		// revoking also removes the key if it was written; we retry anyway.
		h.revoke(ctx, int64(grant.ID))
		if err != nil {
			return subnet.Lease{}, fmt.Errorf("acquire lease %s: %w", sn, err)
		}
		return subnet.Lease{}, errLostRace
	}
	l := subnet.Lease{
		Subnet:      sn,
		Attrs:       attrs,
		Expiration:  time.Now().Add(time.Duration(grant.TTL) * time.Second),
		EtcdLease:   int64(grant.ID),
		ModRevision: resp.Header.Revision,
	}
	h.logger.Info("claimed lease", "subnet", sn, "etcd_lease", fmt.Sprintf("%x", grant.ID), "ttl", time.Duration(grant.TTL)*time.Second)
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

func (h *Holder) keepAliveOnce(ctx context.Context, id int64) (time.Duration, error) {
	var resp *clientv3.LeaseKeepAliveResponse
	err := h.reg.call(ctx, func(ctx context.Context) (err error) {
		resp, err = h.reg.cli.KeepAliveOnce(ctx, clientv3.LeaseID(id))
		return err
	})
	if err != nil {
		return 0, err
	}
	if resp.TTL <= 0 {
		return 0, rpctypes.ErrLeaseNotFound
	}
	return time.Duration(resp.TTL) * time.Second, nil
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
	backoff := time.Second
	for {
		l, err := h.acquire(ctx, prev)
		if err == nil {
			return l, true
		}
		if ctx.Err() != nil {
			return subnet.Lease{}, false
		}
		if errors.Is(err, subnet.ErrOutOfSubnets) {
			h.logger.Error("cannot acquire a lease: no free subnet; retrying", "err", err, "retry_in", backoff)
		} else {
			h.logger.Warn("cannot acquire a lease; retrying", "err", err, "retry_in", backoff)
		}
		select {
		case <-ctx.Done():
			return subnet.Lease{}, false
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
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
// ctx ends.
func (h *Holder) hold(ctx context.Context) {
	cur, _ := h.Lease()
	key := h.reg.LeaseKey(cur.Subnet)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	nextRev := cur.ModRevision + 1
	wch := h.reg.cli.Watch(wctx, key, clientv3.WithRev(nextRev))

	renewBackoff := time.Second
	renewAt := h.renewTime(cur)
	timer := time.NewTimer(time.Until(renewAt))
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
				left := time.Until(cur.Expiration)
				h.logger.Warn("cannot renew our lease; retrying", "subnet", cur.Subnet, "err", err,
					"left", left.Round(time.Second), "retry_in", renewBackoff)
				timer.Reset(renewBackoff)
				renewBackoff = min(renewBackoff*2, 30*time.Second)
				continue
			}
			renewBackoff = time.Second
			cur.Expiration = time.Now().Add(ttl)
			h.mu.Lock()
			h.renewals++
			h.lease.Expiration = cur.Expiration
			h.mu.Unlock()
			h.logger.Debug("renewed lease", "subnet", cur.Subnet, "ttl", ttl)
			timer.Reset(time.Until(h.renewTime(cur)))

		case <-h.attrsCh:
			if err := h.rewrite(ctx, &cur); err != nil {
				h.logger.Warn("cannot update our lease value; the watch will tell", "subnet", cur.Subnet, "err", err)
			}

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
					loss, detail = h.check(ctx, &cur)
					nextRev = max(cur.ModRevision+1, resp.CompactRevision)
				} else if ok {
					h.logger.Warn("watch of our lease key broke; restarting it", "err", resp.Err())
				}
				if loss != lossNone {
					continue
				}
				cancel()
				if !compacted {
					select {
					case <-ctx.Done():
						return
					case <-time.After(time.Second):
					}
				}
				wctx, cancel = context.WithCancel(clientv3.WithRequireLeader(ctx))
				defer cancel()
				wch = h.reg.cli.Watch(wctx, key, clientv3.WithRev(nextRev))
				continue
			}
			h.reg.touch()
			for _, ev := range resp.Events {
				nextRev = ev.Kv.ModRevision + 1
				if loss != lossNone {
					break
				}
				loss, detail = h.onOwnEvent(ctx, &cur, ev)
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
	return l.Expiration.Add(-h.cfg.RenewMargin)
}

// onOwnEvent interprets a change to our own key.
func (h *Holder) onOwnEvent(ctx context.Context, cur *subnet.Lease, ev *clientv3.Event) (lossReason, string) {
	if ev.Type == clientv3.EventTypeDelete {
		if cur.Reservation {
			return lossDeleted, "our reservation was released"
		}
		// Tell an operator's delete from an expiry.
		if _, err := h.expiredOrAlive(ctx, cur.EtcdLease); err == nil {
			return lossDeleted, "key deleted while our etcd lease is alive"
		}
		return lossExpired, "key removed with our etcd lease"
	}
	if ev.Kv.ModRevision == cur.ModRevision {
		return lossNone, "" // our own write
	}
	attrs, err := subnet.ParseLeaseAttrs(ev.Kv.Value)
	if err != nil {
		return lossTakenOver, fmt.Sprintf("value overwritten with something unparsable: %v", err)
	}
	if attrs.PublicIP != h.currentAttrs().PublicIP {
		return lossTakenOver, fmt.Sprintf("now held by %s", attrs.PublicIP)
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
	}
	cur.ModRevision = ev.Kv.ModRevision
	cur.Attrs = attrs
	h.setLease(*cur)
	if err := h.rewrite(ctx, cur); err != nil {
		h.logger.Warn("cannot restore our lease value", "subnet", cur.Subnet, "err", err)
	}
	return lossNone, ""
}

// expiredOrAlive returns the remaining TTL, or ErrLeaseNotFound.
func (h *Holder) expiredOrAlive(ctx context.Context, id int64) (time.Duration, error) {
	var resp *clientv3.LeaseTimeToLiveResponse
	err := h.reg.call(ctx, func(ctx context.Context) (err error) {
		resp, err = h.reg.cli.TimeToLive(ctx, clientv3.LeaseID(id))
		return err
	})
	if err != nil {
		return 0, err
	}
	if resp.TTL <= 0 {
		return 0, rpctypes.ErrLeaseNotFound
	}
	return time.Duration(resp.TTL) * time.Second, nil
}

// check reads our key after the watch lost events.
func (h *Holder) check(ctx context.Context, cur *subnet.Lease) (lossReason, string) {
	kv, err := h.reg.getLeaseKV(ctx, cur.Subnet)
	if err != nil {
		return lossNone, ""
	}
	if kv == nil {
		return lossDeleted, "key absent after the watch was compacted"
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
	key := h.reg.LeaseKey(cur.Subnet)
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
