package main

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nltest"
)

// TestChooseInterface picks the underlay in a throwaway namespace with two
// interfaces, eth0 (192.0.2.11/24, the default route) and eth1
// (198.51.100.7/24), for every way of naming it.
func TestChooseInterface(t *testing.T) {
	ns := nltest.NewNS(t, "if")
	for _, args := range [][]string{
		{"link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"},
		{"link", "add", "eth1", "type", "veth", "peer", "name", "eth1p"},
		{"addr", "add", "192.0.2.11/24", "dev", "eth0"},
		{"addr", "add", "198.51.100.7/24", "dev", "eth1"},
		{"link", "set", "eth1", "mtu", "1400"},
	} {
		ns.IP(t, args...)
	}
	for _, dev := range []string{"eth0", "eth0p", "eth1", "eth1p"} {
		ns.IP(t, "link", "set", dev, "up")
	}
	ns.IP(t, "route", "add", "default", "via", "192.0.2.1", "dev", "eth0")
	k, err := nl.Open(ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	addr := netip.MustParseAddr
	tests := []struct {
		name    string
		cfg     Config
		iface   string
		addr    string
		public  string
		mtu     int
		wantErr string
	}{
		{name: "default route", iface: "eth0", addr: "192.0.2.11", mtu: 1500},
		{name: "--iface name", cfg: Config{Ifaces: []string{"eth1"}}, iface: "eth1", addr: "198.51.100.7", mtu: 1400},
		{name: "--iface address", cfg: Config{Ifaces: []string{"198.51.100.7"}}, iface: "eth1", addr: "198.51.100.7", mtu: 1400},
		{name: "--iface first match", cfg: Config{Ifaces: []string{"nosuch0", "203.0.113.1", "eth1", "eth0"}}, iface: "eth1", addr: "198.51.100.7", mtu: 1400},
		{name: "--iface none", cfg: Config{Ifaces: []string{"nosuch0"}}, wantErr: `no interface found matching ["nosuch0"]`},
		{name: "--iface without IPv4", cfg: Config{Ifaces: []string{"eth0p"}}, wantErr: "no global IPv4 address"},
		{name: "--iface-regex name", cfg: Config{IfaceRegex: []*regexp.Regexp{regexp.MustCompile(`^eth1$`)}}, iface: "eth1", addr: "198.51.100.7", mtu: 1400},
		{name: "--iface-regex address", cfg: Config{IfaceRegex: []*regexp.Regexp{regexp.MustCompile(`^198\.51\.`)}}, iface: "eth1", addr: "198.51.100.7", mtu: 1400},
		{name: "--iface-regex none", cfg: Config{IfaceRegex: []*regexp.Regexp{regexp.MustCompile(`^wlan`)}}, wantErr: "no interface matches"},
		{name: "--iface-can-reach", cfg: Config{IfaceReach: addr("198.51.100.50")}, iface: "eth1", addr: "198.51.100.7", mtu: 1400},
		{name: "--iface-can-reach via the default route", cfg: Config{IfaceReach: addr("203.0.113.9")}, iface: "eth0", addr: "192.0.2.11", mtu: 1500},
		{name: "--public-ip", cfg: Config{Ifaces: []string{"eth0"}, PublicIP: addr("203.0.113.77")}, iface: "eth0", addr: "192.0.2.11", public: "203.0.113.77", mtu: 1500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ext, err := chooseInterfaceIn(k, &tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %+v, %v; want an error with %q", ext, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.public == "" {
				tt.public = tt.addr
			}
			if ext.Name != tt.iface || ext.Addr != addr(tt.addr) || ext.PublicIP != addr(tt.public) || ext.MTU != tt.mtu || ext.Index == 0 {
				t.Fatalf("got %+v; want %s %s public %s MTU %d", ext, tt.iface, tt.addr, tt.public, tt.mtu)
			}
		})
	}

	// Without a default route nothing is chosen.
	ns.IP(t, "route", "del", "default")
	if ext, err := chooseInterfaceIn(k, &Config{}); err == nil || !strings.Contains(err.Error(), "no default route") {
		t.Fatalf("without a default route: %+v, %v", ext, err)
	}
}
