package etcd

import (
	"context"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/weftnet/weft/subnet/etcd/etcdtest"
)

func benchKVs(n int) []*mvccpb.KeyValue {
	kvs := make([]*mvccpb.KeyValue, n)
	for i := range kvs {
		kvs[i] = &mvccpb.KeyValue{
			Key:         []byte(fmt.Sprintf("%s198.%d.%d.0-24", testSubnets, 18+i>>16, i>>8&255) + fmt.Sprint("")),
			Value:       []byte(fmt.Sprintf(`{"PublicIP":"192.0.%d.%d","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:%02x:%02x"}}`, i>>8&255, i&255, i>>8&255, i&255)),
			Lease:       int64(i + 1),
			ModRevision: int64(i + 1),
		}
		kvs[i].Key = []byte(fmt.Sprintf("%s198.18.%d.%d-30", testSubnets, i/64, i%64*4))
	}
	return kvs
}

// BenchmarkBuildSnapshot5000 is the cost of one Watcher apply at 5000 hosts.
func BenchmarkBuildSnapshot5000(b *testing.B) {
	kvs := benchKVs(5000)
	b.ReportAllocs()
	for b.Loop() {
		s := buildSnapshot(testSubnets, kvs, 1)
		if len(s.Leases) != 5000 {
			b.Fatalf("%d leases, %d invalid: %v", len(s.Leases), len(s.Invalid), s.Invalid[0].Err)
		}
	}
}

// BenchmarkWatcherApply5000 is the cost of one Watcher apply at 5000 hosts
// once the keys are parsed: what each watch response (here: one lease
// rewritten) costs.
func BenchmarkWatcherApply5000(b *testing.B) {
	kvs := benchKVs(5000)
	m := newLeaseModel(testSubnets, kvs, 1)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m.put(kvs[i%len(kvs)])
		i++
		if s := m.snapshot(int64(i)); len(s.Leases) != 5000 {
			b.Fatal(len(s.Leases))
		}
	}
}

// BenchmarkAcquire is one host claiming a lease (list, grant, txn) against
// a local etcd holding b.N earlier leases.
func BenchmarkAcquire(b *testing.B) {
	cli, _ := etcdtest.Start(b)
	reg := NewRegistry(cli, "")
	ctx := context.Background()
	if err := reg.PutConfig(ctx, []byte(`{"Network":"198.18.0.0/15","SubnetLen":30}`)); err != nil {
		b.Fatal(err)
	}
	nc, _ := reg.Config(ctx)
	i := 0
	for b.Loop() {
		i++
		a := attrs(fmt.Sprintf("192.0.%d.%d", i>>8&255, i&255))
		if _, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: a}).Acquire(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
