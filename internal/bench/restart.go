package bench

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/weftnet/weft/internal/lab"
)

// PingFlood pings dst from namespace ns every 10 ms, runs fn after lead,
// keeps pinging for after once fn returned, and reports sent and received
// counts and how long ping ran.
func PingFlood(ctx context.Context, ns string, dst string, lead, after time.Duration, fn func() error) (sent, recv int, window time.Duration, err error) {
	t0 := time.Now()
	p, err := startInNS(ns, "ping", "-n", "-q", "-i", "0.01", "-W", "1", dst)
	if err != nil {
		return 0, 0, 0, err
	}
	defer p.kill() // no-op once interrupted and reaped
	sleep(ctx, lead)
	fnErr := fn()
	sleep(ctx, after)
	p.interrupt()
	window = time.Since(t0)
	r, perr := lab.ParsePing(p.out.Bytes())
	if perr != nil {
		return 0, 0, window, fmt.Errorf("ping flood: %w", perr)
	}
	if fnErr != nil {
		return r.Sent, r.Received, window, fnErr
	}
	return r.Sent, r.Received, window, ctx.Err()
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// MeasureRestart pings from src to dst at 100 packets/s, first for 3 s
// without disturbance (the baseline), then across a restart of h's weftd
// (SIGTERM, start, wait for /readyz) with 1 s of pinging on either side.
func MeasureRestart(ctx context.Context, src, dst *lab.Pod, h *lab.Host) Restart {
	var r Restart
	var err error
	r.BaseSent, r.BaseRecv, r.BaseWindow, err = PingFlood(ctx, src.NSName, dst.IP.String(), 3*time.Second, 0, func() error { return nil })
	if err != nil {
		r.Err = err
		return r
	}
	r.Sent, r.Received, r.Window, err = PingFlood(ctx, src.NSName, dst.IP.String(), time.Second, time.Second, func() error {
		if h.WeftdPID() == 0 {
			return errNoWeftd
		}
		t0 := time.Now()
		if err := h.StopWeftd(syscall.SIGTERM); err != nil {
			return fmt.Errorf("stop weftd: %w", err)
		}
		if err := h.StartWeftd(); err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := h.WaitReady(rctx); err != nil {
			return err
		}
		r.Downtime = time.Since(t0)
		return nil
	})
	r.Err = err
	return r
}
