package plugin

import (
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/subnet"
)

var testEnv = subnet.Env{
	Network: netip.MustParsePrefix("198.18.0.0/16"),
	Subnet:  netip.MustParsePrefix("198.18.5.1/24"),
	MTU:     1450,
	IPMasq:  true,
}

func TestParseConfigDefaults(t *testing.T) {
	conf, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"weft","type":"weft","somethingUnknown":42}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.SubnetFile != DefaultSubnetFile || conf.DataDir != DefaultDataDir || conf.Bridge != DefaultBridge {
		t.Fatalf("defaults not applied: %+v", conf)
	}
	s, err := conf.Resolve(testEnv)
	if err != nil {
		t.Fatal(err)
	}
	want := Settings{
		Name: "weft", DataDir: DefaultDataDir, Bridge: DefaultBridge, MTU: 1450, IPMasq: false, DefaultGW: true,
		Network: testEnv.Network, Subnet: netip.MustParsePrefix("198.18.5.0/24"), Gateway: netip.MustParseAddr("198.18.5.1"),
		SubnetFile: DefaultSubnetFile,
	}
	if s.Name != want.Name || s.MTU != want.MTU || s.IPMasq != want.IPMasq || !s.DefaultGW || s.Hairpin ||
		s.Network != want.Network || s.Subnet != want.Subnet || s.Gateway != want.Gateway || s.Bridge != want.Bridge {
		t.Fatalf("got %+v\nwant %+v", *s, want)
	}
}

func TestIPMasqDefaultIsOppositeOfWeftd(t *testing.T) {
	conf, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"weft","type":"weft"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, weftdMasq := range []bool{true, false} {
		e := testEnv
		e.IPMasq = weftdMasq
		s, err := conf.Resolve(e)
		if err != nil {
			t.Fatal(err)
		}
		if s.IPMasq == weftdMasq {
			t.Errorf("FLANNEL_IPMASQ=%v gave ipMasq=%v; exactly one of weftd and the plugin should masquerade", weftdMasq, s.IPMasq)
		}
	}
}

func TestParseConfigOverrides(t *testing.T) {
	conf, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"n1","type":"weft",
		"subnetFile":"/tmp/x.env","dataDir":"/tmp/d","bridge":"br9","mtu":1400,"ipMasq":false,
		"hairpinMode":true,"isDefaultGateway":false,"logFile":"/tmp/l",
		"routes":[{"dst":"198.19.0.0/16"},{"dst":"198.19.1.0/24","gw":"198.18.5.254"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	s, err := conf.Resolve(testEnv)
	if err != nil {
		t.Fatal(err)
	}
	if s.MTU != 1400 || s.IPMasq || !s.Hairpin || s.DefaultGW || s.Bridge != "br9" || s.DataDir != "/tmp/d" || len(s.Routes) != 2 {
		t.Fatalf("overrides not applied: %+v", *s)
	}
	if s.Routes[1].GW.String() != "198.18.5.254" || s.Routes[0].GW != nil {
		t.Fatalf("routes: %+v", s.Routes)
	}
	rs := podRoutes(s)
	if len(rs) != 3 || rs[0].Dst.String() != "198.18.0.0/16" {
		t.Fatalf("pod routes without default gateway: %v", rs)
	}
}

func TestParseConfigFlannelDelegate(t *testing.T) {
	conf, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"cbr0","type":"weft","hairpinMode":false,
		"delegate":{"hairpinMode":true,"isDefaultGateway":false,"mtu":1400,"bridge":"cni9","type":"bridge"}}`))
	if err != nil {
		t.Fatal(err)
	}
	s, err := conf.Resolve(testEnv)
	if err != nil {
		t.Fatal(err)
	}
	// The top level wins; the delegate fills the rest.
	if s.Hairpin || s.DefaultGW || s.MTU != 1400 || s.Bridge != "cni9" {
		t.Fatalf("got %+v", *s)
	}
}

// TestParseConfigErrors: every error names the field as the user wrote it
// (delegate.mtu, routes[1].gw) and says what was wanted in words, not in
// terms of Go types.
func TestParseConfigErrors(t *testing.T) {
	base := `"cniVersion":"1.1.0","name":"weft","type":"weft"`
	cases := []struct {
		name, json, msg string
		code            uint
	}{
		{"mtu string", `{` + base + `,"mtu":"big"}`, `mtu: want an integer, got a string`, types.ErrInvalidNetworkConfig},
		{"mtu fraction", `{` + base + `,"mtu":1400.5}`, `mtu: want an integer, got 1400.5`, types.ErrInvalidNetworkConfig},
		{"mtu too small", `{` + base + `,"mtu":10}`, `mtu: 10 is outside 68..65535`, types.ErrInvalidNetworkConfig},
		{"mtu too big", `{` + base + `,"mtu":70000}`, `mtu: 70000 is outside 68..65535`, types.ErrInvalidNetworkConfig},
		{"ipMasq not bool", `{` + base + `,"ipMasq":"yes"}`, `ipMasq: want true or false, got a string`, types.ErrInvalidNetworkConfig},
		{"hairpin not bool", `{` + base + `,"hairpinMode":1}`, `hairpinMode: want true or false, got a number`, types.ErrInvalidNetworkConfig},
		{"hairpin string", `{` + base + `,"hairpinMode":"true"}`, `hairpinMode: want true or false, got a string`, types.ErrInvalidNetworkConfig},
		{"gateway not bool", `{` + base + `,"isDefaultGateway":"no"}`, `isDefaultGateway: want true or false, got a string`, types.ErrInvalidNetworkConfig},
		{"bridge too long", `{` + base + `,"bridge":"abcdefghijklmnop"}`, `bridge: interface name "abcdefghijklmnop" is longer than 15 bytes`, types.ErrInvalidNetworkConfig},
		{"bridge slash", `{` + base + `,"bridge":"a/b"}`, `bridge: interface name "a/b" contains '/', ':' or white space`, types.ErrInvalidNetworkConfig},
		{"bridge number", `{` + base + `,"bridge":5}`, `bridge: want a string, got a number`, types.ErrInvalidNetworkConfig},
		{"dataDir relative", `{` + base + `,"dataDir":"var/lib"}`, `dataDir: "var/lib" is not an absolute path`, types.ErrInvalidNetworkConfig},
		{"dataDir list", `{` + base + `,"dataDir":["/a"]}`, `dataDir: want a string, got a list`, types.ErrInvalidNetworkConfig},
		{"subnetFile relative", `{` + base + `,"subnetFile":"subnet.env"}`, `subnetFile: "subnet.env" is not an absolute path`, types.ErrInvalidNetworkConfig},
		{"logFile relative", `{` + base + `,"logFile":"x.log"}`, `logFile: "x.log" is not an absolute path`, types.ErrInvalidNetworkConfig},
		{"route bad dst", `{` + base + `,"routes":[{"dst":"nonsense"}]}`, `routes[0].dst: want an IPv4 CIDR such as 198.19.0.0/16, got "nonsense"`, types.ErrInvalidNetworkConfig},
		{"route no dst", `{` + base + `,"routes":[{"gw":"198.18.5.9"}]}`, `routes[0].dst: missing; want an IPv4 CIDR such as 198.19.0.0/16`, types.ErrInvalidNetworkConfig},
		{"route v6", `{` + base + `,"routes":[{"dst":"198.19.0.0/16"},{"dst":"2001:db8::/32"}]}`, `routes[1].dst: want an IPv4 CIDR such as 198.19.0.0/16, got "2001:db8::/32"`, types.ErrInvalidNetworkConfig},
		{"route bad gw", `{` + base + `,"routes":[{"dst":"198.19.0.0/16","gw":"2001:db8::1"}]}`, `routes[0].gw: want an IPv4 address, got "2001:db8::1"`, types.ErrInvalidNetworkConfig},
		{"route not object", `{` + base + `,"routes":["198.19.0.0/16"]}`, `routes[0]: want a route ({"dst": "CIDR", "gw": "IP"}), got a string`, types.ErrInvalidNetworkConfig},
		{"routes not list", `{` + base + `,"routes":{}}`, `routes: want a list of routes ({"dst": "CIDR", "gw": "IP"}), got an object`, types.ErrInvalidNetworkConfig},
		{"no name", `{"cniVersion":"1.1.0","type":"weft"}`, `name: must not be empty`, types.ErrInvalidNetworkConfig},
		{"name number", `{"cniVersion":"1.1.0","name":5,"type":"weft"}`, `name: want a string, got a number`, types.ErrInvalidNetworkConfig},
		{"name with slash", `{"cniVersion":"1.1.0","name":"a/b","type":"weft"}`, `name: "a/b" cannot name a directory`, types.ErrInvalidNetworkConfig},
		{"delegate mtu type", `{` + base + `,"delegate":{"mtu":"x"}}`, `delegate.mtu: want an integer, got a string`, types.ErrInvalidNetworkConfig},
		{"delegate mtu range", `{` + base + `,"delegate":{"mtu":70000}}`, `delegate.mtu: 70000 is outside 68..65535`, types.ErrInvalidNetworkConfig},
		{"delegate bridge", `{` + base + `,"delegate":{"bridge":"abcdefghijklmnop"}}`, `delegate.bridge: interface name "abcdefghijklmnop" is longer than 15 bytes`, types.ErrInvalidNetworkConfig},
		{"delegate hairpin", `{` + base + `,"delegate":{"hairpinMode":"yes"}}`, `delegate.hairpinMode: want true or false, got a string`, types.ErrInvalidNetworkConfig},
		{"top level wins over delegate", `{` + base + `,"mtu":70000,"delegate":{"mtu":1400}}`, `mtu: 70000 is outside 68..65535`, types.ErrInvalidNetworkConfig},
		{"delegate not object", `{` + base + `,"delegate":5}`, `delegate: want an object, got a number`, types.ErrInvalidNetworkConfig},
		{"not json", `{`, `decode network config: unexpected end of JSON input`, types.ErrDecodingFailure},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.json))
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("got %v, want a *types.Error", err)
			}
			if te.Code != tc.code {
				t.Errorf("code %d, want %d (%s)", te.Code, tc.code, te.Msg)
			}
			if te.Msg != tc.msg {
				t.Errorf("message %q\nwant    %q", te.Msg, tc.msg)
			}
			if strings.Contains(te.Msg, "Go struct") || strings.Contains(te.Msg, "unmarshal") {
				t.Errorf("message %q speaks of Go types", te.Msg)
			}
		})
	}
}

// TestParseConfigWarnsMisspelt: unknown names close to a known one (typos,
// wrong case) are ignored but produce a warning naming the likely field;
// unknown names that resemble nothing, and the standard fields, do not.
func TestParseConfigWarnsMisspelt(t *testing.T) {
	base := `"cniVersion":"1.1.0","name":"weft","type":"weft"`
	cases := []struct {
		name, json string
		want       []string
	}{
		{"transposed", `{` + base + `,"subnetFlie":"/x"}`, []string{`unknown field "subnetFlie" is ignored; did you mean "subnetFile"?`}},
		{"case", `{` + base + `,"MTU":1400}`, []string{`unknown field "MTU" is ignored; did you mean "mtu"?`}},
		{"missing letter", `{` + base + `,"hairpinMod":true,"ipMask":false}`, []string{
			`unknown field "hairpinMod" is ignored; did you mean "hairpinMode"?`,
			`unknown field "ipMask" is ignored; did you mean "ipMasq"?`}},
		{"in delegate", `{` + base + `,"delegate":{"type":"bridge","isGateway":true,"hairpinMdoe":true}}`, []string{`unknown field "delegate.hairpinMdoe" is ignored; did you mean "delegate.hairpinMode"?`}},
		{"unrelated", `{` + base + `,"somethingUnknown":42,"capabilities":{"portMappings":true},"runtimeConfig":{},"cni.dev/valid-attachments":[]}`, nil},
		{"all known", `{` + base + `,"subnetFile":"/x","dataDir":"/d","bridge":"cni0","mtu":1400,"ipMasq":true,"hairpinMode":true,"isDefaultGateway":true,"routes":[],"logFile":"/l"}`, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conf, err := ParseConfig([]byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(conf.Warnings, tc.want) {
				t.Fatalf("warnings %q\nwant     %q", conf.Warnings, tc.want)
			}
		})
	}
	// The misspelt field is ignored, not guessed at.
	conf, _ := ParseConfig([]byte(`{` + base + `,"subnetFlie":"/x"}`))
	if conf.SubnetFile != DefaultSubnetFile {
		t.Fatalf("subnetFile %q, want the default", conf.SubnetFile)
	}
}

// TestWarningsReachStderrAndLogFile: a warning goes to stderr and, with
// logFile, to the log file as well; nothing goes to stdout.
func TestWarningsReachStderrAndLogFile(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "weft.log")
	stdin := []byte(`{"cniVersion":"1.1.0","name":"weft","type":"weft","subnetFlie":"/x","logFile":"` + logFile + `"}`)
	stdout, stderr := captureStdio(t, func() {
		_, _, closeLog, err := start(&skel.CmdArgs{StdinData: stdin})
		if err != nil {
			t.Fatal(err)
		}
		closeLog()
	})
	want := `did you mean \"subnetFile\"?`
	if !strings.Contains(stderr, want) {
		t.Errorf("stderr %q lacks %q", stderr, want)
	}
	if stdout != "" {
		t.Errorf("stdout %q, want nothing", stdout)
	}
	b, _ := os.ReadFile(logFile)
	if !strings.Contains(string(b), want) {
		t.Errorf("log file %q lacks %q", b, want)
	}
}

// captureStdio runs fn with os.Stdout and os.Stderr redirected to pipes.
func captureStdio(t *testing.T, fn func()) (stdout, stderr string) {
	t.Helper()
	read := func(f **os.File) func() string {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		old := *f
		*f = w
		done := make(chan string)
		go func() {
			b, _ := io.ReadAll(r)
			done <- string(b)
		}()
		return func() string {
			*f = old
			w.Close()
			return <-done
		}
	}
	endOut, endErr := read(&os.Stdout), read(&os.Stderr)
	defer func() { stdout, stderr = endOut(), endErr() }()
	fn()
	return
}

func TestResolveRejectsBadEnv(t *testing.T) {
	conf, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"weft","type":"weft"}`))
	if err != nil {
		t.Fatal(err)
	}
	bad := []subnet.Env{
		{Network: testEnv.Network, Subnet: netip.MustParsePrefix("198.18.5.0/24"), MTU: 1450},  // gateway is the network address
		{Network: testEnv.Network, Subnet: netip.MustParsePrefix("198.18.5.1/31"), MTU: 1450},  // too small
		{Network: testEnv.Network, Subnet: netip.MustParsePrefix("198.18.5.1/24"), MTU: 0},     // no MTU
		{Network: testEnv.Network, Subnet: netip.MustParsePrefix("203.0.113.1/24"), MTU: 1450}, // outside network
	}
	for i, e := range bad {
		_, err := conf.Resolve(e)
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
			t.Errorf("env %d: got %v, want invalid network config", i, err)
		}
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("c1", "eth0")
	if len(a) > 15 || !strings.HasPrefix(a, "weft") {
		t.Fatalf("bad name %q", a)
	}
	if a == HostVethName("c1", "eth1") || a == HostVethName("c2", "eth0") || a != HostVethName("c1", "eth0") {
		t.Fatal("names must be distinct per attachment and stable")
	}
}

func TestMasqChainName(t *testing.T) {
	c := MasqChain("weft")
	if len(c) > 28 || c == MasqChain("other") {
		t.Fatalf("bad chain name %q", c)
	}
}

// FuzzParseConfig: any input either parses into a config that resolves
// without panicking, or fails with a coded CNI error.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"weft","type":"weft"}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","type":"weft","mtu":1400,"routes":[{"dst":"198.19.0.0/16","gw":"198.18.5.9"}],"delegate":{"hairpinMode":true}}`))
	f.Add([]byte(`{"name":"x","routes":[{}],"bridge":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		conf, err := ParseConfig(data)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code == 0 {
				t.Fatalf("uncoded error %v", err)
			}
			return
		}
		s, err := conf.Resolve(testEnv)
		if err != nil {
			return
		}
		if s.MTU < 68 || s.Bridge == "" || len(s.Bridge) > 15 {
			t.Fatalf("accepted bad settings %+v", s)
		}
		podRoutes(s)
	})
}

// TestResolveDualStack: the IPv6 variables give the IPv6 settings, and
// pods get routes for both families, each via its own gateway.
func TestResolveDualStack(t *testing.T) {
	conf, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"weft","type":"weft","routes":[{"dst":"198.19.0.0/16"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	e := testEnv
	e.IPv6Network = netip.MustParsePrefix("2001:db8:100::/48")
	e.IPv6Subnet = netip.MustParsePrefix("2001:db8:100:59::1/64")
	s, err := conf.Resolve(e)
	if err != nil {
		t.Fatal(err)
	}
	if !s.DualStack() || s.Network6.String() != "2001:db8:100::/48" || s.Subnet6.String() != "2001:db8:100:59::/64" || s.Gateway6.String() != "2001:db8:100:59::1" {
		t.Fatalf("IPv6 settings: %+v", s)
	}
	var got []string
	for _, r := range podRoutes(s) {
		got = append(got, r.Dst.String()+" via "+r.GW.String())
	}
	want := []string{"0.0.0.0/0 via 198.18.5.1", "::/0 via 2001:db8:100:59::1", "198.19.0.0/16 via 198.18.5.1"}
	if !slices.Equal(got, want) {
		t.Fatalf("routes %v, want %v", got, want)
	}
	// Without isDefaultGateway, each family routes its cluster network.
	conf.IsDefaultGateway = new(bool)
	s, _ = conf.Resolve(e)
	got = nil
	for _, r := range podRoutes(s) {
		got = append(got, r.Dst.String()+" via "+r.GW.String())
	}
	want = []string{"198.18.0.0/16 via 198.18.5.1", "2001:db8:100::/48 via 2001:db8:100:59::1", "198.19.0.0/16 via 198.18.5.1"}
	if !slices.Equal(got, want) {
		t.Fatalf("routes without isDefaultGateway %v, want %v", got, want)
	}
	// An IPv4-only env has no IPv6 settings.
	if s, err := conf.Resolve(testEnv); err != nil || s.DualStack() || len(s.families()) != 1 {
		t.Fatalf("IPv4-only env: %+v %v", s, err)
	}
}

// TestResolveRejectsBadEnv6: an IPv6 part that would break pods or the
// host is refused, naming the variable (or the MTU) at fault.
func TestResolveRejectsBadEnv6(t *testing.T) {
	conf, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"weft","type":"weft"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		network, subnet string
		mtu             int
		want            string
	}{
		{"2001:db8:100::/48", "2001:db8:100:59::/64", 1450, "FLANNEL_IPV6_SUBNET"},   // gateway is the subnet's own address
		{"2001:db8:100::/48", "2001:db8:100:59::1/127", 1450, "FLANNEL_IPV6_SUBNET"}, // too small
		{"2001:db8:100::/48", "2001:db8:100::1/40", 1450, "FLANNEL_IPV6_SUBNET"},     // wider than the network
		{"fe80::/10", "fe80::1/64", 1450, "FLANNEL_IPV6_NETWORK"},                    // link-local
		{"ff00::/8", "ff00::1/64", 1450, "FLANNEL_IPV6_NETWORK"},                     // multicast
		{"2001:db8:100::/48", "2001:db8:100:59::1/64", 1279, "1280"},                 // no IPv6 below 1280
	} {
		e := testEnv
		e.MTU = c.mtu
		e.IPv6Network = netip.MustParsePrefix(c.network)
		e.IPv6Subnet = netip.MustParsePrefix(c.subnet)
		_, err := conf.Resolve(e)
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, c.want) {
			t.Errorf("%s in %s, mtu %d: got %v, want an invalid-config error naming %s", c.subnet, c.network, c.mtu, err, c.want)
		}
	}
}

// FuzzResolveEnv: whatever subnet.env holds, Resolve either refuses it
// with an invalid-config error or yields settings the plugin can use for
// every family: a gateway that is a host address of its lease subnet,
// inside the cluster network, and for IPv6 an MTU that carries it.
func FuzzResolveEnv(f *testing.F) {
	f.Add([]byte("FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"))
	f.Add([]byte("FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\nFLANNEL_IPV6_NETWORK=2001:db8:100::/48\nFLANNEL_IPV6_SUBNET=2001:db8:100:59::1/64\n"))
	f.Add([]byte("FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.5.1/24\nFLANNEL_MTU=1280\nFLANNEL_IPV6_NETWORK=2001:db8::/32\nFLANNEL_IPV6_SUBNET=2001:db8::/126\n"))
	conf, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"weft","type":"weft"}`))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := subnet.ParseEnv(data)
		if err != nil {
			return
		}
		s, err := conf.Resolve(env)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("Resolve: %v, want an invalid-config error", err)
			}
			return
		}
		for _, fam := range s.families() {
			if !fam.subnet.Contains(fam.gateway) || fam.gateway == fam.subnet.Addr() || !fam.network.Contains(fam.gateway) {
				t.Fatalf("%s: gateway %s, subnet %s, network %s", fam.name, fam.gateway, fam.subnet, fam.network)
			}
		}
		if s.DualStack() && (s.MTU < MinMTU6 || s.Subnet6.Bits() > 126 || !s.Gateway6.Is6()) {
			t.Fatalf("IPv6 settings %+v", s)
		}
	})
}
