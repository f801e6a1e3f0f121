package main

import (
	"runtime"
	rtmetrics "runtime/metrics"
	"sync"
)

// passCollector runs a garbage collection right after each reconcile
// pass, in its own goroutine, when the heap is large enough for it to
// matter. One collection runs at a time; a pass that ends while one runs
// gets one more afterwards, so that the last pass of a burst is always
// followed by a collection.
//
// Why: the Go collector sizes its next goal from the heap it marked last,
// and a collection that happens during a pass also marks the pass's
// working set (a route dump being compared, the lists being sorted). At
// 10000 peers that made the goal several MB larger than what stays live,
// and weftd's RSS follows the goal. Collecting once the pass is done
// sizes the goal from the lease state alone, and the runtime's scavenger
// returns the pages above it. A collection of a 10000-peer heap costs a
// few milliseconds of CPU; passes come at most every few hundred
// milliseconds during churn and every --reconcile-interval otherwise.
type passCollector struct {
	minGoal uint64 // bytes: below this heap goal a pass leaves too little to matter
	gc      func()
	goal    func() uint64

	mu      sync.Mutex
	running bool
	again   bool
}

// newPassCollector returns a collector that collects when the heap goal
// is at least 4 MiB.
func newPassCollector() *passCollector {
	return &passCollector{minGoal: 4 << 20, gc: runtime.GC, goal: heapGoal}
}

// afterPass is called when a reconcile pass has ended.
func (c *passCollector) afterPass() {
	if c.goal() < c.minGoal {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		c.again = true
		return
	}
	c.running = true
	go func() {
		for {
			c.gc()
			c.mu.Lock()
			if !c.again {
				c.running = false
				c.mu.Unlock()
				return
			}
			c.again = false
			c.mu.Unlock()
		}
	}()
}

// heapGoal is the Go heap goal of the current GC cycle, in bytes.
func heapGoal() uint64 {
	s := []rtmetrics.Sample{{Name: "/gc/heap/goal:bytes"}}
	rtmetrics.Read(s)
	if s[0].Value.Kind() != rtmetrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
