package kubeapi

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseKubeconfig(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	const head = `apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: https://192.0.2.1:6443/
    certificate-authority: ca.crt
- name: other
  cluster:
    server: https://198.51.100.1:6443
    certificate-authority-data: ` + "Q0E=" + `
    insecure-skip-tls-verify: true
    tls-server-name: api.example
    proxy-url: http://203.0.113.9:3128
`
	cases := []struct {
		name    string
		yaml    string
		check   func(t *testing.T, c *Config)
		wantErr string
	}{
		{"token user, current context, relative CA", head + `
users:
- name: weft
  user:
    token: abc
contexts:
- name: a
  context: {cluster: lab, user: weft}
- name: b
  context: {cluster: other, user: weft}
current-context: a
`, func(t *testing.T, c *Config) {
			if c.Host != "https://192.0.2.1:6443" || c.CAFile != "/etc/kc/ca.crt" || c.BearerToken != "abc" || c.Insecure {
				t.Errorf("config %+v", c)
			}
		}, ""},
		{"second context: data, insecure, server name, proxy; certs and impersonation", head + `
users:
- name: admin
  user:
    client-certificate-data: ` + b64("CERT") + `
    client-key-data: ` + b64("KEY") + `
    as: someone
    as-groups: [g1, g2]
contexts:
- name: b
  context: {cluster: other, user: admin}
current-context: b
`, func(t *testing.T, c *Config) {
			if c.Host != "https://198.51.100.1:6443" || string(c.CAData) != "CA" || !c.Insecure || c.ServerName != "api.example" ||
				c.ProxyURL != "http://203.0.113.9:3128" || string(c.CertData) != "CERT" || string(c.KeyData) != "KEY" ||
				c.Impersonate != "someone" || strings.Join(c.ImpersonateGroups, ",") != "g1,g2" {
				t.Errorf("config %+v", c)
			}
		}, ""},
		{"one context and no current-context: that one", head + `
users:
- name: u
  user:
    tokenFile: /run/token
    username: x
    password: y
contexts:
- name: only
  context: {cluster: lab, user: u}
`, func(t *testing.T, c *Config) {
			if c.TokenFile != "/run/token" || c.Username != "x" || c.Password != "y" {
				t.Errorf("config %+v", c)
			}
		}, ""},
		{"cert files relative to the kubeconfig", head + `
users:
- name: u
  user:
    client-certificate: pki/c.crt
    client-key: /abs/c.key
contexts:
- name: only
  context: {cluster: lab, user: u}
`, func(t *testing.T, c *Config) {
			if c.CertFile != "/etc/kc/pki/c.crt" || c.KeyFile != "/abs/c.key" {
				t.Errorf("config %+v", c)
			}
		}, ""},
		{"exec plugin", head + `
users:
- name: u
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: ./bin/cred
      args: [--x]
      env: [{name: A, value: B}]
      interactiveMode: Never
      provideClusterInfo: true
contexts:
- name: only
  context: {cluster: lab, user: u}
`, func(t *testing.T, c *Config) {
			x := c.Exec
			if x == nil || x.Command != "/etc/kc/bin/cred" || strings.Join(x.Args, " ") != "--x" || len(x.Env) != 1 || x.Env[0] != (ExecEnvVar{"A", "B"}) || !x.ProvideClusterInfo {
				t.Errorf("exec %+v", x)
			}
		}, ""},
		{"no user: no credentials", head + `
contexts:
- name: only
  context: {cluster: lab}
`, func(t *testing.T, c *Config) {
			if c.BearerToken != "" || c.Exec != nil || c.Host == "" {
				t.Errorf("config %+v", c)
			}
		}, ""},
		{"two contexts, none current", head + `
contexts:
- name: a
  context: {cluster: lab}
- name: b
  context: {cluster: lab}
`, nil, "no current-context, and 2 contexts"},
		{"current context missing", head + "current-context: gone\n", nil, `context "gone" not found`},
		{"cluster missing", "contexts:\n- name: a\n  context: {cluster: nope}\ncurrent-context: a\n", nil, `cluster "nope" not found`},
		{"user missing", head + "contexts:\n- name: a\n  context: {cluster: lab, user: ghost}\ncurrent-context: a\n", nil, `user "ghost" not found`},
		{"cluster without server", "clusters:\n- name: c\n  cluster: {}\ncontexts:\n- name: a\n  context: {cluster: c}\n", nil, "has no server"},
		{"bad base64", "clusters:\n- name: c\n  cluster: {server: 'https://192.0.2.1', certificate-authority-data: '!!!'}\ncontexts:\n- name: a\n  context: {cluster: c}\n", nil, "certificate-authority-data: not base64"},
		{"auth-provider", head + "users:\n- name: u\n  user:\n    auth-provider: {name: gcp}\ncontexts:\n- name: a\n  context: {cluster: lab, user: u}\n", nil, `auth-provider "gcp" is not supported`},
		{"exec wanting a terminal", head + "users:\n- name: u\n  user:\n    exec: {apiVersion: client.authentication.k8s.io/v1, command: x, interactiveMode: Always}\ncontexts:\n- name: a\n  context: {cluster: lab, user: u}\n", nil, "interactiveMode Always"},
		{"exec of an unknown API version", head + "users:\n- name: u\n  user:\n    exec: {apiVersion: client.authentication.k8s.io/v1alpha1, command: x}\ncontexts:\n- name: a\n  context: {cluster: lab, user: u}\n", nil, "exec apiVersion"},
		{"certificate without key", head + "users:\n- name: u\n  user:\n    client-certificate: c.crt\ncontexts:\n- name: a\n  context: {cluster: lab, user: u}\n", nil, "needs both the certificate and the key"},
		{"not YAML", "\t{{{", nil, "not a kubeconfig"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseKubeconfig([]byte(tc.yaml), "/etc/kc")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, []byte("clusters:\n- name: c\n  cluster: {server: 'https://192.0.2.1:6443'}\ncontexts:\n- name: a\n  context: {cluster: c}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(kc, "https://192.0.2.2:443")
	if err != nil || c.Host != "https://192.0.2.2:443" {
		t.Fatalf("--kube-api-url over a kubeconfig: %+v, %v", c, err)
	}
	if _, err := LoadConfig(filepath.Join(dir, "missing"), ""); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing kubeconfig: %v", err)
	}
	if _, err := LoadConfig(kc, "192.0.2.2:443"); err == nil || !strings.Contains(err.Error(), "want https://host") {
		t.Errorf("an address without a scheme: %v", err)
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		if c, err := LoadConfig("", "http://192.0.2.3:8080"); err != nil || c.Host != "http://192.0.2.3:8080" || c.BearerToken != "" {
			t.Errorf("--kube-api-url alone: %+v, %v", c, err)
		}
		if _, err := LoadConfig("", ""); !errors.Is(err, ErrNotInCluster) {
			t.Errorf("nothing given outside a pod: %v", err)
		}
	}
}

func TestInClusterConfig(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"KUBERNETES_SERVICE_HOST": "2001:db8::1", "KUBERNETES_SERVICE_PORT": "443"}
	if _, err := InClusterConfig(func(k string) string { return env[k] }, dir); err == nil || !strings.Contains(err.Error(), "token") {
		t.Errorf("no token file: %v", err)
	}
	for _, f := range []string{"token", "ca.crt"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c, err := InClusterConfig(func(k string) string { return env[k] }, dir)
	if err != nil || c.Host != "https://[2001:db8::1]:443" || c.TokenFile != filepath.Join(dir, "token") || c.CAFile != filepath.Join(dir, "ca.crt") {
		t.Errorf("in cluster: %+v, %v", c, err)
	}
	if _, err := InClusterConfig(func(string) string { return "" }, dir); !errors.Is(err, ErrNotInCluster) {
		t.Errorf("no service env: %v", err)
	}
}
