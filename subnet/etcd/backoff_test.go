package etcd

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := newBackoff(100*time.Millisecond, time.Second)
	bounds := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	for round := range 2 {
		for i, d := range bounds {
			d *= time.Millisecond
			got := b.next()
			if got < d/2 || got > d {
				t.Fatalf("round %d wait %d = %s, want within [%s, %s]", round, i, got, d/2, d)
			}
		}
		b.reset()
	}
	// Jitter: many draws at the cap are not all the same.
	seen := map[time.Duration]bool{}
	for range 50 {
		seen[b.next()] = true
	}
	if len(seen) < 10 {
		t.Fatalf("%d distinct waits in 50 draws: no jitter", len(seen))
	}
}
