package plugin

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

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

func TestParseConfigErrors(t *testing.T) {
	base := `"cniVersion":"1.1.0","name":"weft","type":"weft"`
	cases := []struct {
		name, json, field string
		code              uint
	}{
		{"mtu string", `{` + base + `,"mtu":"big"}`, `"mtu"`, types.ErrInvalidNetworkConfig},
		{"mtu too small", `{` + base + `,"mtu":10}`, `"mtu"`, types.ErrInvalidNetworkConfig},
		{"mtu too big", `{` + base + `,"mtu":70000}`, `"mtu"`, types.ErrInvalidNetworkConfig},
		{"ipMasq not bool", `{` + base + `,"ipMasq":"yes"}`, `"ipMasq"`, types.ErrInvalidNetworkConfig},
		{"hairpin not bool", `{` + base + `,"hairpinMode":1}`, `"hairpinMode"`, types.ErrInvalidNetworkConfig},
		{"gateway not bool", `{` + base + `,"isDefaultGateway":"no"}`, `"isDefaultGateway"`, types.ErrInvalidNetworkConfig},
		{"bridge too long", `{` + base + `,"bridge":"abcdefghijklmnop"}`, `"bridge"`, types.ErrInvalidNetworkConfig},
		{"bridge slash", `{` + base + `,"bridge":"a/b"}`, `"bridge"`, types.ErrInvalidNetworkConfig},
		{"bridge number", `{` + base + `,"bridge":5}`, `"bridge"`, types.ErrInvalidNetworkConfig},
		{"dataDir relative", `{` + base + `,"dataDir":"var/lib"}`, `"dataDir"`, types.ErrInvalidNetworkConfig},
		{"subnetFile relative", `{` + base + `,"subnetFile":"subnet.env"}`, `"subnetFile"`, types.ErrInvalidNetworkConfig},
		{"logFile relative", `{` + base + `,"logFile":"x.log"}`, `"logFile"`, types.ErrInvalidNetworkConfig},
		{"route bad dst", `{` + base + `,"routes":[{"dst":"nonsense"}]}`, `"routes"`, types.ErrInvalidNetworkConfig},
		{"route no dst", `{` + base + `,"routes":[{"gw":"198.18.5.9"}]}`, `"routes"`, types.ErrInvalidNetworkConfig},
		{"route v6", `{` + base + `,"routes":[{"dst":"2001:db8::/32"}]}`, `"routes"`, types.ErrInvalidNetworkConfig},
		{"routes not list", `{` + base + `,"routes":{}}`, `"routes"`, types.ErrInvalidNetworkConfig},
		{"no name", `{"cniVersion":"1.1.0","type":"weft"}`, `"name"`, types.ErrInvalidNetworkConfig},
		{"name with slash", `{"cniVersion":"1.1.0","name":"a/b","type":"weft"}`, `"name"`, types.ErrInvalidNetworkConfig},
		{"delegate mtu", `{` + base + `,"delegate":{"mtu":"x"}}`, `"delegate.mtu"`, types.ErrInvalidNetworkConfig},
		{"delegate not object", `{` + base + `,"delegate":5}`, `"delegate"`, types.ErrInvalidNetworkConfig},
		{"not json", `{`, `decode`, types.ErrDecodingFailure},
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
			if !strings.Contains(te.Msg, tc.field) {
				t.Errorf("message %q does not name %s", te.Msg, tc.field)
			}
		})
	}
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
