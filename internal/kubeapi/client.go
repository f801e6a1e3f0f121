package kubeapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Limits on what the API server may send.
const (
	// maxBody bounds one answer: a page of Nodes, or one watch event.
	maxBody = 64 << 20
	// PageSize is how many Nodes one list request asks for.
	PageSize = 500
	// maxErrorBody is how much of a refused request's body is read.
	maxErrorBody = 64 << 10
)

// Patch types.
const (
	MergePatch          = "application/merge-patch+json"
	StrategicMergePatch = "application/strategic-merge-patch+json"
)

// Client makes weft's requests to one API server. It is safe for
// concurrent use.
type Client struct {
	base    *url.URL
	hc      *http.Client
	tr      *http.Transport
	timeout time.Duration
}

// NewClient returns a client for cfg. wrap, when set, wraps the
// transport, after authentication (weftd notes each answer's time with
// it).
func NewClient(cfg *Config, wrap func(http.RoundTripper) http.RoundTripper) (*Client, error) {
	if err := checkHost(cfg.Host); err != nil {
		return nil, err
	}
	base, _ := url.Parse(strings.TrimRight(cfg.Host, "/"))
	a, err := newTransport(cfg)
	if err != nil {
		return nil, err
	}
	var rt http.RoundTripper = a
	if wrap != nil {
		rt = wrap(rt)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	return &Client{base: base, hc: &http.Client{Transport: rt}, tr: a.next, timeout: timeout}, nil
}

// Close closes the client's idle connections; requests may still be
// made after it (they open new ones).
func (c *Client) Close() { c.tr.CloseIdleConnections() }

// Host is the API server's URL.
func (c *Client) Host() string { return c.base.String() }

// newTransport builds the TLS transport and the authentication on it.
func newTransport(cfg *Config) (*auth, error) {
	tlsc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.ServerName, InsecureSkipVerify: cfg.Insecure}
	ca := cfg.CAData
	if cfg.CAFile != "" {
		b, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("certificate authority: %w", err)
		}
		ca = b
	}
	if len(ca) > 0 && !cfg.Insecure {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			return nil, errors.New("certificate authority: no PEM certificate in it")
		}
		tlsc.RootCAs = pool
	}
	a := &auth{cfg: cfg, ua: cfg.UserAgent}
	if a.ua == "" {
		a.ua = "weft"
	}
	switch {
	case cfg.CertFile != "":
		a.certs = &certFiles{cert: cfg.CertFile, key: cfg.KeyFile}
		if _, err := a.certs.get(); err != nil {
			return nil, err
		}
	case len(cfg.CertData) > 0:
		cert, err := tls.X509KeyPair(cfg.CertData, cfg.KeyData)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		a.staticCert = &cert
	}
	if cfg.Exec != nil {
		a.exec = &execPlugin{cfg: cfg.Exec, cluster: cfg}
	}
	if cfg.TokenFile != "" {
		a.tokenFile = &tokenFile{path: cfg.TokenFile}
		if _, err := a.tokenFile.get(); err != nil {
			return nil, err
		}
	}
	tlsc.GetClientCertificate = a.clientCertificate

	proxy := http.ProxyFromEnvironment
	if cfg.ProxyURL != "" {
		u, err := url.Parse(cfg.ProxyURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("proxy-url %q: want an http or https URL", cfg.ProxyURL)
		}
		proxy = http.ProxyURL(u)
	}
	dial := cfg.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	tr := &http.Transport{
		Proxy:               proxy,
		DialContext:         dial,
		TLSClientConfig:     tlsc,
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		// A watch that the network drops without a word is noticed by
		// the pings: no answer to one within 15 s closes the connection.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
	}
	a.next = tr
	return a, nil
}

// auth adds the credentials, the user agent and the impersonation headers
// to every request.
type auth struct {
	next       *http.Transport
	cfg        *Config
	ua         string
	tokenFile  *tokenFile
	certs      *certFiles
	staticCert *tls.Certificate
	exec       *execPlugin
}

func (a *auth) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("User-Agent", a.ua)
	if a.cfg.Impersonate != "" {
		r.Header.Set("Impersonate-User", a.cfg.Impersonate)
		for _, g := range a.cfg.ImpersonateGroups {
			r.Header.Add("Impersonate-Group", g)
		}
	}
	switch {
	case a.exec != nil:
		cred, err := a.exec.get(r.Context())
		if err != nil {
			return nil, err
		}
		if cred.Token != "" {
			r.Header.Set("Authorization", "Bearer "+cred.Token)
		}
	case a.tokenFile != nil:
		tok, err := a.tokenFile.get()
		if err != nil {
			return nil, err
		}
		r.Header.Set("Authorization", "Bearer "+tok)
	case a.cfg.BearerToken != "":
		r.Header.Set("Authorization", "Bearer "+a.cfg.BearerToken)
	case a.cfg.Username != "" || a.cfg.Password != "":
		r.SetBasicAuth(a.cfg.Username, a.cfg.Password)
	}
	resp, err := a.next.RoundTrip(r)
	if err == nil && resp.StatusCode == http.StatusUnauthorized && a.exec != nil {
		a.exec.forget() // the next request runs the plugin again
	}
	return resp, err
}

// clientCertificate is the TLS client certificate: the exec plugin's, the
// files' (read again when changed), or the static one.
func (a *auth) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if a.exec != nil {
		if c := a.exec.cert(); c != nil {
			return c, nil
		}
	}
	if a.certs != nil {
		return a.certs.get()
	}
	if a.staticCert != nil {
		return a.staticCert, nil
	}
	return &tls.Certificate{}, nil // none: the server decides whether that is enough
}

// tokenFile is a bearer token read from a file, at most a minute old.
type tokenFile struct {
	path string
	mu   sync.Mutex
	tok  string
	read time.Time
}

func (t *tokenFile) get() (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tok != "" && time.Since(t.read) < time.Minute {
		return t.tok, nil
	}
	b, err := os.ReadFile(t.path)
	if err != nil {
		if t.tok != "" {
			return t.tok, nil // keep the last one; the file may be mid-rotation
		}
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", t.path)
	}
	t.tok, t.read = tok, time.Now()
	return tok, nil
}

// certFiles is a client certificate and key read from files, and read
// again when either file's modification time changes.
type certFiles struct {
	cert, key string
	mu        sync.Mutex
	mtime     [2]time.Time
	c         *tls.Certificate
}

func (f *certFiles) get() (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var mt [2]time.Time
	for i, p := range []string{f.cert, f.key} {
		st, err := os.Stat(p)
		if err != nil {
			if f.c != nil {
				return f.c, nil
			}
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		mt[i] = st.ModTime()
	}
	if f.c != nil && mt == f.mtime {
		return f.c, nil
	}
	c, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		if f.c != nil {
			return f.c, nil // half-written rotation: keep the last pair
		}
		return nil, fmt.Errorf("client certificate %s: %w", f.cert, err)
	}
	f.c, f.mtime = &c, mt
	return f.c, nil
}

// do sends one request and decodes a 2xx answer's JSON into out (unless
// nil). A refused request is a *StatusError.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, contentType string, body []byte, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.send(ctx, method, path, query, contentType, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
		return err
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return fmt.Errorf("%s %s: read the answer: %w", method, path, err)
	}
	if len(data) > maxBody {
		return fmt.Errorf("%s %s: answer larger than %d bytes", method, path, maxBody)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: answer does not decode: %w", method, path, err)
	}
	return nil
}

// send sends a request and returns a 2xx response; other answers are
// read, closed and returned as a *StatusError.
func (c *Client) send(ctx context.Context, method, path string, query url.Values, contentType string, body []byte) (*http.Response, error) {
	// path is escaped already (a name may hold a slash): parse it as such.
	u, err := url.Parse(c.base.String() + path)
	if err != nil {
		return nil, err
	}
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	return nil, statusError(resp.StatusCode, data)
}

// statusError makes the error of a refused request from its body: a
// Status object when it is one, else the start of the text.
func statusError(code int, body []byte) error {
	var st Status
	if json.Unmarshal(body, &st) == nil && (st.Message != "" || st.Reason != "") {
		return &StatusError{Code: code, Reason: st.Reason, Message: printable(st.Message, 512)}
	}
	return &StatusError{Code: code, Message: printable(string(body), 200)}
}

// printable returns s cut to n bytes, with control characters and invalid
// UTF-8 replaced, for logs.
func printable(s string, n int) string {
	if len(s) > n {
		s = s[:n] + "…"
	}
	return strings.Map(func(r rune) rune {
		if r == utf8.RuneError || r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, strings.TrimSpace(s))
}

// GetNode reads Node name.
func (c *Client) GetNode(ctx context.Context, name string) (*Node, error) {
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(name), nil, "", nil, &raw); err != nil {
		return nil, err
	}
	n, err := DecodeNode(raw)
	if err != nil {
		return nil, err
	}
	if n.Invalid != "" {
		return nil, fmt.Errorf("node %s: %s", name, n.Invalid)
	}
	return n, nil
}

// GetPod reads Pod ns/name.
func (c *Client) GetPod(ctx context.Context, ns, name string) (*Pod, error) {
	p := &Pod{}
	err := c.do(ctx, http.MethodGet, "/api/v1/namespaces/"+url.PathEscape(ns)+"/pods/"+url.PathEscape(name), nil, "", nil, p)
	return p, err
}

// NodeList is every Node, and the resourceVersion to watch from.
type NodeList struct {
	Nodes           []*Node
	ResourceVersion string
}

// ListNodes reads every Node, PageSize at a time. When a continue token
// expires between pages the list starts over (at most three times).
func (c *Client) ListNodes(ctx context.Context) (NodeList, error) {
	var err error
	for range 3 {
		var l NodeList
		l, err = c.listNodes(ctx)
		if err == nil || !IsGone(err) {
			return l, err
		}
	}
	return NodeList{}, err
}

func (c *Client) listNodes(ctx context.Context) (NodeList, error) {
	var out NodeList
	cont := ""
	for {
		q := url.Values{"limit": {strconv.Itoa(PageSize)}}
		if cont != "" {
			q.Set("continue", cont)
		}
		var page struct {
			Metadata struct {
				ResourceVersion string `json:"resourceVersion"`
				Continue        string `json:"continue"`
			} `json:"metadata"`
			Items []json.RawMessage `json:"items"`
		}
		if err := c.do(ctx, http.MethodGet, "/api/v1/nodes", q, "", nil, &page); err != nil {
			return NodeList{}, err
		}
		for _, raw := range page.Items {
			n, err := DecodeNode(raw)
			if err != nil {
				return NodeList{}, fmt.Errorf("list nodes: item %d: %w", len(out.Nodes), err)
			}
			out.Nodes = append(out.Nodes, n)
		}
		out.ResourceVersion = page.Metadata.ResourceVersion
		if page.Metadata.Continue == "" {
			return out, nil
		}
		if page.Metadata.Continue == cont {
			return NodeList{}, errors.New("list nodes: the API server sent the same continue token twice")
		}
		cont = page.Metadata.Continue
	}
}

// PatchNodeStatus applies patch, of type patchType (MergePatch or
// StrategicMergePatch), to Node name's status subresource, as
// fieldManager (none when empty).
func (c *Client) PatchNodeStatus(ctx context.Context, name, patchType string, patch []byte, fieldManager string) error {
	var q url.Values
	if fieldManager != "" {
		q = url.Values{"fieldManager": {fieldManager}}
	}
	return c.do(ctx, http.MethodPatch, "/api/v1/nodes/"+url.PathEscape(name)+"/status", q, patchType, patch, nil)
}

// Event is one watch event. Node is set for ADDED, MODIFIED, DELETED and
// BOOKMARK (which carries only a resourceVersion).
type Event struct {
	Type string
	Node *Node
}

// Watch is an open watch of Nodes.
type Watch struct {
	body   io.ReadCloser
	lim    *limitedReader
	dec    *json.Decoder
	cancel context.CancelFunc
}

// WatchNodes watches Nodes from resourceVersion rv, with bookmarks. The
// server ends the watch after about timeout; so does the client, a
// minute later, should the server not.
func (c *Client) WatchNodes(ctx context.Context, rv string, timeout time.Duration) (*Watch, error) {
	q := url.Values{"watch": {"1"}, "allowWatchBookmarks": {"true"},
		"timeoutSeconds": {strconv.Itoa(int(timeout / time.Second))}}
	if rv != "" {
		q.Set("resourceVersion", rv)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+time.Minute)
	resp, err := c.send(ctx, http.MethodGet, "/api/v1/nodes", q, "", nil)
	if err != nil {
		cancel()
		return nil, err
	}
	lim := &limitedReader{r: resp.Body}
	return &Watch{body: resp.Body, lim: lim, dec: json.NewDecoder(lim), cancel: cancel}, nil
}

// Next returns the next event. io.EOF means the watch ended normally. A
// watch ERROR event is returned as a *StatusError (IsGone: list again).
func (w *Watch) Next() (Event, error) {
	var raw struct {
		Type   string          `json:"type"`
		Object json.RawMessage `json:"object"`
	}
	w.lim.n = 0
	if err := w.dec.Decode(&raw); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Event{}, fmt.Errorf("watch nodes: stream cut: %w", err)
		}
		return Event{}, err
	}
	switch raw.Type {
	case "ADDED", "MODIFIED", "DELETED", "BOOKMARK":
		n, err := DecodeNode(raw.Object)
		if err != nil {
			return Event{}, fmt.Errorf("watch nodes: %s event: %w", raw.Type, err)
		}
		return Event{Type: raw.Type, Node: n}, nil
	case "ERROR":
		var st Status
		if err := json.Unmarshal(raw.Object, &st); err != nil {
			return Event{}, fmt.Errorf("watch nodes: ERROR event does not decode: %w", err)
		}
		code := st.Code
		if code == 0 {
			code = http.StatusInternalServerError
		}
		return Event{}, &StatusError{Code: code, Reason: st.Reason, Message: printable(st.Message, 512)}
	}
	return Event{}, fmt.Errorf("watch nodes: event type %q", printable(raw.Type, 40))
}

// Close ends the watch.
func (w *Watch) Close() {
	w.cancel()
	w.body.Close()
}

// maxEvent bounds one watch event; a variable for tests.
var maxEvent int64 = maxBody

// limitedReader fails once more than maxEvent bytes were read since n was
// last reset: one watch event may not be endless.
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n > maxEvent {
		return 0, fmt.Errorf("watch nodes: event larger than %d bytes", maxEvent)
	}
	k, err := l.r.Read(p)
	l.n += int64(k)
	return k, err
}
