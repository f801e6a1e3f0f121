package backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/subnet"
)

func TestLoop(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	var seen [][]*subnet.Lease
	far := netip.MustParsePrefix("198.18.9.0/24")
	fail := atomic.Bool{}
	var reconciles atomic.Int64
	cfg := Config{
		Logger:         slog.New(slog.NewTextHandler(&logs, nil)),
		ResyncInterval: 20 * time.Millisecond,
		OnReconcile:    func(time.Duration, error) { reconciles.Add(1) },
	}
	l := NewLoop(cfg, "dev0", func(own subnet.Lease, peers []*subnet.Lease) Pass {
		mu.Lock()
		seen = append(seen, peers)
		mu.Unlock()
		p := Pass{Programmed: len(peers) - 1, Refused: map[netip.Prefix]string{far: "not on-link"}, Repairs: map[string]uint64{"route": 1}}
		if fail.Load() {
			p.Err = errors.New("boom")
		}
		return p
	})
	if st := l.Status(); st.Device != "dev0" || st.Ready() {
		t.Fatalf("fresh loop status %+v", st)
	}
	l.Reconcile() // nothing desired yet: no pass
	if reconciles.Load() != 0 {
		t.Fatal("a pass ran before SetDesired")
	}

	ctx, cancel := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	done := make(chan struct{})
	go func() {
		l.Run(ctx, func(ctx context.Context, kick func()) {
			<-ctx.Done()
			close(watchDone)
		})
		close(done)
	}()
	peers := []subnet.Lease{{Subnet: netip.MustParsePrefix("198.18.2.0/24")}, {Subnet: far}}
	l.SetDesired(subnet.Lease{}, subnet.Pointers(peers))
	deadline := time.Now().Add(2 * time.Second)
	for reconciles.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	st := l.Status()
	if st.PeersWanted != 2 || st.PeersProgrammed != 1 || st.Refused[far] != "not on-link" || !st.Ready() {
		t.Errorf("status after passes: %+v", st)
	}
	if st.Repairs["route"] < 3 {
		t.Errorf("repairs do not accumulate: %v", st.Repairs)
	}
	if n := strings.Count(logs.String(), "refusing peer"); n != 1 {
		t.Errorf("refusal logged %d times over %d passes, want once", n, reconciles.Load())
	}
	fail.Store(true)
	l.Kick()
	deadline = time.Now().Add(2 * time.Second)
	for l.Status().LastError == "" && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if l.Status().LastError != "boom" {
		t.Errorf("LastError = %q", l.Status().LastError)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return")
	}
	select {
	case <-watchDone:
	default:
		t.Fatal("Run returned before its watch goroutine ended")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen[0]) != 2 {
		t.Errorf("pass got %d peers", len(seen[0]))
	}
}

// TestLoopKernelRejection: a peer whose objects the kernel itself rejects
// (EINVAL, as for an FDB entry with an all-zero MAC) is reported as refused,
// so the others make the backend ready; a failure of the conversation
// (ENOBUFS) keeps the peer pending. A pass error repeated unchanged is
// logged once.
func TestLoopKernelRejection(t *testing.T) {
	var logs bytes.Buffer
	good := netip.MustParsePrefix("198.18.2.0/24")
	bad := netip.MustParsePrefix("198.18.3.0/24")
	var failWith atomic.Value
	failWith.Store(unix.EINVAL)
	l := NewLoop(Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))}, "dev0", func(own subnet.Lease, peers []*subnet.Lease) Pass {
		err := fmt.Errorf("set FDB entry 00:00:00:00:00:00 -> 192.0.2.3: %w", failWith.Load().(unix.Errno))
		return Pass{Programmed: 1, Failed: map[netip.Prefix]error{bad: err}, Err: err}
	})
	l.SetDesired(subnet.Lease{}, subnet.Pointers([]subnet.Lease{{Subnet: good}, {Subnet: bad}}))
	l.Reconcile()
	l.Reconcile()
	st := l.Status()
	if why, ok := st.Refused[bad]; !ok || !strings.Contains(why, "kernel rejected") {
		t.Fatalf("refused = %v, want %s refused by the kernel", st.Refused, bad)
	}
	if !st.Ready() {
		t.Errorf("one rejected peer holds back readiness: %+v", st)
	}
	if n := strings.Count(logs.String(), "reconcile failed; will retry"); n != 1 {
		t.Errorf("the same pass error was logged %d times, want once:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "refusing peer"); n != 1 {
		t.Errorf("the refusal was logged %d times, want once:\n%s", n, logs.String())
	}

	failWith.Store(unix.ENOBUFS)
	l.Reconcile()
	st = l.Status()
	if _, ok := st.Refused[bad]; ok {
		t.Errorf("a transient failure (ENOBUFS) was reported as a refusal: %v", st.Refused)
	}
	if st.Ready() {
		t.Errorf("ready while a peer is pending after a transient failure: %+v", st)
	}
}

// TestLoopLogsRepairs: each kind of repair is logged, with its count, at
// most once per interval; repairs in between are counted into the next line.
func TestLoopLogsRepairs(t *testing.T) {
	var logs bytes.Buffer
	repairs := map[string]uint64{}
	l := NewLoop(Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))}, "dev0", func(subnet.Lease, []*subnet.Lease) Pass {
		return Pass{Repairs: maps.Clone(repairs)}
	})
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l.now = func() time.Time { return now }
	l.SetDesired(subnet.Lease{}, nil)
	lines := func() []string {
		var out []string
		for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			if strings.Contains(line, "restored them") {
				out = append(out, line)
			}
		}
		logs.Reset()
		return out
	}

	l.Reconcile() // no repairs: no line
	if got := lines(); len(got) != 0 {
		t.Fatalf("a pass without repairs logged %q", got)
	}
	repairs["route"], repairs["fdb"] = 2, 1
	l.Reconcile()
	got := lines()
	if len(got) != 2 || !strings.Contains(got[0], "kind=fdb count=1") || !strings.Contains(got[1], "kind=route count=2") {
		t.Fatalf("first repairs logged %q, want one line per kind with its count", got)
	}
	delete(repairs, "fdb")
	for range 5 { // 5 more route repairs within the minute: no line
		now = now.Add(5 * time.Second)
		l.Reconcile()
	}
	if got := lines(); len(got) != 0 {
		t.Fatalf("repairs within the interval logged %q", got)
	}
	repairs = map[string]uint64{}
	now = now.Add(time.Minute)
	l.Reconcile() // no new repair, but the pending ones are due
	if got := lines(); len(got) != 1 || !strings.Contains(got[0], "kind=route count=10") {
		t.Fatalf("after the interval logged %q, want one route line with count=10", got)
	}
	now = now.Add(2 * time.Minute)
	l.Reconcile()
	if got := lines(); len(got) != 0 {
		t.Fatalf("nothing pending, logged %q", got)
	}
}

// TestLoopTrustedPass: Run takes the trusted pass only for a pass that
// SetDesired alone asked for after a clean pass; its first pass, a pass
// a kernel event asked for, one after a failed pass, one on the resync timer
// and every Reconcile call are full ones.
func TestLoopTrustedPass(t *testing.T) {
	ran := make(chan string, 16)
	var fail atomic.Bool
	passOf := func(kind string) PassFunc {
		return func(subnet.Lease, []*subnet.Lease) Pass {
			var p Pass
			if fail.Load() {
				p.Err = errors.New("boom")
			}
			ran <- kind
			return p
		}
	}
	cfg := Config{Logger: slog.New(slog.DiscardHandler), ResyncInterval: time.Hour}
	l := NewLoop(cfg, "dev0", passOf("full"))
	l.SetTrustedPass(passOf("trusted"))
	kicks := make(chan func(), 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		l.Run(ctx, func(ctx context.Context, kick func()) {
			kicks <- kick
			<-ctx.Done()
		})
		close(done)
	}()
	defer func() {
		cancel()
		<-done
	}()
	kernelChanged := <-kicks
	peers := func(n int) []*subnet.Lease { return subnet.Pointers(make([]subnet.Lease, n)) }
	expect := func(step, want string) {
		t.Helper()
		select {
		case got := <-ran:
			if got != want {
				t.Errorf("%s: %s pass, want %s", step, got, want)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: no pass", step)
		}
	}

	l.SetDesired(subnet.Lease{}, peers(1))
	expect("first pass", "full")
	l.SetDesired(subnet.Lease{}, peers(2))
	expect("new peers after a clean pass", "trusted")
	l.SetDesired(subnet.Lease{}, peers(3))
	expect("more peers", "trusted")
	kernelChanged()
	expect("kernel event", "full")
	l.SetDesired(subnet.Lease{}, peers(4))
	expect("new peers after the full pass", "trusted")
	fail.Store(true)
	l.SetDesired(subnet.Lease{}, peers(5))
	expect("failing pass", "trusted")
	fail.Store(false)
	l.SetDesired(subnet.Lease{}, peers(6))
	expect("new peers after a failed pass", "full")
	l.Reconcile()
	expect("Reconcile", "full")
	l.SetDesired(subnet.Lease{}, peers(7))
	expect("new peers after Reconcile", "trusted")
}

// TestLoopResyncIsFull: the passes of the resync timer read the kernel
// back, even with nothing else happening.
func TestLoopResyncIsFull(t *testing.T) {
	var full, trusted atomic.Int64
	cfg := Config{Logger: slog.New(slog.DiscardHandler), ResyncInterval: 5 * time.Millisecond}
	l := NewLoop(cfg, "dev0", func(subnet.Lease, []*subnet.Lease) Pass { full.Add(1); return Pass{} })
	l.SetTrustedPass(func(subnet.Lease, []*subnet.Lease) Pass { trusted.Add(1); return Pass{} })
	l.SetDesired(subnet.Lease{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	l.Run(ctx, nil)
	if full.Load() < 3 || trusted.Load() != 0 {
		t.Errorf("%d full and %d trusted passes on the resync timer alone, want several full ones only", full.Load(), trusted.Load())
	}
}
