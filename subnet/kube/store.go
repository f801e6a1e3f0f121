// Package kube is the Kubernetes lease store of weftd's node core
// (--kube-subnet-mgr), the second implementation of the interface that
// subnet/etcd.Store implements. There is no etcd: our subnet is our Node's
// spec.podCIDR, assigned by the controller manager's node IPAM, and every
// node publishes its lease as annotations on its own Node object, in
// flannel's format, so that flannel and weft nodes can share a cluster.
//
// One Node cache (nodecache.go: a list, then a watch) feeds everything:
//
//	Node cache ──▶ Hold:  our Node ──▶ podCIDR + our attributes ──▶ patch our annotations ──▶ own(lease)
//	        │               (no podCIDR: waiting("pod cidr not assigned: ..."), never an error)
//	        └──────▶ Watch: every other Node ──▶ NodeLeases ──▶ subnet.LeaseSet ──▶ FilterPeers (in the core)
//	Run: the cache, and NetworkUnavailable=False once Config.Ready says the node is programmed
//
// Nodes are hostile input like etcd keys: NodeLeases converts them to
// leases and InvalidLeases, and the core's one filter, subnet.FilterPeers,
// judges them with the rules it applies to etcd leases.
//
// The lease a Node yields has a state machine with fewer states than an
// etcd lease, because the controller manager, not weftd, allocates:
//
//	no Node / no podCIDR ──podCIDR assigned──▶ annotations patched ──▶ held
//	held ──annotations edited or removed──▶ patched again (same lease)
//	held ──Node deleted──▶ waiting (data path kept) ──Node re-created──▶ held (maybe another subnet)
package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/internal/kubeapi"
	"github.com/weftnet/weft/subnet"
)

// DefaultNetConfPath is where kube-flannel's ConfigMap mounts net-conf.json.
const DefaultNetConfPath = "/etc/kube-flannel/net-conf.json"

// Condition written on our Node once it is programmed.
const (
	ConditionReason  = "FlannelIsUp"
	conditionMessage = "weft is running on this node"
)

// Config configures a Store.
type Config struct {
	// NodeName is our Node.
	NodeName string
	// AnnotationPrefix is the annotations' prefix; "" means
	// DefaultAnnotationPrefix.
	AnnotationPrefix string
	// NetConfPath is the network config file; "" means DefaultNetConfPath.
	NetConfPath string
	// SetNodeNetworkUnavailable makes Run set our Node's condition
	// NetworkUnavailable to False (reason FlannelIsUp) once Ready is true.
	SetNodeNetworkUnavailable bool
	// Ready reports whether this node's data path is programmed (weftd's
	// readiness); Run polls it. nil means never.
	Ready  func() bool
	Logger *slog.Logger
}

// Store is the Kubernetes lease store. Build it with New, start Run, then
// use it as a node.Store; Hold, Watch and Leases wait for the Node cache's
// first list.
type Store struct {
	cli    *kubeapi.Client
	cfg    Config
	prefix Annotations
	log    *slog.Logger

	cache  nodeCache
	synced chan struct{} // closed once the cache holds the first list

	mu   sync.Mutex
	subs map[chan struct{}]struct{} // woken (never blocking) on every Node event

	lease    atomic.Pointer[subnet.Lease]
	contact  atomic.Int64 // unix nanoseconds of the last answer from the API server
	watchErr atomic.Pointer[string]
}

// New returns a Store that talks to the API server of kc. It sends no
// request until Run starts.
func New(kc *kubeapi.Config, cfg Config) (*Store, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("kube lease store: no node name")
	}
	if cfg.AnnotationPrefix == "" {
		cfg.AnnotationPrefix = DefaultAnnotationPrefix
	}
	if cfg.NetConfPath == "" {
		cfg.NetConfPath = DefaultNetConfPath
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		cfg:    cfg,
		prefix: Annotations(cfg.AnnotationPrefix),
		log:    cfg.Logger,
		synced: make(chan struct{}),
		subs:   map[chan struct{}]struct{}{},
	}
	c := *kc
	if c.UserAgent == "" {
		c.UserAgent = "weftd"
	}
	cli, err := kubeapi.NewClient(&c, func(rt http.RoundTripper) http.RoundTripper { return contactRecorder{rt, &s.contact} })
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	s.cli = cli
	s.cache = nodeCache{
		api:     clientAPI{cli},
		changed: s.nodeChanged,
		// The cache retries on its own; this records why for the
		// waiting reasons and logs each distinct error once.
		failed: func(err error) {
			msg := err.Error()
			if old := s.watchErr.Swap(&msg); old == nil || *old != msg {
				s.log.Warn("list or watch Nodes failed; retrying", "err", err)
			}
		},
		synced: func() { close(s.synced) },
	}
	return s, nil
}

// nodeChanged wakes the subscribers when a Node was added or deleted, or
// changed something a lease is made of.
func (s *Store) nodeChanged(old, cur *kubeapi.Node) {
	if old != nil && cur != nil && !leaseChanged(s.prefix, old, cur) {
		// A kubelet's status update: nothing a lease is made of.
		s.contact.Store(time.Now().UnixNano())
		return
	}
	s.event()
}

// leaseChanged reports whether an update of a Node changed anything its
// lease, or the holding of ours, is made of: identity, creation time, pod
// CIDRs, our annotations. Most updates of a real Node are a kubelet's
// status reports, which change none of them and wake nobody.
func leaseChanged(prefix Annotations, old, cur *kubeapi.Node) bool {
	if old.Name != cur.Name || old.UID != cur.UID || old.CreationTimestamp != cur.CreationTimestamp || old.Invalid != cur.Invalid ||
		old.Spec.PodCIDR != cur.Spec.PodCIDR || !slices.Equal(old.Spec.PodCIDRs, cur.Spec.PodCIDRs) {
		return true
	}
	ours := func(m map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			if strings.HasPrefix(k, string(prefix)+"/") {
				out[k] = v
			}
		}
		return out
	}
	return !maps.Equal(ours(old.Annotations), ours(cur.Annotations))
}

// contactRecorder notes the time of every answer from the API server.
type contactRecorder struct {
	rt   http.RoundTripper
	last *atomic.Int64
}

func (c contactRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.rt.RoundTrip(r)
	if err == nil {
		c.last.Store(time.Now().UnixNano())
	}
	return resp, err
}

func (s *Store) event() {
	s.contact.Store(time.Now().UnixNano())
	msg := ""
	s.watchErr.Store(&msg)
	s.mu.Lock()
	for c := range s.subs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
	s.mu.Unlock()
}

// subscribe returns a channel woken after Node events, and its release.
func (s *Store) subscribe() (<-chan struct{}, func()) {
	c := make(chan struct{}, 1)
	s.mu.Lock()
	s.subs[c] = struct{}{}
	s.mu.Unlock()
	return c, func() {
		s.mu.Lock()
		delete(s.subs, c)
		s.mu.Unlock()
	}
}

// Run runs the Node cache and, when configured, sets our Node's
// NetworkUnavailable condition once the node is ready. It returns nil when
// ctx ends, after every goroutine it started has ended.
func (s *Store) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer s.cli.Close()
	defer wg.Wait()
	wg.Go(func() { s.cache.run(ctx) })
	select {
	case <-ctx.Done():
		return nil
	case <-s.synced:
	}
	s.event()
	if s.cfg.SetNodeNetworkUnavailable && s.cfg.Ready != nil {
		wg.Go(func() { s.runCondition(ctx) })
	}
	return nil
}

// waitSynced waits for the Node cache, calling waiting (if set) with why
// it is not there yet.
func (s *Store) waitSynced(ctx context.Context, waiting func(string)) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-s.synced:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		why := "waiting for the Kubernetes API to list Nodes"
		if e := s.watchErr.Load(); e != nil && *e != "" {
			why += ": " + *e
		}
		if waiting != nil && why != last {
			waiting(why)
			last = why
		}
	}
}

// node returns our Node from the cache.
func (s *Store) node() (*kubeapi.Node, bool) { return s.cache.get(s.cfg.NodeName) }

// nodes returns every Node in the cache.
func (s *Store) nodes() []*kubeapi.Node { return s.cache.list() }

// Hold publishes our lease on our Node and keeps it published until ctx
// ends: own is called with the lease once our annotations are on the
// Node, and again whenever our podCIDR or published attributes change;
// waiting is called with the reason while there is none (no Node, "pod
// cidr not assigned", a podCIDR outside the network, the patch failing).
// Annotations that someone edits or removes are patched back. It returns
// nil when ctx ends; a Node without podCIDR is waited for, never an error.
func (s *Store) Hold(ctx context.Context, spec subnet.HoldSpec, own func(subnet.Lease), waiting func(string)) error {
	if err := s.waitSynced(ctx, waiting); err != nil {
		return nil
	}
	wake, release := s.subscribe()
	defer release()
	h := holder{s: s, spec: spec}
	backoff := time.Second
	lastWhy := ""
	var held *subnet.Lease
	for {
		l, why, retry := h.once(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case why != "":
			if why != lastWhy {
				s.log.Warn("no subnet lease from the Kubernetes API yet", "node", s.cfg.NodeName, "reason", why)
				waiting(why)
				lastWhy = why
			}
		default:
			// Again after a wait, so that the core forgets the reason.
			if held == nil || lastWhy != "" || !reflect.DeepEqual(*held, l) {
				held = &l
				s.lease.Store(&l)
				own(l)
			}
			lastWhy = ""
		}
		var after <-chan time.Time
		if retry {
			after = time.After(backoff)
			backoff = min(2*backoff, 30*time.Second)
		} else {
			backoff = time.Second
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-after:
		}
	}
}

// holder is one Hold call's state.
type holder struct {
	s    *Store
	spec subnet.HoldSpec
	// patchedFrom is the resourceVersion of our Node that our last patch
	// was computed from: until the cache moves past it, the cache does not
	// show that patch yet and must not trigger another.
	patchedFrom string
	warned      string
}

// once reads our Node and publishes our annotations if they differ. It
// returns the lease, or why there is none (retry: try again after a
// backoff even without a Node event).
func (h *holder) once(ctx context.Context) (l subnet.Lease, why string, retry bool) {
	s, name := h.s, h.s.cfg.NodeName
	n, ok := s.node()
	if !ok {
		return l, fmt.Sprintf("node %s not found in the Kubernetes API", name), false
	}
	if n.Invalid != "" {
		return l, fmt.Sprintf("node %s: %s", name, n.Invalid), false
	}
	v4, v6, err := PodCIDRs(n)
	switch {
	case err != nil:
		return l, fmt.Sprintf("node %s: %v", name, err), false
	case !v4.IsValid() && !v6.IsValid():
		return l, fmt.Sprintf("%v: node %s has no spec.podCIDR yet (is the controller manager allocating node CIDRs?)", ErrPodCIDRNotAssigned, name), false
	case !v4.IsValid():
		return l, fmt.Sprintf("%v: node %s has only the IPv6 pod cidr %s and weft needs an IPv4 one", ErrPodCIDRNotAssigned, name, v6), false
	}
	netcfg := h.spec.Network
	if netcfg != nil && (!netcfg.Contains(v4) || v4.Bits() != netcfg.SubnetLen) {
		return l, fmt.Sprintf("pod cidr %s of node %s is not a /%d inside network %s: the controller manager's cluster CIDR and node CIDR mask size must match Network and SubnetLen of %s",
			v4, name, netcfg.SubnetLen, netcfg.Network, s.cfg.NetConfPath), false
	}
	attrs := h.spec.Attrs
	if o, ok := n.Annotations[s.prefix.Name(AnnPublicIPOverwrite)]; ok {
		ip, err := netip.ParseAddr(o)
		if err == nil && ip.Is4() {
			attrs.PublicIP = ip
		} else if h.warned != o {
			s.log.Warn("ignoring an annotation that is not an IPv4 address", "node", name, "annotation", s.prefix.Name(AnnPublicIPOverwrite), "value", o)
			h.warned = o
		}
	}
	want, err := WantAnnotations(s.prefix, attrs)
	if err != nil {
		return l, fmt.Sprintf("encode our annotations: %v", err), true
	}
	patch := annotationPatch(s.prefix, n.Annotations, want)
	if patch != nil && n.ResourceVersion != h.patchedFrom {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		// Through the status subresource, as flannel does, so that the
		// RBAC needs no patch on nodes themselves: only on nodes/status.
		err := s.cli.PatchNodeStatus(pctx, name, kubeapi.MergePatch, patch, "weftd")
		cancel()
		if err != nil {
			return l, fmt.Sprintf("publish our lease as annotations on node %s: %v", name, err), true
		}
		h.patchedFrom = n.ResourceVersion
		s.log.Info("published our lease as node annotations", "node", name, "subnet", v4, "public-ip", attrs.PublicIP)
	}
	return subnet.Lease{Subnet: v4, IPv6Subnet: v6, Attrs: attrs}, "", false
}

// annotationPatch returns a merge patch that makes have carry want, and
// removes the v6 annotations that want lacks; nil when nothing differs.
func annotationPatch(prefix Annotations, have, want map[string]string) []byte {
	set := map[string]any{}
	for k, v := range want {
		if cur, ok := have[k]; !ok || cur != v {
			set[k] = v
		}
	}
	for _, a := range []string{AnnBackendV6Data, AnnPublicIPv6} {
		k := prefix.Name(a)
		if _, wanted := want[k]; !wanted {
			if _, ok := have[k]; ok {
				set[k] = nil
			}
		}
	}
	if len(set) == 0 {
		return nil
	}
	out, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": set}}) // strings and nils only
	return out
}

// Watch calls leases with the lease set of every Node (see NodeLeases),
// ours included, after each change, until ctx ends.
func (s *Store) Watch(ctx context.Context, leases func(subnet.LeaseSet)) error {
	if err := s.waitSynced(ctx, nil); err != nil {
		return nil
	}
	wake, release := s.subscribe()
	defer release()
	var last *subnet.LeaseSet
	for {
		set := NodeLeases(s.prefix, s.cfg.NodeName, s.nodes())
		if last == nil || !reflect.DeepEqual(*last, set) {
			last = &set
			leases(set)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		}
	}
}

// Leases lists the lease of every Node now, ours included.
func (s *Store) Leases(ctx context.Context) (subnet.LeaseSet, error) {
	if err := s.waitSynced(ctx, nil); err != nil {
		msg := "no answer"
		if e := s.watchErr.Load(); e != nil && *e != "" {
			msg = *e
		}
		return subnet.LeaseSet{}, fmt.Errorf("list Nodes: %w (%s)", err, msg)
	}
	return NodeLeases(s.prefix, s.cfg.NodeName, s.nodes()), nil
}

// Lease returns the lease held now; it never expires.
func (s *Store) Lease() (subnet.Lease, bool) {
	if l := s.lease.Load(); l != nil {
		return *l, true
	}
	return subnet.Lease{}, false
}

// LastContact is when the API server last answered or sent an event.
func (s *Store) LastContact() time.Time {
	if ns := s.contact.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// Config reads the network config file (kube-flannel's net-conf.json). A
// missing file wraps subnet.ErrNoConfig.
func (s *Store) Config(ctx context.Context) ([]byte, error) {
	raw, err := os.ReadFile(s.cfg.NetConfPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: file %s does not exist", subnet.ErrNoConfig, s.cfg.NetConfPath)
	}
	if err != nil {
		return nil, fmt.Errorf("read network config: %w", err)
	}
	return raw, nil
}

// runCondition sets NetworkUnavailable=False on our Node once the node is
// ready, once for each Node object (a re-created Node gets it again).
func (s *Store) runCondition(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var done string // the UID of the Node object that has the condition
	lastErr := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, ok := s.node()
		if !ok || n.UID == done || !s.cfg.Ready() {
			continue
		}
		if err := s.setCondition(ctx, n); err != nil {
			if err.Error() != lastErr {
				s.log.Warn("set the node condition NetworkUnavailable=False; retrying", "node", n.Name, "err", err)
				lastErr = err.Error()
			}
			continue
		}
		s.log.Info("node condition set", "node", n.Name, "NetworkUnavailable", "False", "reason", ConditionReason)
		done, lastErr = n.UID, ""
	}
}

func (s *Store) setCondition(ctx context.Context, n *kubeapi.Node) error {
	now := time.Now().UTC().Format(time.RFC3339)
	cond := kubeapi.NodeCondition{
		Type:               kubeapi.NodeNetworkUnavailable,
		Status:             kubeapi.ConditionFalse,
		Reason:             ConditionReason,
		Message:            conditionMessage,
		LastTransitionTime: now,
		LastHeartbeatTime:  now,
	}
	if c := n.Condition(cond.Type); c != nil && c.Status == cond.Status && c.LastTransitionTime != "" {
		cond.LastTransitionTime = c.LastTransitionTime // no transition
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []kubeapi.NodeCondition{cond}}})
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return s.cli.PatchNodeStatus(pctx, n.Name, kubeapi.StrategicMergePatch, patch, "")
}
