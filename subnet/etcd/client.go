package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// DefaultDialTimeout bounds connecting to etcd.
const DefaultDialTimeout = 5 * time.Second

// ClientOptions is the etcd connection, shared by weftd and weftctl.
type ClientOptions struct {
	Endpoints []string
	// TLS is used only when both KeyFile and CertFile are set; CAFile is
	// optional (the system roots are used without it), as in flannel.
	KeyFile, CertFile, CAFile string
	Username, Password        string
	DialTimeout               time.Duration // default 5s
	// DialOptions are added to the client's gRPC options, e.g. an
	// interceptor that counts failed requests.
	DialOptions []grpc.DialOption
}

// reconnectBackoff replaces gRPC's default reconnect backoff (capped at
// 120 s): after an etcd outage the client reconnects within about 2 s of
// etcd coming back, instead of up to two minutes later.
var reconnectBackoff = grpc.WithConnectParams(grpc.ConnectParams{
	Backoff: backoff.Config{
		BaseDelay:  250 * time.Millisecond,
		Multiplier: 1.6,
		Jitter:     0.2,
		MaxDelay:   2 * time.Second,
	},
	MinConnectTimeout: 2 * time.Second,
})

// ErrTLS marks a TLS failure found while probing the endpoints: a wrong CA,
// a certificate the server rejects, or a server that does not speak TLS.
var ErrTLS = errors.New("etcd TLS handshake failed")

// NewClient connects to etcd. When TLS is configured it first probes every
// https endpoint with a real handshake, so a wrong CA or a rejected client
// certificate is reported at once with the TLS reason instead of surfacing
// later as a request deadline. Unreachable endpoints are not an error here:
// etcd may come up later and the client reconnects on its own.
func NewClient(o ClientOptions) (*clientv3.Client, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("etcd client: no endpoints")
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	cfg := clientv3.Config{
		Endpoints:            o.Endpoints,
		DialTimeout:          o.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Username:             o.Username,
		Password:             o.Password,
		Logger:               zap.NewNop(),
		DialOptions:          append([]grpc.DialOption{reconnectBackoff}, o.DialOptions...),
	}
	if o.KeyFile != "" && o.CertFile != "" {
		tc, err := tlsConfig(o)
		if err != nil {
			return nil, err
		}
		if err := probeTLS(o.Endpoints, tc, o.DialTimeout); err != nil {
			return nil, err
		}
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client %s: %w", strings.Join(o.Endpoints, ","), err)
	}
	if cfg.TLS != nil {
		// etcd's client waits for a ready connection until the deadline and
		// then reports only "context deadline exceeded". Keep a probe so a
		// Registry can name the TLS problem when that happens later (etcd
		// was down at start, or its certificate changed).
		tc, eps, timeout := cfg.TLS, o.Endpoints, min(o.DialTimeout, 2*time.Second)
		tlsProbes.Store(cli, func() error { return probeTLS(eps, tc, timeout) })
		go func() {
			<-cli.Ctx().Done()
			tlsProbes.Delete(cli)
		}()
	}
	return cli, nil
}

// tlsProbes maps a *clientv3.Client made by NewClient with TLS to a function
// that handshakes with its endpoints.
var tlsProbes sync.Map

// explainTimeout adds the TLS reason to a request that ran into its deadline
// on a TLS client, when a fresh handshake shows one.
func explainTimeout(cli *clientv3.Client, err error) error {
	if !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	p, ok := tlsProbes.Load(cli)
	if !ok {
		return err
	}
	if perr := p.(func() error)(); perr != nil {
		return fmt.Errorf("%w: %w", perr, err)
	}
	return err
}

func tlsConfig(o ClientOptions) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("etcd client: load certificate %s and key %s: %w", o.CertFile, o.KeyFile, err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client: read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd client: CA file %s holds no PEM certificate", o.CAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// probeTLS handshakes with each https endpoint. It fails only when every
// reachable https endpoint failed TLS; network errors are ignored.
func probeTLS(endpoints []string, tc *tls.Config, timeout time.Duration) error {
	var tlsErrs []error
	ok := 0
	for _, ep := range endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			continue
		}
		err = probeOne(u.Host, tc, timeout)
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrTLS):
			tlsErrs = append(tlsErrs, err)
		}
	}
	if ok == 0 && len(tlsErrs) > 0 {
		return errors.Join(tlsErrs...)
	}
	return nil
}

func probeOne(host string, tc *tls.Config, timeout time.Duration) error {
	c := tc.Clone()
	if h, _, err := net.SplitHostPort(host); err == nil {
		c.ServerName = h
	}
	c.NextProtos = []string{"h2"}
	d := &net.Dialer{Timeout: timeout}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	raw, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return err // unreachable: not a TLS problem
	}
	defer raw.Close()
	conn := tls.Client(raw, c)
	if err := conn.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("%w with %s: %v", ErrTLS, host, err)
	}
	// With TLS 1.3 the server checks our certificate after the client side
	// of the handshake has finished, and reports a rejection as an alert on
	// the first read. A healthy server sends nothing until it has our HTTP/2
	// preface, so a short read timing out means the certificate was accepted.
	conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var b [1]byte
	_, err = conn.Read(b[:])
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) && strings.Contains(err.Error(), "tls") {
		return fmt.Errorf("%w with %s: server rejected our certificate: %v", ErrTLS, host, err)
	}
	return nil
}
