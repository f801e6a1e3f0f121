package e2e_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weftnet/weft/internal/etcdserver"
	"github.com/weftnet/weft/internal/lab"
)

// `weft-lab etcd` has no TLS flags, so the secured etcd of
// TestFaultSecuredEtcd is this test binary run again inside the lab's
// switch namespace with tlsEtcdEnv set: init below then serves etcd with
// the options in that variable instead of running tests.
const tlsEtcdEnv = "WEFT_E2E_TLS_ETCD"

type tlsEtcdOptions struct {
	Listen, Peer, DataDir, Cert, Key, CA string
}

func init() {
	v := os.Getenv(tlsEtcdEnv)
	if v == "" {
		return
	}
	var o tlsEtcdOptions
	if err := json.Unmarshal([]byte(v), &o); err != nil {
		fmt.Fprintln(os.Stderr, "tls etcd:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv, err := etcdserver.Start(ctx, etcdserver.Options{
		Dir: o.DataDir, Name: "weft-tls", ClientURLs: []string{o.Listen}, PeerURL: o.Peer,
		CertFile: o.Cert, KeyFile: o.Key, TrustedCAFile: o.CA, ClientCertAuth: true,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "tls etcd:", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "tls etcd ready", srv.Endpoints())
	select {
	case <-ctx.Done():
	case err := <-srv.Etcd().Err():
		fmt.Fprintln(os.Stderr, "tls etcd:", err)
	}
	srv.Close()
	os.Exit(0)
}

// TestFaultSecuredEtcd runs weftd against an etcd that requires a password,
// then one that requires client certificates: the right credentials work;
// a wrong CA fails within seconds with a TLS error, not a hang.
func TestFaultSecuredEtcd(t *testing.T) {
	t.Parallel()
	l := faultLab(t, lab.Options{Hosts: 1})
	ctx := testCtx(t, 2*time.Minute)
	h := l.Host(1)

	// failsFast expects weftd to give up or report a problem naming one of
	// words within 5 s: it exits with such a log line, or /readyz says so.
	failsFast := func(t *testing.T, words ...string) {
		t.Helper()
		match := func(s string) bool {
			s = strings.ToLower(s)
			for _, w := range words {
				if strings.Contains(s, w) {
					return true
				}
			}
			return false
		}
		d, err := waitFor(ctx, 5*time.Second, 100*time.Millisecond, func() (bool, string) {
			if !weftdRunning(h) {
				for _, line := range logLines(h, "level=ERROR") {
					if match(line) {
						return true, ""
					}
				}
				return false, "weftd exited without naming the cause"
			}
			code, body, err := readyz(ctx, h)
			return err == nil && code == http.StatusServiceUnavailable && match(body), fmt.Sprintf("/readyz %d %q %v", code, body, err)
		})
		if err != nil {
			t.Fatalf("want a failure naming %q within 5 s: %v\nlog:\n%s", words, err, strings.Join(logLines(h, ""), "\n"))
		}
		if weftdRunning(h) {
			_, body, _ := readyz(ctx, h)
			t.Logf("reported after %s on /readyz: %s", d.Round(time.Millisecond), body)
			h.StopWeftd(syscall.SIGTERM)
		} else {
			t.Logf("weftd exited after %s", d.Round(time.Millisecond))
		}
	}
	readyWithin := func(t *testing.T, d time.Duration) {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		if err := h.WaitReady(rctx); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("password", func(t *testing.T) {
		cli := etcdClient(t, ctx, l)
		for _, step := range []func() error{
			func() error { _, err := cli.RoleAdd(ctx, "root"); return err },
			func() error { _, err := cli.UserAdd(ctx, "root", "s3cret-pw"); return err },
			func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
			func() error { _, err := cli.AuthEnable(ctx); return err },
		} {
			if err := step(); err != nil {
				t.Fatalf("enable etcd auth: %v", err)
			}
		}
		if err := h.StartWeftd("--etcd-username=root", "--etcd-password=s3cret-pw"); err != nil {
			t.Fatal(err)
		}
		readyWithin(t, 20*time.Second)
		if err := h.StopWeftd(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := h.StartWeftd("--etcd-username=root", "--etcd-password=wrong"); err != nil {
			t.Fatal(err)
		}
		failsFast(t, "auth", "password", "permission")
	})

	t.Run("client certificates", func(t *testing.T) {
		if err := l.StopEtcd(); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(l.Dir, "tls")
		pki := writePKI(t, dir)
		endpoint := fmt.Sprintf("https://%s:%d", lab.SwitchIP, lab.EtcdPort)
		startTLSEtcd(t, l, tlsEtcdOptions{
			Listen: endpoint, Peer: fmt.Sprintf("http://%s:2380", lab.SwitchIP),
			DataDir: filepath.Join(l.Dir, "etcd-tls"), Cert: pki.serverCert, Key: pki.serverKey, CA: pki.ca,
		})
		cli := tlsClient(t, ctx, l, endpoint, pki)
		if _, err := cli.Put(ctx, lab.ConfigKey, l.NetworkConfig()); err != nil {
			t.Fatal(err)
		}
		tlsArgs := func(ca string) []string {
			return []string{"--etcd-endpoints=" + endpoint, "--etcd-certfile=" + pki.clientCert,
				"--etcd-keyfile=" + pki.clientKey, "--etcd-cafile=" + ca}
		}
		if err := h.StartWeftd(tlsArgs(pki.ca)...); err != nil {
			t.Fatal(err)
		}
		readyWithin(t, 20*time.Second)
		sn := ownSubnet(t, ctx, h)
		if a, _, err := getLease(ctx, cli, sn); err != nil || a == nil || a.PublicIP != h.IP {
			t.Errorf("lease %s in the TLS etcd: %v %v", sn, a, err)
		}
		if err := h.StopWeftd(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}

		t.Run("wrong CA", func(t *testing.T) {
			if err := h.StartWeftd(tlsArgs(pki.wrongCA)...); err != nil {
				t.Fatal(err)
			}
			failsFast(t, "tls", "certificate", "x509")
		})
	})
}

type pkiFiles struct {
	ca, wrongCA, serverCert, serverKey, clientCert, clientKey string
}

// writePKI creates a CA, a server certificate for the lab's etcd address, a
// client certificate, and an unrelated second CA.
func writePKI(t *testing.T, dir string) pkiFiles {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	serial := int64(1)
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	writeKey := func(name string, k *ecdsa.PrivateKey) string {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name, "EC PRIVATE KEY", der)
	}
	now := time.Now()
	mkCA := func(cn string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		k := newKey()
		serial++
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c, k, der
	}
	leaf := func(ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, usage []x509.ExtKeyUsage, ips []net.IP) ([]byte, *ecdsa.PrivateKey) {
		k := newKey()
		serial++
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	ca, caKey, caDER := mkCA("weft e2e CA")
	_, _, wrongDER := mkCA("unrelated CA")
	var f pkiFiles
	f.ca = write("ca.pem", "CERTIFICATE", caDER)
	f.wrongCA = write("wrong-ca.pem", "CERTIFICATE", wrongDER)
	sDER, sKey := leaf(ca, caKey, "etcd", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		[]net.IP{net.ParseIP(lab.SwitchIP)})
	f.serverCert = write("server.pem", "CERTIFICATE", sDER)
	f.serverKey = writeKey("server-key.pem", sKey)
	cDER, cKey := leaf(ca, caKey, "weftd", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil)
	f.clientCert = write("client.pem", "CERTIFICATE", cDER)
	f.clientKey = writeKey("client-key.pem", cKey)
	return f
}

// startTLSEtcd runs this test binary as a TLS etcd inside the switch
// namespace (see init) and stops it with the test.
func startTLSEtcd(t *testing.T, l *lab.Lab, o tlsEtcdOptions) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	env, _ := json.Marshal(o)
	logf, err := os.Create(filepath.Join(l.Dir, "etcd-tls.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", l.Switch, exe)
	cmd.Env = append(os.Environ(), tlsEtcdEnv+"="+string(env))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, _ := os.ReadFile(logf.Name())
		if strings.Contains(string(data), "tls etcd ready") {
			return
		}
		select {
		case <-done:
			t.Fatalf("TLS etcd exited:\n%s", data)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("TLS etcd not ready after 30 s:\n%s", data)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tlsClient connects to the TLS etcd from the root namespace with the
// client certificate.
func tlsClient(t *testing.T, ctx context.Context, l *lab.Lab, endpoint string, f pkiFiles) *clientv3.Client {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(f.clientCert, f.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(f.ca)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(caPEM)
	sw := l.SwitchNS
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		TLS:         &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12},
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return lab.DialInNS(ctx, sw, "tcp", addr)
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
