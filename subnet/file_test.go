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
