package subnet

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestEnvFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "subnet.env")
	e := Env{
		Network: netip.MustParsePrefix("10.5.0.0/16"),
		Subnet:  GatewayPrefix(netip.MustParsePrefix("10.5.34.0/24")),
		MTU:     1450,
	}
	if err := WriteEnvFile(path, e); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	want := "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.34.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
	if string(data) != want {
		t.Errorf("file:\n%s\nwant:\n%s", data, want)
	}
	got, err := ReadEnvFile(path)
	if err != nil || got != e {
		t.Errorf("read back %+v, %v", got, err)
	}
	if got.LeaseSubnet().String() != "10.5.34.0/24" {
		t.Errorf("LeaseSubnet = %s", got.LeaseSubnet())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func TestParseEnvErrors(t *testing.T) {
	for _, s := range []string{"", "FLANNEL_NETWORK=10.5.0.0/16\n", "FLANNEL_SUBNET=10.5.1.1/24\n", "FLANNEL_NETWORK=x\nFLANNEL_SUBNET=10.5.1.1/24\n", "garbage\n", "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.1.1/24\nFLANNEL_MTU=abc\n"} {
		if _, err := ParseEnv([]byte(s)); err == nil {
			t.Errorf("%q: want an error", s)
		}
	}
}

func TestEnvFileDualStack(t *testing.T) {
	e := Env{
		Network:     netip.MustParsePrefix("198.18.0.0/16"),
		Subnet:      GatewayPrefix(netip.MustParsePrefix("198.18.34.0/24")),
		MTU:         1450,
		IPMasq:      true,
		IPv6Network: netip.MustParsePrefix("2001:db8:100::/48"),
		IPv6Subnet:  GatewayPrefix(netip.MustParsePrefix("2001:db8:100:59::/64")),
	}
	want := "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.34.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n" +
		"FLANNEL_IPV6_NETWORK=2001:db8:100::/48\nFLANNEL_IPV6_SUBNET=2001:db8:100:59::1/64\n"
	if got := string(e.Marshal()); got != want {
		t.Fatalf("file:\n%s\nwant:\n%s", got, want)
	}
	got, err := ParseEnv(e.Marshal())
	if err != nil || got != e {
		t.Fatalf("read back %+v, %v", got, err)
	}
	if got.LeaseSubnet6().String() != "2001:db8:100:59::/64" {
		t.Fatalf("LeaseSubnet6 = %s", got.LeaseSubnet6())
	}
	base := "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.34.1/24\n"
	for _, s := range []string{
		base + "FLANNEL_IPV6_NETWORK=2001:db8:100::/48\n",
		base + "FLANNEL_IPV6_SUBNET=2001:db8:100:59::1/64\n",
		base + "FLANNEL_IPV6_NETWORK=198.19.0.0/16\nFLANNEL_IPV6_SUBNET=2001:db8:100:59::1/64\n",
		base + "FLANNEL_IPV6_NETWORK=2001:db8:100::/48\nFLANNEL_IPV6_SUBNET=2001:db8:200::1/64\n",
	} {
		if _, err := ParseEnv([]byte(s)); err == nil {
			t.Errorf("%q: want an error", s)
		}
	}
}
