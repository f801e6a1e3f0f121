package lab

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Addresses of the lab's Kubernetes API server (configuration only: no
// traffic goes to the service range).
const (
	// KubeAPIPort is kube-apiserver's secure port on SwitchIP.
	KubeAPIPort = 6443
	// KubeServiceRange is --service-cluster-ip-range.
	KubeServiceRange = "198.51.100.0/24"
	// KubeEtcdPrefix keeps the API server's keys apart from flannel's.
	KubeEtcdPrefix = "/kube-registry"
	// KubeNodeGroup is the group of the token KubeAPIServer.NodeToken; it
	// has no rights until the test binds a role to it.
	KubeNodeGroup = "weft:nodes"
)

// KubeAPIServer is a real kube-apiserver in the switch namespace, storing
// its objects in the lab's etcd under KubeEtcdPrefix. It has no
// controller manager and no kubelet: Nodes exist as the test writes them.
type KubeAPIServer struct {
	// URL is https://192.0.2.1:6443.
	URL string
	// CAFile verifies the serving certificate, which kube-apiserver
	// generates in its cert dir on first start.
	CAFile string
	// AdminToken is in group system:masters; NodeToken is user "weftd" in
	// group KubeNodeGroup.
	AdminToken, NodeToken string

	lab *Lab
	bin string
	dir string

	mu sync.Mutex
	p  *proc
}

// NewKubeAPIServer prepares an API server run by the binary bin: a cert
// dir, RSA service-account keys and a token file, all made here. Start it
// with Start; Lab.Close kills it with everything else in the lab.
func (l *Lab) NewKubeAPIServer(bin string) (*KubeAPIServer, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	k := &KubeAPIServer{
		URL: fmt.Sprintf("https://%s:%d", SwitchIP, KubeAPIPort),
		lab: l, bin: bin, dir: filepath.Join(l.Dir, "kube-apiserver"),
	}
	k.CAFile = filepath.Join(k.dir, "certs", "apiserver.crt")
	if err := os.MkdirAll(filepath.Join(k.dir, "certs"), 0o700); err != nil {
		return nil, err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("service-account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(filepath.Join(k.dir, "sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key)); err != nil {
		return nil, err
	}
	if err := writePEM(filepath.Join(k.dir, "sa.pub"), "PUBLIC KEY", pub); err != nil {
		return nil, err
	}
	k.AdminToken, k.NodeToken = randomToken(), randomToken()
	tokens := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n%s,weftd,weftd,\"%s\"\n", k.AdminToken, k.NodeToken, KubeNodeGroup)
	if err := os.WriteFile(filepath.Join(k.dir, "tokens.csv"), []byte(tokens), 0o600); err != nil {
		return nil, err
	}
	return k, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

func randomToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Log is the path of kube-apiserver's output.
func (k *KubeAPIServer) Log() string { return filepath.Join(k.dir, "kube-apiserver.log") }

// Start starts kube-apiserver (again, after Stop, with the same certs,
// keys and data) and waits until /readyz answers ok.
func (k *KubeAPIServer) Start(ctx context.Context) error {
	k.mu.Lock()
	if k.p != nil && !k.p.exited() {
		k.mu.Unlock()
		return errors.New("kube-apiserver: already running")
	}
	p, err := startProc("kube-apiserver", k.lab.Switch, k.Log(), k.bin,
		"--etcd-servers="+EtcdEndpoint,
		"--etcd-prefix="+KubeEtcdPrefix,
		"--bind-address="+SwitchIP,
		"--advertise-address="+SwitchIP,
		fmt.Sprintf("--secure-port=%d", KubeAPIPort),
		"--cert-dir="+filepath.Join(k.dir, "certs"),
		"--token-auth-file="+filepath.Join(k.dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+filepath.Join(k.dir, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(k.dir, "sa.key"),
		"--service-cluster-ip-range="+KubeServiceRange,
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=1",
	)
	if err != nil {
		k.mu.Unlock()
		return err
	}
	k.p = p
	k.mu.Unlock()
	if err := k.waitReady(ctx, p); err != nil {
		return fmt.Errorf("kube-apiserver: %w; log tail:\n%s", err, fileTail(k.Log(), 30))
	}
	return nil
}

func (k *KubeAPIServer) waitReady(ctx context.Context, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	client := k.HTTPClient(5 * time.Second)
	last := "no answer"
	for {
		if p.exited() {
			return fmt.Errorf("exited: %v", p.err)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, k.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+k.AdminToken)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready: %v (last: %s)", ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// HTTPClient returns a client that reaches the API server from the test
// process (each connection is dialled in the switch namespace) and
// verifies its certificate with CAFile once that exists.
func (k *KubeAPIServer) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext:     k.Dial,
		TLSClientConfig: k.tlsConfig(),
	}}
}

func (k *KubeAPIServer) tlsConfig() *tls.Config {
	pool := x509.NewCertPool()
	if pem, err := os.ReadFile(k.CAFile); err == nil && pool.AppendCertsFromPEM(pem) {
		return &tls.Config{RootCAs: pool}
	}
	// Before the first start there is no certificate to check against;
	// only waitReady's first polls get here.
	return &tls.Config{InsecureSkipVerify: true}
}

// Dial opens a TCP connection inside the switch namespace, for clients in
// the test process.
func (k *KubeAPIServer) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return DialInNS(ctx, k.lab.SwitchNS, network, addr)
}

// Stop stops kube-apiserver with SIGTERM (SIGKILL after 10 s).
func (k *KubeAPIServer) Stop() {
	k.mu.Lock()
	p := k.p
	k.mu.Unlock()
	if p != nil {
		p.stop(10 * time.Second)
	}
}

// WriteKubeconfig writes a kubeconfig for the API server with token.
func (k *KubeAPIServer) WriteKubeconfig(path, token string) error {
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: weftd
  user:
    token: %s
contexts:
- name: lab
  context:
    cluster: lab
    user: weftd
current-context: lab
`, k.URL, k.CAFile, token)
	return os.WriteFile(path, []byte(cfg), 0o600)
}

// StartWeftdKube starts weftd in Kubernetes mode as Node node: NODE_NAME
// set, --kube-subnet-mgr, a kubeconfig written for the API server with
// its NodeToken, and the lab's network config written to net-conf.json in
// the host's directory; then args. The lab's etcd flags stay on the
// command line, unused.
func (h *Host) StartWeftdKube(k *KubeAPIServer, node string, args ...string) error {
	return h.StartWeftdKubeEnv(k, []string{"NODE_NAME=" + node}, args...)
}

// StartWeftdKubeEnv is StartWeftdKube with weftd's environment given
// instead of NODE_NAME, e.g. POD_NAME and POD_NAMESPACE.
func (h *Host) StartWeftdKubeEnv(k *KubeAPIServer, env []string, args ...string) error {
	kubeconfig, netconf := filepath.Join(h.Dir, "kubeconfig"), h.NetConfPath()
	if err := k.WriteKubeconfig(kubeconfig, k.NodeToken); err != nil {
		return err
	}
	if _, err := os.Stat(netconf); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(netconf, []byte(h.lab.NetworkConfig()), 0o644); err != nil {
			return err
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.weftd != nil && !h.weftd.exited() {
		return fmt.Errorf("%s: weftd already running (pid %d)", h.Name, h.weftd.pid())
	}
	argv := h.WeftdArgs(append([]string{"--kube-subnet-mgr", "--kubeconfig-file=" + kubeconfig, "--net-config-path=" + netconf}, args...)...)
	// env execs weftd, so the process is weftd's own.
	run, err := h.privateRun(append(append([]string{"env"}, env...), argv...))
	if err != nil {
		return err
	}
	p, err := startProc("weftd", h.Name, h.WeftdLog(), run...)
	if err != nil {
		return fmt.Errorf("%s: %w", h.Name, err)
	}
	h.weftd = p
	h.healthz = healthzFromArgs(argv[1:])
	h.started++
	return nil
}

// NetConfPath is the network config file of weftd in Kubernetes mode.
func (h *Host) NetConfPath() string { return filepath.Join(h.Dir, "net-conf.json") }

func fileTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return tail(data, n)
}
