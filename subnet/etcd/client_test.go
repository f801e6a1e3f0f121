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
	t.Run("no key file: TLS not used, missing files not read", func(t *testing.T) {
		cli, err := NewClient(ClientOptions{Endpoints: []string{"http://127.0.0.1:1"}, CertFile: "/nonexistent"})
		if err != nil {
			t.Fatal(err)
		}
		cli.Close()
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
