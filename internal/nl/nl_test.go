package nl

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/internal/nl/nltest"
)

func TestDumpRetriesInterrupted(t *testing.T) {
	calls := 0
	got, err := Dump(func() ([]int, error) {
		calls++
		if calls < 3 {
			return []int{-1}, netlink.ErrDumpInterrupted
		}
		return []int{1, 2}, nil
	})
	if err != nil || len(got) != 2 || calls != 3 {
		t.Fatalf("got %v, %v after %d calls", got, err, calls)
	}

	calls = 0
	_, err = Dump(func() ([]int, error) { calls++; return nil, netlink.ErrDumpInterrupted })
	if !errors.Is(err, netlink.ErrDumpInterrupted) || calls != dumpAttempts {
		t.Fatalf("persistent interruption: %v after %d calls", err, calls)
	}

	boom := errors.New("boom")
	calls = 0
	if _, err = Dump(func() ([]int, error) { calls++; return nil, boom }); !errors.Is(err, boom) || calls != 1 {
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
		Watch(ctx, n.Handle, slog.New(slog.DiscardHandler), Filter{
			Link: func(u netlink.LinkUpdate) bool { return u.Link.Attrs().Name == "wvxtest0" },
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

func TestBatcherAcksInOrder(t *testing.T) {
	n := nltest.NewNS(t, "b")
	n.IP(t, "link", "add", "wvxa", "type", "veth", "peer", "name", "wvxb")
	n.IP(t, "link", "set", "wvxa", "up")
	l, err := n.NL.LinkByName("wvxa")
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewBatcher(n.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const total = 600 // more than two chunks
	var ops []*Op
	for i := 0; i < total; i++ {
		idx := l.Attrs().Index
		if i%97 == 5 {
			idx = 99999 // no such device
		}
		ops = append(ops, &Op{Req: NeighSetRequest(&netlink.Neigh{
			LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: net.IPv4(198, 18, byte(i>>8), byte(i)), HardwareAddr: net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)},
		})})
	}
	if err := b.Do(ops); err != nil {
		t.Fatal(err)
	}
	bad := 0
	for i, op := range ops {
		if i%97 == 5 {
			if op.Err == nil {
				t.Fatalf("op %d on a missing device succeeded", i)
			}
			bad++
		} else if op.Err != nil {
			t.Fatalf("op %d: %v", i, op.Err)
		}
	}
	ns, err := n.NL.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
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
}
