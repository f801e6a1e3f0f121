package etcd

import (
	"math/rand"
	"reflect"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// TestLeaseModelMatchesList writes and deletes random keys (valid leases,
// dual-stack ones, keys and values that do not parse, one subnet under two
// keys) and checks after each batch that the Watcher's model gives the
// snapshot a fresh list of the same keys gives, and that no snapshot it
// handed out earlier changed.
func TestLeaseModelMatchesList(t *testing.T) {
	keys := []string{
		"198.18.1.0-24", "198.18.2.0-24", "198.18.3.0-24", "198.18.4.0-24",
		"198.18.5.0-24&2001:db8:5::-64", "198.18.5.0-24", // one subnet, two keys
		"198.18.6.0-99", "not-a-subnet", "198.18.7.0-24",
	}
	values := []string{
		`{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}`,
		`{"PublicIP":"192.0.2.2","BackendType":"host-gw"}`,
		`{"PublicIP":"192.0.2.300"}`, // does not parse
		`{"PublicIP":"198.51.100.7","PublicIPv6":"2001:db8::7","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:07"}}`,
	}
	type handed struct {
		snap Snapshot
		copy Snapshot
	}
	for seed := int64(1); seed <= 20; seed++ {
		rng := rand.New(rand.NewSource(seed))
		live := map[string]*mvccpb.KeyValue{}
		rev := int64(1)
		list := func() []*mvccpb.KeyValue {
			var kvs []*mvccpb.KeyValue
			for _, kv := range live {
				kvs = append(kvs, kv)
			}
			return kvs
		}
		m := newLeaseModel(testSubnets, nil, rev)
		var out []handed
		for batch := 0; batch < 30; batch++ {
			for range 1 + rng.Intn(4) {
				rev++
				k := testSubnets + keys[rng.Intn(len(keys))]
				if rng.Intn(3) == 0 {
					delete(live, k)
					m.del([]byte(k))
					continue
				}
				kv := &mvccpb.KeyValue{Key: []byte(k), Value: []byte(values[rng.Intn(len(values))]),
					Lease: int64(rng.Intn(3)), ModRevision: rev, CreateRevision: rev}
				live[k] = kv
				m.put(kv)
			}
			got := m.snapshot(rev)
			want := buildSnapshot(testSubnets, list(), rev)
			if !sameSnapshot(got, want) {
				t.Fatalf("seed %d batch %d: model\n%+v\nlist\n%+v", seed, batch, got, want)
			}
			out = append(out, handed{got, buildSnapshot(testSubnets, list(), rev)})
		}
		for i, h := range out {
			if !sameSnapshot(h.snap, h.copy) {
				t.Fatalf("seed %d: snapshot %d changed after it was handed out", seed, i)
			}
		}
	}
}

// sameSnapshot compares snapshots entry by entry: both are in the one
// total order of compareLeases (one subnet under two keys included).
func sameSnapshot(a, b Snapshot) bool {
	if a.Revision != b.Revision || len(a.Leases) != len(b.Leases) || len(a.Invalid) != len(b.Invalid) {
		return false
	}
	if len(a.Leases) > 0 && !reflect.DeepEqual(a.Leases, b.Leases) {
		return false
	}
	for i := range a.Invalid {
		x, y := a.Invalid[i], b.Invalid[i]
		if x.Key != y.Key || string(x.Value) != string(y.Value) || x.ModRevision != y.ModRevision || x.Err.Error() != y.Err.Error() {
			return false
		}
	}
	return true
}

// TestLeaseModelShrinks deletes most of many leases and checks that the
// model still gives what a fresh list gives, and keeps nothing of the batch
// once the snapshot is taken.
func TestLeaseModelShrinks(t *testing.T) {
	kvs := benchKVs(200)
	m := newLeaseModel(testSubnets, kvs, 1)
	if len(m.pending) != 0 || len(m.snap.Leases) != 200 {
		t.Fatalf("after listing 200 leases: %d pending, %d in the snapshot", len(m.pending), len(m.snap.Leases))
	}
	for _, kv := range kvs[50:] {
		m.del(kv.Key)
	}
	got := m.snapshot(2)
	if len(m.pending) != 0 || len(got.Leases) != 50 {
		t.Fatalf("after deleting 150 of 200: %d pending, %d in the snapshot", len(m.pending), len(got.Leases))
	}
	if want := buildSnapshot(testSubnets, kvs[:50], 2); !sameSnapshot(got, want) {
		t.Fatalf("model\n%+v\nlist\n%+v", got, want)
	}
	m.put(kvs[60])
	if got, want := m.snapshot(3), buildSnapshot(testSubnets, append(kvs[:50:50], kvs[60]), 3); !sameSnapshot(got, want) {
		t.Fatalf("after a write: model\n%+v\nlist\n%+v", got, want)
	}
}
