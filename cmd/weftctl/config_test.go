package main

import (
	"strings"
	"testing"
)

// TestConfigSetBackendOptions: config set runs the backend's own option
// parser and refuses what weftd would refuse at start on every host, so
// nothing reaches etcd.
func TestConfigSetBackendOptions(t *testing.T) {
	h, cli, _ := withEtcd(t)
	for _, tc := range []struct {
		name, backend string
		want          []string // in the error; nil means accepted
	}{
		{"vxlan VNI too large", `{"Type":"vxlan","VNI":16777216}`, []string{"Backend", "VNI", "16777216"}},
		{"vxlan VNI a string", `{"Type":"vxlan","VNI":"1"}`, []string{"Backend", "VNI"}},
		{"vxlan port out of range", `{"Type":"vxlan","Port":65536}`, []string{"Backend", "Port", "65536"}},
		{"vxlan port negative", `{"Type":"vxlan","Port":-1}`, []string{"Backend", "Port"}},
		{"udp port out of range", `{"Type":"udp","Port":70000}`, []string{"Backend", "Port", "70000"}},
		{"udp port zero", `{"Type":"udp","Port":0}`, []string{"Backend", "Port"}},
		{"unknown backend type", `{"Type":"vxlam"}`, []string{"Backend.Type", `"vxlam"`, "host-gw, udp, vxlan"}},
		{"vxlan VNI and port at their limits", `{"Type":"vxlan","VNI":16777215,"Port":65535}`, nil},
		{"host-gw", `{"Type":"host-gw"}`, nil},
		{"udp port", `{"Type":"UDP","Port":8285}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &harness{t: t, env: h.env}
			// Start from no config, so a refused one is seen not to be written.
			if _, err := cli.Delete(t.Context(), "/coreos.com/network/config"); err != nil {
				t.Fatal(err)
			}
			h.stdin = `{"Network":"198.18.0.0/16","Backend":` + tc.backend + `}`
			if tc.want == nil {
				h.runOK("config", "set", "-")
				if out := h.runOK("config", "get"); !strings.Contains(out, "198.18.0.0/16") {
					t.Fatalf("config get after set: %q", out)
				}
				return
			}
			r := h.runFail(1, "config", "set", "-")
			if !strings.Contains(r.stderr, "refusing invalid config: config field Backend") {
				t.Fatalf("stderr %q does not name the config field", r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q lacks %q", r.stderr, w)
				}
			}
			if r := h.run(t.Context(), "config", "get"); r.code == 0 {
				t.Fatalf("the refused config was written: %s", r.stdout)
			}
		})
	}
}

// TestConfigSetWarnsUnknownOption: an option the backend ignores is
// written, with the backend's own warning on stderr.
func TestConfigSetWarnsUnknownOption(t *testing.T) {
	h, _, _ := withEtcd(t)
	h.stdin = `{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan","VNl":2}}`
	r := h.run(t.Context(), "config", "set", "-")
	if r.code != 0 || !strings.Contains(r.stderr, "weftctl config set: warning: ") || !strings.Contains(r.stderr, "VNl") {
		t.Fatalf("exit %d, stderr %q; want success and a warning naming VNl", r.code, r.stderr)
	}
}
