package lab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
)

// DialInNS opens a TCP connection from inside the network namespace at
// nsPath, leaving the calling goroutine's namespace as it was. The socket
// keeps belonging to that namespace after the thread switches back, so the
// returned connection can be used from any goroutine.
func DialInNS(ctx context.Context, nsPath, network, addr string) (net.Conn, error) {
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer target.Close()

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter netns %s: %w", nsPath, err)
	}
	var d net.Dialer
	conn, dialErr := d.DialContext(ctx, network, addr)
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the wrong namespace: keep it locked so
		// the runtime discards it when this goroutine ends.
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("return to original netns: %w", err)
	}
	runtime.UnlockOSThread()
	if dialErr != nil {
		return nil, fmt.Errorf("dial %s in %s: %w", addr, nsPath, dialErr)
	}
	return conn, nil
}

// HTTPClient returns an HTTP client whose connections are opened inside the
// namespace at nsPath.
func HTTPClient(nsPath string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return DialInNS(ctx, nsPath, network, addr)
			},
			DisableKeepAlives: true,
		},
	}
}
