package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/weftnet/weft/backend/wireguard"
	"github.com/weftnet/weft/subnet/etcd"
)

// Config is weftd's command line, parsed once and validated in one place.
type Config struct {
	Etcd        etcd.ClientOptions
	EtcdPrefix  string
	Ifaces      []string
	IfaceRegex  []*regexp.Regexp
	IfaceReach  netip.Addr
	PublicIP    netip.Addr
	PublicIPv6  netip.Addr
	SubnetFile  string
	RenewMargin time.Duration
	LeaseTTL    time.Duration

	IPMasq bool
	// IPMasqPlain masquerades without fully random source ports
	// (--ip-masq-fully-random-disable).
	IPMasqPlain bool
	// IPBlackholeRoute keeps a blackhole route for our own subnet
	// (--ip-blackhole-route).
	IPBlackholeRoute bool
	IPTablesResync   time.Duration
	IPTablesForward  bool
	NFTables         string // --nftables: "auto" (follow EnableNFTables), "on" or "off"
	HealthzIP        string
	HealthzPort      int
	ReconcileEvery   time.Duration
	LogFormat        string
	LogLevel         string
	Pprof            bool
	Version          bool

	// Ignored are notes about flanneld flags weftd accepts but has no use
	// for (-vmodule, -log_backtrace_at); weftd logs them at start.
	Ignored []string

	// WireGuardKeyFile is the wireguard backend's private key file
	// (--wireguard-key-file, else $WIREGUARD_KEY_FILE as in flannel).
	WireGuardKeyFile string
	// WireGuardDriver is --wireguard-driver: auto, kernel or userspace.
	WireGuardDriver string

	// Kube is the Kubernetes subnet manager (--kube-subnet-mgr and its
	// companions); etcd is not used when Kube.Enabled.
	Kube KubeConfig

	// httpLimits bound the clients of the HTTP endpoints; the zero value
	// means defaultHTTPLimits. Not a flag: tests shorten it.
	httpLimits httpLimits
}

// KubeConfig is the Kubernetes subnet manager's part of the command line.
type KubeConfig struct {
	Enabled                   bool   // --kube-subnet-mgr
	Kubeconfig                string // --kubeconfig-file; "" means in-cluster
	APIURL                    string // --kube-api-url
	AnnotationPrefix          string // --kube-annotation-prefix
	NetConfPath               string // --net-config-path
	SetNodeNetworkUnavailable bool   // --set-node-network-unavailable
}

// multiFlag collects a repeatable flag.
type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error {
	*m = append(*m, v)
	return nil
}

// envPrefixes are read in order for a flag not given on the command line:
// WEFTD_ETCD_ENDPOINTS, then FLANNELD_ETCD_ENDPOINTS.
var envPrefixes = []string{"WEFTD_", "FLANNELD_"}

func envName(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// newFlagSet declares every weftd flag. It is also used by the test that
// checks Documentation/configuration.md lists them all.
func newFlagSet(out io.Writer) (*flag.FlagSet, *rawFlags) {
	fs := flag.NewFlagSet("weftd", flag.ContinueOnError)
	fs.SetOutput(out)
	r := &rawFlags{}
	r.etcd = etcd.BindFlags(fs)
	fs.Var(&r.ifaces, "iface", "interface name or IPv4 address to use for inter-host traffic (repeatable; the first that exists wins)")
	fs.Var(&r.ifaceRegex, "iface-regex", "regular expression matched against interface names, then addresses (repeatable)")
	fs.StringVar(&r.ifaceReach, "iface-can-reach", "", "use the interface that the kernel would route to this IPv4 address through")
	fs.StringVar(&r.publicIP, "public-ip", "", "IPv4 address other hosts use to reach this host (default: the interface address)")
	fs.StringVar(&r.subnetFile, "subnet-file", "/run/flannel/subnet.env", "file weftd writes the leased subnet and MTU to")
	fs.IntVar(&r.renewMargin, "subnet-lease-renew-margin", 60, "renew the subnet lease this many minutes before it expires")
	fs.DurationVar(&r.leaseTTL, "subnet-lease-ttl", 24*time.Hour, "TTL of the etcd lease bound to the subnet lease (weft extension)")
	fs.BoolVar(&r.ipMasq, "ip-masq", false, "masquerade traffic from pods that leaves the cluster network")
	fs.BoolVar(&r.ipMasqPlain, "ip-masq-fully-random-disable", false, "masquerade without fully random source ports")
	fs.BoolVar(&r.blackhole, "ip-blackhole-route", false, "keep a blackhole route for this host's subnet, so that traffic to its unused addresses is dropped here instead of leaving by the default route")
	fs.StringVar(&r.publicIPv6, "public-ipv6", "", "IPv6 address other hosts use to reach this host on a dual-stack network (default: the interface's first global IPv6 address)")
	fs.IntVar(&r.iptResync, "iptables-resync", 5, "seconds between checks that weft's iptables rules are in place")
	fs.BoolVar(&r.iptForward, "iptables-forward-rules", true, "accept forwarded traffic to and from the cluster network")
	fs.StringVar(&r.nftables, "nftables", "auto", "keep the masquerade and forward rules in nftables (table ip weft) instead of iptables: auto (follow the config's EnableNFTables), on or off")
	fs.StringVar(&r.healthzIP, "healthz-ip", "127.0.0.1", "address the /healthz, /readyz, /metrics and /status endpoints listen on (flanneld's default is 0.0.0.0)")
	fs.IntVar(&r.healthzPort, "healthz-port", 0, "port of the HTTP endpoints (0 disables them)")
	fs.DurationVar(&r.reconcile, "reconcile-interval", 10*time.Second, "how often the backend re-checks the kernel state without being asked (weft extension)")
	fs.StringVar(&r.logFormat, "log-format", "text", "log format: text or json (weft extension)")
	fs.StringVar(&r.logLevel, "log-level", "info", "log level: debug, info, warn or error (weft extension)")
	fs.IntVar(&r.klogV, "v", 0, "flanneld's (klog's) log verbosity: 4 or more means --log-level=debug unless --log-level is set")
	fs.StringVar(&r.vmodule, "vmodule", "", "flanneld's (klog's) per-file verbosity: accepted and ignored, with a warning (weft extension: use --log-level)")
	fs.StringVar(&r.logBacktraceAt, "log_backtrace_at", "", "flanneld's (klog's) file:line to log a stack trace at: accepted and ignored, with a warning")
	fs.BoolVar(&r.pprof, "pprof", false, "also serve Go's /debug/pprof/ profiles on the HTTP endpoints (weft extension)")
	fs.BoolVar(&r.version, "version", false, "print the version and exit")
	fs.StringVar(&r.wgKeyFile, "wireguard-key-file", wireguard.DefaultKeyFile, "wireguard backend: file holding this host's base64 private key, mode 0400, generated when missing (default also overridden by $WIREGUARD_KEY_FILE)")
	fs.StringVar(&r.wgDriver, "wireguard-driver", "auto", "wireguard backend: auto (the kernel module when it exists, else in-process wireguard-go), kernel or userspace")
	fs.BoolVar(&r.kube.Enabled, "kube-subnet-mgr", false, "take the subnet from this Node's spec.podCIDR and publish the lease as Node annotations, instead of etcd")
	fs.StringVar(&r.kube.Kubeconfig, "kubeconfig-file", "", "kubeconfig file for --kube-subnet-mgr (default: the pod's service account)")
	fs.StringVar(&r.kube.APIURL, "kube-api-url", "", "Kubernetes API server URL for --kube-subnet-mgr (overrides the kubeconfig's or the in-cluster one)")
	fs.StringVar(&r.kube.AnnotationPrefix, "kube-annotation-prefix", "flannel.alpha.coreos.com", "prefix of the Node annotations that carry the lease")
	fs.StringVar(&r.kube.NetConfPath, "net-config-path", "/etc/kube-flannel/net-conf.json", "network config file for --kube-subnet-mgr")
	fs.BoolVar(&r.kube.SetNodeNetworkUnavailable, "set-node-network-unavailable", true, "with --kube-subnet-mgr, set the Node condition NetworkUnavailable to False once the node is programmed")
	return fs, r
}

type rawFlags struct {
	etcd                             *etcd.Flags
	ifaces, ifaceRegex               multiFlag
	ifaceReach, publicIP, subnetFile string
	renewMargin                      int
	leaseTTL                         time.Duration
	ipMasq, ipMasqPlain, blackhole   bool
	publicIPv6                       string
	klogV                            int
	vmodule, logBacktraceAt          string
	set                              map[string]bool // flags given on the command line or in the environment
	iptResync                        int
	iptForward                       bool
	nftables                         string
	healthzIP                        string
	healthzPort                      int
	reconcile                        time.Duration
	logFormat, logLevel              string
	pprof, version                   bool
	kube                             KubeConfig
	wgKeyFile, wgDriver              string
}

// parseConfig parses the command line, applies WEFTD_* then FLANNELD_*
// environment variables to flags not given on the command line, and
// validates the result. getenv is os.Getenv outside tests.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (*Config, error) {
	fs, r := newFlagSet(out)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: weftd takes only flags", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	r.set = maps.Clone(given)
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || envErr != nil || slices.Contains(etcd.FlagNames, f.Name) {
			return // the etcd flags resolve their own fallbacks, below
		}
		for _, p := range envPrefixes {
			name := envName(p, f.Name)
			v := getenv(name)
			if v == "" {
				continue
			}
			r.set[f.Name] = true
			// A repeatable flag takes a comma-separated list from the environment.
			if _, ok := f.Value.(*multiFlag); ok {
				for _, part := range strings.Split(v, ",") {
					if part = strings.TrimSpace(part); part != "" {
						f.Value.Set(part)
					}
				}
			} else if err := f.Value.Set(v); err != nil {
				envErr = fmt.Errorf("environment variable %s=%q: %w", name, v, err)
			}
			return
		}
	})
	if envErr != nil {
		return nil, envErr
	}

	etcdOpts, etcdPrefix, etcdErr := r.etcd.Resolve(etcd.EnvSetting(getenv))
	c := &Config{
		Etcd:             etcdOpts,
		EtcdPrefix:       etcdPrefix,
		Ifaces:           r.ifaces,
		SubnetFile:       r.subnetFile,
		RenewMargin:      time.Duration(r.renewMargin) * time.Minute,
		LeaseTTL:         r.leaseTTL,
		IPMasq:           r.ipMasq,
		IPMasqPlain:      r.ipMasqPlain,
		IPBlackholeRoute: r.blackhole,
		IPTablesResync:   time.Duration(r.iptResync) * time.Second,
		IPTablesForward:  r.iptForward,
		NFTables:         r.nftables,
		HealthzIP:        r.healthzIP,
		HealthzPort:      r.healthzPort,
		ReconcileEvery:   r.reconcile,
		LogFormat:        r.logFormat,
		LogLevel:         r.logLevel,
		Pprof:            r.pprof,
		Version:          r.version,
		Kube:             r.kube,
		WireGuardKeyFile: r.wgKeyFile,
		WireGuardDriver:  r.wgDriver,
	}
	if !r.set["wireguard-key-file"] {
		if f := getenv(wireguard.KeyFileEnv); f != "" {
			c.WireGuardKeyFile = f
		}
	}
	return c, errors.Join(etcdErr, c.validate(r))
}

// UseNFTables says where the masquerade and forward rules live: in
// nftables (true) or iptables, and why. --nftables=on or off decides; auto
// follows the network config's EnableNFTables, and takes nftables on a host
// without an iptables binary.
func (c *Config) UseNFTables(enableNFTables, haveIPTables bool) (bool, string) {
	switch {
	case c.NFTables == "on" || c.NFTables == "off":
		return c.NFTables == "on", "--nftables=" + c.NFTables
	case enableNFTables:
		return true, "EnableNFTables is true in the network config"
	case !haveIPTables:
		return true, "EnableNFTables is false, but there is no iptables binary"
	}
	return false, "EnableNFTables is false in the network config"
}

func (c *Config) validate(r *rawFlags) error {
	var errs []error
	bad := func(flagName, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flagName, fmt.Sprintf(format, args...)))
	}
	for _, s := range r.ifaceRegex {
		re, err := regexp.Compile(s)
		if err != nil {
			bad("iface-regex", "%q: %v", s, err)
			continue
		}
		c.IfaceRegex = append(c.IfaceRegex, re)
	}
	if r.ifaceReach != "" {
		a, err := netip.ParseAddr(r.ifaceReach)
		if err != nil || !a.Is4() {
			bad("iface-can-reach", "%q is not an IPv4 address", r.ifaceReach)
		}
		c.IfaceReach = a
	}
	if r.publicIP != "" {
		a, err := netip.ParseAddr(r.publicIP)
		if err != nil || !a.Is4() {
			bad("public-ip", "%q is not an IPv4 address", r.publicIP)
		}
		c.PublicIP = a
	}
	if c.SubnetFile == "" {
		bad("subnet-file", "must not be empty")
	}
	if r.renewMargin < 1 {
		bad("subnet-lease-renew-margin", "%d must be at least 1 minute", r.renewMargin)
	}
	if c.LeaseTTL < 10*time.Second {
		bad("subnet-lease-ttl", "%s is shorter than 10s", c.LeaseTTL)
	} else if c.RenewMargin >= c.LeaseTTL {
		// A renew margin as long as the TTL would renew constantly; clamp
		// to half the TTL, which is what a short test TTL wants.
		c.RenewMargin = c.LeaseTTL / 2
	}
	if r.iptResync < 1 {
		bad("iptables-resync", "%d must be at least 1 second", r.iptResync)
	}
	switch c.NFTables {
	case "auto", "on", "off":
	default:
		bad("nftables", "%q is not auto, on or off", c.NFTables)
	}
	if c.HealthzPort < 0 || c.HealthzPort > 65535 {
		bad("healthz-port", "%d is not a TCP port", c.HealthzPort)
	}
	if _, err := netip.ParseAddr(c.HealthzIP); err != nil {
		bad("healthz-ip", "%q is not an IP address", c.HealthzIP)
	}
	if c.ReconcileEvery < 100*time.Millisecond {
		bad("reconcile-interval", "%s is shorter than 100ms", c.ReconcileEvery)
	}
	if c.Kube.Enabled {
		if c.Kube.NetConfPath == "" {
			bad("net-config-path", "must not be empty with --kube-subnet-mgr")
		}
		if p := c.Kube.AnnotationPrefix; p == "" || strings.ContainsAny(p, "/ ") || strings.Trim(p, ".-") != p {
			bad("kube-annotation-prefix", "%q is not a DNS-style prefix such as flannel.alpha.coreos.com", p)
		}
		if u := c.Kube.APIURL; u != "" && !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
			bad("kube-api-url", "%q is not an http:// or https:// URL", u)
		}
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("log-format", "%q is not text or json", c.LogFormat)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level", "%q is not debug, info, warn or error", c.LogLevel)
	}
	// flanneld's klog flags: -v maps to our levels (klog's V(4) and up is
	// flanneld's debug output); the other two have no slog counterpart.
	if r.klogV < 0 {
		bad("v", "%d is negative", r.klogV)
	} else if r.klogV >= 4 && !r.set["log-level"] {
		c.LogLevel = "debug"
	}
	if r.vmodule != "" {
		c.Ignored = append(c.Ignored, fmt.Sprintf("-vmodule=%s has no effect: weftd has no per-file verbosity; use --log-level", r.vmodule))
	}
	if r.logBacktraceAt != "" {
		c.Ignored = append(c.Ignored, fmt.Sprintf("-log_backtrace_at=%s has no effect: weftd logs no stack traces", r.logBacktraceAt))
	}
	if r.publicIPv6 != "" {
		a, err := netip.ParseAddr(r.publicIPv6)
		if err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" || !a.IsGlobalUnicast() || a.IsLinkLocalUnicast() {
			bad("public-ipv6", "%q is not a global unicast IPv6 address", r.publicIPv6)
		}
		c.PublicIPv6 = a
	}
	switch c.WireGuardDriver {
	case wireguard.DriverAuto, wireguard.DriverKernel, wireguard.DriverUserspace:
	default:
		bad("wireguard-driver", "%q is not auto, kernel or userspace", c.WireGuardDriver)
	}
	if c.WireGuardKeyFile == "" {
		bad("wireguard-key-file", "must not be empty")
	}
	if c.IPMasqPlain && !c.IPMasq {
		c.Ignored = append(c.Ignored, "--ip-masq-fully-random-disable has no effect without --ip-masq")
	}
	return errors.Join(errs...)
}
