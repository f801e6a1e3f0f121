package nlfake

import "golang.org/x/sys/unix"

// WriteFailing is a batch write in which the items fail matches fail with
// EIO and the rest go to write, for tests that make a kernel refuse some
// entries of a batch: the errors come back at the items' own positions.
func WriteFailing[T any](items []T, fail func(T) bool, write func([]T) []error) []error {
	errs := make([]error, len(items))
	var ok []T
	var at []int
	for i, it := range items {
		if fail(it) {
			errs[i] = unix.EIO
			continue
		}
		ok, at = append(ok, it), append(at, i)
	}
	for k, err := range write(ok) {
		errs[at[k]] = err
	}
	return errs
}
