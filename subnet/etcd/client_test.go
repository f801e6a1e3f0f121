package etcd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/etcdserver"
	"github.com/weftnet/weft/subnet/etcd/etcdtest"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
}

func newCA(t *testing.T, dir, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, dir: dir}
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	return ca
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// issue writes name.pem and name-key.pem signed by the CA.
func (ca *testCA) issue(t *testing.T, name string, serial int64) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = filepath.Join(ca.dir, name+".pem")
	keyFile = filepath.Join(ca.dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", kder)
	return certFile, keyFile
}

func TestNewClientTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	other := newCA(t, dir, "other-ca")
	srvCert, srvKey := ca.issue(t, "server", 2)
	cliCert, cliKey := ca.issue(t, "client", 3)
	badCert, badKey := other.issue(t, "stranger", 4)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Options{
		Dir:            filepath.Join(dir, "data"),
		ClientURLs:     []string{"https://127.0.0.1:0"},
		CertFile:       srvCert,
		KeyFile:        srvKey,
		TrustedCAFile:  filepath.Join(dir, "ca.pem"),
		ClientCertAuth: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)

	t.Run("good", func(t *testing.T) {
		cli, err := NewClient(ClientOptions{Endpoints: srv.Endpoints(), CertFile: cliCert, KeyFile: cliKey, CAFile: filepath.Join(dir, "ca.pem")})
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		reg := NewRegistry(cli, "")
		if err := reg.PutConfig(ctx, []byte(bigNet)); err != nil {
			t.Fatal(err)
		}
	})
	for _, tc := range []struct {
		name          string
		cert, key, ca string
	}{
		{"wrong CA", cliCert, cliKey, filepath.Join(dir, "other-ca.pem")},
		{"rejected client cert", badCert, badKey, filepath.Join(dir, "ca.pem")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			cli, err := NewClient(ClientOptions{Endpoints: srv.Endpoints(), CertFile: tc.cert, KeyFile: tc.key, CAFile: tc.ca, DialTimeout: 3 * time.Second})
			if err == nil {
				cli.Close()
				t.Fatal("NewClient succeeded")
			}
			if !errors.Is(err, ErrTLS) {
				t.Fatalf("error %v does not wrap ErrTLS", err)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("took %s to fail", d)
			}
			t.Logf("error (after %s): %v", time.Since(start).Round(time.Millisecond), err)
		})
	}
	t.Run("no client certificate for a server that requires one", func(t *testing.T) {
		cli, err := NewClient(ClientOptions{Endpoints: srv.Endpoints(), CAFile: filepath.Join(dir, "ca.pem"), DialTimeout: 3 * time.Second})
		if err == nil {
			cli.Close()
			t.Fatal("NewClient succeeded")
		}
		if !errors.Is(err, ErrTLS) {
			t.Fatalf("error %v does not wrap ErrTLS", err)
		}
		t.Logf("error: %v", err)
	})
}

// Options that cannot work are refused before any connection, naming both
// halves of a client certificate.
func TestNewClientTLSOptions(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	cert, key := ca.issue(t, "client", 3)
	for _, tc := range []struct {
		name string
		o    ClientOptions
		says []string
	}{
		{"certificate without key", ClientOptions{CertFile: cert}, []string{"--etcd-certfile", "--etcd-keyfile", cert}},
		{"key without certificate", ClientOptions{KeyFile: key, CAFile: filepath.Join(dir, "ca.pem")}, []string{"--etcd-certfile", "--etcd-keyfile", key}},
		{"missing CA file", ClientOptions{CAFile: filepath.Join(dir, "nope.pem")}, []string{"nope.pem"}},
		{"CA file without PEM", ClientOptions{CAFile: key + ".missing"}, []string{"CA file"}},
		{"certificate without key, missing file", ClientOptions{CertFile: "/nonexistent"}, []string{"--etcd-keyfile", "/nonexistent"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Endpoints = []string{"http://127.0.0.1:1"}
			cli, err := NewClient(tc.o)
			if err == nil {
				cli.Close()
				t.Fatal("NewClient succeeded")
			}
			if !errors.Is(err, ErrTLSOptions) {
				t.Errorf("error %v does not wrap ErrTLSOptions", err)
			}
			for _, w := range tc.says {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
		})
	}
	for _, tc := range []struct {
		o    ClientOptions
		want bool
	}{
		{ClientOptions{Endpoints: []string{"http://a:2379"}}, false},
		{ClientOptions{Endpoints: []string{"a:2379"}}, false},
		{ClientOptions{Endpoints: []string{"http://a:2379", "HTTPS://b:2379"}}, true},
		{ClientOptions{Endpoints: []string{"http://a:2379"}, CAFile: "ca.pem"}, true},
		{ClientOptions{Endpoints: []string{"http://a:2379"}, CertFile: "c.pem"}, true},
		{ClientOptions{Endpoints: []string{"http://a:2379"}, KeyFile: "k.pem"}, true},
	} {
		if got := tc.o.UsesTLS(); got != tc.want {
			t.Errorf("%+v: UsesTLS = %v, want %v", tc.o, got, tc.want)
		}
	}
	if got := asHTTPS("HTTP://a:1"); got != "https://a:1" {
		t.Errorf("asHTTPS = %s", got)
	}
}

// tlsEtcd starts an etcd that serves TLS with a certificate from its own CA
// and does not ask for client certificates.
func tlsEtcd(t *testing.T) (srv *etcdserver.Server, caFile string) {
	t.Helper()
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	srvCert, srvKey := ca.issue(t, "server", 2)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Options{Dir: filepath.Join(dir, "data"), ClientURLs: []string{"https://127.0.0.1:0"},
		CertFile: srvCert, KeyFile: srvKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv, filepath.Join(dir, "ca.pem")
}

// --etcd-cafile alone means TLS: against an etcd that serves TLS without
// client certificates it works, with the endpoint written https:// or, as
// in flannel's default endpoints, http://. It used to be ignored, and
// every request ran into its deadline.
func TestNewClientCAOnly(t *testing.T) {
	srv, caFile := tlsEtcd(t)
	https := srv.Endpoints()[0]
	for _, ep := range []string{https, "http://" + strings.TrimPrefix(https, "https://")} {
		t.Run(ep, func(t *testing.T) {
			cli, err := NewClient(ClientOptions{Endpoints: []string{ep}, CAFile: caFile})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := NewRegistry(cli, "").PutConfig(ctx, []byte(bigNet)); err != nil {
				t.Fatalf("PutConfig with only a CA file: %v", err)
			}
		})
	}
}

// Mismatches between the client's TLS settings and the server are named as
// TLS problems, not left as a bare "context deadline exceeded".
func TestTLSMismatchNamed(t *testing.T) {
	tlsSrv, caFile := tlsEtcd(t)
	https := tlsSrv.Endpoints()[0]
	hostport := strings.TrimPrefix(https, "https://")

	t.Run("https endpoint, server CA not given", func(t *testing.T) {
		start := time.Now()
		cli, err := NewClient(ClientOptions{Endpoints: []string{https}, DialTimeout: 3 * time.Second})
		if err == nil {
			cli.Close()
			t.Fatal("NewClient succeeded against a server certificate nobody trusts")
		}
		if !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), "not trusted") || !strings.Contains(err.Error(), "--etcd-cafile") {
			t.Fatalf("error %v: want ErrTLS saying the server certificate is not trusted", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("took %s", d)
		}
		t.Logf("error: %v", err)
	})

	for _, ep := range []string{"http://" + hostport, hostport} {
		t.Run("no TLS options, server speaks TLS: "+ep, func(t *testing.T) {
			cli, err := NewClient(ClientOptions{Endpoints: []string{ep}})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			start := time.Now()
			_, _, err = NewRegistry(cli, "").ConfigRaw(context.Background())
			if !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), "speaks TLS but no TLS options were given") {
				t.Fatalf("first request: %v; want ErrTLS saying the endpoint speaks TLS", err)
			}
			if d := time.Since(start); d > CallTimeout+3*time.Second {
				t.Fatalf("took %s", d)
			}
			t.Logf("after %s: %v", time.Since(start).Round(time.Millisecond), err)
		})
	}

	t.Run("TLS options, server speaks plain text", func(t *testing.T) {
		_, plain := etcdtest.Start(t)
		start := time.Now()
		cli, err := NewClient(ClientOptions{Endpoints: plain.Endpoints(), CAFile: caFile, DialTimeout: 3 * time.Second})
		if err == nil {
			cli.Close()
			t.Fatal("NewClient with TLS options succeeded against a plain-text etcd")
		}
		if !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), "speak TLS") {
			t.Fatalf("error %v: want ErrTLS saying the endpoint does not speak TLS", err)
		}
		t.Logf("after %s: %v", time.Since(start).Round(time.Millisecond), err)
	})

	t.Run("no TLS options, plain-text etcd down: no TLS blamed", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ep := "http://" + l.Addr().String()
		l.Close()
		cli, err := NewClient(ClientOptions{Endpoints: []string{ep}})
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		_, _, err = NewRegistry(cli, "").ConfigRaw(context.Background())
		if err == nil || errors.Is(err, ErrTLS) {
			t.Fatalf("request to a down etcd: %v; want a plain error", err)
		}
	})
}

// A TLS problem that appears after NewClient (etcd was down then) is named
// on the first request that runs into its deadline.
func TestTLSErrorOnFirstRequest(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	newCA(t, dir, "other-ca")
	srvCert, srvKey := ca.issue(t, "server", 2)
	cliCert, cliKey := ca.issue(t, "client", 3)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := "https://" + l.Addr().String()
	l.Close()
	cli, err := NewClient(ClientOptions{Endpoints: []string{ep}, CertFile: cliCert, KeyFile: cliKey, CAFile: filepath.Join(dir, "other-ca.pem")})
	if err != nil {
		t.Fatalf("NewClient with etcd down: %v", err)
	}
	defer cli.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Options{Dir: filepath.Join(dir, "data"), ClientURLs: []string{ep},
		CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: filepath.Join(dir, "ca.pem"), ClientCertAuth: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	start := time.Now()
	_, _, err = NewRegistry(cli, "").ConfigRaw(ctx)
	if !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), "x509") {
		t.Fatalf("first request: %v; want the TLS reason", err)
	}
	if d := time.Since(start); d > CallTimeout+3*time.Second {
		t.Fatalf("took %s", d)
	}
	t.Logf("after %s: %v", time.Since(start).Round(time.Millisecond), err)
}
