package nlfake

import (
	"errors"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWriteFailing(t *testing.T) {
	var written []int
	errBusy := errors.New("busy")
	errs := WriteFailing([]int{1, 2, 3, 4, 5}, func(i int) bool { return i%2 == 0 }, func(ok []int) []error {
		written = append(written, ok...)
		out := make([]error, len(ok))
		out[len(ok)-1] = errBusy // the writer's own error for its last item
		return out
	})
	if !slices.Equal(written, []int{1, 3, 5}) {
		t.Errorf("written %v, want the items that do not fail", written)
	}
	want := []error{nil, unix.EIO, nil, unix.EIO, errBusy}
	for i := range want {
		if !errors.Is(errs[i], want[i]) && errs[i] != want[i] {
			t.Errorf("item %d: error %v, want %v", i, errs[i], want[i])
		}
	}
}
