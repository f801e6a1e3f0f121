package main

import (
	"net/netip"
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
		{"unknown backend type", `{"Type":"vxlam"}`, []string{"Backend.Type", `"vxlam"`, "host-gw, udp, vxlan, wireguard"}},
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

// TestConfigSetUnknownKeys: a key weftd does not read, at the top or in
// Backend (the backend's own keys, from its descriptor), is refused with the
// field named and the nearest known key; keys match case-insensitively;
// --force stores it with a warning, for a newer weftd.
func TestConfigSetUnknownKeys(t *testing.T) {
	h, cli, _ := withEtcd(t)
	for _, tc := range []struct {
		name, config string
		want         []string // in the error; nil means accepted
	}{
		{"top-level typo", `{"Netwrok":"198.18.0.0/16","Network":"198.18.0.0/16","Backend":{"Type":"vxlan"}}`, []string{"unknown field Netwrok; did you mean Network?"}},
		{"vxlan option typo", `{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan","Prot":8472}}`, []string{"unknown field Backend.Prot; did you mean Port?"}},
		{"vxlan VNl", `{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan","VNl":2}}`, []string{"unknown field Backend.VNl; did you mean VNI?"}},
		{"udp option typo", `{"Network":"198.18.0.0/16","Backend":{"Type":"udp","DisableOfloads":true}}`, []string{"Backend.DisableOfloads; did you mean DisableOffloads?"}},
		{"host-gw has no options", `{"Network":"198.18.0.0/16","Backend":{"Type":"host-gw","Port":1}}`, []string{"unknown field Backend.Port"}},
		{"nothing close", `{"Network":"198.18.0.0/16","Flavour":"mint","Backend":{"Type":"vxlan"}}`, []string{"unknown field Flavour (--force"}},
		{"lower case is known", `{"network":"198.18.0.0/16","subnetlen":24,"enablenftables":false,"backend":{"type":"vxlan","vni":1,"directrouting":true}}`, nil},
		{"vxlan's own keys", `{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan","VNI":1,"Port":8472,"MTU":1400,"GBP":false,"DirectRouting":false}}`, nil},
		{"udp's own keys", `{"Network":"198.18.0.0/16","Backend":{"Type":"udp","Port":8285,"MTU":1400,"DisableOffloads":true}}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &harness{t: t, env: h.env}
			if _, err := cli.Delete(t.Context(), "/coreos.com/network/config"); err != nil {
				t.Fatal(err)
			}
			h.stdin = tc.config
			if tc.want == nil {
				h.runOK("config", "set", "-")
				return
			}
			r := h.runFail(1, "config", "set", "-")
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q lacks %q", r.stderr, w)
				}
			}
			if r := h.run(t.Context(), "config", "get"); r.code == 0 {
				t.Fatalf("the refused config was written: %s", r.stdout)
			}
			// --force stores it, warning about each unknown field.
			r = h.run(t.Context(), "config", "set", "--force", "-")
			if r.code != 0 || !strings.Contains(r.stderr, "weftctl config set: warning: unknown field") || !strings.Contains(r.stderr, "--force") {
				t.Fatalf("--force: exit %d, stderr %q; want success and a warning", r.code, r.stderr)
			}
			if out := h.runOK("config", "get"); !strings.Contains(out, "198.18.0.0/16") {
				t.Fatalf("config get after set --force: %q", out)
			}
		})
	}
	// --force does not store an invalid config.
	h.stdin = `{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan","Prot":1,"VNI":16777216}}`
	if r := h.runFail(1, "config", "set", "--force", "-"); !strings.Contains(r.stderr, "VNI") {
		t.Errorf("--force with a bad VNI: stderr %q", r.stderr)
	}
}

// TestConfigSetUnderlay: config set refuses a Network that contains the
// PublicIP of a lease or reservation in etcd, or an address of this
// machine, and says where the address came from; nothing is written.
func TestConfigSetUnderlay(t *testing.T) {
	h, cli, reg := withEtcd(t)
	seedLeases(t, cli, reg) // PublicIPs 192.0.2.11, 192.0.2.12, 203.0.113.130; reservation for 198.51.100.42
	if _, err := cli.Put(t.Context(), "/coreos.com/network/subnets/198.18.77.0-24&2001:db8:100:77::-64",
		`{"PublicIP":"192.0.2.77","PublicIPv6":"2001:db8:1::11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:77"}}`); err != nil {
		t.Fatal(err)
	}
	h.localAddrs = []localAddr{
		{"lo", netip.MustParseAddr("127.0.0.1")},
		{"lo", netip.MustParseAddr("::1")},
		{"eth9", netip.MustParseAddr("198.51.100.7")},
		{"eth9", netip.MustParseAddr("2001:db8::7")},
	}
	for _, tc := range []struct {
		network string
		want    []string // nil: accepted
	}{
		{"192.0.2.0/24", []string{"192.0.2.11", "PublicIP of the lease 198.18.7.0/24 in etcd"}},
		{"203.0.113.128/25", []string{"203.0.113.130", "PublicIP of the lease 198.18.130.0/24 in etcd"}},
		{"198.51.100.32/28", []string{"198.51.100.42", "PublicIP of the reservation 198.18.42.0/24 in etcd"}},
		{"198.51.100.0/24", []string{"198.51.100.7", "address of interface eth9 on this machine"}},
		{"198.18.0.0/16", nil},
		{"198.18.0.0/16;2001:db8::/48", []string{"config field IPv6Network", "2001:db8::7", "address of interface eth9 on this machine"}},
		{"198.18.0.0/16;2001:db8:1::/48", []string{"config field IPv6Network", "2001:db8:1::11", "PublicIPv6 of the reservation 198.18.77.0-24&2001:db8:100:77::-64 in etcd"}},
		{"198.18.0.0/16;2001:db8:100::/48", nil},
		{"198.18.0.0/16;2001:db8:100::/48;udp", []string{"config field EnableIPv6", "backend udp carries IPv4 only"}},
	} {
		t.Run(tc.network, func(t *testing.T) {
			h := &harness{t: t, env: h.env, localAddrs: h.localAddrs}
			if err := reg.PutConfig(t.Context(), []byte(netConfig)); err != nil {
				t.Fatal(err)
			}
			parts := strings.Split(tc.network, ";")
			backend := "vxlan"
			if len(parts) > 2 {
				backend = parts[2]
			}
			h.stdin = `{"Network":"` + parts[0] + `","Backend":{"Type":"` + backend + `"}}`
			if len(parts) > 1 {
				h.stdin = `{"Network":"` + parts[0] + `","EnableIPv6":true,"IPv6Network":"` + parts[1] + `","Backend":{"Type":"` + backend + `"}}`
			}
			if tc.want == nil {
				h.runOK("config", "set", "-")
				return
			}
			r := h.runFail(1, "config", "set", "-")
			prefix := []string{"refusing invalid config: config field Network", "contains the underlay address"}
			if len(parts) > 1 {
				prefix = []string{"refusing invalid config"}
			}
			for _, w := range append(prefix, tc.want...) {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q lacks %q", r.stderr, w)
				}
			}
			if out := h.runOK("config", "get"); strings.Contains(out, parts[len(parts)-1]) {
				t.Errorf("the refused config was written:\n%s", out)
			}
		})
	}
}

// TestConfigSetUnderlayRealAddrs: without a stand-in, config set reads the
// interfaces of the namespace it runs in. A Network around one of this
// machine's own IPv4 addresses is refused.
func TestConfigSetUnderlayRealAddrs(t *testing.T) {
	addrs, err := interfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var own *localAddr
	sawLoopback := false
	for i, a := range addrs {
		sawLoopback = sawLoopback || a.addr == netip.MustParseAddr("127.0.0.1")
		// An address a valid Network can contain (ParseConfig refuses
		// loopback, link-local, multicast and class E networks).
		if own == nil && a.addr.Is4() && !a.addr.IsLoopback() && !a.addr.IsLinkLocalUnicast() && a.addr.As4()[0] < 224 {
			own = &addrs[i]
		}
	}
	if !sawLoopback {
		t.Errorf("interfaceAddrs() = %v, lacks 127.0.0.1", addrs)
	}
	if own == nil {
		t.Skip("this machine has no usable IPv4 address outside loopback")
	}
	h, _, _ := withEtcd(t)
	network := netip.PrefixFrom(own.addr, 24).Masked()
	h.stdin = `{"Network":"` + network.String() + `","Backend":{"Type":"vxlan"}}`
	r := h.runFail(1, "config", "set", "-")
	if want := own.addr.String() + " is an address of interface " + own.iface + " on this machine"; !strings.Contains(r.stderr, want) {
		t.Fatalf("stderr %q lacks %q", r.stderr, want)
	}
}
