package routes

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
)

// Kernel is what the kernel backends (vxlan, host-gw) share besides the
// Reconciler: their netlink connection to the namespace, of the backend's
// own interface type K (*nl.Conn, or *nlfake.NS in tests), opened on first
// use and again after Close, with the Reconciler that programs the
// backend's routes through the connection's table. It is not safe for
// concurrent use; the backends call it under their kernel mutex.
type Kernel[K interface{ Close() }] struct {
	open   func() (K, Table, error)
	conn   K
	isOpen bool
	// Routes makes the main table match the backend's wanted routes. It
	// keeps what it installed across reconnections.
	Routes *Reconciler
}

// NewKernel returns a Kernel that connects to ns with nl.Open and programs
// routes inside network, tagged with backend.RouteProtocol, in its main
// table. *nl.Conn must implement K, which each backend checks at compile
// time. It touches no kernel state.
func NewKernel[K interface{ Close() }](ns netns.NsHandle, network netip.Prefix) *Kernel[K] {
	return NewKernelWith(network, func() (K, Table, error) {
		var k K
		c, err := nl.Open(ns)
		if err != nil {
			return k, nil, err
		}
		k, ok := any(c).(K)
		if !ok {
			c.Close()
			return k, nil, fmt.Errorf("%T lacks methods the backend needs", c)
		}
		return k, c.RouteTable(network, backend.RouteProtocol), nil
	})
}

// NewKernelWith returns a Kernel that connects with open, for tests.
func NewKernelWith[K interface{ Close() }](network netip.Prefix, open func() (K, Table, error)) *Kernel[K] {
	return &Kernel[K]{open: open, Routes: New(nil, network)}
}

// Open returns the connection, connecting first if it is not open.
func (k *Kernel[K]) Open() (K, error) {
	if !k.isOpen {
		c, t, err := k.open()
		if err != nil {
			return c, err
		}
		k.conn, k.isOpen = c, true
		k.Routes.SetTable(t)
	}
	return k.conn, nil
}

// Close closes the connection if it is open; the next Open reconnects.
func (k *Kernel[K]) Close() {
	if k.isOpen {
		k.conn.Close()
		var zero K
		k.conn, k.isOpen = zero, false
	}
}

// ExtMTU returns the MTU of the external interface ext: ext.MTU, or what
// the kernel says when that is not known.
func ExtMTU(k interface {
	LinkByIndex(index int) (nl.Link, error)
}, ext backend.ExternalInterface) (int, error) {
	if ext.MTU != 0 {
		return ext.MTU, nil
	}
	l, err := k.LinkByIndex(ext.Index)
	if err != nil {
		return 0, fmt.Errorf("look up external interface %s: %w", ext.Name, err)
	}
	return l.MTU, nil
}
