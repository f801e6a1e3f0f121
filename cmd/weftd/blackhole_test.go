package main

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/nl/nltest"
)

// TestBlackholeRoute: --ip-blackhole-route installs a blackhole route for
// our subnet behind the bridge's connected route, moves it when the lease
// moves, puts it back when deleted, and removeBlackholes takes it away;
// the connected route and other routes are never touched.
func TestBlackholeRoute(t *testing.T) {
	ns := nltest.NewNS(t, "bh")
	ns.IP(t, "link", "add", "br0", "type", "bridge")
	ns.IP(t, "addr", "add", "198.18.7.1/24", "dev", "br0")
	ns.IP(t, "link", "set", "br0", "up")
	ns.IP(t, "route", "add", "blackhole", "198.18.9.0/24") // someone else's (protocol boot)
	network := netip.MustParsePrefix("198.18.0.0/16")

	h, err := netlink.NewHandleAt(ns.Handle) // Run closes it
	if err != nil {
		t.Fatal(err)
	}
	b := newBlackhole(h, slog.New(slog.NewTextHandler(io.Discard, nil)))
	show := func() string { return ns.IP(t, "route", "show", "table", "main") }
	if err := b.Set(network, netip.MustParsePrefix("198.18.7.0/24")); err != nil {
		t.Fatal(err)
	}
	routes := show()
	for _, want := range []string{
		"blackhole 198.18.7.0/24 proto 88 metric 1024",
		"198.18.7.0/24 dev br0 proto kernel scope link src 198.18.7.1",
		"blackhole 198.18.9.0/24",
	} {
		if !strings.Contains(routes, want) {
			t.Errorf("routes lack %q:\n%s", want, routes)
		}
	}
	if err := b.Set(network, netip.MustParsePrefix("198.18.7.0/24")); err != nil {
		t.Fatalf("second Set: %v", err)
	}
	if n := strings.Count(show(), "proto 88"); n != 1 {
		t.Errorf("after a second Set, %d routes of protocol 88:\n%s", n, show())
	}

	// A new lease moves the route.
	if err := b.Set(network, netip.MustParsePrefix("198.18.8.0/24")); err != nil {
		t.Fatal(err)
	}
	routes = show()
	if !strings.Contains(routes, "blackhole 198.18.8.0/24 proto 88") || strings.Contains(routes, "blackhole 198.18.7.0/24") {
		t.Errorf("after the lease moved:\n%s", routes)
	}

	// Deleted by hand: Run puts it back and counts a repair.
	ns.IP(t, "route", "del", "blackhole", "198.18.8.0/24", "proto", "88", "metric", "1024")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx, 20*time.Millisecond); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for b.Repairs() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if b.Repairs() != 1 || !strings.Contains(show(), "blackhole 198.18.8.0/24 proto 88") {
		t.Errorf("after deletion by hand, %d repairs:\n%s", b.Repairs(), show())
	}

	if err := removeBlackholes(ns.NL); err != nil {
		t.Fatal(err)
	}
	routes = show()
	if strings.Contains(routes, "proto 88") || !strings.Contains(routes, "blackhole 198.18.9.0/24") || !strings.Contains(routes, "dev br0") {
		t.Errorf("after removeBlackholes:\n%s", routes)
	}
}
