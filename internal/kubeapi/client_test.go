package kubeapi

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
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAPI is an API server for the requests Client makes. It records
// each request as "METHOD uri content-type body" and its Authorization.
type fakeAPI struct {
	t  *testing.T
	mu sync.Mutex

	reqs  []string
	auths []string

	nodes      []string // raw JSON of each Node, served by list and get
	rv         string
	goneOnce   bool     // the first continue token is refused with 410
	sameCont   bool     // every page says the same continue token
	watch      []string // raw events a watch streams, one per line
	refuseAuth func(string) bool
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("Content-Type")+" "+string(body))
	f.auths = append(f.auths, r.Header.Get("Authorization"))
	if f.refuseAuth != nil && f.refuseAuth(r.Header.Get("Authorization")) {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"kind":"Status","status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}`)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	q := r.URL.Query()
	switch {
	case r.URL.Path == "/api/v1/nodes" && q.Get("watch") == "1":
		for _, ev := range f.watch {
			fmt.Fprintln(w, ev)
		}
	case r.URL.Path == "/api/v1/nodes":
		limit, _ := strconv.Atoi(q.Get("limit"))
		from, _ := strconv.Atoi(strings.TrimPrefix(q.Get("continue"), "c"))
		if q.Get("continue") != "" && f.goneOnce {
			f.goneOnce = false
			w.WriteHeader(http.StatusGone)
			fmt.Fprint(w, `{"kind":"Status","status":"Failure","message":"continue token expired","reason":"Expired","code":410}`)
			return
		}
		to := min(from+limit, len(f.nodes))
		cont := ""
		if to < len(f.nodes) {
			cont = "c" + strconv.Itoa(to)
		}
		if f.sameCont {
			cont = "c0"
		}
		fmt.Fprintf(w, `{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":%q,"continue":%q},"items":[%s]}`,
			f.rv, cont, strings.Join(f.nodes[from:to], ","))
	case strings.HasPrefix(r.URL.Path, "/api/v1/nodes/") && r.Method == http.MethodPatch:
		fmt.Fprint(w, `{"kind":"Node","metadata":{"name":"n1"}}`)
	case strings.HasPrefix(r.URL.Path, "/api/v1/nodes/"):
		name := strings.TrimPrefix(r.URL.Path, "/api/v1/nodes/")
		for _, n := range f.nodes {
			if strings.Contains(n, `"name":"`+name+`"`) {
				fmt.Fprint(w, n)
				return
			}
		}
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, `{"kind":"Status","status":"Failure","message":"nodes \"%s\" not found","reason":"NotFound","code":404}`, name)
	case r.URL.Path == "/api/v1/namespaces/kube-system/pods/weft-abc":
		fmt.Fprint(w, `{"kind":"Pod","metadata":{"name":"weft-abc","namespace":"kube-system"},"spec":{"nodeName":"n1","containers":[{"name":"x"}]}}`)
	default:
		w.WriteHeader(http.StatusTeapot)
		fmt.Fprint(w, "no\x1b[31m such\npath")
	}
}

func (f *fakeAPI) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

func (f *fakeAPI) lastAuth() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.auths[len(f.auths)-1]
}

// start serves f over TLS and returns a config that trusts it.
func (f *fakeAPI) start(t *testing.T) *Config {
	srv := httptest.NewTLSServer(f)
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return &Config{Host: srv.URL, CAData: ca, Timeout: 5 * time.Second}
}

func nodeJSON(name, rv, cidr string) string {
	return fmt.Sprintf(`{"kind":"Node","apiVersion":"v1","metadata":{"name":%q,"uid":"u-%s","resourceVersion":%q,"creationTimestamp":"2026-11-01T12:00:00Z","annotations":{"a/b":"c"}},"spec":{"podCIDR":%q},"status":{"conditions":[{"type":"Ready","status":"True"}],"images":[{"names":["x"],"sizeBytes":1}]}}`, name, name, rv, cidr)
}

func TestClientRequests(t *testing.T) {
	f := &fakeAPI{t: t, nodes: []string{nodeJSON("n1", "7", "198.18.1.0/24")}}
	cfg := f.start(t)
	cfg.BearerToken = "tok"
	cfg.Impersonate, cfg.ImpersonateGroups = "weft", []string{"g"}
	c, err := NewClient(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	n, err := c.GetNode(ctx, "n1")
	if err != nil || n.Name != "n1" || n.UID != "u-n1" || n.ResourceVersion != "7" || n.Spec.PodCIDR != "198.18.1.0/24" ||
		n.Annotations["a/b"] != "c" || n.Condition("Ready") == nil || n.Condition("Ready").Status != "True" || n.Condition("Other") != nil {
		t.Errorf("GetNode: %+v, %v", n, err)
	}
	if got := f.lastAuth(); got != "Bearer tok" {
		t.Errorf("Authorization %q", got)
	}
	_, err = c.GetNode(ctx, "a/b")
	if !IsNotFound(err) || !strings.Contains(err.Error(), `nodes "a/b" not found (404 NotFound)`) {
		t.Errorf("GetNode of a missing node: %v", err)
	}
	if reqs := f.requests(); !strings.HasPrefix(reqs[len(reqs)-1], "GET /api/v1/nodes/a%2Fb ") {
		t.Errorf("a name with a slash is not escaped: %s", reqs[len(reqs)-1])
	}
	p, err := c.GetPod(ctx, "kube-system", "weft-abc")
	if err != nil || p.Spec.NodeName != "n1" {
		t.Errorf("GetPod: %+v, %v", p, err)
	}
	if err := c.PatchNodeStatus(ctx, "n1", MergePatch, []byte(`{"metadata":{}}`), "weftd"); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests()
	if got, want := reqs[len(reqs)-1], `PATCH /api/v1/nodes/n1/status?fieldManager=weftd application/merge-patch+json {"metadata":{}}`; got != want {
		t.Errorf("patch request %q, want %q", got, want)
	}
	err = c.do(ctx, http.MethodGet, "/nowhere", nil, "", nil, &struct{}{})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusTeapot || se.Message != "no?[31m such?path" {
		t.Errorf("a refusal that is not a Status: %#v", err)
	}
	if IsNotFound(err) || IsGone(err) {
		t.Errorf("418 taken for 404 or 410")
	}
}

func TestListNodes(t *testing.T) {
	ctx := context.Background()
	var nodes []string
	for i := range 1200 {
		nodes = append(nodes, nodeJSON(fmt.Sprintf("n%d", i), strconv.Itoa(i), "198.18.1.0/24"))
	}
	t.Run("pages", func(t *testing.T) {
		f := &fakeAPI{t: t, nodes: nodes, rv: "99"}
		c, _ := NewClient(f.start(t), nil)
		l, err := c.ListNodes(ctx)
		if err != nil || len(l.Nodes) != 1200 || l.ResourceVersion != "99" || l.Nodes[1199].Name != "n1199" {
			t.Fatalf("%d nodes, rv %q, %v", len(l.Nodes), l.ResourceVersion, err)
		}
		if n := len(f.requests()); n != 3 {
			t.Errorf("%d requests for 1200 nodes in pages of %d", n, PageSize)
		}
	})
	t.Run("expired continue token: the list starts over", func(t *testing.T) {
		f := &fakeAPI{t: t, nodes: nodes, rv: "99", goneOnce: true}
		c, _ := NewClient(f.start(t), nil)
		l, err := c.ListNodes(ctx)
		if err != nil || len(l.Nodes) != 1200 {
			t.Fatalf("%d nodes, %v", len(l.Nodes), err)
		}
		if n := len(f.requests()); n != 5 {
			t.Errorf("%d requests, want 5 (page, 410, three pages)", n)
		}
	})
	t.Run("a continue token that does not move", func(t *testing.T) {
		f := &fakeAPI{t: t, nodes: nodes, sameCont: true}
		c, _ := NewClient(f.start(t), nil)
		if _, err := c.ListNodes(ctx); err == nil || !strings.Contains(err.Error(), "same continue token") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("one Node that does not decode costs no other", func(t *testing.T) {
		bad := `{"kind":"Node","metadata":{"name":"bad","resourceVersion":"5","annotations":{"x":5}},"spec":{"podCIDR":"198.18.9.0/24"}}`
		f := &fakeAPI{t: t, nodes: []string{nodeJSON("n1", "1", "198.18.1.0/24"), bad, nodeJSON("n2", "2", "198.18.2.0/24")}}
		c, _ := NewClient(f.start(t), nil)
		l, err := c.ListNodes(ctx)
		if err != nil || len(l.Nodes) != 3 {
			t.Fatalf("%d nodes, %v", len(l.Nodes), err)
		}
		b := l.Nodes[1]
		if b.Name != "bad" || b.ResourceVersion != "5" || !strings.Contains(b.Invalid, "does not decode") || b.Spec.PodCIDR != "" {
			t.Errorf("bad node %+v", b)
		}
		if l.Nodes[0].Invalid != "" || l.Nodes[2].Invalid != "" || l.Nodes[2].Spec.PodCIDR != "198.18.2.0/24" {
			t.Errorf("good nodes %+v %+v", l.Nodes[0], l.Nodes[2])
		}
	})
	t.Run("an item that is not an object", func(t *testing.T) {
		f := &fakeAPI{t: t, nodes: []string{nodeJSON("n1", "1", "198.18.1.0/24"), `7`}}
		c, _ := NewClient(f.start(t), nil)
		if _, err := c.ListNodes(ctx); err == nil || !strings.Contains(err.Error(), "item 1") {
			t.Fatalf("err %v", err)
		}
	})
}

func TestWatch(t *testing.T) {
	ev := func(typ, obj string) string { return fmt.Sprintf(`{"type":%q,"object":%s}`, typ, obj) }
	f := &fakeAPI{t: t, watch: []string{
		ev("ADDED", nodeJSON("n1", "10", "198.18.1.0/24")),
		ev("BOOKMARK", `{"kind":"Node","metadata":{"resourceVersion":"11"}}`),
		ev("MODIFIED", `{"kind":"Node","metadata":{"name":"n1","resourceVersion":"12"},"spec":{"podCIDR":["x"]}}`),
		ev("DELETED", nodeJSON("n1", "13", "198.18.1.0/24")),
		ev("ERROR", `{"kind":"Status","status":"Failure","message":"too old resource version: 1 (13)","reason":"Expired","code":410}`),
		ev("SURPRISE", `{}`),
		ev("ADDED", `[1,2]`),
	}}
	c, _ := NewClient(f.start(t), nil)
	w, err := c.WatchNodes(context.Background(), "9", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got := f.requests()[0]; !strings.HasPrefix(got, "GET /api/v1/nodes?allowWatchBookmarks=true&resourceVersion=9&timeoutSeconds=300&watch=1 ") {
		t.Errorf("watch request %q", got)
	}
	want := []string{"ADDED n1 10 ", "BOOKMARK  11 ", "MODIFIED n1 12 invalid", "DELETED n1 13 "}
	for _, wt := range want {
		e, err := w.Next()
		if err != nil {
			t.Fatalf("want %s: %v", wt, err)
		}
		inv := ""
		if e.Node.Invalid != "" {
			inv = "invalid"
		}
		if got := fmt.Sprintf("%s %s %s %s", e.Type, e.Node.Name, e.Node.ResourceVersion, inv); got != wt {
			t.Errorf("event %q, want %q", got, wt)
		}
	}
	if _, err := w.Next(); !IsGone(err) {
		t.Errorf("ERROR 410 event: %v", err)
	}
	if _, err := w.Next(); err == nil || !strings.Contains(err.Error(), `event type "SURPRISE"`) {
		t.Errorf("unknown event type: %v", err)
	}
	if _, err := w.Next(); err == nil || !strings.Contains(err.Error(), "not a JSON object") {
		t.Errorf("object that is not one: %v", err)
	}
	if _, err := w.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("end of the watch: %v", err)
	}
}

func TestWatchEventLimit(t *testing.T) {
	old := maxEvent
	maxEvent = 4096
	t.Cleanup(func() { maxEvent = old })
	big := fmt.Sprintf(`{"type":"ADDED","object":{"metadata":{"name":"n1","annotations":{"x":%q}}}}`, strings.Repeat("a", 10000))
	f := &fakeAPI{t: t, watch: []string{`{"type":"ADDED","object":` + nodeJSON("n0", "1", "198.18.1.0/24") + `}`, big}}
	c, _ := NewClient(f.start(t), nil)
	w, err := c.WatchNodes(context.Background(), "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if e, err := w.Next(); err != nil || e.Node.Name != "n0" {
		t.Fatalf("first event: %+v, %v", e, err)
	}
	if _, err := w.Next(); err == nil || !strings.Contains(err.Error(), "larger than 4096 bytes") {
		t.Errorf("endless event: %v", err)
	}
}

func TestTokenFileIsReread(t *testing.T) {
	f := &fakeAPI{t: t, nodes: []string{nodeJSON("n1", "1", "198.18.1.0/24")}}
	cfg := f.start(t)
	cfg.TokenFile = filepath.Join(t.TempDir(), "token")
	cfg.BearerToken = "ignored: the file wins"
	if err := os.WriteFile(cfg.TokenFile, []byte("one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c.GetNode(ctx, "n1")
	if got := f.lastAuth(); got != "Bearer one" {
		t.Fatalf("Authorization %q", got)
	}
	if err := os.WriteFile(cfg.TokenFile, []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The file is read at most once a minute: age the last read.
	a := c.hc.Transport.(*auth)
	a.tokenFile.mu.Lock()
	a.tokenFile.read = time.Now().Add(-2 * time.Minute)
	a.tokenFile.mu.Unlock()
	c.GetNode(ctx, "n1")
	if got := f.lastAuth(); got != "Bearer two" {
		t.Errorf("after rotation: Authorization %q", got)
	}
	os.Remove(cfg.TokenFile)
	a.tokenFile.mu.Lock()
	a.tokenFile.read = time.Now().Add(-2 * time.Minute)
	a.tokenFile.mu.Unlock()
	c.GetNode(ctx, "n1")
	if got := f.lastAuth(); got != "Bearer two" {
		t.Errorf("file gone mid-rotation: Authorization %q, want the last token", got)
	}
}

func TestBasicAuth(t *testing.T) {
	f := &fakeAPI{t: t, nodes: []string{nodeJSON("n1", "1", "198.18.1.0/24")}}
	cfg := f.start(t)
	cfg.Username, cfg.Password = "u", "p"
	c, _ := NewClient(cfg, nil)
	c.GetNode(context.Background(), "n1")
	if got := f.lastAuth(); got != "Basic dTpw" {
		t.Errorf("Authorization %q", got)
	}
}

// TestExecPlugin runs a credential plugin (a shell script) and checks
// that its token is used, that it ran with KUBERNETES_EXEC_INFO, and that
// a refused token makes the next request run it again.
func TestExecPlugin(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh")
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "cred")
	if err := os.WriteFile(script, []byte(`#!/bin/sh
n=$(cat "$0.count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$0.count"
echo "$KUBERNETES_EXEC_INFO" > "$0.info"
echo "$EXTRA" > "$0.extra"
printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"t%s"}}' $n
`), 0o700); err != nil {
		t.Fatal(err)
	}
	f := &fakeAPI{t: t, nodes: []string{nodeJSON("n1", "1", "198.18.1.0/24")}, refuseAuth: func(a string) bool { return a == "Bearer t1" }}
	cfg := f.start(t)
	cfg.Exec = &ExecConfig{Command: script, APIVersion: execV1, Env: []ExecEnvVar{{"EXTRA", "x1"}}, ProvideClusterInfo: true}
	c, err := NewClient(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.GetNode(ctx, "n1"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("first token refused: %v", err)
	}
	if _, err := c.GetNode(ctx, "n1"); err != nil {
		t.Fatalf("second token: %v", err)
	}
	c.GetNode(ctx, "n1")
	if got := f.lastAuth(); got != "Bearer t2" {
		t.Errorf("Authorization %q, want the cached second token", got)
	}
	info, _ := os.ReadFile(script + ".info")
	var ei struct {
		APIVersion string `json:"apiVersion"`
		Spec       struct {
			Interactive bool `json:"interactive"`
			Cluster     struct {
				Server string `json:"server"`
			} `json:"cluster"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(info, &ei); err != nil || ei.APIVersion != execV1 || ei.Spec.Interactive || ei.Spec.Cluster.Server != cfg.Host {
		t.Errorf("KUBERNETES_EXEC_INFO %s (%v)", info, err)
	}
	if extra, _ := os.ReadFile(script + ".extra"); strings.TrimSpace(string(extra)) != "x1" {
		t.Errorf("plugin env EXTRA=%q", extra)
	}
}

func TestParseExecCredential(t *testing.T) {
	cases := []struct{ out, want string }{
		{`{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"x","expirationTimestamp":"2026-11-30T10:00:00Z"}}`, ""},
		{`nope`, "not an ExecCredential"},
		{`{"apiVersion":"client.authentication.k8s.io/v1","kind":"Secret","status":{"token":"x"}}`, `kind "Secret"`},
		{`{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","status":{"token":"x"}}`, "want client.authentication.k8s.io/v1"},
		{`{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential"}`, "no status"},
		{`{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{}}`, "neither a token nor"},
		{`{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"clientCertificateData":"x","clientKeyData":"y"}}`, "client certificate"},
		{`{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"x","expirationTimestamp":"soon"}}`, "expirationTimestamp"},
	}
	for _, tc := range cases {
		cred, exp, err := parseExecCredential([]byte(tc.out), execV1)
		if tc.want == "" {
			if err != nil || cred.Token != "x" || exp.IsZero() {
				t.Errorf("%s: %+v %v %v", tc.out, cred, exp, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.out, err, tc.want)
		}
	}
}

// TestClientCertificate checks that the client certificate from files is
// presented, and read again after it is replaced.
func TestClientCertificate(t *testing.T) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	dir := t.TempDir()
	issue := func(cn string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		kder, _ := x509.MarshalECPrivateKey(key)
		os.WriteFile(filepath.Join(dir, "c.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
		os.WriteFile(filepath.Join(dir, "c.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
		later := time.Now().Add(time.Duration(len(cn)) * time.Second) // a new mtime, even within one clock tick
		os.Chtimes(filepath.Join(dir, "c.crt"), later, later)
	}
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.TLS.PeerCertificates[0].Subject.CommonName)
		mu.Unlock()
		fmt.Fprint(w, nodeJSON("n1", "1", "198.18.1.0/24"))
	}))
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	srv.StartTLS()
	defer srv.Close()

	issue("first")
	cfg := &Config{Host: srv.URL, CAData: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}),
		CertFile: filepath.Join(dir, "c.crt"), KeyFile: filepath.Join(dir, "c.key")}
	c, err := NewClient(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetNode(context.Background(), "n1"); err != nil {
		t.Fatal(err)
	}
	issue("second-one")
	c.Close() // a new connection, a new handshake
	if _, err := c.GetNode(context.Background(), "n1"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(seen, " ") != "first second-one" {
		t.Errorf("client certificates seen: %v", seen)
	}
	if _, err := NewClient(&Config{Host: srv.URL, CertFile: filepath.Join(dir, "none"), KeyFile: "x"}, nil); err == nil {
		t.Error("a missing certificate file: no error")
	}
}

func FuzzDecodeNode(f *testing.F) {
	f.Add([]byte(nodeJSON("n1", "1", "198.18.1.0/24")))
	f.Add([]byte(`{"metadata":{"name":"x","annotations":{"a":1}}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		n, err := DecodeNode(raw)
		if err != nil {
			if n != nil {
				t.Fatal("a node and an error")
			}
			return
		}
		if n.Invalid == "" && !json.Valid(raw) {
			t.Fatalf("invalid JSON decoded without complaint: %q", raw)
		}
	})
}
