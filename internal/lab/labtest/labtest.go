// Package labtest holds the test helpers for package lab: the parts that
// need package testing, kept out of lab so that no production binary (such
// as weft-lab, which builds labs for make demo and make bench) links it.
// Only _test.go files import this package.
package labtest

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
)

// New builds a lab for a test: it skips the test when not root, fails it
// when the lab cannot be built, prints the daemons' logs when the test
// failed, and closes the lab in t.Cleanup.
func New(t testing.TB, opts lab.Options) *lab.Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("lab: needs root to create network namespaces (run the e2e tests as root)")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := lab.New(ctx, opts)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			l.DumpLogs(t.Output())
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab close: %v", err)
		}
	})
	return l
}
