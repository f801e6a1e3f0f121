package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/backend/vxlan"
	"github.com/weftnet/weft/subnet"
)

// fakeStore plays the lease store: the test decides which lease we hold,
// which leases exist and what the config says.
type fakeStore struct {
	mu      sync.Mutex
	own     func(subnet.Lease)
	waiting func(string)
	leases  func(subnet.LeaseSet)
	config  []byte
	cfgErr  error
	ready   chan struct{} // closed once Hold and Watch are running
	n       int
}

func newFakeStore(config string) *fakeStore {
	return &fakeStore{config: []byte(config), ready: make(chan struct{})}
}

func (f *fakeStore) registered() {
	f.n++
	if f.n == 2 {
		close(f.ready)
	}
}

func (f *fakeStore) Hold(ctx context.Context, spec subnet.HoldSpec, own func(subnet.Lease), waiting func(string)) error {
	f.mu.Lock()
	f.own, f.waiting = own, waiting
	f.registered()
	f.mu.Unlock()
	<-ctx.Done()
	return nil
}

func (f *fakeStore) Watch(ctx context.Context, leases func(subnet.LeaseSet)) error {
	f.mu.Lock()
	f.leases = leases
	f.registered()
	f.mu.Unlock()
	<-ctx.Done()
	return nil
}

func (f *fakeStore) Config(ctx context.Context) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.config, f.cfgErr
}

func (f *fakeStore) setConfig(raw string, err error) {
	f.mu.Lock()
	f.config, f.cfgErr = []byte(raw), err
	f.mu.Unlock()
}

// fakeBackend records the desired state and programs it at once, refusing
// the subnets in refuse.
type fakeBackend struct {
	mu     sync.Mutex
	own    subnet.Lease
	peers  []*subnet.Lease
	calls  int
	refuse map[netip.Prefix]string
}

func (b *fakeBackend) SetDesired(own subnet.Lease, peers []*subnet.Lease) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.own, b.peers = own, peers
	b.calls++
}

func (b *fakeBackend) Status() backend.Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := backend.Status{PeersWanted: len(b.peers), Refused: map[netip.Prefix]string{}, LastReconcile: time.Unix(1, 0)}
	for _, p := range b.peers {
		if why, ok := b.refuse[p.Subnet]; ok {
			st.Refused[p.Subnet] = why
		} else {
			st.PeersProgrammed++
		}
	}
	return st
}

func (b *fakeBackend) MTU() int { return 1450 }

func (b *fakeBackend) desired() (subnet.Lease, []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var keys []string
	for _, p := range b.peers {
		keys = append(keys, p.Key())
	}
	return b.own, keys
}

type fakeRules struct {
	mu         sync.Mutex
	own        netip.Prefix
	net6, own6 netip.Prefix
	err        error
}

func (r *fakeRules) Set6(network6, own6 netip.Prefix) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.net6, r.own6 = network6, own6
	return r.err
}

func (r *fakeRules) Set(network, own netip.Prefix) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.own = own
	return r.err
}

type fakeFile struct {
	mu  sync.Mutex
	env subnet.Env
	err error
}

func (f *fakeFile) Write(e subnet.Env) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.env = e
	return nil
}

const netConfig = `{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan"}}`

type harness struct {
	t     *testing.T
	cfg   *subnet.Config
	store *fakeStore
	be    *fakeBackend
	rules *fakeRules
	file  *fakeFile
	core  *Core
}

func start(t *testing.T) *harness {
	t.Helper()
	return startWith(t, netConfig)
}

func startWith(t *testing.T, netConfig string) *harness {
	t.Helper()
	cfg, err := subnet.ParseConfig([]byte(netConfig))
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, cfg: cfg, store: newFakeStore(netConfig), be: &fakeBackend{}, rules: &fakeRules{}, file: &fakeFile{}}
	h.core = New(Config{Network: cfg, Peers: vxlan.Descriptor.PeerRules(), SameOptions: vxlan.Descriptor.SameOptions, ConfigPoll: time.Hour, Logger: slog.New(slog.DiscardHandler)}, h.store, h.be, h.rules, h.file)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.core.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	<-h.store.ready
	return h
}

// settle waits until the core has handled everything sent so far.
func (h *harness) settle() {
	h.t.Helper()
	done := make(chan struct{})
	h.core.events <- func(*state) { close(done) }
	<-done
}

func (h *harness) giveLease(l subnet.Lease) { h.store.own(l); h.settle() }
func (h *harness) setLeases(ls ...subnet.Lease) {
	h.store.leases(subnet.LeaseSet{Leases: subnet.Pointers(slices.Clone(ls))})
	h.settle()
}
func (h *harness) config(raw string) {
	h.core.events <- func(s *state) { h.core.onConfig(s, []byte(raw)) }
	h.settle()
}
func (h *harness) ready() (bool, string) { return Readiness(h.core.State(), h.be.Status()) }

func vx(third int, publicIP, mac string, rev int64) subnet.Lease {
	return subnet.Lease{
		Subnet:         netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(third), 0}), 24),
		Attrs:          subnet.LeaseAttrs{PublicIP: netip.MustParseAddr(publicIP), BackendType: "vxlan", BackendData: []byte(`{"VNI":1,"VtepMAC":"` + mac + `"}`)},
		CreateRevision: rev,
	}
}

// On a dual-stack network subnet.env carries both families, and turning
// IPv6 on or off in the config asks for a restart.
func TestCoreDualStack(t *testing.T) {
	const dual = `{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"vxlan"}}`
	h := startWith(t, dual)
	own := vx(1, "192.0.2.1", "02:00:00:00:00:01", 1)
	own.IPv6Subnet = netip.MustParsePrefix("2001:db8:100:5::/64")
	h.giveLease(own)
	h.file.mu.Lock()
	env := h.file.env
	h.file.mu.Unlock()
	if env.IPv6Network.String() != "2001:db8:100::/48" || env.IPv6Subnet.String() != "2001:db8:100:5::1/64" || env.Subnet.String() != "198.18.1.1/24" {
		t.Fatalf("subnet.env: %+v", env)
	}
	h.rules.mu.Lock()
	if h.rules.net6.String() != "2001:db8:100::/48" || h.rules.own6 != own.IPv6Subnet {
		t.Errorf("IPv6 host rules set for %s %s", h.rules.net6, h.rules.own6)
	}
	h.rules.mu.Unlock()
	h.config(`{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan"}}`)
	if got := h.core.State().RestartNeeded; !slices.Contains(got, "EnableIPv6") {
		t.Fatalf("IPv6 turned off: restart needed for %q", got)
	}
	h.config(`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:200::/48","Backend":{"Type":"vxlan"}}`)
	if got := h.core.State().RestartNeeded; !slices.Contains(got, "IPv6Network") || slices.Contains(got, "EnableIPv6") {
		t.Fatalf("IPv6Network changed: restart needed for %q", got)
	}

	// On an IPv4-only network a lease's IPv6 part is not written.
	h4 := start(t)
	h4.giveLease(own)
	h4.file.mu.Lock()
	defer h4.file.mu.Unlock()
	if h4.file.env.IPv6Subnet.IsValid() || h4.file.env.IPv6Network.IsValid() {
		t.Fatalf("IPv4-only subnet.env: %+v", h4.file.env)
	}
	h4.rules.mu.Lock()
	defer h4.rules.mu.Unlock()
	if h4.rules.own6.IsValid() {
		t.Fatalf("IPv4-only network: IPv6 host rules set for %s", h4.rules.own6)
	}
}

func TestCoreSequence(t *testing.T) {
	h := start(t)
	if ok, why := h.ready(); ok || !strings.Contains(why, "acquiring") {
		t.Fatalf("fresh core: ready=%v %q", ok, why)
	}
	h.store.waiting("out of subnets: every subnet of the network is leased or reserved; retrying")
	h.settle()
	if _, why := h.ready(); !strings.Contains(why, "out of subnets") {
		t.Fatalf("waiting reason not shown: %q", why)
	}

	own := vx(1, "192.0.2.1", "02:00:00:00:00:01", 1)
	h.giveLease(own)
	if h.file.env.Subnet != netip.MustParsePrefix("198.18.1.1/24") || h.file.env.MTU != 1450 {
		t.Fatalf("subnet file %+v", h.file.env)
	}
	if h.rules.own != own.Subnet {
		t.Fatalf("rules for %s", h.rules.own)
	}
	if _, why := h.ready(); !strings.Contains(why, "first list of leases") {
		t.Fatalf("ready before the first lease list: %q", why)
	}

	a, b := vx(2, "192.0.2.2", "02:00:00:00:00:02", 2), vx(3, "192.0.2.3", "02:00:00:00:00:03", 3)
	h.setLeases(own, a, b)
	if gotOwn, peers := h.be.desired(); gotOwn.Subnet != own.Subnet || !reflect.DeepEqual(peers, []string{"198.18.2.0-24", "198.18.3.0-24"}) {
		t.Fatalf("desired %s %v", gotOwn.Subnet, peers)
	}
	if ok, why := h.ready(); !ok {
		t.Fatalf("not ready with every peer programmed: %s", why)
	}

	// A peer changes its VTEP MAC; another disappears; a conflict appears.
	a2 := a
	a2.Attrs.BackendData = []byte(`{"VNI":1,"VtepMAC":"02:00:00:00:00:22"}`)
	thief := vx(4, "192.0.2.4", "02:00:00:00:00:22", 9)
	h.setLeases(own, a2, thief)
	_, peers := h.be.desired()
	if !reflect.DeepEqual(peers, []string{"198.18.2.0-24"}) {
		t.Fatalf("after change and removal: %v", peers)
	}
	st := h.core.State()
	if len(st.Refused) != 1 || st.Refused[0].Reason != subnet.RefusedDuplicateMAC {
		t.Fatalf("refusals %+v", st.Refused)
	}
	if ok, why := h.ready(); !ok {
		t.Fatalf("a refused conflict holds back readiness: %s", why)
	}

	// The backend refuses one peer (not on-link, say): still ready.
	h.be.mu.Lock()
	h.be.refuse = map[netip.Prefix]string{a2.Subnet: "not on-link"}
	h.be.mu.Unlock()
	if ok, why := h.ready(); !ok {
		t.Fatalf("a backend refusal holds back readiness: %s", why)
	}
	h.be.mu.Lock()
	h.be.refuse = nil
	h.be.mu.Unlock()

	// Our lease is lost and re-acquired as another subnet: the file and
	// the rules follow, and a peer now overlapping us is refused.
	moved := vx(2, "192.0.2.1", "02:00:00:00:00:01", 20)
	h.giveLease(moved)
	if h.file.env.Subnet != netip.MustParsePrefix("198.18.2.1/24") || h.rules.own != moved.Subnet {
		t.Fatalf("after the move: file %s rules %s", h.file.env.Subnet, h.rules.own)
	}
	if gotOwn, peers := h.be.desired(); gotOwn.Subnet != moved.Subnet || len(peers) != 1 || peers[0] != "198.18.4.0-24" {
		t.Fatalf("after the move: desired %s %v", gotOwn.Subnet, peers)
	}

	// Config: the same network spelled differently is no change.
	for _, same := range []string{
		`{"network":"198.18.0.0/16","backend":{"type":"vxlan"}}`,
		`{"Network":"198.18.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}`,
	} {
		h.config(same)
		if ok, why := h.ready(); !ok {
			t.Fatalf("a no-op config rewrite %s made the node unready: %s", same, why)
		}
	}
	h.config(`{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan","VNI":2}}`)
	if ok, why := h.ready(); ok || !strings.Contains(why, "(Backend)") {
		t.Fatalf("a VNI change: ready=%v %q", ok, why)
	}
	h.config(`{"Network":"198.18.0.0/16","Backend":{"Type":"host-gw"}}`)
	if ok, why := h.ready(); ok || !strings.Contains(why, "Backend.Type") || !strings.Contains(why, "restart") {
		t.Fatalf("backend change: ready=%v %q", ok, why)
	}
	h.config(`{"Network":"nonsense"}`)
	if ok, why := h.ready(); ok || !strings.Contains(why, "invalid") {
		t.Fatalf("invalid config: ready=%v %q", ok, why)
	}
	h.config(netConfig)
	if ok, why := h.ready(); !ok {
		t.Fatalf("config restored: %s", why)
	}

	// The subnet file cannot be written: not ready, and it says why.
	h.file.mu.Lock()
	h.file.err = errors.New("read-only file system")
	h.file.mu.Unlock()
	h.giveLease(moved)
	if ok, why := h.ready(); ok || !strings.Contains(why, "read-only") {
		t.Fatalf("unwritable subnet file: ready=%v %q", ok, why)
	}
}

// TestCoreConfigPoll drives the config poll through the store: an etcd
// outage (read error) changes nothing, a change is noticed.
func TestCoreConfigPoll(t *testing.T) {
	cfg, _ := subnet.ParseConfig([]byte(netConfig))
	store := newFakeStore(netConfig)
	be := &fakeBackend{}
	c := New(Config{Network: cfg, Peers: vxlan.Descriptor.PeerRules(), ConfigPoll: 5 * time.Millisecond}, store, be, nil, &fakeFile{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	<-store.ready
	store.setConfig("", errors.New("etcd unavailable"))
	time.Sleep(30 * time.Millisecond)
	if st := c.State(); st.ConfigError != "" || st.RestartNeeded != nil {
		t.Fatalf("an unreachable store changed the config state: %+v", st)
	}
	store.setConfig(`{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}`, nil)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if st := c.State(); reflect.DeepEqual(st.RestartNeeded, []string{"Network", "SubnetMin", "SubnetMax"}) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("config change not noticed: %+v", c.State())
}

// TestCoreRandomSequences plays random event sequences (our lease moving,
// lease sets with valid, broken and conflicting leases, config rewrites)
// and checks the invariants after every event: the backend holds exactly
// what FilterPeers says for the last lease set and our current lease, the
// subnet file and rules follow our lease, no peer overlaps us, and
// readiness agrees with the state.
func TestCoreRandomSequences(t *testing.T) {
	pool := []subnet.Lease{
		vx(1, "192.0.2.11", "02:00:00:00:01:01", 1),
		vx(2, "192.0.2.12", "02:00:00:00:01:02", 2),
		vx(3, "192.0.2.13", "02:00:00:00:01:03", 3),
		vx(4, "192.0.2.14", "02:00:00:00:01:02", 4), // MAC of the second
		vx(5, "127.0.0.1", "02:00:00:00:01:05", 5),  // unusable PublicIP
		vx(6, "192.0.2.16", "00:00:00:00:00:00", 6), // zero MAC
		vx(7, "192.0.2.1", "02:00:00:00:01:07", 7),  // our PublicIP
		func() subnet.Lease { // a dual-stack key for the third's subnet
			l := vx(3, "192.0.2.18", "02:00:00:00:01:08", 8)
			l.IPv6Subnet = netip.MustParsePrefix("2001:db8:3::/64")
			return l
		}(),
	}
	configs := []string{netConfig, `{"network":"198.18.0.0/16","backend":{"type":"vxlan"}}`,
		`{"Network":"198.18.0.0/16","Backend":{"Type":"udp"}}`, `not json`}
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			h := start(t)
			var own subnet.Lease
			var set []subnet.Lease
			for step := 0; step < 40; step++ {
				switch rng.IntN(3) {
				case 0:
					own = vx(1+rng.IntN(8), "192.0.2.1", "02:00:00:00:00:01", int64(100+step))
					h.giveLease(own)
				case 1:
					set = nil
					for _, l := range pool {
						if rng.IntN(2) == 0 {
							set = append(set, l)
						}
					}
					if own.Subnet.IsValid() {
						set = append(set, own)
					}
					h.setLeases(set...)
				case 2:
					h.config(configs[rng.IntN(len(configs))])
				}
				st := h.core.State()
				if !own.Subnet.IsValid() {
					continue
				}
				wantPeers, wantRefused := subnet.FilterPeers(h.cfg, vxlan.Descriptor.PeerRules(), own, subnet.Pointers(set), nil)
				gotOwn, gotPeers := h.be.desired()
				var want []string
				for _, p := range wantPeers {
					want = append(want, p.Key())
					if p.Subnet.Overlaps(own.Subnet) {
						t.Fatalf("step %d: peer %s overlaps our %s", step, p.Subnet, own.Subnet)
					}
				}
				if gotOwn.Subnet != own.Subnet || !reflect.DeepEqual(gotPeers, want) {
					t.Fatalf("step %d: backend holds %s %v, want %s %v", step, gotOwn.Subnet, gotPeers, own.Subnet, want)
				}
				if len(st.Refused) != len(wantRefused) || st.Peers != len(wantPeers) {
					t.Fatalf("step %d: state %d peers %d refused, want %d %d", step, st.Peers, len(st.Refused), len(wantPeers), len(wantRefused))
				}
				if h.file.env.LeaseSubnet() != own.Subnet || h.rules.own != own.Subnet {
					t.Fatalf("step %d: file %s rules %s, lease %s", step, h.file.env.Subnet, h.rules.own, own.Subnet)
				}
				ok, why := h.ready()
				wantOK := st.HaveLeases && st.ConfigError == "" && len(st.RestartNeeded) == 0
				if ok != wantOK {
					t.Fatalf("step %d: ready=%v (%s), want %v; state %+v", step, ok, why, wantOK, st)
				}
			}
		})
	}
}

func TestReadiness(t *testing.T) {
	base := State{HaveLease: true, FileWritten: true, HaveLeases: true, Peers: 3}
	done := backend.Status{LastReconcile: time.Unix(1, 0), PeersWanted: 3, PeersProgrammed: 3}
	tests := []struct {
		name string
		s    State
		b    backend.Status
		ok   bool
		why  string
	}{
		{"all programmed", base, done, true, ""},
		{"waiting", State{Waiting: "out of subnets"}, done, false, "out of subnets"},
		{"no file", func() State { s := base; s.FileWritten = false; return s }(), done, false, "subnet file"},
		{"not reconciled", base, backend.Status{}, false, "not reconciled"},
		{"queued", base, backend.Status{LastReconcile: time.Unix(1, 0), PeersWanted: 2}, false, "queued"},
		{"one pending", base, backend.Status{LastReconcile: time.Unix(1, 0), PeersWanted: 3, PeersProgrammed: 2, LastError: "boom"}, false, "2 of 3 peers programmed: boom"},
		{"one refused", base, backend.Status{LastReconcile: time.Unix(1, 0), PeersWanted: 3, PeersProgrammed: 2,
			Refused: map[netip.Prefix]string{netip.MustParsePrefix("198.18.9.0/24"): "kernel rejected"}}, true, ""},
		{"restart", func() State { s := base; s.RestartNeeded = []string{"Backend.Type"}; return s }(), done, false, "(Backend.Type); restart"},
	}
	for _, tc := range tests {
		ok, why := Readiness(tc.s, tc.b)
		if ok != tc.ok || !strings.Contains(why, tc.why) {
			t.Errorf("%s: Readiness = %v %q, want %v %q", tc.name, ok, why, tc.ok, tc.why)
		}
	}
}
