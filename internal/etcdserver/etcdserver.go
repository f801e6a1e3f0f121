// Package etcdserver runs a single-node etcd in-process through
// go.etcd.io/etcd/server/v3/embed. weft uses it for tests, for the lab and
// e2e harness, and anywhere a throwaway etcd is wanted; it is not meant to
// replace a production etcd cluster.
//
// Client URLs may use port 0 ("http://127.0.0.1:0"): a free port is picked
// before etcd starts, and Endpoints reports the real URLs.
package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Options configures Start.
type Options struct {
	// Dir is the data directory (required). It is created if missing.
	Dir string
	// Name is the member name; default "weft".
	Name string
	// ClientURLs are the URLs to listen on for clients, e.g.
	// "http://192.0.2.1:2379" or "http://127.0.0.1:0". Default
	// "http://127.0.0.1:0". Port 0 picks a free port.
	ClientURLs []string
	// PeerURL is the peer listen URL; default a free port on the host of
	// the first client URL.
	PeerURL string
	// TLS for the client URLs (used when the URLs are https).
	CertFile, KeyFile, TrustedCAFile string
	// ClientCertAuth requires clients to present a certificate signed by
	// TrustedCAFile.
	ClientCertAuth bool
	// Logger receives weft's messages about the server and etcd's own
	// log at error level (component=etcd). Nil discards both.
	Logger *slog.Logger
	// StartTimeout bounds how long Start waits for the server to become
	// ready; default 30s.
	StartTimeout time.Duration
}

// Server is a running embedded etcd.
type Server struct {
	etcd      *embed.Etcd
	endpoints []string
	logger    *slog.Logger
	closing   *atomic.Bool
	closeOnce sync.Once
}

// Start starts etcd and waits until it serves clients, ctx ends, or the
// start timeout passes.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Dir == "" {
		return nil, errors.New("start etcd: Options.Dir is required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Name == "" {
		o.Name = "weft"
	}
	if len(o.ClientURLs) == 0 {
		o.ClientURLs = []string{"http://127.0.0.1:0"}
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 30 * time.Second
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}

	// Port 0 cannot be advertised, so pick free ports first. Another process
	// may grab the port between our probe and etcd's bind; retry a few times.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		s, err := start(ctx, o)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if ctx.Err() != nil || !isAddrInUse(err) {
			break
		}
	}
	return nil, lastErr
}

func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

func start(ctx context.Context, o Options) (*Server, error) {
	cfg := embed.NewConfig()
	cfg.Name = o.Name
	cfg.Dir = o.Dir
	// etcd's own zap log goes to o.Logger at error level only.
	closing := new(atomic.Bool)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(newZapLogger(o.Logger, closing))
	// A single member: small election settings start it quickly, and the
	// server-side lease minimum TTL (1.5 election timeouts) stays small so
	// tests can use short TTLs.
	cfg.TickMs = 50
	cfg.ElectionMs = 500
	cfg.SnapshotCount = 10000
	cfg.AutoCompactionMode = embed.CompactorModeRevision
	cfg.AutoCompactionRetention = "100000"
	cfg.QuotaBackendBytes = 1 << 30
	cfg.EnableGRPCGateway = false
	cfg.MaxTxnOps = 1024

	var clientURLs []url.URL
	for _, s := range o.ClientURLs {
		u, err := fixPort(s)
		if err != nil {
			return nil, fmt.Errorf("start etcd: client URL %q: %w", s, err)
		}
		clientURLs = append(clientURLs, u)
	}
	peer := o.PeerURL
	if peer == "" {
		peer = "http://" + net.JoinHostPort(clientURLs[0].Hostname(), "0")
	}
	pu, err := fixPort(peer)
	if err != nil {
		return nil, fmt.Errorf("start etcd: peer URL %q: %w", peer, err)
	}
	cfg.ListenClientUrls = clientURLs
	cfg.AdvertiseClientUrls = clientURLs
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	if o.CertFile != "" || o.KeyFile != "" {
		cfg.ClientTLSInfo.CertFile = o.CertFile
		cfg.ClientTLSInfo.KeyFile = o.KeyFile
		cfg.ClientTLSInfo.TrustedCAFile = o.TrustedCAFile
		cfg.ClientTLSInfo.ClientCertAuth = o.ClientCertAuth
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	timer := time.NewTimer(o.StartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("start etcd: %w", err)
	case <-timer.C:
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("start etcd: not ready after %s", o.StartTimeout)
	case <-ctx.Done():
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("start etcd: %w", ctx.Err())
	}
	s := &Server{etcd: e, logger: o.Logger, closing: closing}
	for _, u := range clientURLs {
		s.endpoints = append(s.endpoints, u.String())
	}
	o.Logger.Info("embedded etcd ready", "endpoints", s.endpoints, "dir", o.Dir)
	return s, nil
}

// fixPort parses a URL and replaces port 0 with a free port on its host.
func fixPort(s string) (url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return url.URL{}, err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return url.URL{}, fmt.Errorf("scheme must be http or https")
	}
	if u.Port() != "0" {
		return *u, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(u.Hostname(), "0"))
	if err != nil {
		return url.URL{}, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	u.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(port))
	return *u, nil
}

// Endpoints returns the client URLs with real ports.
func (s *Server) Endpoints() []string { return append([]string(nil), s.endpoints...) }

// Etcd returns the underlying embedded server, for tests that need it.
func (s *Server) Etcd() *embed.Etcd { return s.etcd }

// Close stops the server and waits for it to shut down. It is idempotent.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		s.etcd.Close()
		s.logger.Info("embedded etcd stopped")
	})
}
