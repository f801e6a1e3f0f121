package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/apitypes"
	"github.com/weftnet/weft/subnet/etcd"
)

// hostileKVs are keys and values anyone with write access to etcd can
// store: escape sequences that clear the screen or set the window title,
// a newline that forges a table row, a bidi override, an 8-bit CSI (C1),
// DEL, bytes that are not UTF-8.
var hostileKVs = []struct{ suffix, value string }{
	{"\x1b[2J\x1b[31mpwned", `{}`},
	{"198.18.1.0-24\n198.18.2.0/24    192.0.2.99  vxlan", `{"PublicIP":"192.0.2.99"}`},
	{"198.18.3.0-24\u202e42-0.3.81.891", `{}`},
	{"\u009b2J\x7f\xff\xfe", "\x1b]0;owned\x07"},
	{"tab\there", `{"PublicIP":"192.0.2.98"}`},
}

// hostileLeases are valid keys whose values carry hostile strings in the
// one free-form field a lease has, BackendType.
var hostileLeases = []struct{ subnet, value string }{
	{"198.18.20.0/24", `{"PublicIP":"192.0.2.20","PublicIPv6":null,"BackendType":"host-gw\u001b[2J"}`},
	{"198.18.21.0/24", `{"PublicIP":"192.0.2.21","PublicIPv6":null,"BackendType":"vx\u009blan\u007f\u202e"}`},
	{"198.18.22.0/24", `{"PublicIP":"192.0.2.22","PublicIPv6":null,"BackendType":"two\nlines"}`},
}

func seedHostile(t *testing.T, cli *clientv3.Client, reg *etcd.Registry) {
	t.Helper()
	ctx := context.Background()
	for _, kv := range hostileKVs {
		if _, err := cli.Put(ctx, "/coreos.com/network/subnets/"+kv.suffix, kv.value); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range hostileLeases {
		if _, err := cli.Put(ctx, reg.LeaseKey(netip.MustParsePrefix(l.subnet)), l.value); err != nil {
			t.Fatal(err)
		}
	}
}

// assertTerminalSafe fails if out holds anything that is not printable
// UTF-8 apart from the newlines (and, if allowed, tabs) weftctl itself
// writes.
func assertTerminalSafe(t *testing.T, what, out string) {
	t.Helper()
	if !utf8.ValidString(out) {
		t.Errorf("%s: output is not valid UTF-8: %q", what, out)
	}
	for i, r := range out {
		if r == '\n' || unicode.IsPrint(r) {
			continue
		}
		t.Errorf("%s: raw %U at byte %d reaches the terminal:\n%q", what, r, i, out)
		return
	}
}

// TestHostileKeysEscaped: what etcd holds cannot reach the terminal raw
// through leases, watch or config get, in table or JSON form, and a key
// cannot forge a row.
func TestHostileKeysEscaped(t *testing.T) {
	h, cli, reg := withEtcd(t)
	if err := reg.PutConfig(context.Background(), []byte(netConfig)); err != nil {
		t.Fatal(err)
	}
	rev, err := cli.Get(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	seedHostile(t, cli, reg)

	out := h.runOK("leases")
	assertTerminalSafe(t, "leases", out)
	golden(t, "leases.hostile.table.golden", out)
	// One line per lease (3) and per invalid key (5), plus the header, a
	// blank line and the "invalid key(s)" line.
	if n := strings.Count(out, "\n"); n != 3+5+3 {
		t.Errorf("leases printed %d lines, want 11: a key or value forged a line:\n%s", n, out)
	}
	if strings.Contains(out, "\n198.18.2.0/24") {
		t.Errorf("a key forged a row:\n%s", out)
	}

	out = h.runOK("leases", "-o", "json")
	assertTerminalSafe(t, "leases -o json", out)
	var parsed []struct {
		Key     string
		Backend string
		Value   json.RawMessage
	}
	if err := json.Unmarshal([]byte(out), &parsed); err != nil || len(parsed) != 8 {
		t.Fatalf("leases -o json is not an array of 8: %v\n%s", err, out)
	}
	// The JSON escapes are lossless: the keys decode to what etcd holds
	// (bytes that are not UTF-8 aside, which JSON cannot carry).
	keys := map[string]bool{}
	for _, p := range parsed {
		keys[p.Key] = true
	}
	for _, kv := range hostileKVs[:3] {
		if !keys["/coreos.com/network/subnets/"+kv.suffix] {
			t.Errorf("key %q lost in -o json", kv.suffix)
		}
	}

	// config get of a stored config that is not JSON.
	if _, err := cli.Put(context.Background(), "/coreos.com/network/config", "\x1b[2Jnot json\u009b"); err != nil {
		t.Fatal(err)
	}
	r := h.run(context.Background(), "config", "get")
	assertTerminalSafe(t, "config get", r.stdout)
	assertTerminalSafe(t, "config get (stderr)", r.stderr)
	if _, err := cli.Put(context.Background(), "/coreos.com/network/config", `{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan\u009b\u202e"}}`); err != nil {
		t.Fatal(err)
	}
	r = h.run(context.Background(), "config", "get")
	assertTerminalSafe(t, "config get", r.stdout)
	assertTerminalSafe(t, "config get (stderr)", r.stderr)
	if !strings.Contains(r.stderr, "invalid") {
		t.Errorf("config get of an unknown backend type: no warning: %q", r.stderr)
	}

	for _, format := range []string{"table", "json"} {
		t.Run("watch "+format, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var out, errb syncBuffer
			done := make(chan int, 1)
			go func() {
				done <- run(ctx, []string{"watch", "-o", format, "--since", itoa(rev.Header.Revision + 1)},
					&env{getenv: func(k string) string { return h.env[k] }, stdin: strings.NewReader(""), stdout: &out, stderr: &errb})
			}()
			want := len(hostileKVs) + len(hostileLeases)
			if format == "table" {
				want++ // the header
			}
			deadline := time.Now().Add(15 * time.Second)
			for strings.Count(out.String(), "\n") < want && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			// Let anything extra (a forged line) arrive too.
			time.Sleep(100 * time.Millisecond)
			cancel()
			if code := <-done; code != 0 {
				t.Fatalf("watch exit %d: %s", code, errb.String())
			}
			got := out.String()
			assertTerminalSafe(t, "watch -o "+format, got)
			if n := strings.Count(got, "\n"); n != want {
				t.Errorf("watch printed %d lines for %d events:\n%s", n, want, got)
			}
			if format == "table" {
				golden(t, "watch.hostile.table.golden", tsRE.ReplaceAllString(got, "<time>"))
				return
			}
			for _, line := range strings.Split(strings.TrimSpace(got), "\n") {
				if !json.Valid([]byte(line)) {
					t.Errorf("watch -o json line is not JSON: %q", line)
				}
			}
		})
	}
}

func TestEscapeHelpers(t *testing.T) {
	for _, tc := range []struct{ in, field, text string }{
		{"198.18.7.0/24", "198.18.7.0/24", "198.18.7.0/24"},
		{"", `""`, ""},
		{"a b", `"a b"`, "a b"},
		{"\x1b[2J", `"\x1b[2J"`, `\x1b[2J`},
		{"a\nb\tc", `"a\nb\tc"`, `a\nb\tc`},
		{"\u202e\u009b\x7f", `"\u202e\u009b\x7f"`, `\u202e\u009b\x7f`},
		{"\xff", `"\xff"`, `\xff`},
		{"grüße", "grüße", "grüße"},
	} {
		if got := field(tc.in); got != tc.field {
			t.Errorf("field(%q) = %s, want %s", tc.in, got, tc.field)
		}
		if got := text(tc.in); got != tc.text {
			t.Errorf("text(%q) = %s, want %s", tc.in, got, tc.text)
		}
	}
	if got := textLines("ok\n\tx\x1b"); got != "ok\n\tx\\x1b" {
		t.Errorf("textLines = %q", got)
	}
	// safeJSON is lossless on valid JSON.
	in, _ := json.Marshal(map[string]string{"k\x7f": "\u009b\u202e😀\x1b"})
	out := safeJSON(in)
	var a, b map[string]string
	if json.Unmarshal(in, &a) != nil || json.Unmarshal(out, &b) != nil || a["k\x7f"] != b["k\x7f"] || len(b) != 1 {
		t.Errorf("safeJSON changed the meaning: %s -> %s", in, out)
	}
	assertTerminalSafe(t, "safeJSON", string(out))
	if got := string(safeJSON([]byte("\"\xff\""))); got != `"\ufffd"` {
		t.Errorf("safeJSON of a non-UTF-8 byte: %s", got)
	}
}

// TestStatusHostile: strings weftd reports from etcd data (refused keys,
// reasons, the config error) are escaped in weftctl status's table.
func TestStatusHostile(t *testing.T) {
	st := apitypes.Status{
		Lease: "198.18.7.0/24", Backend: "vxlan", Version: "v0.1.0",
		PeersRefused:   map[string]string{"198.18.9.0/24": "BackendType \"x\x1b[2J\""},
		LeasesRefused:  []apitypes.LeaseRefusal{{Key: "\x1b]0;t\x07\n198.18.2.0-24", Reason: "unparsable", Error: "subnet key \"\u009b\u202e\": bad\nline"}},
		NotReadyReason: "waiting\x1b[A", ConfigError: "config field Backend.Type: unknown backend \"\x1b[2J\"",
		LastError: "bad\tthing\r",
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(st)
	}))
	defer srv.Close()
	h := &harness{t: t, env: map[string]string{}, now: time.Now()}
	// Not ready: exit 3, and the reason on stderr is escaped too.
	r := h.runFail(3, "status", "--addr", strings.TrimPrefix(srv.URL, "http://"))
	out := r.stdout
	assertTerminalSafe(t, "status", out)
	assertTerminalSafe(t, "status stderr", r.stderr)
	if !strings.Contains(out, `"\x1b]0;t\a\n198.18.2.0-24"`) {
		t.Errorf("refused key not shown quoted:\n%s", out)
	}
	if strings.Contains(out, "\n198.18.2.0-24") || strings.Contains(out, "\nline") {
		t.Errorf("a key or error text forged a line:\n%s", out)
	}
}
