package nl

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Conn is the netlink connection of one network namespace: every request
// weftd makes in it goes through here. A long-lived daemon opens one Conn
// per namespace and keeps it; nothing here ever switches the calling
// thread's namespace. A Conn is not safe for concurrent use.
type Conn struct {
	// h sends the requests whose encoding vishvananda already gets right.
	h *netlink.Handle
	// s carries the dumps and batches.
	s *sock
	// arena holds the requests of one batch back to back, and ops their
	// results; both are reused by the next batch. opBuf holds the ops of
	// one chunk, for the batching calls: a caller that hands them
	// thousands of requests a chunk at a time allocates them once.
	arena []byte
	ops   []*op
	opBuf [batchChunk]op
}

// errClosed is returned by a Conn or Dumper used after Close.
var errClosed = errors.New("netlink connection is closed")

// Open connects to ns; netns.None() means the namespace of the calling
// thread at the time of the call.
func Open(ns netns.NsHandle) (*Conn, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	s, err := openSock(ns)
	if err != nil {
		h.Close()
		return nil, err
	}
	return &Conn{h: h, s: s}, nil
}

// Close closes the connection's sockets. It is idempotent.
func (c *Conn) Close() {
	if c.s != nil {
		c.s.close()
		c.s = nil
	}
	if c.h != nil {
		c.h.Close()
		c.h = nil
	}
}

// batch sends the requests in c.arena that ops point into and clears both
// afterwards. Every op's Err is set; a socket failure shows in each.
func (c *Conn) batch(ops []*op) {
	if c.s == nil {
		for _, o := range ops {
			o.err = errClosed
		}
		return
	}
	_ = c.s.do(ops) // a socket failure shows in every op's err
}

// request sends one request built by build and returns its ack.
func (c *Conn) request(build func(b []byte) ([]byte, []byte)) error {
	var msg []byte
	c.arena, msg = build(c.arena[:0])
	o := op{msg: msg}
	c.batch([]*op{&o})
	c.arena = c.arena[:0]
	return o.err
}
