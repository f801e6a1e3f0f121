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
// use and again after Close, with the Reconcilers that program the
// backend's routes through the connection's tables: one for the IPv4
// cluster network and, on a dual-stack network, one for the IPv6 one. It
// is not safe for concurrent use; the backends call it under their kernel
// mutex.
type Kernel[K interface{ Close() }] struct {
	open     func() (K, TableFor, error)
	network  netip.Prefix
	network6 netip.Prefix
	conn     K
	isOpen   bool
	// Routes makes the main table's IPv4 routes match the backend's
	// wanted ones. It keeps what it installed across reconnections.
	Routes *Reconciler
	// Routes6 does the same for IPv6 routes inside the IPv6 network; nil
	// when the network is IPv4-only.
	Routes6 *Reconciler
}

// TableFor returns the table of a connection for routes inside network
// (whose family it serves).
type TableFor func(network netip.Prefix) Table

// NewKernel returns a Kernel that connects to ns with nl.Open and programs
// routes inside network, and inside network6 when that is valid (a
// dual-stack network), tagged with backend.RouteProtocol, in its main
// table. *nl.Conn must implement K, which each backend checks at compile
// time. It touches no kernel state.
func NewKernel[K interface{ Close() }](ns netns.NsHandle, network, network6 netip.Prefix) *Kernel[K] {
	return NewKernelWith(network, network6, func() (K, TableFor, error) {
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
		return k, func(n netip.Prefix) Table { return c.RouteTable(n, backend.RouteProtocol) }, nil
	})
}

// NewKernelWith returns a Kernel that connects with open, for tests.
func NewKernelWith[K interface{ Close() }](network, network6 netip.Prefix, open func() (K, TableFor, error)) *Kernel[K] {
	k := &Kernel[K]{open: open, network: network, network6: network6, Routes: New(nil, network)}
	if network6.IsValid() {
		k.Routes6 = New(nil, network6)
	}
	return k
}

// Open returns the connection, connecting first if it is not open.
func (k *Kernel[K]) Open() (K, error) {
	if !k.isOpen {
		c, tables, err := k.open()
		if err != nil {
			return c, err
		}
		k.conn, k.isOpen = c, true
		k.Routes.SetTable(tables(k.network))
		if k.Routes6 != nil {
			k.Routes6.SetTable(tables(k.network6))
		}
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
