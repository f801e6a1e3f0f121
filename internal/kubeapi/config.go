// Package kubeapi is weft's own client of the Kubernetes API: the few
// requests that weftd's --kube-subnet-mgr and weftctl make about Nodes and
// Pods, in JSON over HTTPS, with the credentials of a kubeconfig file or
// of the pod's service account.
//
// weftd used client-go before. client-go, its API types and their
// serializers add about 9 MB to weftd's binary, and that code is mapped in
// at start-up whether or not Kubernetes mode is on: 4 to 5 MiB of RSS,
// in etcd mode too (issue 17). This package is about 1,200 lines and
// carries what weft uses of it: kubeconfig loading (tokens, token files,
// client certificates, exec credential plugins, impersonation), the
// in-cluster service account, list with paging, watch with bookmarks, get
// and patch.
//
// Everything the API server sends is decoded into the few fields weft
// reads (types.go); each Node is decoded on its own, so that one Node
// that does not decode is reported by name and costs no other Node.
package kubeapi

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is how to reach an API server and as whom.
type Config struct {
	// Host is the API server's URL, e.g. "https://192.0.2.1:6443".
	Host string

	// CAData is the PEM bundle that the server's certificate must chain
	// to; empty means the system's roots. CAFile, when set, is read by
	// NewClient instead.
	CAData []byte
	CAFile string
	// Insecure skips the verification of the server's certificate.
	Insecure bool
	// ServerName is the name the server's certificate must carry, when it
	// differs from Host's.
	ServerName string

	// The client certificate: files (read again whenever they change), or
	// PEM data.
	CertFile, KeyFile string
	CertData, KeyData []byte

	// BearerToken is sent as "Authorization: Bearer". TokenFile, when set,
	// wins and is read again every minute (a projected service-account
	// token rotates).
	BearerToken string
	TokenFile   string
	// Username and Password are sent as basic authentication.
	Username, Password string
	// Exec runs a credential plugin (client.authentication.k8s.io).
	Exec *ExecConfig

	// Impersonate and ImpersonateGroups act as another user.
	Impersonate       string
	ImpersonateGroups []string

	// ProxyURL is an http or https proxy; empty means $HTTPS_PROXY and
	// $NO_PROXY.
	ProxyURL string
	// UserAgent is sent with every request; empty means "weft".
	UserAgent string
	// DialContext, when set, opens the connections (tests dial into a
	// network namespace with it).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds every request but watches; zero means 30 s.
	Timeout time.Duration
}

// ExecConfig is a kubeconfig's users[].user.exec: a command that prints
// an ExecCredential.
type ExecConfig struct {
	Command    string
	Args       []string
	Env        []ExecEnvVar
	APIVersion string
	// InstallHint is shown when the command cannot be started.
	InstallHint string
	// ProvideClusterInfo passes the cluster's address and CA to the
	// command in KUBERNETES_EXEC_INFO.
	ProvideClusterInfo bool
	// InteractiveMode "Always" is refused: weftd has no terminal.
	InteractiveMode string
}

// ExecEnvVar is one extra environment variable of an exec plugin.
type ExecEnvVar struct {
	Name  string `yaml:"name"`
	Value string `yaml:"value"`
}

// In-cluster service account, as a pod sees it.
const (
	serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
)

// ErrNotInCluster is returned by InClusterConfig outside a pod.
var ErrNotInCluster = errors.New("not in a Kubernetes pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")

// LoadConfig returns the config for the API server: from the kubeconfig
// file when one is given, else the pod's service account. apiURL, when
// set, replaces the server address of either; with neither a kubeconfig
// nor a service account it is used without credentials.
func LoadConfig(kubeconfig, apiURL string) (*Config, error) {
	if kubeconfig != "" {
		raw, err := os.ReadFile(kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
		c, err := ParseKubeconfig(raw, filepath.Dir(kubeconfig))
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		if apiURL != "" {
			c.Host = apiURL
		}
		return c, checkHost(c.Host)
	}
	c, err := InClusterConfig(os.Getenv, serviceAccountDir)
	switch {
	case err == nil:
		if apiURL != "" {
			c.Host = apiURL
		}
		return c, checkHost(c.Host)
	case apiURL != "" && errors.Is(err, ErrNotInCluster):
		return &Config{Host: apiURL}, checkHost(apiURL)
	case errors.Is(err, ErrNotInCluster):
		return nil, fmt.Errorf("no --kubeconfig-file or --kube-api-url given, and %w", err)
	}
	return nil, err
}

// checkHost refuses an API server address that is not an http or https
// URL with a host.
func checkHost(host string) error {
	u, err := url.Parse(host)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("api server address %q: want https://host[:port]", host)
	}
	return nil
}

// InClusterConfig is the config of a pod's service account: the API
// server from $KUBERNETES_SERVICE_HOST and $KUBERNETES_SERVICE_PORT, the
// token and CA from dir.
func InClusterConfig(getenv func(string) string, dir string) (*Config, error) {
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, ErrNotInCluster
	}
	tokenFile := filepath.Join(dir, "token")
	if _, err := os.Stat(tokenFile); err != nil {
		return nil, fmt.Errorf("in-cluster service account: %w", err)
	}
	c := &Config{Host: "https://" + net.JoinHostPort(host, port), TokenFile: tokenFile}
	ca := filepath.Join(dir, "ca.crt")
	if _, err := os.Stat(ca); err == nil {
		c.CAFile = ca
	}
	return c, nil
}

// kubeconfig is the part of a kubeconfig file that weft reads.
type kubeconfig struct {
	CurrentContext string `yaml:"current-context"`
	Clusters       []struct {
		Name    string `yaml:"name"`
		Cluster struct {
			Server                   string `yaml:"server"`
			CertificateAuthority     string `yaml:"certificate-authority"`
			CertificateAuthorityData string `yaml:"certificate-authority-data"`
			InsecureSkipTLSVerify    bool   `yaml:"insecure-skip-tls-verify"`
			TLSServerName            string `yaml:"tls-server-name"`
			ProxyURL                 string `yaml:"proxy-url"`
		} `yaml:"cluster"`
	} `yaml:"clusters"`
	Users []struct {
		Name string `yaml:"name"`
		User struct {
			ClientCertificate     string   `yaml:"client-certificate"`
			ClientCertificateData string   `yaml:"client-certificate-data"`
			ClientKey             string   `yaml:"client-key"`
			ClientKeyData         string   `yaml:"client-key-data"`
			Token                 string   `yaml:"token"`
			TokenFile             string   `yaml:"tokenFile"`
			Username              string   `yaml:"username"`
			Password              string   `yaml:"password"`
			As                    string   `yaml:"as"`
			AsGroups              []string `yaml:"as-groups"`
			Exec                  *struct {
				Command            string       `yaml:"command"`
				Args               []string     `yaml:"args"`
				Env                []ExecEnvVar `yaml:"env"`
				APIVersion         string       `yaml:"apiVersion"`
				InstallHint        string       `yaml:"installHint"`
				ProvideClusterInfo bool         `yaml:"provideClusterInfo"`
				InteractiveMode    string       `yaml:"interactiveMode"`
			} `yaml:"exec"`
			AuthProvider *struct {
				Name string `yaml:"name"`
			} `yaml:"auth-provider"`
		} `yaml:"user"`
	} `yaml:"users"`
	Contexts []kubeconfigContext `yaml:"contexts"`
}

type kubeconfigContext struct {
	Name    string `yaml:"name"`
	Context struct {
		Cluster string `yaml:"cluster"`
		User    string `yaml:"user"`
	} `yaml:"context"`
}

// ParseKubeconfig reads a kubeconfig file's current context. Relative
// file names in it are relative to dir, the file's folder. When the file
// names no current context and has exactly one, that one is used.
func ParseKubeconfig(raw []byte, dir string) (*Config, error) {
	var kc kubeconfig
	if err := yaml.Unmarshal(raw, &kc); err != nil {
		return nil, fmt.Errorf("not a kubeconfig: %w", err)
	}
	ctxName := kc.CurrentContext
	if ctxName == "" {
		if len(kc.Contexts) != 1 {
			return nil, fmt.Errorf("no current-context, and %d contexts to choose from", len(kc.Contexts))
		}
		ctxName = kc.Contexts[0].Name
	}
	i := slices.IndexFunc(kc.Contexts, func(e kubeconfigContext) bool { return e.Name == ctxName })
	if i < 0 {
		return nil, fmt.Errorf("context %q not found", ctxName)
	}
	cx := kc.Contexts[i].Context
	path := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	data := func(field, v string) ([]byte, error) {
		if v == "" {
			return nil, nil
		}
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("%s: not base64: %w", field, err)
		}
		return b, nil
	}

	c := &Config{}
	found := false
	for _, e := range kc.Clusters {
		if e.Name != cx.Cluster {
			continue
		}
		cl := e.Cluster
		if cl.Server == "" {
			return nil, fmt.Errorf("cluster %q has no server", e.Name)
		}
		var err error
		if c.CAData, err = data("cluster "+e.Name+" certificate-authority-data", cl.CertificateAuthorityData); err != nil {
			return nil, err
		}
		c.Host, c.CAFile, c.Insecure, c.ServerName, c.ProxyURL =
			strings.TrimRight(cl.Server, "/"), path(cl.CertificateAuthority), cl.InsecureSkipTLSVerify, cl.TLSServerName, cl.ProxyURL
		found = true
		break
	}
	if !found {
		return nil, fmt.Errorf("context %q: cluster %q not found", ctxName, cx.Cluster)
	}
	if cx.User == "" {
		return c, nil // no credentials
	}
	for _, e := range kc.Users {
		if e.Name != cx.User {
			continue
		}
		u := e.User
		if u.AuthProvider != nil {
			return nil, fmt.Errorf("user %q: auth-provider %q is not supported (Kubernetes clients dropped auth-provider plugins; use an exec plugin)", e.Name, u.AuthProvider.Name)
		}
		var err error
		if c.CertData, err = data("user "+e.Name+" client-certificate-data", u.ClientCertificateData); err != nil {
			return nil, err
		}
		if c.KeyData, err = data("user "+e.Name+" client-key-data", u.ClientKeyData); err != nil {
			return nil, err
		}
		c.CertFile, c.KeyFile = path(u.ClientCertificate), path(u.ClientKey)
		if (c.CertFile != "" || len(c.CertData) > 0) != (c.KeyFile != "" || len(c.KeyData) > 0) {
			return nil, fmt.Errorf("user %q: a client certificate needs both the certificate and the key", e.Name)
		}
		c.BearerToken, c.TokenFile = u.Token, path(u.TokenFile)
		c.Username, c.Password = u.Username, u.Password
		c.Impersonate, c.ImpersonateGroups = u.As, u.AsGroups
		if x := u.Exec; x != nil {
			if x.Command == "" {
				return nil, fmt.Errorf("user %q: exec has no command", e.Name)
			}
			switch x.APIVersion {
			case execV1, execV1beta1:
			default:
				return nil, fmt.Errorf("user %q: exec apiVersion %q: want %s or %s", e.Name, x.APIVersion, execV1, execV1beta1)
			}
			if x.InteractiveMode == "Always" {
				return nil, fmt.Errorf("user %q: exec plugin %s wants interactiveMode Always, and weft runs without a terminal", e.Name, x.Command)
			}
			cmd := x.Command
			if strings.ContainsRune(cmd, filepath.Separator) {
				cmd = path(cmd) // "./bin/plugin" is relative to the kubeconfig, a bare name is looked up in $PATH
			}
			c.Exec = &ExecConfig{Command: cmd, Args: x.Args, Env: x.Env, APIVersion: x.APIVersion,
				InstallHint: x.InstallHint, ProvideClusterInfo: x.ProvideClusterInfo, InteractiveMode: x.InteractiveMode}
		}
		return c, nil
	}
	return nil, fmt.Errorf("context %q: user %q not found", ctxName, cx.User)
}
