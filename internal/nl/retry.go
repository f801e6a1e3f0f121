package nl

// RetryDump runs a dump made outside Conn (for example with a
// vishvananda/netlink handle, as the CNI plugin does) and retries it while
// it returns ErrDumpInterrupted: the same retry as Conn's own dumps, so
// that there is one place that decides how often.
func RetryDump[T any](dump func() ([]T, error)) ([]T, error) {
	return retryDump(dump)
}
