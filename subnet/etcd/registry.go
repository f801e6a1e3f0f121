// Package etcd is weft's lease registry on etcd v3, wire-compatible with
// flannel's etcd mode: the network config at <prefix>/config and one key per
// host lease at <prefix>/subnets/<a.b.c.d>-<len>, whose value is the
// flannel-exact JSON of subnet.LeaseAttrs.
//
// Registry is the thin data layer (read the config, list and watch leases,
// reserve and release subnets). Holder claims and keeps this host's own
// lease; Watcher feeds the daemon the full, declarative set of leases.
//
// Every etcd call gets its own deadline (CallTimeout), so a dead etcd never
// hangs a caller.
package etcd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/subnet"
)

// DefaultPrefix is flannel's default etcd prefix.
const DefaultPrefix = "/coreos.com/network"

// CallTimeout is the deadline of every single etcd request.
const CallTimeout = 5 * time.Second

// ErrNoConfig means the config key is absent. It is wrapped with the key name.
// It wraps subnet.ErrNoConfig, which every lease store returns.
var ErrNoConfig = fmt.Errorf("%w in etcd", subnet.ErrNoConfig)

// ErrCompacted means a watch asked for a revision etcd has compacted away.
// The etcd error is wrapped too.
var ErrCompacted = errors.New("watch revision has been compacted")

// ErrNotFound means the lease key does not exist.
var ErrNotFound = errors.New("no such lease")

// Registry reads and writes flannel-format config and lease keys.
type Registry struct {
	cli           *clientv3.Client
	prefix        string
	configKey     string
	subnetsPrefix string
	lastContact   atomic.Int64 // unix nanoseconds
}

// NewRegistry returns a registry under prefix (DefaultPrefix if empty).
func NewRegistry(cli *clientv3.Client, prefix string) *Registry {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	for len(prefix) > 1 && prefix[len(prefix)-1] == '/' {
		prefix = prefix[:len(prefix)-1]
	}
	return &Registry{
		cli:           cli,
		prefix:        prefix,
		configKey:     prefix + "/config",
		subnetsPrefix: prefix + "/subnets/",
	}
}

// Client returns the etcd client.
func (r *Registry) Client() *clientv3.Client { return r.cli }

// Prefix returns the key prefix, without a trailing slash.
func (r *Registry) Prefix() string { return r.prefix }

// ConfigKey is <prefix>/config.
func (r *Registry) ConfigKey() string { return r.configKey }

// LeaseKey is <prefix>/subnets/<a.b.c.d>-<len>.
func (r *Registry) LeaseKey(sn netip.Prefix) string { return r.subnetsPrefix + subnet.SubnetKey(sn) }

// keyOf is the full etcd key of l, in the dual-stack form when l has an
// IPv6 subnet.
func (r *Registry) keyOf(l subnet.Lease) string { return r.subnetsPrefix + l.Key() }

// LastContact is the time of the last successful etcd round trip made
// through this registry (by any Holder or Watcher using it too). It is zero
// before the first one.
func (r *Registry) LastContact() time.Time {
	n := r.lastContact.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func (r *Registry) touch() { r.lastContact.Store(time.Now().UnixNano()) }

// call runs f with its own deadline and records a successful contact.
func (r *Registry) call(ctx context.Context, f func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	err := f(cctx)
	if err == nil {
		r.touch()
	} else if ctx.Err() == nil {
		err = explainTimeout(r.cli, err)
	}
	return err
}

// ConfigRaw returns the config bytes and their mod revision.
func (r *Registry) ConfigRaw(ctx context.Context) ([]byte, int64, error) {
	var resp *clientv3.GetResponse
	err := r.call(ctx, func(ctx context.Context) (err error) {
		resp, err = r.cli.Get(ctx, r.configKey)
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("read config %s: %w", r.configKey, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("%w: key %s is absent", ErrNoConfig, r.configKey)
	}
	return resp.Kvs[0].Value, resp.Kvs[0].ModRevision, nil
}

// Config reads and validates the network config.
func (r *Registry) Config(ctx context.Context) (*subnet.Config, error) {
	raw, _, err := r.ConfigRaw(ctx)
	if err != nil {
		return nil, err
	}
	cfg, err := subnet.ParseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", r.configKey, err)
	}
	return cfg, nil
}

// PutConfig validates raw with subnet.ParseConfig and stores it. Invalid
// input is refused and nothing is written.
func (r *Registry) PutConfig(ctx context.Context, raw []byte) error {
	if _, err := subnet.ParseConfig(raw); err != nil {
		return fmt.Errorf("refusing invalid config: %w", err)
	}
	err := r.call(ctx, func(ctx context.Context) error {
		_, err := r.cli.Put(ctx, r.configKey, string(raw))
		return err
	})
	if err != nil {
		return fmt.Errorf("write config %s: %w", r.configKey, err)
	}
	return nil
}

// Snapshot is the set of leases at one etcd revision.
type Snapshot struct {
	// Leases are the keys that parsed, sorted by subnet. A Watcher's
	// snapshots share the leases that did not change between them, so
	// nobody may modify them.
	Leases []*subnet.Lease
	// Invalid are keys whose name or value did not parse.
	Invalid []InvalidLease
	// Revision is the etcd revision the snapshot reflects.
	Revision int64
}

// Leases lists every lease, with Expiration filled from each etcd lease's
// remaining TTL.
func (r *Registry) Leases(ctx context.Context) (Snapshot, error) {
	return r.list(ctx, true)
}

// list reads all lease keys. withTTL asks etcd for the remaining TTL of each
// distinct etcd lease (one request each), to fill Expiration.
func (r *Registry) list(ctx context.Context, withTTL bool) (Snapshot, error) {
	kvs, rev, err := r.listKVs(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	snap := buildSnapshot(r.subnetsPrefix, kvs, rev)
	if withTTL {
		if err := r.fillExpirations(ctx, snap.Leases); err != nil {
			return Snapshot{}, err
		}
	}
	return snap, nil
}

func (r *Registry) listKVs(ctx context.Context) ([]*mvccpb.KeyValue, int64, error) {
	var resp *clientv3.GetResponse
	err := r.call(ctx, func(ctx context.Context) (err error) {
		resp, err = r.cli.Get(ctx, r.subnetsPrefix, clientv3.WithPrefix())
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list leases under %s: %w", r.subnetsPrefix, err)
	}
	return resp.Kvs, resp.Header.Revision, nil
}

// buildSnapshot parses kvs into a Snapshot; it is pure, so it can be fuzzed.
func buildSnapshot(subnetsPrefix string, kvs []*mvccpb.KeyValue, rev int64) Snapshot {
	entries := make([]parsedKV, len(kvs))
	for i, kv := range kvs {
		entries[i] = parseKV(subnetsPrefix, kv)
	}
	return snapshotOf(slices.Values(entries), len(entries), rev)
}

// parsedKV is one lease key, parsed: either lease or invalid is set.
type parsedKV struct {
	lease   *subnet.Lease
	invalid *InvalidLease
}

func parseKV(subnetsPrefix string, kv *mvccpb.KeyValue) parsedKV {
	l, err := parseLeaseKV(subnetsPrefix, kv)
	if err != nil {
		return parsedKV{invalid: &InvalidLease{Key: string(kv.Key), Value: kv.Value, Err: err, ModRevision: kv.ModRevision}}
	}
	return parsedKV{lease: &l}
}

// snapshotOf assembles parsed keys into a sorted Snapshot.
func snapshotOf(entries iter.Seq[parsedKV], n int, rev int64) Snapshot {
	snap := Snapshot{Revision: rev, Leases: make([]*subnet.Lease, 0, n)}
	for e := range entries {
		if e.invalid != nil {
			snap.Invalid = append(snap.Invalid, *e.invalid)
		} else {
			snap.Leases = append(snap.Leases, e.lease)
		}
	}
	sortLeases(snap.Leases)
	sortInvalid(snap.Invalid)
	return snap
}

// compareLeases is the order of a snapshot's leases: by IPv4 subnet, then
// by IPv6 subnet (one IPv4 subnet may be claimed under two keys, plain and
// dual-stack). It is total over valid keys: a valid lease's key is its
// subnets written canonically.
func compareLeases(a, b *subnet.Lease) int {
	return cmp.Or(a.Subnet.Addr().Compare(b.Subnet.Addr()), cmp.Compare(a.Subnet.Bits(), b.Subnet.Bits()),
		a.IPv6Subnet.Addr().Compare(b.IPv6Subnet.Addr()), cmp.Compare(a.IPv6Subnet.Bits(), b.IPv6Subnet.Bits()))
}

// compareInvalid orders invalid keys by name.
func compareInvalid(a, b InvalidLease) int { return strings.Compare(a.Key, b.Key) }

func sortLeases(ls []*subnet.Lease) { slices.SortFunc(ls, compareLeases) }

func sortInvalid(is []InvalidLease) { slices.SortFunc(is, compareInvalid) }

func (r *Registry) fillExpirations(ctx context.Context, ls []*subnet.Lease) error {
	ids := map[int64]time.Time{}
	for _, l := range ls {
		if l.EtcdLease != 0 {
			ids[l.EtcdLease] = time.Time{}
		}
	}
	if len(ids) == 0 {
		return nil
	}
	type result struct {
		id  int64
		exp time.Time
		err error
	}
	work := make(chan int64)
	results := make(chan result)
	var wg sync.WaitGroup
	for i := 0; i < min(8, len(ids)); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				exp, err := r.expiration(ctx, id)
				results <- result{id, exp, err}
			}
		}()
	}
	idList := make([]int64, 0, len(ids))
	for id := range ids {
		idList = append(idList, id)
	}
	go func() {
		for _, id := range idList {
			work <- id
		}
		close(work)
		wg.Wait()
		close(results)
	}()
	var firstErr error
	for res := range results {
		if res.err != nil && firstErr == nil {
			firstErr = res.err
		}
		ids[res.id] = res.exp
	}
	if firstErr != nil {
		return firstErr
	}
	for i := range ls {
		if ls[i].EtcdLease != 0 {
			ls[i].Expiration = ids[ls[i].EtcdLease]
		}
	}
	return nil
}

// expiration returns when an etcd lease runs out; zero if it is gone.
func (r *Registry) expiration(ctx context.Context, id int64) (time.Time, error) {
	var resp *clientv3.LeaseTimeToLiveResponse
	err := r.call(ctx, func(ctx context.Context) (err error) {
		resp, err = r.cli.TimeToLive(ctx, clientv3.LeaseID(id))
		return err
	})
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("etcd lease %x time to live: %w", id, err)
	}
	if resp.TTL < 0 {
		return time.Time{}, nil
	}
	return time.Now().Add(time.Duration(resp.TTL) * time.Second), nil
}

func (r *Registry) getLeaseKV(ctx context.Context, sn netip.Prefix) (*mvccpb.KeyValue, error) {
	return r.getKV(ctx, r.LeaseKey(sn))
}

// getKV reads one key; nil when it is absent.
func (r *Registry) getKV(ctx context.Context, key string) (*mvccpb.KeyValue, error) {
	var resp *clientv3.GetResponse
	err := r.call(ctx, func(ctx context.Context) (err error) {
		resp, err = r.cli.Get(ctx, key)
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0], nil
}

func checkSubnet(sn netip.Prefix) error {
	if !sn.IsValid() || !sn.Addr().Is4() || sn.Masked() != sn {
		return fmt.Errorf("%s is not a masked IPv4 subnet", sn)
	}
	return nil
}

// Reserve makes sn a reservation for publicIP: a key with no etcd lease, so
// it never expires and only the host with that PublicIP will use it. A key
// already held by a different PublicIP is refused; our own live lease is
// converted to a reservation (its value is kept). So is the network's first
// subnet, which is never leased unless SubnetMin names it.
func (r *Registry) Reserve(ctx context.Context, sn netip.Prefix, publicIP netip.Addr) error {
	if err := checkSubnet(sn); err != nil {
		return fmt.Errorf("reserve %s: %w", sn, err)
	}
	if !publicIP.IsValid() || !publicIP.Is4() {
		return fmt.Errorf("reserve %s: public IP %s is not an IPv4 address", sn, publicIP)
	}
	if cfg, err := r.Config(ctx); err == nil {
		if !cfg.Contains(sn) || sn.Bits() != cfg.SubnetLen {
			return fmt.Errorf("reserve %s: not a /%d inside network %s", sn, cfg.SubnetLen, cfg.Network)
		}
		if sn.Addr() == cfg.Network.Masked().Addr() && !cfg.InRange(sn) {
			return fmt.Errorf("reserve %s: the first subnet of network %s is never leased (SubnetMin is %s); reserve another",
				sn, cfg.Network, cfg.SubnetMin)
		}
	}
	key := r.LeaseKey(sn)
	kv, err := r.getLeaseKV(ctx, sn)
	if err != nil {
		return fmt.Errorf("reserve %s: %w", sn, err)
	}
	var cmp clientv3.Cmp
	var value []byte
	if kv == nil {
		value, _ = subnet.LeaseAttrs{PublicIP: publicIP}.MarshalJSON()
		cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	} else {
		attrs, perr := subnet.ParseLeaseAttrs(kv.Value)
		switch {
		case perr != nil:
			return fmt.Errorf("reserve %s: key holds an unparsable value (%v); delete it first", sn, perr)
		case attrs.PublicIP != publicIP:
			return fmt.Errorf("reserve %s: held by %s, not %s", sn, attrs.PublicIP, publicIP)
		case kv.Lease == 0:
			return nil // already reserved for publicIP
		}
		value = kv.Value
		cmp = clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)
	}
	var resp *clientv3.TxnResponse
	err = r.call(ctx, func(ctx context.Context) (err error) {
		resp, err = r.cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, string(value))).Commit()
		return err
	})
	if err != nil {
		return fmt.Errorf("reserve %s: %w", sn, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("reserve %s: the key changed meanwhile; try again", sn)
	}
	return nil
}

// Release removes a reservation. It fails when sn is absent or is a normal
// (expiring) lease.
func (r *Registry) Release(ctx context.Context, sn netip.Prefix) error {
	if err := checkSubnet(sn); err != nil {
		return fmt.Errorf("release %s: %w", sn, err)
	}
	key := r.LeaseKey(sn)
	kv, err := r.getLeaseKV(ctx, sn)
	if err != nil {
		return fmt.Errorf("release %s: %w", sn, err)
	}
	if kv == nil {
		return fmt.Errorf("release %s: %w", sn, ErrNotFound)
	}
	if kv.Lease != 0 {
		return fmt.Errorf("release %s: not a reservation (it is a lease bound to etcd lease %x)", sn, kv.Lease)
	}
	var resp *clientv3.TxnResponse
	err = r.call(ctx, func(ctx context.Context) (err error) {
		resp, err = r.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(key)).Commit()
		return err
	})
	if err != nil {
		return fmt.Errorf("release %s: %w", sn, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("release %s: the key changed meanwhile; try again", sn)
	}
	return nil
}

// EventType says what happened to a lease key.
type EventType int

const (
	// EventAdded is a PUT that created the key.
	EventAdded EventType = iota + 1
	// EventUpdated is a PUT on an existing key. With an unchanged value it
	// is a renewal (see Event.Renewal).
	EventUpdated
	// EventRemoved is a DELETE or an expiry.
	EventRemoved
)

func (t EventType) String() string {
	switch t {
	case EventAdded:
		return "added"
	case EventUpdated:
		return "updated"
	case EventRemoved:
		return "removed"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one change to one lease key.
type Event struct {
	Type EventType
	// Subnet is the subnet named by the key (zero if the key name does not
	// parse, in which case Err is set).
	Subnet netip.Prefix
	// Lease is the new lease; zero on remove.
	Lease subnet.Lease
	// Err is set when the key or value did not parse.
	Err error
	// Time is when the event was received.
	Time time.Time
	// Revision is the etcd revision of the change.
	Revision int64
	// Key, Value and PrevValue are the raw key, new value (nil on remove)
	// and previous value (nil if the key was created).
	Key              string
	Value, PrevValue []byte
}

// Renewal reports whether the event is a PUT that left the value unchanged.
func (e Event) Renewal() bool {
	return e.Type == EventUpdated && e.PrevValue != nil && string(e.PrevValue) == string(e.Value)
}

func (r *Registry) toEvent(ev *clientv3.Event, now time.Time) Event {
	e := Event{Time: now, Revision: ev.Kv.ModRevision, Key: string(ev.Kv.Key)}
	if ev.PrevKv != nil {
		e.PrevValue = ev.PrevKv.Value
	}
	if ev.Type == clientv3.EventTypeDelete {
		e.Type = EventRemoved
		e.Subnet, e.Err = subnetFromKey(r.subnetsPrefix, ev.Kv.Key)
		return e
	}
	e.Value = ev.Kv.Value
	if ev.IsCreate() {
		e.Type = EventAdded
	} else {
		e.Type = EventUpdated
	}
	l, err := parseLeaseKV(r.subnetsPrefix, ev.Kv)
	e.Subnet, e.Err = l.Subnet, err
	if err == nil {
		e.Lease = l
	}
	return e
}

// WatchLeases streams raw lease events from fromRev (0: from now) until ctx
// ends, when it returns nil. A compacted fromRev returns an error wrapping
// ErrCompacted.
func (r *Registry) WatchLeases(ctx context.Context, fromRev int64, fn func(Event)) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithPrevKV()}
	if fromRev > 0 {
		opts = append(opts, clientv3.WithRev(fromRev))
	}
	retry := newBackoff(watchRetryMin, watchRetryMax)
	for {
		wch := r.cli.Watch(wctx, r.subnetsPrefix, opts...)
		for resp := range wch {
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					return fmt.Errorf("watch leases from revision %d: %w (oldest available %d): %w",
						fromRev, ErrCompacted, resp.CompactRevision, err)
				}
				break
			}
			r.touch()
			retry.reset()
			if fromRev == 0 {
				fromRev = resp.Header.Revision + 1
			}
			now := time.Now()
			for _, ev := range resp.Events {
				fn(r.toEvent(ev, now))
				fromRev = ev.Kv.ModRevision + 1
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		// The stream broke (lost leader, server restart): resume after the
		// last event we delivered.
		if !retry.wait(ctx) {
			return nil
		}
		opts = []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithPrevKV()}
		if fromRev > 0 {
			opts = append(opts, clientv3.WithRev(fromRev))
		}
	}
}
