package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/subnet"
)

// Watcher feeds the daemon the full current set of leases.
//
// It lists the leases, applies them, then watches from the list revision
// (skipping what the list already holds) so that no change falls in a gap. After each watch response it applies the
// whole set again, once per response however many events it carried. When
// etcd compacts past the watch, or the watch breaks, it lists again. Leases in
// the Watcher's snapshots carry no Expiration: filling it costs one request
// per etcd lease, which a daemon does not need.
type Watcher struct {
	reg    *Registry
	logger *slog.Logger
	// bounds of the jittered backoff for retrying after errors.
	minBackoff, maxBackoff time.Duration
	// progressEvery is how often an idle watch asks etcd for a progress
	// notification. It keeps LastContact fresh on a quiet cluster, and a
	// watch that answers nothing for three intervals is restarted.
	progressEvery time.Duration
	// afterList is a test hook run between the list and the watch.
	afterList func()
}

// NewWatcher returns a Watcher; logger may be nil.
func NewWatcher(reg *Registry, logger *slog.Logger) *Watcher {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Watcher{reg: reg, logger: logger, minBackoff: 200 * time.Millisecond, maxBackoff: 5 * time.Second,
		progressEvery: 30 * time.Second}
}

// Run calls apply with the full set of leases, first after listing and then
// after each batch of changes. apply runs on Run's goroutine; Run waits for it.
// Run returns nil when ctx ends and never on transient etcd errors.
func (w *Watcher) Run(ctx context.Context, apply func(Snapshot)) error {
	retry := newBackoff(w.minBackoff, w.maxBackoff)
	compactions := 0 // in a row, without a healthy watch response between
	for ctx.Err() == nil {
		kvs, rev, err := w.reg.listKVs(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			d := retry.next()
			w.logger.Warn("cannot list leases; retrying", "err", err, "retry_in", d.Round(time.Millisecond))
			if !sleepCtx(ctx, d) {
				break
			}
			continue
		}
		if w.afterList != nil {
			w.afterList()
		}
		m := newLeaseModel(w.reg.subnetsPrefix, kvs, rev)
		kvs = nil // parsed: the listed values need not stay
		apply(m.snap)
		err = w.watch(ctx, m, rev, apply, func() { retry.reset(); compactions = 0 })
		if ctx.Err() != nil {
			break
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			compactions++
			if compactions == 1 {
				w.logger.Info("lease watch compacted; listing again", "revision", rev)
				continue // list at once: nothing is wrong with etcd
			}
			// Compacted again before the watch delivered anything: etcd
			// compacts faster than we list; do not loop on it.
			d := retry.next()
			w.logger.Warn("lease watch compacted again; listing again after a wait", "revision", rev,
				"retry_in", d.Round(time.Millisecond))
			if !sleepCtx(ctx, d) {
				break
			}
			continue
		}
		d := retry.next()
		w.logger.Warn("lease watch broke; listing again", "err", err, "retry_in", d.Round(time.Millisecond))
		if !sleepCtx(ctx, d) {
			break
		}
	}
	return nil
}

// A batch of watch responses applied together ends when no response comes
// for drainGap, or after maxBatch.
const (
	drainGap = 10 * time.Millisecond
	maxBatch = 200 * time.Millisecond
)

// watch applies changes on top of the listed model m until the watch fails
// or ctx ends.
func (w *Watcher) watch(ctx context.Context, m *leaseModel, rev int64, apply func(Snapshot), healthy func()) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// Watch from the list revision itself, not the one after: etcd answers
	// progress requests only for watches that started at or below its
	// current revision, and an idle cluster stays at the list revision.
	// Events at or below it are already in the snapshot and are skipped.
	listRev := rev
	wch := w.reg.cli.Watch(wctx, w.reg.subnetsPrefix, clientv3.WithPrefix(), clientv3.WithRev(listRev))
	ticker := time.NewTicker(w.progressEvery)
	defer ticker.Stop()
	lastResp := time.Now()
	drain := time.NewTimer(time.Hour)
	drain.Stop()
	defer drain.Stop()
	for {
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
			if time.Since(lastResp) > 3*w.progressEvery {
				return fmt.Errorf("lease watch silent for %s", time.Since(lastResp).Round(time.Second))
			}
			// Errors surface as a silent watch, handled above.
			pctx, pcancel := context.WithTimeout(wctx, time.Second)
			w.reg.cli.RequestProgress(pctx)
			pcancel()
			continue
		case resp, ok = <-wch:
		}
		// Take this response and every one already waiting (a burst, or
		// what piled up during a slow apply), then apply once.
		changed := false
		batchEnd := time.Now().Add(maxBatch)
		for {
			if !ok {
				if changed {
					apply(m.snapshot(rev))
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return errors.New("watch channel closed")
			}
			if err := resp.Err(); err != nil {
				return err // the caller lists again, which covers what we took
			}
			w.reg.touch()
			healthy()
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision <= listRev {
					continue
				}
				changed = true
				if ev.Type == clientv3.EventTypeDelete {
					m.del(ev.Kv.Key)
				} else {
					m.put(ev.Kv)
				}
				rev = max(rev, ev.Kv.ModRevision)
			}
			// etcd's client hands over buffered responses one at a time
			// through an unbuffered channel, so wait a moment for the next
			// one; bound the whole batch so a steady stream still applies.
			if wait := min(drainGap, time.Until(batchEnd)); wait > 0 {
				drain.Reset(wait)
				select {
				case resp, ok = <-wch:
					drain.Stop()
					continue
				case <-drain.C:
				}
			}
			break
		}
		if changed {
			apply(m.snapshot(rev))
		}
		lastResp = time.Now()
	}
}

// leaseModel is the Watcher's model of the keys under the subnets prefix
// between applies, parsed once per write so that an apply costs a merge,
// not a parse of every lease.
//
// Each lease is allocated once, when its key is parsed, and every snapshot
// from then on points to it until the key changes: a snapshot costs a
// pointer per lease, not a copy (a copy cost some 230 bytes per peer, and
// two of them lived side by side while a new snapshot replaced the old).
// No index of keys is kept beside the last snapshot: a valid lease's key
// is its subnets written canonically (subnet.Lease.Key), so a key finds its
// lease by a binary search on the snapshot's order, and an invalid key by
// one on the invalid keys' names. What was written or deleted since the
// last snapshot waits in pending, which holds only that batch. (A map of
// every key cost about 200 bytes per peer.)
type leaseModel struct {
	prefix string
	snap   Snapshot
	// pending holds the keys written (their parsed value) or deleted
	// (neither lease nor invalid set) since the last snapshot; the last
	// write of a key counts.
	pending map[string]parsedKV
}

// newLeaseModel parses the listed kvs at revision rev; its first snapshot
// is m.snap.
func newLeaseModel(prefix string, kvs []*mvccpb.KeyValue, rev int64) *leaseModel {
	m := &leaseModel{prefix: prefix, pending: make(map[string]parsedKV, len(kvs))}
	for _, kv := range kvs {
		m.put(kv)
	}
	m.snapshot(rev)
	return m
}

// put records a write of kv.
func (m *leaseModel) put(kv *mvccpb.KeyValue) {
	m.pending[string(kv.Key)] = parseKV(m.prefix, kv)
}

// del records the deletion of key.
func (m *leaseModel) del(key []byte) { m.pending[string(key)] = parsedKV{} }

// snapshot returns the sorted snapshot of every key at revision rev and
// makes it the model's: the last snapshot's entries that no pending key
// replaced or deleted, merged in order with the pending writes.
func (m *leaseModel) snapshot(rev int64) Snapshot {
	old := m.snap
	if len(m.pending) == 0 {
		m.snap.Revision = rev
		return m.snap
	}
	goneL := make([]bool, len(old.Leases))
	goneI := make([]bool, len(old.Invalid))
	var freshL []*subnet.Lease
	var freshI []InvalidLease
	probe := new(subnet.Lease)
	for k, p := range m.pending {
		if name, ok := strings.CutPrefix(k, m.prefix); ok {
			if v4, v6, err := subnet.ParseSubnetKey(name); err == nil {
				probe.Subnet, probe.IPv6Subnet = v4, v6
				if i, found := slices.BinarySearchFunc(old.Leases, probe, compareLeases); found {
					goneL[i] = true
				}
			}
		}
		if i, found := slices.BinarySearchFunc(old.Invalid, k, func(inv InvalidLease, k string) int { return strings.Compare(inv.Key, k) }); found {
			goneI[i] = true
		}
		switch {
		case p.invalid != nil:
			freshI = append(freshI, *p.invalid)
		case p.lease != nil:
			freshL = append(freshL, p.lease)
		}
	}
	sortLeases(freshL)
	sortInvalid(freshI)
	snap := Snapshot{Revision: rev,
		Leases:  mergeSorted(old.Leases, goneL, freshL, compareLeases),
		Invalid: mergeSorted(old.Invalid, goneI, freshI, compareInvalid)}
	m.snap = snap
	// A new map: a Go map keeps the room of its largest size, and a big
	// batch (a join of thousands of hosts) should not leave that behind.
	m.pending = map[string]parsedKV{}
	return snap
}

// mergeSorted returns a new slice holding the entries of old not marked
// gone and every entry of fresh, in order; old and fresh are sorted by
// cmp. Neither input is modified.
func mergeSorted[T any](old []T, gone []bool, fresh []T, cmp func(a, b T) int) []T {
	n := len(fresh)
	for i := range old {
		if !gone[i] {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	out := make([]T, 0, n)
	j := 0
	for i := range old {
		if gone[i] {
			continue
		}
		for j < len(fresh) && cmp(fresh[j], old[i]) < 0 {
			out = append(out, fresh[j])
			j++
		}
		out = append(out, old[i])
	}
	return append(out, fresh[j:]...)
}
