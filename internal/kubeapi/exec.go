package kubeapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"time"
)

// Exec credential plugin API versions.
const (
	execV1      = "client.authentication.k8s.io/v1"
	execV1beta1 = "client.authentication.k8s.io/v1beta1"
)

// execTimeout bounds one run of a credential plugin.
const execTimeout = time.Minute

// execPlugin runs a kubeconfig's exec credential plugin and keeps its
// credential until it expires or the API server refuses it.
type execPlugin struct {
	cfg     *ExecConfig
	cluster *Config

	mu      sync.Mutex
	cred    *execCredential
	expires time.Time // zero: until refused
}

// execCredential is what a plugin gives: a token, or a client
// certificate, or both.
type execCredential struct {
	Token string
	Cert  *tls.Certificate
}

// get returns the cached credential, or runs the plugin for a new one.
func (p *execPlugin) get(ctx context.Context) (*execCredential, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cred != nil && (p.expires.IsZero() || time.Now().Before(p.expires)) {
		return p.cred, nil
	}
	cred, exp, err := p.run(ctx)
	if err != nil {
		return nil, err
	}
	p.cred, p.expires = cred, exp
	return cred, nil
}

// cert returns the plugin's client certificate, running the plugin if it
// has not run; nil when it gives none.
func (p *execPlugin) cert() *tls.Certificate {
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	c, err := p.get(ctx)
	if err != nil {
		return nil
	}
	return c.Cert
}

// forget drops the credential: the API server refused it.
func (p *execPlugin) forget() {
	p.mu.Lock()
	p.cred = nil
	p.mu.Unlock()
}

// run runs the plugin once.
func (p *execPlugin) run(ctx context.Context) (*execCredential, time.Time, error) {
	info := map[string]any{"apiVersion": p.cfg.APIVersion, "kind": "ExecCredential",
		"spec": map[string]any{"interactive": false}}
	if p.cfg.ProvideClusterInfo {
		cl := map[string]any{"server": p.cluster.Host, "tls-server-name": p.cluster.ServerName,
			"insecure-skip-tls-verify": p.cluster.Insecure, "proxy-url": p.cluster.ProxyURL}
		ca := p.cluster.CAData
		if p.cluster.CAFile != "" {
			if b, err := os.ReadFile(p.cluster.CAFile); err == nil {
				ca = b
			}
		}
		if len(ca) > 0 {
			cl["certificate-authority-data"] = ca // base64 in JSON, as the plugin expects
		}
		info["spec"].(map[string]any)["cluster"] = cl
	}
	infoJSON, _ := json.Marshal(info) // strings, bools and bytes only

	ctx, cancel := context.WithTimeout(ctx, execTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.cfg.Command, p.cfg.Args...)
	cmd.Env = append(os.Environ(), "KUBERNETES_EXEC_INFO="+string(infoJSON))
	for _, e := range p.cfg.Env {
		cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &limitedBuffer{b: &stdout}, &limitedBuffer{b: &stderr}
	if err := cmd.Run(); err != nil {
		var ee *exec.Error
		if errors.As(err, &ee) && p.cfg.InstallHint != "" {
			return nil, time.Time{}, fmt.Errorf("exec credential plugin %s: %w (%s)", p.cfg.Command, err, printable(p.cfg.InstallHint, 300))
		}
		return nil, time.Time{}, fmt.Errorf("exec credential plugin %s: %w: %s", p.cfg.Command, err, printable(stderr.String(), 300))
	}
	return parseExecCredential(stdout.Bytes(), p.cfg.APIVersion)
}

// parseExecCredential reads a plugin's output: an ExecCredential of the
// API version asked for, with a token or a client certificate and key.
func parseExecCredential(out []byte, apiVersion string) (*execCredential, time.Time, error) {
	var ec struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Status     *struct {
			Token                 string `json:"token"`
			ClientCertificateData string `json:"clientCertificateData"`
			ClientKeyData         string `json:"clientKeyData"`
			ExpirationTimestamp   string `json:"expirationTimestamp"`
		} `json:"status"`
	}
	if err := json.Unmarshal(out, &ec); err != nil {
		return nil, time.Time{}, fmt.Errorf("exec credential plugin: output is not an ExecCredential: %w", err)
	}
	switch {
	case ec.Kind != "ExecCredential":
		return nil, time.Time{}, fmt.Errorf("exec credential plugin: output kind %q, want ExecCredential", printable(ec.Kind, 40))
	case ec.APIVersion != apiVersion:
		return nil, time.Time{}, fmt.Errorf("exec credential plugin: output apiVersion %q, want %s", printable(ec.APIVersion, 60), apiVersion)
	case ec.Status == nil:
		return nil, time.Time{}, errors.New("exec credential plugin: output has no status")
	}
	st := ec.Status
	cred := &execCredential{Token: st.Token}
	if st.ClientCertificateData != "" || st.ClientKeyData != "" {
		c, err := tls.X509KeyPair([]byte(st.ClientCertificateData), []byte(st.ClientKeyData))
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("exec credential plugin: client certificate: %w", err)
		}
		cred.Cert = &c
	}
	if cred.Token == "" && cred.Cert == nil {
		return nil, time.Time{}, errors.New("exec credential plugin: status has neither a token nor a client certificate")
	}
	var exp time.Time
	if st.ExpirationTimestamp != "" {
		t, err := time.Parse(time.RFC3339, st.ExpirationTimestamp)
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("exec credential plugin: expirationTimestamp: %w", err)
		}
		exp = t
	}
	return cred, exp, nil
}

// limitedBuffer keeps the first 1 MiB written to it and drops the rest.
type limitedBuffer struct{ b *bytes.Buffer }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 1<<20 - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
