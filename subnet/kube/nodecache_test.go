package kube

import (
	"context"
	"errors"
	"io"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/kubeapi"
)

// scriptAPI is a nodeAPI that answers from a script: each list call takes
// the next list answer, each watch call the next watch (events, then an
// end); once a script runs out, calls block until ctx ends.
type scriptAPI struct {
	mu      sync.Mutex
	lists   []listAnswer
	watches []watchAnswer
	calls   []string
}

type listAnswer struct {
	nodes []*kubeapi.Node
	rv    string
	err   error
}

type watchAnswer struct {
	events []kubeapi.Event
	end    error // io.EOF: a normal end
	err    error // the watch request itself fails
}

func (s *scriptAPI) ListNodes(ctx context.Context) (kubeapi.NodeList, error) {
	s.mu.Lock()
	s.calls = append(s.calls, "list")
	if len(s.lists) == 0 {
		s.mu.Unlock()
		<-ctx.Done()
		return kubeapi.NodeList{}, ctx.Err()
	}
	a := s.lists[0]
	s.lists = s.lists[1:]
	s.mu.Unlock()
	return kubeapi.NodeList{Nodes: a.nodes, ResourceVersion: a.rv}, a.err
}

func (s *scriptAPI) WatchNodes(ctx context.Context, rv string, _ time.Duration) (nodeWatch, error) {
	s.mu.Lock()
	s.calls = append(s.calls, "watch@"+rv)
	if len(s.watches) == 0 {
		s.mu.Unlock()
		return &scriptWatch{ctx: ctx, block: true}, nil
	}
	a := s.watches[0]
	s.watches = s.watches[1:]
	s.mu.Unlock()
	if a.err != nil {
		return nil, a.err
	}
	return &scriptWatch{ctx: ctx, events: a.events, end: a.end}, nil
}

func (s *scriptAPI) callLog() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.calls, " ")
}

type scriptWatch struct {
	ctx    context.Context
	events []kubeapi.Event
	end    error
	block  bool
}

func (w *scriptWatch) Next() (kubeapi.Event, error) {
	if len(w.events) > 0 {
		e := w.events[0]
		w.events = w.events[1:]
		return e, nil
	}
	if w.block {
		<-w.ctx.Done()
		return kubeapi.Event{}, w.ctx.Err()
	}
	return kubeapi.Event{}, w.end
}

func (w *scriptWatch) Close() {}

func kn(name, rv string) *kubeapi.Node {
	return &kubeapi.Node{ObjectMeta: kubeapi.ObjectMeta{Name: name, ResourceVersion: rv}}
}

var gone = &kubeapi.StatusError{Code: 410, Reason: "Expired", Message: "too old resource version"}

// runCache runs a cache on api until want holds of it (or 10 s), then
// stops it and checks that it returned.
func runCache(t *testing.T, api nodeAPI, want func(c *nodeCache, changes []string) bool) (*nodeCache, []string, []error) {
	t.Helper()
	var mu sync.Mutex
	var changes []string
	var errs []error
	synced := make(chan struct{})
	c := &nodeCache{
		api: api,
		changed: func(old, cur *kubeapi.Node) {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case old == nil:
				changes = append(changes, "+"+cur.Name+"@"+cur.ResourceVersion)
			case cur == nil:
				changes = append(changes, "-"+old.Name)
			default:
				changes = append(changes, "~"+cur.Name+"@"+cur.ResourceVersion)
			}
		},
		failed: func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() },
		synced: func() { close(synced) },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		ok := want(c, append([]string(nil), changes...))
		mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("condition not reached in 10 s; changes %v, errors %v", changes, errs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return after its context ended")
	}
	select {
	case <-synced:
	default:
		t.Error("never synced")
	}
	mu.Lock()
	defer mu.Unlock()
	return c, changes, errs
}

func names(c *nodeCache) string {
	var out []string
	for _, n := range c.list() {
		out = append(out, n.Name+"@"+n.ResourceVersion)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

func TestNodeCacheListThenWatch(t *testing.T) {
	api := &scriptAPI{
		lists: []listAnswer{{nodes: []*kubeapi.Node{kn("a", "1"), kn("b", "2")}, rv: "5"}},
		watches: []watchAnswer{
			{events: []kubeapi.Event{
				{Type: "ADDED", Node: kn("c", "6")},
				{Type: "MODIFIED", Node: kn("a", "7")},
				{Type: "BOOKMARK", Node: kn("", "8")},
				{Type: "DELETED", Node: kn("b", "9")},
			}, end: io.EOF},
			// The next watch starts where the last event left off.
			{events: []kubeapi.Event{{Type: "ADDED", Node: kn("d", "10")}}, end: io.EOF},
		},
	}
	c, changes, errs := runCache(t, api, func(c *nodeCache, _ []string) bool { _, ok := c.get("d"); return ok })
	if got, want := names(c), "a@7 c@6 d@10"; got != want {
		t.Errorf("cache %q, want %q", got, want)
	}
	if got := strings.Join(changes, " "); !strings.HasPrefix(got, "+a@1 +b@2 +c@6 ~a@7 -b +d@10") && !strings.HasPrefix(got, "+b@2 +a@1 +c@6 ~a@7 -b +d@10") {
		t.Errorf("changes %q", got)
	}
	if log := api.callLog(); !strings.HasPrefix(log, "list watch@5 watch@9 watch@10") {
		t.Errorf("calls %q", log)
	}
	if len(errs) != 0 {
		t.Errorf("errors %v", errs)
	}
}

func TestNodeCacheRelistsOnGone(t *testing.T) {
	api := &scriptAPI{
		lists: []listAnswer{
			{nodes: []*kubeapi.Node{kn("a", "1"), kn("b", "2")}, rv: "5"},
			// While the watch was gone, b was deleted, a changed and c came.
			{nodes: []*kubeapi.Node{kn("a", "8"), kn("c", "9")}, rv: "9"},
		},
		watches: []watchAnswer{{end: gone}},
	}
	c, changes, errs := runCache(t, api, func(c *nodeCache, _ []string) bool { _, ok := c.get("c"); return ok })
	if got := names(c); got != "a@8 c@9" {
		t.Errorf("cache %q", got)
	}
	sort.Strings(changes)
	if got := strings.Join(changes, " "); got != "+a@1 +b@2 +c@9 -b ~a@8" {
		t.Errorf("changes %q", got)
	}
	if log := api.callLog(); !strings.HasPrefix(log, "list watch@5 list watch@9") {
		t.Errorf("calls %q", log)
	}
	if len(errs) != 1 || !kubeapi.IsGone(errs[0]) {
		t.Errorf("errors %v", errs)
	}
}

func TestNodeCacheRewatchesAfterAnError(t *testing.T) {
	api := &scriptAPI{
		lists: []listAnswer{
			{err: errors.New("connection refused")},
			{nodes: []*kubeapi.Node{kn("a", "1")}, rv: "5"},
		},
		watches: []watchAnswer{
			{events: []kubeapi.Event{{Type: "MODIFIED", Node: kn("a", "6")}}, end: errors.New("stream cut")},
			{err: errors.New("503")},
			{events: []kubeapi.Event{{Type: "ADDED", Node: kn("z", "7")}}, end: io.EOF},
		},
	}
	start := time.Now()
	_, _, errs := runCache(t, api, func(c *nodeCache, _ []string) bool { _, ok := c.get("z"); return ok })
	if log := api.callLog(); !strings.HasPrefix(log, "list list watch@5 watch@6 watch@6 watch@7") {
		t.Errorf("calls %q: a failed watch goes on from its last resourceVersion, without a list", log)
	}
	if len(errs) != 3 {
		t.Errorf("errors %v", errs)
	}
	// Backoffs of about 1 s (the list), 1 s and 2 s (the watches).
	if d := time.Since(start); d < 3*time.Second {
		t.Errorf("three retries in %v: no backoff", d)
	}
}

// TestNodeCacheNoSpin checks that a server ending every watch at once
// does not make the loop spin.
func TestNodeCacheNoSpin(t *testing.T) {
	api := &scriptAPI{lists: []listAnswer{{nodes: []*kubeapi.Node{kn("a", "1")}, rv: "5"}, {nodes: []*kubeapi.Node{kn("a", "1")}, rv: "5"}}}
	for range 100 {
		api.watches = append(api.watches, watchAnswer{end: io.EOF})
	}
	runCache(t, api, func(*nodeCache, []string) bool { return strings.Count(api.callLog(), "list") >= 2 })
	if n := strings.Count(api.callLog(), "watch"); n > 8 {
		t.Errorf("%d watches before the cache gave up and listed again after a backoff", n)
	}
}

// TestNodeCacheLeavesNoGoroutine runs a Store's cache and checks that it
// ends every goroutine.
func TestNodeCacheLeavesNoGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	api := &scriptAPI{lists: []listAnswer{{nodes: []*kubeapi.Node{kn("a", "1")}, rv: "5"}}}
	runCache(t, api, func(c *nodeCache, _ []string) bool { return strings.Contains(api.callLog(), "watch@5") })
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}
