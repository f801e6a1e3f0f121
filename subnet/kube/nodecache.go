package kube

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/weftnet/weft/internal/kubeapi"
)

// nodeAPI is what the Node cache needs of the API server.
type nodeAPI interface {
	ListNodes(ctx context.Context) (kubeapi.NodeList, error)
	WatchNodes(ctx context.Context, rv string, timeout time.Duration) (nodeWatch, error)
}

// nodeWatch is an open watch: Next returns io.EOF when it ends normally.
type nodeWatch interface {
	Next() (kubeapi.Event, error)
	Close()
}

// clientAPI adapts *kubeapi.Client to nodeAPI.
type clientAPI struct{ *kubeapi.Client }

func (c clientAPI) WatchNodes(ctx context.Context, rv string, timeout time.Duration) (nodeWatch, error) {
	return c.Client.WatchNodes(ctx, rv, timeout)
}

// nodeCache holds every Node, kept current by a list and then a watch
// from the list's resourceVersion:
//
//	list ──▶ replace the cache ──▶ watch from its resourceVersion ──▶ apply events
//	  ▲                                │ ended (timeout)  ──▶ watch again from the last resourceVersion
//	  │                                │ 410 Gone          ──▶ list again at once
//	  └──── after a backoff ◀──────────┘ any other error
//
// changed is called, without the lock, for every Node that was added
// (old nil), changed or deleted (cur nil); failed for every error the
// loop retries after.
type nodeCache struct {
	api     nodeAPI
	changed func(old, cur *kubeapi.Node)
	failed  func(error)
	synced  func()

	mu    sync.RWMutex
	nodes map[string]*kubeapi.Node
}

// Watch timeouts the server is asked for: random in this range, so that
// many nodes do not all re-watch together.
const (
	watchMin = 5 * time.Minute
	watchMax = 10 * time.Minute
)

// errWatchStalled is returned when a watch ends at once, repeatedly.
var errWatchStalled = errors.New("watch of nodes keeps ending without an event")

// run keeps the cache current until ctx ends.
func (c *nodeCache) run(ctx context.Context) {
	backoff := time.Second
	first := true
	for ctx.Err() == nil {
		progressed, err := c.listAndWatch(ctx, &first)
		if ctx.Err() != nil {
			return
		}
		if progressed {
			backoff = time.Second
		}
		if err != nil {
			c.failed(err)
		}
		if kubeapi.IsGone(err) && progressed {
			continue // relist at once
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff + rand.N(backoff/4+1)):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// listAndWatch lists, then watches until the watch cannot go on from
// where it is: 410 Gone, or watches that keep ending at once. A watch that
// fails otherwise is retried from the same resourceVersion after a
// backoff. progressed says whether the list succeeded.
func (c *nodeCache) listAndWatch(ctx context.Context, first *bool) (progressed bool, err error) {
	l, err := c.api.ListNodes(ctx)
	if err != nil {
		return false, err
	}
	c.replace(l.Nodes)
	if *first {
		*first = false
		c.synced()
	}
	rv := l.ResourceVersion
	backoff := time.Second
	for quick := 0; ctx.Err() == nil; {
		start := time.Now()
		n, err := c.watch(ctx, &rv)
		switch {
		case ctx.Err() != nil:
			return true, nil
		case kubeapi.IsGone(err):
			return true, err
		case err != nil:
			if n > 0 {
				backoff = time.Second
			}
			c.failed(err)
			select {
			case <-ctx.Done():
			case <-time.After(backoff + rand.N(backoff/4+1)):
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		case n == 0 && time.Since(start) < time.Second:
			// A server that ends every watch at once must not make this
			// loop spin.
			if quick++; quick >= 3 {
				return true, errWatchStalled
			}
		default:
			quick = 0
		}
		if n > 0 {
			backoff = time.Second
		}
	}
	return true, nil
}

// watch watches from *rv, applying events and moving *rv along, until
// the watch ends; it returns the number of events.
func (c *nodeCache) watch(ctx context.Context, rv *string) (int, error) {
	timeout := watchMin + rand.N(watchMax-watchMin)
	w, err := c.api.WatchNodes(ctx, *rv, timeout)
	if err != nil {
		return 0, err
	}
	defer w.Close()
	for n := 0; ; n++ {
		ev, err := w.Next()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if ev.Node.ResourceVersion != "" {
			*rv = ev.Node.ResourceVersion
		}
		switch ev.Type {
		case "ADDED", "MODIFIED":
			c.put(ev.Node)
		case "DELETED":
			c.remove(ev.Node.Name)
		}
	}
}

// replace makes the cache hold nodes, and reports the differences.
func (c *nodeCache) replace(nodes []*kubeapi.Node) {
	next := make(map[string]*kubeapi.Node, len(nodes))
	for _, n := range nodes {
		next[n.Name] = n
	}
	c.mu.Lock()
	prev := c.nodes
	c.nodes = next
	c.mu.Unlock()
	for name, old := range prev {
		if cur, ok := next[name]; !ok {
			c.changed(old, nil)
		} else if cur.ResourceVersion != old.ResourceVersion || cur.Invalid != old.Invalid {
			c.changed(old, cur)
		}
	}
	for name, cur := range next {
		if _, ok := prev[name]; !ok {
			c.changed(nil, cur)
		}
	}
}

func (c *nodeCache) put(n *kubeapi.Node) {
	c.mu.Lock()
	if c.nodes == nil {
		c.nodes = map[string]*kubeapi.Node{}
	}
	old := c.nodes[n.Name]
	c.nodes[n.Name] = n
	c.mu.Unlock()
	c.changed(old, n)
}

func (c *nodeCache) remove(name string) {
	c.mu.Lock()
	old, ok := c.nodes[name]
	delete(c.nodes, name)
	c.mu.Unlock()
	if ok {
		c.changed(old, nil)
	}
}

// get returns Node name.
func (c *nodeCache) get(name string) (*kubeapi.Node, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	n, ok := c.nodes[name]
	return n, ok
}

// list returns every Node.
func (c *nodeCache) list() []*kubeapi.Node {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]*kubeapi.Node, 0, len(c.nodes))
	for _, n := range c.nodes {
		out = append(out, n)
	}
	return out
}
