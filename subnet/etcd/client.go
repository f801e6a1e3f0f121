package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
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
	// TLS is used when any of KeyFile, CertFile and CAFile is set, or when
	// any endpoint is https://; then every endpoint is dialed with TLS
	// (an http:// endpoint as https://). CertFile and KeyFile (a client
	// certificate) go together; CAFile alone verifies the server, and
	// without it the system roots do. flannel ignores a CA file given alone;
	// weft does not.
	KeyFile, CertFile, CAFile string
	Username, Password        string
	DialTimeout               time.Duration // default 5s
	// DialOptions are added to the client's gRPC options, e.g. an
	// interceptor that counts failed requests.
	DialOptions []grpc.DialOption
}

// UsesTLS reports whether NewClient will dial with TLS.
func (o ClientOptions) UsesTLS() bool {
	if o.KeyFile != "" || o.CertFile != "" || o.CAFile != "" {
		return true
	}
	for _, ep := range o.Endpoints {
		if strings.HasPrefix(strings.ToLower(ep), "https://") {
			return true
		}
	}
	return false
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

// ErrTLS marks a TLS failure found while probing the endpoints: a server
// certificate we do not trust, a client certificate the server rejects, a
// server that does not speak TLS, or one that speaks TLS to a client given
// no TLS options.
var ErrTLS = errors.New("etcd TLS handshake failed")

// ErrTLSOptions marks TLS options that cannot work: a client certificate
// without its key or the reverse, or files that cannot be read.
var ErrTLSOptions = errors.New("invalid etcd TLS options")

// NewClient connects to etcd. With TLS (see ClientOptions) it first probes
// every endpoint with a real handshake, so a wrong CA, a rejected client
// certificate or a plain-text server is reported at once with the TLS
// reason instead of surfacing later as a request deadline. Unreachable
// endpoints are not an error here: etcd may come up later and the client
// reconnects on its own. A request that later runs into its deadline is
// explained the same way (see Registry), including a server that speaks TLS
// to a client given no TLS options.
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
	probeTimeout := min(o.DialTimeout, 2*time.Second)
	var probe func() error
	if o.UsesTLS() {
		tc, err := tlsConfig(o)
		if err != nil {
			return nil, err
		}
		// etcd's client picks TLS or not for all endpoints by the scheme
		// of the first one, and drops TLS for http://: dial them all as
		// https:// so that TLS options are never silently ignored.
		cfg.Endpoints = make([]string, len(o.Endpoints))
		for i, ep := range o.Endpoints {
			cfg.Endpoints[i] = asHTTPS(ep)
		}
		if err := probeTLS(cfg.Endpoints, tc, o, o.DialTimeout); err != nil {
			return nil, err
		}
		cfg.TLS = tc
		eps := cfg.Endpoints
		probe = func() error { return probeTLS(eps, tc, o, probeTimeout) }
	} else {
		eps := o.Endpoints
		probe = func() error { return probeSpeaksTLS(eps, probeTimeout) }
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	// etcd's client waits for a ready connection until the deadline and
	// then reports only "context deadline exceeded". Keep a probe so a
	// Registry can name the TLS problem when that happens later (etcd was
	// down at start, its certificate changed, or it speaks TLS to us).
	tlsProbes.Store(cli, probe)
	go func() {
		<-cli.Ctx().Done()
		tlsProbes.Delete(cli)
	}()
	return cli, nil
}

// asHTTPS turns an http:// endpoint into https://; others are unchanged.
func asHTTPS(ep string) string {
	if len(ep) >= 7 && strings.EqualFold(ep[:7], "http://") {
		return "https://" + ep[7:]
	}
	return ep
}

// tlsProbes maps a *clientv3.Client made by NewClient to a function that
// looks for a TLS problem with its endpoints.
var tlsProbes sync.Map

// explainTimeout adds the TLS reason to a request that ran into its
// deadline, when a fresh probe shows one.
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
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case o.CertFile != "" && o.KeyFile == "":
		return nil, fmt.Errorf("etcd client: %w: certificate file (--etcd-certfile) %s is set but key file (--etcd-keyfile) is not; a client certificate needs both",
			ErrTLSOptions, o.CertFile)
	case o.KeyFile != "" && o.CertFile == "":
		return nil, fmt.Errorf("etcd client: %w: key file (--etcd-keyfile) %s is set but certificate file (--etcd-certfile) is not; a client certificate needs both",
			ErrTLSOptions, o.KeyFile)
	case o.CertFile != "":
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client: %w: load certificate %s and key %s: %w", ErrTLSOptions, o.CertFile, o.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client: %w: read CA file: %w", ErrTLSOptions, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd client: %w: CA file %s holds no PEM certificate", ErrTLSOptions, o.CAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// hostOf returns the host:port an endpoint dials, or "" for endpoints
// that are not TCP (unix sockets).
func hostOf(ep string) string {
	if !strings.Contains(ep, "://") {
		return ep
	}
	u, err := url.Parse(ep)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return ""
	}
	return u.Host
}

// probeAll runs probe on the host of every TCP endpoint at once and
// returns the errors that wrap ErrTLS, and how many probes succeeded.
func probeAll(endpoints []string, probe func(host string) error) (tlsErrs []error, ok int) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, ep := range endpoints {
		host := hostOf(ep)
		if host == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := probe(host)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrTLS):
				tlsErrs = append(tlsErrs, err)
			}
		}()
	}
	wg.Wait()
	return tlsErrs, ok
}

// probeTLS handshakes with each endpoint. It fails only when every
// reachable endpoint failed TLS; network errors are ignored.
func probeTLS(endpoints []string, tc *tls.Config, o ClientOptions, timeout time.Duration) error {
	tlsErrs, ok := probeAll(endpoints, func(host string) error { return probeOne(host, tc, o, timeout) })
	if ok == 0 && len(tlsErrs) > 0 {
		return errors.Join(tlsErrs...)
	}
	return nil
}

// probeSpeaksTLS is the probe of a client without TLS: it fails when an
// endpoint completes a TLS handshake, that is, it expects TLS from us.
func probeSpeaksTLS(endpoints []string, timeout time.Duration) error {
	tlsErrs, _ := probeAll(endpoints, func(host string) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", host)
		if err != nil {
			return nil // unreachable: not a TLS problem
		}
		defer raw.Close()
		// Only to learn whether the server speaks TLS; nothing is sent
		// over this connection.
		conn := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
		if conn.HandshakeContext(ctx) != nil {
			return nil
		}
		return fmt.Errorf("%w with %s: the endpoint speaks TLS but no TLS options were given (use https:// and --etcd-cafile)", ErrTLS, host)
	})
	return errors.Join(tlsErrs...)
}

func probeOne(host string, tc *tls.Config, o ClientOptions, timeout time.Duration) error {
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
		return fmt.Errorf("%w with %s: %s: %v", ErrTLS, host, handshakeReason(err, o, timeout), err)
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
		return fmt.Errorf("%w with %s: %s: %v", ErrTLS, host, clientCertReason(o), err)
	}
	return nil
}

// handshakeReason says in words why a TLS handshake failed.
func handshakeReason(err error, o ClientOptions, timeout time.Duration) string {
	var unknown x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var rec tls.RecordHeaderError
	var alert tls.AlertError
	var ne net.Error
	switch {
	case errors.As(err, &unknown):
		if o.CAFile == "" {
			return "server certificate not trusted by the system roots (give its CA with --etcd-cafile)"
		}
		return fmt.Sprintf("server certificate not trusted by the CA file %s", o.CAFile)
	case errors.As(err, &hostErr):
		return "server certificate is not valid for this address"
	case errors.As(err, &invalid):
		return "server certificate is invalid (expired, not yet valid, or not for a server)"
	case errors.As(err, &rec), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
		return "the endpoint does not speak TLS (plain-text etcd? then use http:// and no TLS options)"
	case errors.As(err, &alert):
		return clientCertReason(o)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return fmt.Sprintf("no TLS answer within %s (does the endpoint speak TLS?)", timeout)
	}
	return "handshake refused"
}

// clientCertReason explains a server's alert about our certificate.
func clientCertReason(o ClientOptions) string {
	if o.CertFile == "" {
		return "server requires a client certificate (give --etcd-certfile and --etcd-keyfile)"
	}
	return fmt.Sprintf("server rejected our client certificate %s", o.CertFile)
}
