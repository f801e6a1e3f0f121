package etcd

import (
	"context"
	"strings"
	"testing"
)

// Dual-stack keys written by flannel are read whole: the IPv6 part of the
// key and the creation revision reach the Lease, in a listing, in the
// Watcher's snapshots and in raw watch events; a key with a bad IPv6 part is
// invalid, not cut down to its IPv4 part.
func TestDualStackKeysFromEtcd(t *testing.T) {
	cli, reg, _ := setup(t, bigNet)
	ctx := testCtx(t)
	v, _ := attrs("192.0.2.11").MarshalJSON()
	put := func(name string) int64 {
		t.Helper()
		resp, err := cli.Put(ctx, reg.subnetsPrefix+name, string(v))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	const (
		plain = "198.18.7.0-24"
		dual  = "198.18.8.0-24&2001:db8:1:2::-64"
		bad   = "198.18.9.0-24&2001:db8:1:2::1-64"
	)
	revPlain := put(plain)
	revDual := put(dual)
	put(bad)
	put(dual) // a rewrite keeps the creation revision

	snap, err := reg.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkDual := func(what string, snap Snapshot) {
		t.Helper()
		if len(snap.Leases) != 2 || len(snap.Invalid) != 1 {
			t.Fatalf("%s: leases %v", what, leaseSubnets(snap))
		}
		p, d := snap.Leases[0], snap.Leases[1]
		if p.Key() != plain || p.IPv6Subnet.IsValid() || p.CreateRevision != revPlain {
			t.Fatalf("%s: plain lease %+v, want key %s created at %d", what, p, plain, revPlain)
		}
		if d.Key() != dual || d.IPv6Subnet.String() != "2001:db8:1:2::/64" || d.CreateRevision != revDual || d.ModRevision <= revDual {
			t.Fatalf("%s: dual-stack lease %+v, want key %s created at %d", what, d, dual, revDual)
		}
		if inv := snap.Invalid[0]; !strings.HasSuffix(inv.Key, bad) || !strings.Contains(inv.Err.Error(), bad) || !strings.Contains(inv.Err.Error(), "host bits") {
			t.Fatalf("%s: invalid %+v, want %s refused for its IPv6 host bits", what, inv, bad)
		}
	}
	checkDual("Leases", snap)

	a := &applies{ch: make(chan Snapshot, 1)}
	runWatcher(t, NewWatcher(reg, nil), a)
	waitFor(t, "the first apply", func() bool { return a.count() >= 1 })
	checkDual("Watcher list", a.last())
	put(dual)
	waitFor(t, "the apply after a rewrite", func() bool { return a.count() >= 2 })
	checkDual("Watcher after a watch event", a.last())

	// Raw events carry the IPv6 part and the creation revision too.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan Event, 10)
	done := make(chan error, 1)
	go func() { done <- reg.WatchLeases(wctx, revDual, func(e Event) { events <- e }) }()
	e := <-events
	if e.Key != reg.subnetsPrefix+dual || e.Lease.IPv6Subnet.String() != "2001:db8:1:2::/64" || e.Lease.CreateRevision != revDual {
		t.Fatalf("event %+v", e)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
