package main

import (
	"fmt"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/subnet"
)

func TestPassCollector(t *testing.T) {
	var runs atomic.Int32
	gate := make(chan struct{})
	goal := atomic.Uint64{}
	goal.Store(8 << 20)
	c := &passCollector{minGoal: 4 << 20,
		gc:   func() { runs.Add(1); <-gate },
		goal: goal.Load}
	settle := func(want int32) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for runs.Load() < want && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(20 * time.Millisecond) // and no more than want
		if got := runs.Load(); got != want {
			t.Fatalf("%d collections, want %d", got, want)
		}
	}

	c.afterPass()
	settle(1)
	c.afterPass() // while the first runs: one more afterwards,
	c.afterPass() // however many passes end meanwhile
	gate <- struct{}{}
	settle(2)
	gate <- struct{}{}
	settle(2)
	c.mu.Lock()
	if c.running {
		t.Error("still running after the last collection")
	}
	c.mu.Unlock()

	goal.Store(2 << 20)
	c.afterPass() // a small heap: nothing to gain
	settle(2)

	goal.Store(8 << 20)
	c.afterPass() // idle again: runs at once
	settle(3)
	close(gate)
}

func TestHeapGoal(t *testing.T) {
	if g := heapGoal(); g == 0 {
		t.Error("heap goal 0: /gc/heap/goal:bytes not read")
	}
}

// BenchmarkCollect10000Peers is the cost of one collection after a pass
// on a heap that holds 10000 peers' leases, as a 10000-peer weftd's does:
// what passCollector adds to each pass. Run with -benchtime=20x.
func BenchmarkCollect10000Peers(b *testing.B) {
	leases := make([]*subnet.Lease, 10000)
	for i := range leases {
		attrs, err := subnet.ParseLeaseAttrs(fmt.Appendf(nil, `{"PublicIP":"192.0.2.%d","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:%02x:%02x"}}`, 1+i%250, i/256, i%256))
		if err != nil {
			b.Fatal(err)
		}
		leases[i] = &subnet.Lease{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, byte(18 + i/256/256), byte(i / 256), byte(i)}), 32), Attrs: attrs}
	}
	runtime.GC()
	b.ResetTimer()
	for b.Loop() {
		runtime.GC()
	}
	b.StopTimer()
	runtime.KeepAlive(leases)
}
