package nl

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/nl/nltest"
)

func TestDumpRetriesInterrupted(t *testing.T) {
	calls := 0
	got, err := retryDump(func() ([]int, error) {
		calls++
		if calls < 3 {
			return []int{-1}, ErrDumpInterrupted
		}
		return []int{1, 2}, nil
	})
	if err != nil || len(got) != 2 || calls != 3 {
		t.Fatalf("got %v, %v after %d calls", got, err, calls)
	}

	calls = 0
	_, err = retryDump(func() ([]int, error) { calls++; return nil, netlink.ErrDumpInterrupted })
	if !errors.Is(err, ErrDumpInterrupted) || calls != dumpAttempts {
		t.Fatalf("persistent interruption: %v after %d calls", err, calls)
	}

	boom := errors.New("boom")
	calls = 0
	if _, err = retryDump(func() ([]int, error) { calls++; return nil, boom }); !errors.Is(err, boom) || calls != 1 {
		t.Fatalf("other error: %v after %d calls", err, calls)
	}
}

func TestDoRunsInNamespaceAndReturns(t *testing.T) {
	n := nltest.NewNS(t, "do")
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	for i := 0; i < 5; i++ {
		err = Do(n.Handle, func() error {
			cur, err := netns.Get()
			if err != nil {
				return err
			}
			defer cur.Close()
			if !cur.Equal(n.Handle) {
				return errors.New("fn did not run in the target namespace")
			}
			_, err = netlink.LinkByName("lo") // current-namespace call
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Every thread this goroutine may land on is back home.
	runtime.Gosched()
	cur, _ := netns.Get()
	defer cur.Close()
	if !cur.Equal(orig) {
		t.Fatal("thread left in the target namespace")
	}
	// None() runs in place.
	ran := false
	if err := Do(netns.None(), func() error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("Do(None): ran=%v err=%v", ran, err)
	}
}

func TestWatchKicksAndStops(t *testing.T) {
	n := nltest.NewNS(t, "w")
	var kicks atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	before := runtime.NumGoroutine()
	go func() {
		defer close(done)
		Watch(ctx, n.Handle, slog.New(slog.DiscardHandler), Events{
			Link: func(e LinkEvent) bool { return e.Name == "wvxtest0" },
		}, func() { kicks.Add(1) })
	}()
	time.Sleep(100 * time.Millisecond)
	n.IP(t, "link", "add", "wvxtest0", "type", "veth", "peer", "name", "wvxtest1")
	deadline := time.Now().Add(2 * time.Second)
	for kicks.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if kicks.Load() == 0 {
		t.Fatal("no kick for a link event in the namespace")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Watch did not return")
	}
	deadline = time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > before {
		t.Fatalf("%d goroutines left, %d before", g, before)
	}
}

// TestSetNeighsAcksInOrder sends more than two chunks of requests, some of
// them bound to fail, and checks that each gets its own ack.
func TestSetNeighsAcksInOrder(t *testing.T) {
	n := nltest.NewNS(t, "b")
	n.IP(t, "link", "add", "wvxa", "type", "veth", "peer", "name", "wvxb")
	n.IP(t, "link", "set", "wvxa", "up")
	c := open(t, n)
	l, err := c.LinkByName("wvxa")
	if err != nil {
		t.Fatal(err)
	}
	const total = 600 // more than two chunks
	var specs []NeighSpec
	for i := 0; i < total; i++ {
		idx := l.Index
		if i%97 == 5 {
			idx = 99999 // no such device
		}
		specs = append(specs, NeighSpec{
			LinkIndex: idx, Family: FamilyV4, State: unix.NUD_PERMANENT,
			IP: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), MAC: net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)},
		})
	}
	errs := c.SetNeighs(specs)
	if len(errs) != total {
		t.Fatalf("%d results for %d requests", len(errs), total)
	}
	bad := 0
	for i, err := range errs {
		if i%97 == 5 {
			if !errors.Is(err, unix.ENODEV) {
				t.Fatalf("request %d on a missing device: %v", i, err)
			}
			bad++
		} else if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	ns, err := n.NL.NeighList(l.Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	perm := 0
	for _, e := range ns {
		if e.State&netlink.NUD_PERMANENT != 0 {
			perm++
		}
	}
	if perm != total-bad {
		t.Fatalf("%d permanent neighbours, want %d", perm, total-bad)
	}
	// The connection is usable after the batch, for a dump and a batch of
	// one.
	if list, err := c.NeighList(l.Index, FamilyV4, nil); err != nil || len(list) != total-bad {
		t.Fatalf("listed %d entries (%v), want %d", len(list), err, total-bad)
	}
	if errs := c.SetNeighs(specs[:1]); errs[0] != nil {
		t.Fatal(errs[0])
	}
}

// open connects to n for the test.
func open(t testing.TB, n *nltest.NS) *Conn {
	t.Helper()
	c, err := Open(n.Handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestClosedConn checks that a closed connection fails cleanly and that
// Close may be called again.
func TestClosedConn(t *testing.T) {
	n := nltest.NewNS(t, "cl")
	c := open(t, n)
	c.Close()
	c.Close()
	if _, err := c.LinkByName("lo"); !errors.Is(err, errClosed) {
		t.Errorf("LinkByName after Close: %v", err)
	}
	if _, err := c.NeighList(1, FamilyV4, nil); !errors.Is(err, errClosed) {
		t.Errorf("NeighList after Close: %v", err)
	}
	if errs := c.SetNeighs([]NeighSpec{{LinkIndex: 1, IP: netip.MustParseAddr("198.18.0.1")}}); !errors.Is(errs[0], errClosed) {
		t.Errorf("SetNeighs after Close: %v", errs[0])
	}
}
