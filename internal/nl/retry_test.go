package nl

import (
	"errors"
	"testing"
)

// TestRetryDumpExported: the exported RetryDump retries an interrupted
// dump like Conn's own dumps, and passes other errors through at once.
func TestRetryDumpExported(t *testing.T) {
	calls := 0
	got, err := RetryDump(func() ([]int, error) {
		calls++
		if calls < 3 {
			return []int{0}, ErrDumpInterrupted
		}
		return []int{1, 2}, nil
	})
	if err != nil || len(got) != 2 || calls != 3 {
		t.Fatalf("got %v %v after %d calls, want [1 2] after 3", got, err, calls)
	}
	other := errors.New("boom")
	calls = 0
	if _, err := RetryDump(func() ([]int, error) { calls++; return nil, other }); !errors.Is(err, other) || calls != 1 {
		t.Fatalf("got %v after %d calls, want boom after 1", err, calls)
	}
}
