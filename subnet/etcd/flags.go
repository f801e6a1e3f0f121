package etcd

import (
	"errors"
	"flag"
	"fmt"
	"strings"
)

// DefaultEndpoints are flannel's default etcd endpoints.
const DefaultEndpoints = "http://127.0.0.1:4001,http://127.0.0.1:2379"

// FlagNames are the etcd client flags BindFlags declares, flannel's names.
var FlagNames = []string{"etcd-endpoints", "etcd-prefix", "etcd-keyfile", "etcd-certfile", "etcd-cafile", "etcd-username", "etcd-password"}

// Flags is the one etcd client option set: weftd and weftctl (and so
// weftctl doctor) declare it with BindFlags and resolve it with Resolve,
// so the flags, their defaults, their environment fallbacks and their
// checks cannot drift apart.
type Flags struct {
	fs                        *flag.FlagSet
	endpoints, prefix         string
	keyfile, certfile, cafile string
	username, password        string
}

// BindFlags declares the etcd flags on fs.
func BindFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs}
	fs.StringVar(&f.endpoints, "etcd-endpoints", DefaultEndpoints, "comma-separated list of etcd endpoints")
	fs.StringVar(&f.prefix, "etcd-prefix", DefaultPrefix, "etcd key prefix of the network config and leases")
	fs.StringVar(&f.keyfile, "etcd-keyfile", "", "TLS client key file for etcd (any TLS flag, or an https endpoint, means TLS)")
	fs.StringVar(&f.certfile, "etcd-certfile", "", "TLS client certificate file for etcd (give --etcd-keyfile too)")
	fs.StringVar(&f.cafile, "etcd-cafile", "", "TLS CA bundle that signed etcd's server certificate (enough on its own when etcd needs no client certificate)")
	fs.StringVar(&f.username, "etcd-username", "", "etcd user name for authentication")
	fs.StringVar(&f.password, "etcd-password", "", "etcd password for authentication (prefer the environment file over the command line, which ps shows)")
	return f
}

// Resolve fills each etcd flag not given on the command line from
// setting(flag name), the caller's fallback chain (WEFTD_<NAME>, then
// FLANNELD_<NAME>, then an environment file; "" when none has it), checks
// the result and returns the client options and the key prefix. Errors
// name the flag.
func (f *Flags) Resolve(setting func(flagName string) string) (ClientOptions, string, error) {
	given := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	targets := map[string]*string{
		"etcd-endpoints": &f.endpoints, "etcd-prefix": &f.prefix,
		"etcd-keyfile": &f.keyfile, "etcd-certfile": &f.certfile, "etcd-cafile": &f.cafile,
		"etcd-username": &f.username, "etcd-password": &f.password,
	}
	if setting != nil {
		for _, name := range FlagNames {
			if !given[name] {
				if v := setting(name); v != "" {
					*targets[name] = v
				}
			}
		}
	}
	o := ClientOptions{KeyFile: f.keyfile, CertFile: f.certfile, CAFile: f.cafile, Username: f.username, Password: f.password}
	for _, e := range strings.Split(f.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			o.Endpoints = append(o.Endpoints, e)
		}
	}
	prefix := strings.TrimRight(f.prefix, "/")
	var errs []error
	if len(o.Endpoints) == 0 {
		errs = append(errs, errors.New("--etcd-endpoints: at least one endpoint is required"))
	}
	if prefix == "" || !strings.HasPrefix(prefix, "/") {
		errs = append(errs, fmt.Errorf("--etcd-prefix: %q must be an absolute key such as %s", f.prefix, DefaultPrefix))
	}
	if (o.KeyFile == "") != (o.CertFile == "") {
		errs = append(errs, fmt.Errorf("--etcd-certfile: --etcd-keyfile and --etcd-certfile must be given together: %w", ErrTLSOptions))
	}
	return o, prefix, errors.Join(errs...)
}

// EnvSetting is the fallback chain weftd uses: WEFTD_<NAME>, then
// FLANNELD_<NAME>, from getenv.
func EnvSetting(getenv func(string) string) func(flagName string) string {
	return func(name string) string {
		for _, p := range []string{"WEFTD_", "FLANNELD_"} {
			if v := getenv(p + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))); v != "" {
				return v
			}
		}
		return ""
	}
}
