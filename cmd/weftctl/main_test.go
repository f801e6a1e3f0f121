package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/apitypes"
	"github.com/weftnet/weft/subnet"
	"github.com/weftnet/weft/subnet/etcd"
	"github.com/weftnet/weft/subnet/etcd/etcdtest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// syncBuffer is a goroutine-safe output sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type result struct {
	stdout, stderr string
	code           int
}

type harness struct {
	t         *testing.T
	env       map[string]string
	stdin     string
	now       time.Time
	endpoints string
	// localAddrs, if set, stands in for this machine's interface
	// addresses (config set checks Network against them).
	localAddrs []localAddr
	// envFile stands in for /etc/weft/weftd.env; "" reads none.
	envFile string
}

func (h *harness) run(ctx context.Context, args ...string) result {
	h.t.Helper()
	var out, errb syncBuffer
	e := &env{
		getenv:  func(k string) string { return h.env[k] },
		envFile: h.envFile,
		stdin:   strings.NewReader(h.stdin),
		stdout:  &out,
		stderr:  &errb,
	}
	if !h.now.IsZero() {
		e.now = func() time.Time { return h.now }
	}
	if h.localAddrs != nil {
		e.localAddrs = func() ([]localAddr, error) { return h.localAddrs, nil }
	}
	code := run(ctx, args, e)
	return result{out.String(), errb.String(), code}
}

func (h *harness) runOK(args ...string) string {
	h.t.Helper()
	r := h.run(context.Background(), args...)
	if r.code != 0 {
		h.t.Fatalf("weftctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func (h *harness) runFail(wantCode int, args ...string) result {
	h.t.Helper()
	r := h.run(context.Background(), args...)
	if r.code != wantCode {
		h.t.Fatalf("weftctl %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, wantCode, r.stdout, r.stderr)
	}
	return r
}

// withEtcd starts etcd and points the harness at it through the
// environment, as on a host with /etc/weft/weftd.env loaded.
func withEtcd(t *testing.T) (*harness, *clientv3.Client, *etcd.Registry) {
	cli, srv := etcdtest.Start(t)
	h := &harness{t: t, env: map[string]string{"WEFTD_ETCD_ENDPOINTS": strings.Join(srv.Endpoints(), ",")}, endpoints: strings.Join(srv.Endpoints(), ",")}
	return h, cli, etcd.NewRegistry(cli, "")
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Fatalf("output differs from %s (go test -update rewrites it)\n--- got:\n%s\n--- want:\n%s", path, got, want)
	}
}

const netConfig = `{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan"}}`

// seedLeases writes one lease of each kind plus two broken keys.
func seedLeases(t *testing.T, cli *clientv3.Client, reg *etcd.Registry) {
	t.Helper()
	ctx := context.Background()
	if err := reg.PutConfig(ctx, []byte(netConfig)); err != nil {
		t.Fatal(err)
	}
	g, err := cli.Grant(ctx, 86400)
	if err != nil {
		t.Fatal(err)
	}
	put := func(sn, value string, lease bool) {
		var opts []clientv3.OpOption
		if lease {
			opts = append(opts, clientv3.WithLease(g.ID))
		}
		if _, err := cli.Put(ctx, reg.LeaseKey(netip.MustParsePrefix(sn)), value, opts...); err != nil {
			t.Fatal(err)
		}
	}
	put("198.18.7.0/24", `{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`, true)
	put("198.18.12.0/24", `{"PublicIP":"192.0.2.12","PublicIPv6":null,"BackendType":"host-gw"}`, true)
	put("198.18.130.0/24", `{"PublicIP":"203.0.113.130","PublicIPv6":null}`, true)
	if err := reg.Reserve(ctx, netip.MustParsePrefix("198.18.42.0/24"), netip.MustParseAddr("198.51.100.42")); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/coreos.com/network/subnets/198.18.9.0-24", `{"PublicIP":"not-an-ip"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/coreos.com/network/subnets/garbage", `{}`); err != nil {
		t.Fatal(err)
	}
}

var (
	durRE     = regexp.MustCompile(`\b\d+h\d+m\b`)
	expiresRE = regexp.MustCompile(`"expires": "[^"]+"`)
	secsRE    = regexp.MustCompile(`"expiresInSeconds": \d+`)
	leaseIDRE = regexp.MustCompile(`"etcdLease": "[0-9a-f]+"`)
	tsRE      = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`)
)

func TestLeases(t *testing.T) {
	h, cli, reg := withEtcd(t)
	seedLeases(t, cli, reg)

	out := h.runOK("leases")
	if !regexp.MustCompile(`198\.18\.7\.0/24 .* (23h59m|24h0m) `).MatchString(out) {
		t.Fatalf("expiry of a fresh 24h lease not shown:\n%s", out)
	}
	// Mask the time left, keeping the width so the columns stay aligned.
	golden(t, "leases.table.golden", durRE.ReplaceAllStringFunc(out, func(m string) string {
		return "<ttl>" + strings.Repeat(" ", len(m)-len("<ttl>"))
	}))

	out = h.runOK("leases", "-o", "json")
	var parsed []map[string]any
	if err := json.Unmarshal([]byte(out), &parsed); err != nil || len(parsed) != 6 {
		t.Fatalf("-o json is not an array of 6: %v\n%s", err, out)
	}
	for _, re := range []struct {
		re   *regexp.Regexp
		mask string
	}{{expiresRE, `"expires": "<time>"`}, {secsRE, `"expiresInSeconds": <secs>`}, {leaseIDRE, `"etcdLease": "<id>"`}} {
		out = re.re.ReplaceAllString(out, re.mask)
	}
	golden(t, "leases.json.golden", out)
}

func TestConfigSetGet(t *testing.T) {
	h, _, _ := withEtcd(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "net.json")
	os.WriteFile(good, []byte(netConfig), 0o644)
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"Network":"198.18.0.0/16","SubnetLen":31}`), 0o644)

	r := h.runFail(1, "config", "get")
	if !strings.Contains(r.stderr, "no network config") {
		t.Fatalf("config get without config: %q", r.stderr)
	}
	r = h.runFail(1, "config", "set", bad)
	if !strings.Contains(r.stderr, "SubnetLen") || !strings.Contains(r.stderr, "refusing") {
		t.Fatalf("bad config not refused by field: %q", r.stderr)
	}
	h.runFail(1, "config", "get") // nothing was written
	if out := h.runOK("config", "set", good); !strings.Contains(out, "/coreos.com/network/config") {
		t.Fatalf("config set said %q", out)
	}
	golden(t, "config.get.golden", h.runOK("config", "get"))

	// From stdin, under another prefix given after the command name.
	h.stdin = `{"Network":"198.19.0.0/16","Backend":{"Type":"host-gw"}}`
	h.runOK("config", "set", "-", "--etcd-prefix", "/other")
	if out := h.runOK("--etcd-prefix=/other", "config", "get"); !strings.Contains(out, "198.19.0.0/16") {
		t.Fatalf("config under /other: %q", out)
	}
	h.stdin = `{"Network":"198.19.0.0/16"}`
	if r := h.run(context.Background(), "config", "set", "-"); r.code != 0 || !strings.Contains(r.stderr, "no Backend section") {
		t.Fatalf("config without Backend: exit %d, stderr %q; want success with a warning", r.code, r.stderr)
	}
	h.runFail(2, "config")
	h.runFail(2, "config", "set")
	h.runFail(2, "config", "frob")
}

func TestReserveRelease(t *testing.T) {
	h, _, reg := withEtcd(t)
	if err := reg.PutConfig(context.Background(), []byte(netConfig)); err != nil {
		t.Fatal(err)
	}
	h.runOK("reserve", "198.18.42.0/24", "--public-ip", "192.0.2.42")
	out := h.runOK("leases")
	if !regexp.MustCompile(`198\.18\.42\.0/24\s+192\.0\.2\.42\s+udp\s+-\s+never\s+yes`).MatchString(out) {
		t.Fatalf("reservation not listed:\n%s", out)
	}
	r := h.runFail(1, "reserve", "198.18.42.0/24", "--public-ip", "192.0.2.43")
	if !strings.Contains(r.stderr, "held by 192.0.2.42") {
		t.Fatalf("reserve over another host: %q", r.stderr)
	}
	h.runFail(2, "reserve", "198.18.42.1/24", "--public-ip", "192.0.2.42")
	h.runFail(2, "reserve", "198.18.42.0/24")
	h.runFail(2, "reserve", "198.18.42.0/24", "--public-ip", "nope")
	if out := h.runOK("release", "198.18.42.0-24"); out != "released 198.18.42.0/24\n" {
		t.Fatalf("release said %q", out)
	}
	if out := h.runOK("leases", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("after release: %s", out)
	}
	h.runFail(1, "release", "198.18.42.0/24")
}

func TestWatch(t *testing.T) {
	for _, format := range []string{"table", "json"} {
		t.Run(format, func(t *testing.T) {
			h, cli, reg := withEtcd(t)
			ctx := context.Background()
			if err := reg.PutConfig(ctx, []byte(netConfig)); err != nil {
				t.Fatal(err)
			}
			resp, err := cli.Get(ctx, "x")
			if err != nil {
				t.Fatal(err)
			}
			key := reg.LeaseKey(netip.MustParsePrefix("198.18.7.0/24"))
			v1 := `{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`
			v2 := `{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}`
			for _, op := range []clientv3.Op{
				clientv3.OpPut(key, v1), clientv3.OpPut(key, v1), clientv3.OpPut(key, v2),
				clientv3.OpPut(reg.LeaseKey(netip.MustParsePrefix("198.18.8.0/24")), `{"PublicIP":"192.0.2.12","PublicIPv6":null}`),
				clientv3.OpPut("/coreos.com/network/subnets/junk", "x"),
				clientv3.OpDelete(key),
			} {
				if _, err := cli.Do(ctx, op); err != nil {
					t.Fatal(err)
				}
			}
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var out, errb syncBuffer
			done := make(chan int, 1)
			go func() {
				done <- run(wctx, []string{"watch", "-o", format, "--since", itoa(resp.Header.Revision + 1)},
					&env{getenv: func(k string) string { return h.env[k] }, stdin: strings.NewReader(""), stdout: &out, stderr: &errb})
			}()
			deadline := time.Now().Add(15 * time.Second)
			for strings.Count(out.String(), "\n") < 6 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			cancel()
			if code := <-done; code != 0 {
				t.Fatalf("watch exit %d: %s", code, errb.String())
			}
			got := tsRE.ReplaceAllString(out.String(), "<time>")
			golden(t, "watch."+format+".golden", got)
			for _, w := range []string{"added", "renewed", "updated", "removed"} {
				if !strings.Contains(got, w) {
					t.Fatalf("no %s event in:\n%s", w, got)
				}
			}
		})
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestDockerOpts(t *testing.T) {
	h := &harness{t: t, env: map[string]string{}}
	dir := t.TempDir()
	path := filepath.Join(dir, "subnet.env")
	if err := subnet.WriteEnvFile(path, subnet.Env{
		Network: netip.MustParsePrefix("198.18.0.0/16"),
		Subnet:  netip.MustParsePrefix("198.18.7.1/24"),
		MTU:     1450,
		IPMasq:  false,
	}); err != nil {
		t.Fatal(err)
	}
	golden(t, "docker-opts.env.golden", h.runOK("docker-opts", "--subnet-file", path))
	golden(t, "docker-opts.args.golden", h.runOK("docker-opts", "--subnet-file", path, "--format", "args"))
	// weftd masquerades: Docker must not.
	os.WriteFile(path, []byte("FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.9.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n"), 0o644)
	h.env["WEFTD_SUBNET_FILE"] = path
	if out := h.runOK("docker-opts", "--format=args"); out != "--bip=198.18.9.1/24 --ip-masq=false --mtu=1400\n" {
		t.Fatalf("docker-opts = %q", out)
	}
	h.runFail(1, "docker-opts", "--subnet-file", filepath.Join(dir, "missing.env"))
	h.runFail(2, "docker-opts", "--format", "yaml")
}

func TestStatus(t *testing.T) {
	now := time.Date(2026, 11, 26, 4, 0, 0, 0, time.UTC)
	st := apitypes.Status{
		Lease: "198.18.7.0/24", LeaseExpires: now.Add(23*time.Hour + 59*time.Minute + 30*time.Second),
		PublicIP: "192.0.2.11", Backend: "vxlan", Device: "weft.1", ExternalInterface: "eth0", MTU: 1450,
		SubnetFile: "/run/flannel/subnet.env", PeersKnown: 3, PeersProgrammed: 2,
		PeersRefused:  map[string]string{"198.18.9.0/24": "PublicIP 192.0.2.11 is our own address"},
		LastReconcile: now.Add(-3 * time.Second), LastEtcdContact: now.Add(-1500 * time.Millisecond),
		Ready: false, NotReadyReason: "1 peer refused", Version: "v0.1.0",
	}
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		json.NewEncoder(w).Encode(st)
	}))
	defer srv.Close()
	set := func(s apitypes.Status) {
		mu.Lock()
		st = s
		mu.Unlock()
	}
	addr := strings.TrimPrefix(srv.URL, "http://")
	h := &harness{t: t, env: map[string]string{}, now: now}

	// Not ready: the status is printed all the same, and the exit code is 3.
	r := h.runFail(3, "status", "--addr", addr)
	golden(t, "status.table.golden", r.stdout)
	if !strings.Contains(r.stderr, "weftd is not ready: 1 peer refused") {
		t.Fatalf("not ready: stderr %q", r.stderr)
	}
	golden(t, "status.json.golden", h.runFail(3, "status", "--addr", addr, "-o", "json").stdout)

	// Ready: exit 0.
	ready := st
	ready.Ready, ready.NotReadyReason, ready.PeersRefused = true, "", nil
	set(ready)
	if out := h.runOK("status", "--addr", addr); !regexp.MustCompile(`(?m)^Ready: +yes$`).MatchString(out) {
		t.Fatalf("ready status:\n%s", out)
	}

	// A weftd still starting sends only what GET /status has then; what it
	// leaves out is unknown, not 0 or "never".
	set(apitypes.Status{SubnetFile: "/run/flannel/subnet.env", NotReadyReason: "waiting for the network config at /coreos.com/network/config",
		Version: "v0.1.0", LeasesRefused: []apitypes.LeaseRefusal{}})
	r = h.runFail(3, "status", "--addr", addr)
	golden(t, "status.starting.table.golden", r.stdout)
	for _, bad := range []string{`never`, `MTU: +0`, ` 0 known`, `-$`} {
		if regexp.MustCompile(`(?m)` + bad).MatchString(r.stdout) {
			t.Errorf("a starting weftd's status shows %q for a value weftd did not report:\n%s", bad, r.stdout)
		}
	}

	// The port comes from WEFTD_HEALTHZ_PORT when --addr is not given.
	set(ready)
	h.env["WEFTD_HEALTHZ_PORT"] = addr[strings.LastIndex(addr, ":")+1:]
	if out := h.runOK("status"); !strings.Contains(out, "198.18.7.0/24") {
		t.Fatalf("status via WEFTD_HEALTHZ_PORT: %q", out)
	}
	srv.Close()
	r = h.runFail(1, "status", "--addr", addr)
	if !strings.Contains(r.stderr, "weftd") {
		t.Fatalf("unreachable weftd: %q", r.stderr)
	}
}

func TestUsageAndExitCodes(t *testing.T) {
	h := &harness{t: t, env: map[string]string{}}
	out := h.runOK("help")
	golden(t, "help.golden", out)
	for _, c := range commands {
		if strings.Contains(out, "  "+c.name+" ") == c.hidden {
			t.Errorf("help lists %s: %v; hidden: %v", c.name, !c.hidden, c.hidden)
		}
	}
	for _, f := range etcd.FlagNames {
		if !strings.Contains(out, "-"+f) {
			t.Errorf("help does not list -%s", f)
		}
	}
	h.runFail(2)
	h.runFail(2, "frobnicate")
	h.runFail(2, "leases", "--nope")
	h.runFail(2, "leases", "-o", "yaml")
	h.runFail(2, "leases", "extra")
	h.runOK("leases", "-h")
}

func TestEnvPrecedence(t *testing.T) {
	for _, tc := range []struct {
		name      string
		env, file map[string]string
		given     map[string]bool
		want      string
	}{
		{"default", nil, nil, nil, "flag-default"},
		{"flannel only", map[string]string{"FLANNELD_ETCD_ENDPOINTS": "f"}, nil, nil, "f"},
		{"weftd wins over flannel", map[string]string{"FLANNELD_ETCD_ENDPOINTS": "f", "WEFTD_ETCD_ENDPOINTS": "w"}, nil, nil, "w"},
		{"command line wins", map[string]string{"WEFTD_ETCD_ENDPOINTS": "w"}, nil, map[string]bool{"etcd-endpoints": true}, "flag-default"},
		{"file only", nil, map[string]string{"WEFTD_ETCD_ENDPOINTS": "file"}, nil, "file"},
		{"flannel name in the file", nil, map[string]string{"FLANNELD_ETCD_ENDPOINTS": "ffile"}, nil, "ffile"},
		{"environment wins over the file", map[string]string{"WEFTD_ETCD_ENDPOINTS": "w"}, map[string]string{"WEFTD_ETCD_ENDPOINTS": "file"}, nil, "w"},
		{"any environment name wins over the file", map[string]string{"FLANNELD_ETCD_ENDPOINTS": "f"}, map[string]string{"WEFTD_ETCD_ENDPOINTS": "file"}, nil, "f"},
		{"command line wins over the file", nil, map[string]string{"WEFTD_ETCD_ENDPOINTS": "file"}, map[string]bool{"etcd-endpoints": true}, "flag-default"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			f := etcd.BindFlags(fs)
			args := []string{}
			if tc.given["etcd-endpoints"] {
				args = append(args, "--etcd-endpoints=flag-default")
			} else {
				fs.Lookup("etcd-endpoints").DefValue = "flag-default"
				fs.Lookup("etcd-endpoints").Value.Set("flag-default")
			}
			if err := fs.Parse(args); err != nil {
				t.Fatal(err)
			}
			e := &env{getenv: func(k string) string { return tc.env[k] }}
			if tc.file != nil {
				e.file = &envFile{vars: tc.file}
			}
			o, _, err := f.Resolve(func(name string) string { return e.setting(envName("", name)) })
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(o.Endpoints, ","); got != tc.want {
				t.Fatalf("endpoints = %q, want %q", got, tc.want)
			}
		})
	}
	if got := envName("WEFTD_", "etcd-cafile"); got != "WEFTD_ETCD_CAFILE" {
		t.Fatalf("envName = %q", got)
	}
}

func TestFlagsBeforeAndAfterCommand(t *testing.T) {
	h, cli, reg := withEtcd(t)
	seedLeases(t, cli, reg)
	h.env = map[string]string{"WEFTD_ETCD_ENDPOINTS": "http://127.0.0.1:1"} // wrong: flags must win
	if out := h.runOK("--etcd-endpoints", h.endpoints, "leases", "-o", "json"); !strings.Contains(out, "198.18.7.0/24") {
		t.Fatalf("flag before the command: %s", out)
	}
	if out := h.runOK("-o", "json", "leases", "--etcd-endpoints="+h.endpoints); !strings.Contains(out, `"subnet"`) {
		t.Fatalf("flag after the command: %s", out)
	}
}

func TestVersion(t *testing.T) {
	h := &harness{t: t, env: map[string]string{}}
	if out := h.runOK("version"); out != "weftctl dev\n" {
		t.Fatalf("version = %q", out)
	}
	defer func(v string) { version = v }(version)
	version = "v1.2.3-4-gabcdef0-dirty"
	if out := h.runOK("version"); out != "weftctl v1.2.3-4-gabcdef0-dirty\n" {
		t.Fatalf("version = %q", out)
	}
	h.runFail(2, "version", "extra")
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 42 * time.Second: "42s", 5*time.Minute + 3*time.Second: "5m3s",
		23*time.Hour + 59*time.Minute + 59*time.Second: "23h59m", 24 * time.Hour: "24h0m",
		72*time.Hour + 5*time.Hour: "3d5h", -90 * time.Second: "-1m30s",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestWatchCompactedSince(t *testing.T) {
	h, cli, reg := withEtcd(t)
	ctx := context.Background()
	for range 3 {
		if _, err := cli.Put(ctx, reg.LeaseKey(netip.MustParsePrefix("198.18.7.0/24")), `{"PublicIP":"192.0.2.11"}`); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	r := h.runFail(1, "watch", "--since", "1")
	if !strings.Contains(r.stderr, "compacted") {
		t.Fatalf("watch from a compacted revision: %q", r.stderr)
	}
	h.runFail(2, "watch", "--since", "-3")
}

// TestWatchTimes: etcd keeps no time for a change. Events replayed from
// --since carry their revision and no time; live ones the time weftctl
// received them. The resume point is printed on stderr at the end.
func TestWatchTimes(t *testing.T) {
	for _, format := range []string{"table", "json"} {
		t.Run(format, func(t *testing.T) {
			h, cli, reg := withEtcd(t)
			ctx := context.Background()
			if err := reg.PutConfig(ctx, []byte(netConfig)); err != nil {
				t.Fatal(err)
			}
			old, err := cli.Put(ctx, reg.LeaseKey(netip.MustParsePrefix("198.18.7.0/24")), `{"PublicIP":"192.0.2.11","PublicIPv6":null}`)
			if err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var out, errb syncBuffer
			done := make(chan int, 1)
			go func() {
				done <- run(wctx, []string{"watch", "-o", format, "--since", itoa(old.Header.Revision)},
					&env{getenv: func(k string) string { return h.env[k] }, stdin: strings.NewReader(""), stdout: &out, stderr: &errb})
			}()
			waitFor := func(s string) {
				t.Helper()
				deadline := time.Now().Add(15 * time.Second)
				for !strings.Contains(out.String(), s) && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
				if !strings.Contains(out.String(), s) {
					t.Fatalf("watch did not print %q:\n%s%s", s, out.String(), errb.String())
				}
			}
			waitFor("198.18.7.0/24")
			before := time.Now().UTC().Truncate(time.Second)
			live, err := cli.Put(ctx, reg.LeaseKey(netip.MustParsePrefix("198.18.8.0/24")), `{"PublicIP":"192.0.2.12","PublicIPv6":null}`)
			if err != nil {
				t.Fatal(err)
			}
			waitFor("198.18.8.0/24")
			cancel()
			if code := <-done; code != 0 {
				t.Fatalf("watch exit %d: %s", code, errb.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if format == "table" {
				if len(lines) != 3 || !strings.HasPrefix(lines[0], "REV ") {
					t.Fatalf("want a header and two events:\n%s", out.String())
				}
				replayed, now := strings.Fields(lines[1]), strings.Fields(lines[2])
				if replayed[0] != itoa(old.Header.Revision) || replayed[1] != "-" {
					t.Errorf("replayed event: want revision %d and no time: %q", old.Header.Revision, lines[1])
				}
				seen, err := time.Parse(time.RFC3339, now[1])
				if now[0] != itoa(live.Header.Revision) || err != nil || seen.Before(before) || seen.After(time.Now()) {
					t.Errorf("live event: want revision %d and the time it arrived: %q", live.Header.Revision, lines[2])
				}
			} else {
				var replayed, now map[string]any
				if len(lines) != 2 || json.Unmarshal([]byte(lines[0]), &replayed) != nil || json.Unmarshal([]byte(lines[1]), &now) != nil {
					t.Fatalf("want two JSON events:\n%s", out.String())
				}
				if replayed["revision"] != float64(old.Header.Revision) || replayed["replayed"] != true || replayed["seen"] != nil || replayed["time"] != nil {
					t.Errorf("replayed event: want its revision, replayed and no time: %s", lines[0])
				}
				seen, err := time.Parse(time.RFC3339, fmt.Sprint(now["seen"]))
				if now["revision"] != float64(live.Header.Revision) || now["replayed"] != nil || err != nil || seen.Before(before) {
					t.Errorf("live event: want its revision and the time it arrived: %s", lines[1])
				}
			}
			if want := fmt.Sprintf("resume with --since %d", live.Header.Revision+1); !strings.Contains(errb.String(), want) {
				t.Errorf("stderr %q lacks %q", errb.String(), want)
			}
		})
	}
}

// TestLeasesWithoutConfig: a prefix without a network config is no empty
// network. leases says so and exits 1, after listing what keys there are.
func TestLeasesWithoutConfig(t *testing.T) {
	h, cli, reg := withEtcd(t)
	seedLeases(t, cli, reg)
	for _, args := range [][]string{{"--etcd-prefix=/wrong", "leases"}, {"leases", "--etcd-prefix", "/wrong", "-o", "json"}} {
		r := h.runFail(1, args...)
		if r.stdout != "" {
			t.Errorf("weftctl %s printed a listing for an empty prefix:\n%s", strings.Join(args, " "), r.stdout)
		}
		for _, want := range []string{"no network config in etcd under prefix /wrong", "/wrong/config is absent", "check --etcd-prefix"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("weftctl %s: stderr %q lacks %q", strings.Join(args, " "), r.stderr, want)
			}
		}
	}
	// Leases without a config (deleted, say) are still listed.
	if _, err := cli.Delete(context.Background(), reg.ConfigKey()); err != nil {
		t.Fatal(err)
	}
	r := h.runFail(1, "leases")
	if !strings.Contains(r.stdout, "198.18.7.0/24") || !strings.Contains(r.stderr, "no network config") {
		t.Fatalf("leases without a config: stdout %q, stderr %q", r.stdout, r.stderr)
	}
}

// A dual-stack lease shows both subnets and both public addresses; a plain
// lease beside it shows dashes for the IPv6 columns.
func TestLeasesDualStack(t *testing.T) {
	h, cli, reg := withEtcd(t)
	ctx := context.Background()
	if err := reg.PutConfig(ctx, []byte(`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"vxlan"}}`)); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"198.18.7.0-24&2001:db8:100:7::-64": `{"PublicIP":"192.0.2.11","PublicIPv6":"2001:db8::11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}}`,
		"198.18.8.0-24":                     `{"PublicIP":"192.0.2.12","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:48"}}`,
	} {
		if _, err := cli.Put(ctx, "/coreos.com/network/subnets/"+k, v); err != nil {
			t.Fatal(err)
		}
	}
	out := h.runOK("leases")
	for _, re := range []string{
		`(?m)^SUBNET +IPV6 SUBNET +PUBLIC IP +PUBLIC IPV6 +BACKEND`,
		`(?m)^198\.18\.7\.0/24 +2001:db8:100:7::/64 +192\.0\.2\.11 +2001:db8::11 +vxlan +c6:d2:32:6f:8f:44 `,
		`(?m)^198\.18\.8\.0/24 +- +192\.0\.2\.12 +- +vxlan +c6:d2:32:6f:8f:48 `,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Fatalf("no line matching %s:\n%s", re, out)
		}
	}
	var parsed []map[string]any
	if err := json.Unmarshal([]byte(h.runOK("leases", "-o", "json")), &parsed); err != nil || len(parsed) != 2 {
		t.Fatalf("-o json: %v %v", parsed, err)
	}
	if parsed[0]["ipv6Subnet"] != "2001:db8:100:7::/64" || parsed[0]["publicIPv6"] != "2001:db8::11" || parsed[1]["ipv6Subnet"] != nil {
		t.Fatalf("-o json: %v", parsed)
	}
}

// TestLeasesWireGuardPublicKey: wireguard leases show each host's public
// key, in the table (a column that appears only then) and in JSON.
func TestLeasesWireGuardPublicKey(t *testing.T) {
	h, cli, reg := withEtcd(t)
	ctx := context.Background()
	if err := reg.PutConfig(ctx, []byte(`{"Network":"198.18.0.0/16","Backend":{"Type":"wireguard"}}`)); err != nil {
		t.Fatal(err)
	}
	const key = "Vg4JSEHOW8K4inFcHh7lo+NQE3H5adIhDJtc+BfNalk="
	for k, v := range map[string]string{
		"198.18.7.0-24": `{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"` + key + `","Port":51820}}`,
		"198.18.8.0-24": `{"PublicIP":"192.0.2.12","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"bad","Port":51820}}`,
	} {
		if _, err := cli.Put(ctx, "/coreos.com/network/subnets/"+k, v); err != nil {
			t.Fatal(err)
		}
	}
	out := h.runOK("leases")
	if !strings.Contains(out, "PUBLIC KEY") || !regexp.MustCompile(`198\.18\.7\.0/24\s+192\.0\.2\.11\s+wireguard\s+-\s+\S+\s+\S+\s+`+regexp.QuoteMeta(key)).MatchString(out) ||
		!regexp.MustCompile(`198\.18\.8\.0/24\s+192\.0\.2\.12\s+wireguard\s+-\s+\S+\s+\S+\s+-`).MatchString(out) {
		t.Fatalf("public keys not listed:\n%s", out)
	}
	out = h.runOK("leases", "-o", "json")
	if !strings.Contains(out, `"publicKey": "`+key+`"`) {
		t.Fatalf("-o json lacks publicKey:\n%s", out)
	}
}
