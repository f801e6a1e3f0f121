package main

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/apitypes"
)

func TestParseEnvFile(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     map[string]string
		warnings []int // line numbers warned about
	}{
		{"dist example", mustRead(t, "../../dist/weftd.env"), map[string]string{
			"WEFTD_ETCD_ENDPOINTS": "https://192.0.2.1:2379", "WEFTD_IP_MASQ": "true",
			"WEFTD_HEALTHZ_IP": "127.0.0.1", "WEFTD_HEALTHZ_PORT": "8471", "WEFTD_ARGS": "",
		}, nil},
		{"comments and blanks", "# c\n  ; c\n\n\tA=1\n", map[string]string{"A": "1"}, nil},
		{"whitespace", "  A =  x y  \n", map[string]string{"A": "x y"}, nil},
		{"nothing is expanded or run", "A=$(touch /tmp/pwned)\nB=${HOME}\nC=`id`\nD=$HOME;rm\n",
			map[string]string{"A": "$(touch /tmp/pwned)", "B": "${HOME}", "C": "`id`", "D": "$HOME;rm"}, nil},
		{"double quotes", `A="a b \"c\" \\ \$x \n"` + "\n", map[string]string{"A": `a b "c" \ $x \n`}, nil},
		{"single quotes", `A='a "b" \n $x'` + "\n", map[string]string{"A": `a "b" \n $x`}, nil},
		{"quoted parts are joined", `A="a"'b'` + "\n", map[string]string{"A": "ab"}, nil},
		{"a quote inside a plain value is literal", "A=it's\"\n", map[string]string{"A": `it's"`}, nil},
		{"backslash in a plain value", `A=a\ b\\c\#` + "\n", map[string]string{"A": `a b\c#`}, nil},
		// systemd keeps the blanks on both sides of a continuation.
		{"continuation", "A=one \\\n two\nB=2\n", map[string]string{"A": "one  two", "B": "2"}, nil},
		{"quoted newline", "A=\"x\ny\"\nB=2\n", map[string]string{"A": "x\ny", "B": "2"}, nil},
		{"later wins", "A=1\nA=2\n", map[string]string{"A": "2"}, nil},
		{"no newline at the end", "A=1", map[string]string{"A": "1"}, nil},
		{"CRLF", "A=1\r\nB=2\r\n", map[string]string{"A": "1", "B": "2"}, nil},
		{"empty value", "A=\n", map[string]string{"A": ""}, nil},
		{"bad lines are skipped with their number", "A=1\nexport B=2\njunk\n1X=3\nC=4\n",
			map[string]string{"A": "1", "C": "4"}, []int{2, 3, 4}},
		{"a bad line after a continuation keeps its number", "A=1\\\n2\nbad\n", map[string]string{"A": "12"}, []int{3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var warned []int
			got := parseEnvFile([]byte(tc.in), func(line int, why string) { warned = append(warned, line) })
			if !maps.Equal(got, tc.want) {
				t.Errorf("parse = %q, want %q", got, tc.want)
			}
			if !equalInts(warned, tc.warnings) {
				t.Errorf("warned about lines %v, want %v", warned, tc.warnings)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// FuzzParseEnvFile checks that any input parses without panicking into
// valid names only, and that any value written double-quoted, escaped as
// systemd wants, reads back unchanged.
func FuzzParseEnvFile(f *testing.F) {
	f.Add([]byte("A=1\n# c\nB=\"x\\\"y\"\n"), "v a\"l$`\\ue\n")
	f.Add([]byte("A='\nB=\\"), "")
	f.Fuzz(func(t *testing.T, data []byte, value string) {
		for k := range parseEnvFile(data, func(int, string) {}) {
			if !validEnvName(k) {
				t.Fatalf("invalid name %q parsed from %q", k, data)
			}
		}
		var b strings.Builder
		b.WriteString("KEY=\"")
		for _, c := range []byte(value) {
			if strings.IndexByte("\"\\$`", c) >= 0 {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
		}
		b.WriteString("\"\nNEXT=1\n")
		got := parseEnvFile([]byte(b.String()), func(line int, why string) { t.Fatalf("warning %d: %s", line, why) })
		if got["KEY"] != value || got["NEXT"] != "1" {
			t.Fatalf("round trip of %q through %q: %q", value, b.String(), got)
		}
	})
}

func writeEnvFile(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "weftd.env")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestEnvFile runs weftctl against etcd with the endpoints only in weftd's
// environment file: read by default when it exists, named by --env-file,
// overridden by the environment and the flags, skipped with --env-file=.
func TestEnvFile(t *testing.T) {
	h, cli, reg := withEtcd(t)
	seedLeases(t, cli, reg)
	endpoints := h.env["WEFTD_ETCD_ENDPOINTS"]
	h.env = map[string]string{}
	good := writeEnvFile(t, "# weftd.env\nWEFTD_ETCD_ENDPOINTS="+endpoints+"\nWEFTD_ETCD_PREFIX=/coreos.com/network\n", 0o600)
	wrongPrefix := writeEnvFile(t, "WEFTD_ETCD_ENDPOINTS="+endpoints+"\nWEFTD_ETCD_PREFIX=/elsewhere\n", 0o600)

	// The default file, when it exists.
	h.envFile = good
	if out := h.runOK("leases"); !strings.Contains(out, "198.18.7.0/24") {
		t.Fatalf("leases with the endpoints in the default env file:\n%s", out)
	}
	// --env-file names another; it wins over the default one.
	if out := h.runOK("--env-file", wrongPrefix, "config", "get", "--etcd-prefix=/coreos.com/network"); !strings.Contains(out, "198.18.0.0/16") {
		t.Fatalf("a flag must win over the env file: %s", out)
	}
	r := h.runFail(1, "config", "get", "--env-file", wrongPrefix)
	if !strings.Contains(r.stderr, "/elsewhere/config") {
		t.Fatalf("--env-file after the command was not read: %q", r.stderr)
	}
	// The environment wins over the file.
	h.env["WEFTD_ETCD_PREFIX"] = "/elsewhere"
	r = h.runFail(1, "config", "get")
	if !strings.Contains(r.stderr, "/elsewhere/config") {
		t.Fatalf("the environment must win over the env file: %q", r.stderr)
	}
	delete(h.env, "WEFTD_ETCD_PREFIX")

	// A missing default file is no error; a missing --env-file is.
	h.envFile = filepath.Join(t.TempDir(), "absent.env")
	h.runOK("--etcd-endpoints", endpoints, "leases")
	r = h.runFail(1, "--env-file", h.envFile, "--etcd-endpoints", endpoints, "leases")
	if !strings.Contains(r.stderr, "absent.env") {
		t.Fatalf("missing --env-file: %q", r.stderr)
	}
	// --env-file= reads none, not even the default.
	h.envFile = wrongPrefix
	if out := h.runOK("--env-file=", "--etcd-endpoints", endpoints, "leases"); !strings.Contains(out, "198.18.7.0/24") {
		t.Fatalf("--env-file= still read the default file:\n%s", out)
	}
}

func TestEnvFilePermissions(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(apitypes.Status{Ready: true, Lease: "198.18.7.0/24", MTU: 1450})
	}))
	defer srv.Close()
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	withPassword := "WEFTD_HEALTHZ_PORT=" + port + "\nWEFTD_ETCD_PASSWORD=s3cret\n"
	for _, tc := range []struct {
		name    string
		content string
		mode    os.FileMode
		warning string
	}{
		{"password, root only", withPassword, 0o600, ""},
		{"password, others read", withPassword, 0o644, "holds WEFTD_ETCD_PASSWORD and is readable by other users (mode 0644): chmod 600"},
		{"password, group reads", withPassword, 0o640, "readable by other users (mode 0640)"},
		{"flannel's password name", "WEFTD_HEALTHZ_PORT=" + port + "\nFLANNELD_ETCD_PASSWORD=s3cret\n", 0o644, "holds FLANNELD_ETCD_PASSWORD"},
		{"no password, others read", "WEFTD_HEALTHZ_PORT=" + port + "\n", 0o644, ""},
		{"empty password, others read", "WEFTD_HEALTHZ_PORT=" + port + "\nWEFTD_ETCD_PASSWORD=\n", 0o644, ""},
		{"others write", "WEFTD_HEALTHZ_PORT=" + port + "\n", 0o666, "writable by other users (mode 0666)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeEnvFile(t, tc.content, tc.mode)
			h := &harness{t: t, env: map[string]string{}, envFile: path}
			// The file is still used: status finds weftd through its port.
			r := h.run(context.Background(), "status")
			if r.code != 0 || !strings.Contains(r.stdout, "198.18.7.0/24") {
				t.Fatalf("status through the env file: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			if tc.warning == "" && r.stderr != "" {
				t.Fatalf("unexpected warning: %q", r.stderr)
			}
			if tc.warning != "" && !strings.Contains(r.stderr, tc.warning) {
				t.Fatalf("stderr %q lacks %q", r.stderr, tc.warning)
			}
			if strings.Contains(r.stderr, "s3cret") {
				t.Fatalf("the warning shows the password: %q", r.stderr)
			}
		})
	}
}

func TestEnvFileBadLine(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(apitypes.Status{Ready: true})
	}))
	defer srv.Close()
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	path := writeEnvFile(t, "export WEFTD_IFACE=eth0\nWEFTD_HEALTHZ_PORT="+port+"\n", 0o600)
	h := &harness{t: t, env: map[string]string{}, envFile: path}
	r := h.run(context.Background(), "status")
	if r.code != 0 || !strings.Contains(r.stderr, path+":1: ") || !strings.Contains(r.stderr, "ignored") {
		t.Fatalf("a line systemd ignores: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestStatusAddrFromSettings(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{nil, defaultAddr},
		{map[string]string{"WEFTD_HEALTHZ_PORT": "9000"}, "127.0.0.1:9000"},
		{map[string]string{"FLANNELD_HEALTHZ_PORT": "9001"}, "127.0.0.1:9001"},
		{map[string]string{"WEFTD_HEALTHZ_PORT": "0"}, defaultAddr},
		{map[string]string{"WEFTD_HEALTHZ_PORT": "9000", "WEFTD_HEALTHZ_IP": "0.0.0.0"}, "127.0.0.1:9000"},
		{map[string]string{"WEFTD_HEALTHZ_PORT": "9000", "WEFTD_HEALTHZ_IP": "192.0.2.11"}, "192.0.2.11:9000"},
		{map[string]string{"WEFTD_HEALTHZ_PORT": "9000", "WEFTD_HEALTHZ_IP": "::1"}, "[::1]:9000"},
	} {
		e := &env{getenv: func(k string) string { return tc.env[k] }}
		if got := weftdAddr(e); got != tc.want {
			t.Errorf("weftdAddr(%v) = %q, want %q", tc.env, got, tc.want)
		}
	}
}
