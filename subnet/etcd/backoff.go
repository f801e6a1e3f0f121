package etcd

import (
	"context"
	"math/rand/v2"
	"time"
)

// retryBackoff is a bounded exponential backoff with jitter, for every retry loop
// in this package: the n-th wait is drawn uniformly from [d/2, d], where d
// starts at min and doubles up to max. The jitter keeps hosts that failed
// together (an etcd restart) from retrying in lockstep; the lower bound keeps
// a retry loop from ever spinning. The zero value is not usable; use
// newBackoff.
type retryBackoff struct {
	min, max time.Duration
	cur      time.Duration // the next d; 0 means min
}

func newBackoff(min, max time.Duration) retryBackoff {
	return retryBackoff{min: min, max: max}
}

// next returns the next wait and doubles the bound.
func (b *retryBackoff) next() time.Duration {
	d := b.cur
	if d < b.min {
		d = b.min
	}
	b.cur = min(2*d, b.max)
	return d/2 + rand.N(d/2+1)
}

// reset starts over from min after a success.
func (b *retryBackoff) reset() { b.cur = 0 }

// wait sleeps for the next wait; false if ctx ended first.
func (b *retryBackoff) wait(ctx context.Context) bool {
	return sleepCtx(ctx, b.next())
}

// sleepCtx sleeps for d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
