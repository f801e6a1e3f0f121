package subnet

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Env is the content of subnet.env, the file weftd writes for the CNI
// plugin and for Docker: the same variables flanneld writes.
type Env struct {
	Network netip.Prefix // FLANNEL_NETWORK
	Subnet  netip.Prefix // FLANNEL_SUBNET: our lease's network address + 1, with its length
	MTU     int          // FLANNEL_MTU
	IPMasq  bool         // FLANNEL_IPMASQ
	// IPv6Network and IPv6Subnet are FLANNEL_IPV6_NETWORK and
	// FLANNEL_IPV6_SUBNET (the IPv6 lease's first address with its
	// length); invalid on an IPv4-only network, and then not written.
	IPv6Network netip.Prefix
	IPv6Subnet  netip.Prefix
}

// LeaseSubnet6 is the leased IPv6 subnet itself (FLANNEL_IPV6_SUBNET
// masked), invalid when there is none.
func (e Env) LeaseSubnet6() netip.Prefix {
	if !e.IPv6Subnet.IsValid() {
		return netip.Prefix{}
	}
	return e.IPv6Subnet.Masked()
}

// LeaseSubnet is the leased subnet itself (FLANNEL_SUBNET masked).
func (e Env) LeaseSubnet() netip.Prefix { return e.Subnet.Masked() }

// GatewayPrefix returns the lease's first host address with the lease length,
// the value of FLANNEL_SUBNET.
func GatewayPrefix(lease netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(lease.Masked().Addr().Next(), lease.Bits())
}

// Marshal renders the file, one KEY=VALUE per line.
func (e Env) Marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", e.Network)
	fmt.Fprintf(&b, "FLANNEL_SUBNET=%s\n", e.Subnet)
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", e.MTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%t\n", e.IPMasq)
	if e.IPv6Network.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_IPV6_NETWORK=%s\n", e.IPv6Network)
	}
	if e.IPv6Subnet.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_IPV6_SUBNET=%s\n", e.IPv6Subnet)
	}
	return b.Bytes()
}

// WriteEnvFile writes the file atomically: a temporary file in the same
// directory, fsync, then rename over the old one.
func WriteEnvFile(path string, e Env) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write subnet file: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write subnet file: %w", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(e.Marshal()); err != nil {
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	ok = true
	return nil
}

// ReadEnvFile reads and parses a subnet file.
func ReadEnvFile(path string) (Env, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Env{}, fmt.Errorf("read subnet file: %w", err)
	}
	e, err := ParseEnv(data)
	if err != nil {
		return Env{}, fmt.Errorf("subnet file %s: %w", path, err)
	}
	return e, nil
}

// ParseEnv parses subnet.env content. FLANNEL_NETWORK and FLANNEL_SUBNET are
// required; the IPv6 variables are optional but must go together; unknown
// variables are ignored.
func ParseEnv(data []byte) (Env, error) {
	var e Env
	var haveNet, haveSub bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return Env{}, fmt.Errorf("line %d: want KEY=VALUE, got %q", line, s)
		}
		var err error
		switch k {
		case "FLANNEL_NETWORK":
			e.Network, err = netip.ParsePrefix(v)
			haveNet = true
		case "FLANNEL_SUBNET":
			e.Subnet, err = netip.ParsePrefix(v)
			haveSub = true
		case "FLANNEL_MTU":
			e.MTU, err = strconv.Atoi(v)
		case "FLANNEL_IPMASQ":
			e.IPMasq, err = strconv.ParseBool(v)
		case "FLANNEL_IPV6_NETWORK":
			e.IPv6Network, err = parsePrefix6(v)
		case "FLANNEL_IPV6_SUBNET":
			e.IPv6Subnet, err = parsePrefix6(v)
		}
		if err != nil {
			return Env{}, fmt.Errorf("line %d: %s: %w", line, k, err)
		}
	}
	if !haveNet {
		return Env{}, fmt.Errorf("FLANNEL_NETWORK is missing")
	}
	if !haveSub {
		return Env{}, fmt.Errorf("FLANNEL_SUBNET is missing")
	}
	if e.IPv6Network.IsValid() != e.IPv6Subnet.IsValid() {
		return Env{}, fmt.Errorf("FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET must be set together")
	}
	if e.IPv6Subnet.IsValid() && !e.IPv6Network.Contains(e.IPv6Subnet.Addr()) {
		return Env{}, fmt.Errorf("FLANNEL_IPV6_SUBNET %s is outside FLANNEL_IPV6_NETWORK %s", e.IPv6Subnet, e.IPv6Network)
	}
	return e, nil
}

func parsePrefix6(v string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	if !p.Addr().Is6() || p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%s is not an IPv6 prefix", v)
	}
	return p, nil
}
