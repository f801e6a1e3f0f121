// Package nl owns every netlink conversation weft's daemon has with the
// kernel: links, addresses, routes (with the nexthop objects behind them),
// neighbours, bridge FDB entries and rtnetlink events.
//
// A Conn is one namespace's connection (see Open): a vishvananda handle for
// the requests whose encoding is intricate (link creation, address changes,
// single deletes) and one raw route socket for the hot paths, which are
// written here byte by byte: dumps parsed field by field from one reused
// buffer (Neigh, Route), and batches of create-or-replace requests sent many
// per sendmsg (SetNeighs, RouteTable.ReplaceAll). Every dump is retried here
// when the kernel reports it interrupted, so callers never see
// ErrDumpInterrupted. The types at the API are family-neutral: netip.Addr
// and netip.Prefix, never net.IP.
//
// Watch turns rtnetlink events in a namespace into "please reconcile" kicks,
// and Do runs a function inside a namespace on a locked OS thread.
package nl

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Family is an address family as netlink names it.
type Family uint8

// The families weft asks for.
const (
	FamilyAll    Family = unix.AF_UNSPEC
	FamilyV4     Family = unix.AF_INET
	FamilyV6     Family = unix.AF_INET6
	FamilyBridge Family = unix.AF_BRIDGE // bridge FDB entries
)

// FamilyOf returns the family of a (unmapped).
func FamilyOf(a netip.Addr) Family {
	if a.Unmap().Is4() {
		return FamilyV4
	}
	if a.Is6() {
		return FamilyV6
	}
	return FamilyAll
}

// ErrDumpInterrupted is what a dump returns when the kernel's object set
// changed underneath it. Conn's methods retry such dumps; only Dumper.Dump
// returns it.
var ErrDumpInterrupted = netlink.ErrDumpInterrupted

// dumpAttempts bounds how often a dump is retried after the kernel reported
// that the object set changed underneath it.
const dumpAttempts = 10

// retryDump runs a netlink dump and retries it while it returns
// ErrDumpInterrupted, so callers only ever see consistent results. After
// the last attempt the error is returned, wrapped. This is the one place
// weft retries dumps: every dump of Conn goes through it.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for i := 0; i < dumpAttempts; i++ {
		var res []T
		res, err = dump()
		if err == nil {
			return res, nil
		}
		if !errors.Is(err, ErrDumpInterrupted) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("dump still interrupted after %d attempts: %w", dumpAttempts, err)
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
