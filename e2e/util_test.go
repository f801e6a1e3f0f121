package e2e_test

import (
	"log/slog"
	"strconv"
	"testing"
)

func itoa(i int) string { return strconv.Itoa(i) }

// testLogger logs to the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}
