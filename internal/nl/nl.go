// Package nl holds small netlink helpers shared by weft's kernel data paths:
// a retry wrapper for dumps that the kernel interrupted, a helper that runs a
// function inside a network namespace on a locked OS thread, and a watcher
// that turns rtnetlink events in a namespace into "please reconcile" kicks.
package nl

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// dumpAttempts bounds how often a dump is retried after the kernel reported
// that the object set changed underneath it.
const dumpAttempts = 10

// Dump runs a netlink dump and retries it while it returns
// netlink.ErrDumpInterrupted, so callers only ever see consistent results.
// After the last attempt the error is returned, wrapped.
func Dump[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for i := 0; i < dumpAttempts; i++ {
		var res []T
		res, err = dump()
		if err == nil {
			return res, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("dump still interrupted after %d attempts: %w", dumpAttempts, err)
}

// NewHandle opens a netlink handle for ns; netns.None() means the current
// namespace.
func NewHandle(ns netns.NsHandle) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	return h, nil
}

// Do runs fn with the calling goroutine's OS thread switched into ns and
// switches back before returning. The thread is locked for the whole call;
// if switching back fails, the thread stays locked so that the Go runtime
// throws it away instead of reusing a thread in the wrong namespace.
// A ns that is not open (netns.None()) runs fn in place.
func Do(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns: %w", err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with the goroutine.
		return errors.Join(ferr, fmt.Errorf("return to original netns: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}
