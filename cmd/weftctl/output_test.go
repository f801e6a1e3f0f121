package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/apitypes"
	"github.com/weftnet/weft/subnet"
)

// TestJSONOutput runs every command that declares JSON output with -o json
// and checks that it prints JSON; every other command must refuse -o json.
// A command added to the table without a case here fails the test.
func TestJSONOutput(t *testing.T) {
	h, _, reg := withEtcd(t)
	ctx := context.Background()
	if err := reg.PutConfig(ctx, []byte(netConfig)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "net.json")
	os.WriteFile(cfgFile, []byte(netConfig), 0o644)
	envPath := filepath.Join(dir, "subnet.env")
	if err := subnet.WriteEnvFile(envPath, subnet.Env{Network: netip.MustParsePrefix("198.18.0.0/16"),
		Subnet: netip.MustParsePrefix("198.18.7.1/24"), MTU: 1450, IPMasq: true}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(apitypes.Status{Ready: true, Lease: "198.18.7.0/24"})
	}))
	defer srv.Close()

	// Each case: the arguments, and what the JSON must hold.
	cases := map[string][]struct {
		args []string
		want map[string]any
	}{
		"leases": {{[]string{"leases"}, nil}},
		"config": {
			{[]string{"config", "set", cfgFile}, map[string]any{"key": "/coreos.com/network/config", "written": true}},
			{[]string{"config", "get"}, map[string]any{"Network": "198.18.0.0/16"}},
		},
		"reserve": {{[]string{"reserve", "198.18.42.0/24", "--public-ip", "192.0.2.42"},
			map[string]any{"subnet": "198.18.42.0/24", "publicIP": "192.0.2.42", "reserved": true}}},
		"release":     {{[]string{"release", "198.18.42.0/24"}, map[string]any{"subnet": "198.18.42.0/24", "reserved": false}}},
		"status":      {{[]string{"status", "--addr", strings.TrimPrefix(srv.URL, "http://")}, map[string]any{"lease": "198.18.7.0/24"}}},
		"docker-opts": {{[]string{"docker-opts", "--subnet-file", envPath}, map[string]any{"bip": "198.18.7.1/24", "ip-masq": false, "mtu": 1450.0}}},
		"version":     {{[]string{"version"}, map[string]any{"version": "dev"}}},
		// Covered by their own tests: watch streams (TestWatch), doctor
		// needs this host's kernel state.
		"watch":  nil,
		"doctor": nil,
	}
	for _, c := range commands {
		if !c.json {
			t.Run(c.name+"/refused", func(t *testing.T) {
				for _, args := range [][]string{{"-o", "json", c.name}, {c.name, "-o", "json"}} {
					if c.run == nil && args[0] == c.name {
						continue // help ignores what follows
					}
					r := h.runFail(2, args...)
					if !strings.Contains(r.stderr, "-o json: "+c.name+" has no JSON output") || r.stdout != "" {
						t.Fatalf("weftctl %s: stdout %q, stderr %q", strings.Join(args, " "), r.stdout, r.stderr)
					}
				}
			})
			continue
		}
		tcs, ok := cases[c.name]
		if !ok {
			t.Errorf("command %s declares JSON output but has no case in TestJSONOutput", c.name)
			continue
		}
		for _, tc := range tcs {
			t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
				out := h.runOK(append(tc.args, "-o", "json")...)
				var v any
				if err := json.Unmarshal([]byte(out), &v); err != nil {
					t.Fatalf("not JSON: %v\n%s", err, out)
				}
				obj, _ := v.(map[string]any)
				for k, want := range tc.want {
					if obj[k] != want {
						t.Errorf("%s = %v, want %v in\n%s", k, obj[k], want, out)
					}
				}
			})
		}
	}
	// docker-opts: --format is table output only.
	h.runFail(2, "docker-opts", "--subnet-file", envPath, "--format", "args", "-o", "json")
}

// TestConfigGetJSONOfGarbage: a stored config that is not JSON still comes
// out as JSON with -o json (one string), and as escaped text without.
func TestConfigGetJSONOfGarbage(t *testing.T) {
	h, cli, _ := withEtcd(t)
	if _, err := cli.Put(context.Background(), "/coreos.com/network/config", "not json\x1b[2J"); err != nil {
		t.Fatal(err)
	}
	out := h.runOK("config", "get", "-o", "json")
	var s string
	if err := json.Unmarshal([]byte(out), &s); err != nil || s != "not json\x1b[2J" {
		t.Fatalf("config get -o json of a non-JSON config: %v %q", err, out)
	}
	assertTerminalSafe(t, "config get -o json", out)
}
