package main

import (
	"bytes"
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseConfigPrecedence(t *testing.T) {
	var out bytes.Buffer
	c, err := parseConfig(
		[]string{"--etcd-prefix=/cli/net", "--iface=eth1", "--iface=192.0.2.9"},
		env(map[string]string{
			"WEFTD_ETCD_PREFIX":         "/weftd/net",
			"FLANNELD_ETCD_PREFIX":      "/flanneld/net",
			"WEFTD_ETCD_ENDPOINTS":      "http://192.0.2.1:2379, http://192.0.2.2:2379",
			"FLANNELD_ETCD_ENDPOINTS":   "http://203.0.113.1:2379",
			"FLANNELD_IP_MASQ":          "true",
			"FLANNELD_IFACE":            "ignored0",
			"FLANNELD_HEALTHZ_PORT":     "8471",
			"FLANNELD_SUBNET_LEASE_TTL": "1h",
		}), &out)
	if err != nil {
		t.Fatal(err)
	}
	if c.EtcdPrefix != "/cli/net" {
		t.Errorf("command line must win: prefix %q", c.EtcdPrefix)
	}
	if got := strings.Join(c.Etcd.Endpoints, " "); got != "http://192.0.2.1:2379 http://192.0.2.2:2379" {
		t.Errorf("WEFTD_ must win over FLANNELD_: endpoints %q", got)
	}
	if !c.IPMasq || c.HealthzPort != 8471 || c.LeaseTTL != time.Hour {
		t.Errorf("FLANNELD_ fallback not applied: masq %v port %d ttl %s", c.IPMasq, c.HealthzPort, c.LeaseTTL)
	}
	if strings.Join(c.Ifaces, ",") != "eth1,192.0.2.9" {
		t.Errorf("repeatable --iface: %q", c.Ifaces)
	}
	if c.SubnetFile != "/run/flannel/subnet.env" || c.RenewMargin != 30*time.Minute /* 60m clamped to half the 1h TTL */ || !c.IPTablesForward || c.IPTablesResync != 5*time.Second {
		t.Errorf("defaults wrong: %+v", c)
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--public-ip=banana"}, nil, "--public-ip"},
		{[]string{"--iface-can-reach=2001:db8::1"}, nil, "--iface-can-reach"},
		{[]string{"--etcd-keyfile=/k"}, nil, "--etcd-certfile"},
		{[]string{"--iface-regex=("}, nil, "--iface-regex"},
		{[]string{"--healthz-port=70000"}, nil, "--healthz-port"},
		{[]string{"--log-format=xml"}, nil, "--log-format"},
		{[]string{"--etcd-prefix=relative"}, nil, "--etcd-prefix"},
		{[]string{"stray"}, nil, "unexpected argument"},
		{nil, map[string]string{"WEFTD_IP_MASQ": "maybe"}, "WEFTD_IP_MASQ"},
	}
	for _, tt := range tests {
		_, err := parseConfig(tt.args, env(tt.env), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v %v: error %v, want one naming %s", tt.args, tt.env, err, tt.want)
		}
	}
}

// TestFlagsDocumented keeps Documentation/configuration.md in step with the
// flags weftd accepts: every flag and its environment variable must appear.
func TestFlagsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../Documentation/configuration.md")
	if err != nil {
		t.Fatalf("read configuration.md: %v", err)
	}
	fs, _ := newFlagSet(&bytes.Buffer{})
	fs.VisitAll(func(f *flag.Flag) {
		if !regexp.MustCompile("`--" + regexp.QuoteMeta(f.Name) + "`").Match(doc) {
			t.Errorf("flag --%s is not documented in Documentation/configuration.md", f.Name)
		}
		if f.Name != "version" && !bytes.Contains(doc, []byte(envName("WEFTD_", f.Name))) {
			t.Errorf("environment variable %s is not documented", envName("WEFTD_", f.Name))
		}
	})
}

// TestHealthzIPDefault: the unauthenticated HTTP endpoints listen on
// loopback unless told otherwise (flanneld's default is 0.0.0.0), and an
// explicit flanneld setting still carries over.
func TestHealthzIPDefault(t *testing.T) {
	c, err := parseConfig(nil, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.HealthzIP != "127.0.0.1" {
		t.Errorf("default --healthz-ip %q, want 127.0.0.1", c.HealthzIP)
	}
	c, err = parseConfig(nil, env(map[string]string{"FLANNELD_HEALTHZ_IP": "0.0.0.0"}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.HealthzIP != "0.0.0.0" {
		t.Errorf("FLANNELD_HEALTHZ_IP=0.0.0.0 gave %q", c.HealthzIP)
	}
}

// TestNFTablesFlag: --nftables takes auto, on or off, from the command line
// or WEFTD_NFTABLES / FLANNELD_NFTABLES; auto follows the config's
// EnableNFTables and takes nftables when there is no iptables binary, and
// on or off override both.
func TestNFTablesFlag(t *testing.T) {
	tests := []struct {
		args           []string
		env            map[string]string
		enable, haveIP bool
		want           bool
	}{
		{nil, nil, false, true, false},
		{nil, nil, true, true, true},
		{nil, nil, false, false, true},
		{[]string{"--nftables=on"}, nil, false, true, true},
		{[]string{"--nftables=off"}, nil, true, true, false},
		{[]string{"--nftables=off"}, nil, true, false, false},
		{nil, map[string]string{"FLANNELD_NFTABLES": "on"}, false, true, true},
		{nil, map[string]string{"WEFTD_NFTABLES": "off", "FLANNELD_NFTABLES": "on"}, true, true, false},
		{[]string{"--nftables=auto"}, map[string]string{"WEFTD_NFTABLES": "on"}, false, true, false},
	}
	for _, tt := range tests {
		c, err := parseConfig(tt.args, env(tt.env), &bytes.Buffer{})
		if err != nil {
			t.Fatalf("%v %v: %v", tt.args, tt.env, err)
		}
		if got, why := c.UseNFTables(tt.enable, tt.haveIP); got != tt.want || why == "" {
			t.Errorf("%v %v EnableNFTables=%v iptables=%v: nftables %v (%s), want %v", tt.args, tt.env, tt.enable, tt.haveIP, got, why, tt.want)
		}
	}
	for _, bad := range []string{"yes", "true", ""} {
		_, err := parseConfig([]string{"--nftables=" + bad}, env(nil), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "--nftables") {
			t.Errorf("--nftables=%q: error %v, want one naming --nftables", bad, err)
		}
	}
}

// flanneldFlags is every flag flanneld v0.28 accepts, with a value it
// takes, written out here so that weftd's flag set is held against it: a
// flanneld command line or unit file must start weftd unchanged. The klog
// flags flanneld copies in (-v, -vmodule, -log_backtrace_at) are included.
var flanneldFlags = map[string]string{
	"etcd-endpoints":               "http://192.0.2.1:2379",
	"etcd-prefix":                  "/coreos.com/network",
	"etcd-keyfile":                 "",
	"etcd-certfile":                "",
	"etcd-cafile":                  "",
	"etcd-username":                "",
	"etcd-password":                "",
	"iface":                        "eth0",
	"iface-regex":                  "^eth",
	"iface-can-reach":              "192.0.2.1",
	"subnet-file":                  "/run/flannel/subnet.env",
	"public-ip":                    "192.0.2.11",
	"public-ipv6":                  "2001:db8::11",
	"subnet-lease-renew-margin":    "60",
	"ip-masq":                      "true",
	"ip-masq-fully-random-disable": "true",
	"kube-subnet-mgr":              "false",
	"kube-api-url":                 "https://192.0.2.1:6443",
	"kube-annotation-prefix":       "flannel.alpha.coreos.com",
	"kubeconfig-file":              "/etc/kubernetes/kubeconfig",
	"version":                      "false",
	"healthz-ip":                   "0.0.0.0",
	"healthz-port":                 "8471",
	"iptables-resync":              "5",
	"iptables-forward-rules":       "true",
	"ip-blackhole-route":           "true",
	"net-config-path":              "/etc/kube-flannel/net-conf.json",
	"set-node-network-unavailable": "true",
	"v":                            "2",
	"vmodule":                      "main=4",
	"log_backtrace_at":             "main.go:100",
}

// TestFlanneldFlags: every flanneld flag is a weftd flag, and takes its
// value from the command line (with one or two dashes) and from
// FLANNELD_<NAME>.
func TestFlanneldFlags(t *testing.T) {
	fs, _ := newFlagSet(&bytes.Buffer{})
	for name, value := range flanneldFlags {
		if fs.Lookup(name) == nil {
			t.Errorf("flanneld's flag -%s is not a weftd flag", name)
			continue
		}
		for _, arg := range []string{"-" + name + "=" + value, "--" + name + "=" + value} {
			if _, err := parseConfig([]string{arg}, env(nil), &bytes.Buffer{}); err != nil {
				t.Errorf("weftd %s: %v", arg, err)
			}
		}
		if value == "" {
			continue
		}
		e := envName("FLANNELD_", name)
		if _, err := parseConfig(nil, env(map[string]string{e: value}), &bytes.Buffer{}); err != nil {
			t.Errorf("%s=%s: %v", e, value, err)
		}
	}
	// A flanneld command line as a unit file carries it.
	c, err := parseConfig(strings.Fields("-v=2 -vmodule=main=4 -log_backtrace_at=main.go:100 --ip-masq --ip-masq-fully-random-disable --ip-blackhole-route --public-ipv6="), env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatalf("flanneld command line: %v", err)
	}
	if !c.IPMasqPlain || !c.IPBlackholeRoute || c.LogLevel != "info" {
		t.Errorf("flanneld command line: plain masquerade %v, blackhole %v, level %s", c.IPMasqPlain, c.IPBlackholeRoute, c.LogLevel)
	}
	if len(c.Ignored) != 2 || !strings.Contains(c.Ignored[0], "-vmodule") || !strings.Contains(c.Ignored[1], "-log_backtrace_at") {
		t.Errorf("notes about ignored flags: %q", c.Ignored)
	}
	c, err = parseConfig(nil, env(map[string]string{"FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE": "true", "FLANNELD_IP_BLACKHOLE_ROUTE": "true"}), &bytes.Buffer{})
	if err != nil || !c.IPMasqPlain || !c.IPBlackholeRoute {
		t.Errorf("FLANNELD_ forms: %+v, %v", c, err)
	}
	c, err = parseConfig([]string{"--public-ipv6=2001:db8::1"}, env(nil), &bytes.Buffer{})
	if err != nil || c.PublicIPv6.String() != "2001:db8::1" {
		t.Errorf("--public-ipv6: %v, %v", c.PublicIPv6, err)
	}
	for _, bad := range []string{"192.0.2.1", "fe80::1", "ff02::1", "::1", "::ffff:192.0.2.1", "x"} {
		_, err = parseConfig([]string{"--public-ipv6=" + bad}, env(nil), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "--public-ipv6") || !strings.Contains(err.Error(), "not a global unicast IPv6 address") {
			t.Errorf("--public-ipv6=%s: %v, want a clear refusal", bad, err)
		}
	}
}

// TestKlogVerbosity: flanneld's -v maps to --log-level: 4 and up is debug,
// unless a log level is set on the command line or in the environment.
func TestKlogVerbosity(t *testing.T) {
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, nil, "info"},
		{[]string{"-v=3"}, nil, "info"},
		{[]string{"-v", "4"}, nil, "debug"},
		{[]string{"--v=10"}, nil, "debug"},
		{nil, map[string]string{"FLANNELD_V": "5"}, "debug"},
		{[]string{"-v=5", "--log-level=warn"}, nil, "warn"},
		{[]string{"-v=5"}, map[string]string{"WEFTD_LOG_LEVEL": "error"}, "error"},
	}
	for _, tt := range tests {
		c, err := parseConfig(tt.args, env(tt.env), &bytes.Buffer{})
		if err != nil {
			t.Errorf("%v %v: %v", tt.args, tt.env, err)
			continue
		}
		if c.LogLevel != tt.want {
			t.Errorf("%v %v: log level %s, want %s", tt.args, tt.env, c.LogLevel, tt.want)
		}
	}
	if _, err := parseConfig([]string{"-v=-1"}, env(nil), &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "--v") {
		t.Errorf("-v=-1: %v", err)
	}
}
