package plugin

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/subnet"
)

// Defaults for the fields of NetConf.
const (
	DefaultSubnetFile = "/run/flannel/subnet.env"
	DefaultDataDir    = "/var/lib/cni/weft"
	DefaultBridge     = "cni0"
)

// NetConf is the plugin's network configuration: the standard fields plus
// weft's own. Unknown fields are ignored.
type NetConf struct {
	types.NetConf

	SubnetFile       string         `json:"subnetFile,omitempty"`
	DataDir          string         `json:"dataDir,omitempty"`
	Bridge           string         `json:"bridge,omitempty"`
	MTU              *int           `json:"mtu,omitempty"`
	IPMasq           *bool          `json:"ipMasq,omitempty"`
	HairpinMode      bool           `json:"hairpinMode,omitempty"`
	IsDefaultGateway *bool          `json:"isDefaultGateway,omitempty"`
	Routes           []*types.Route `json:"routes,omitempty"`
	LogFile          string         `json:"logFile,omitempty"`
}

// delegated are the fields also read from a flannel-style "delegate" object.
var delegated = map[string]bool{"bridge": true, "mtu": true, "ipMasq": true, "hairpinMode": true, "isDefaultGateway": true}

// Settings is a NetConf with the defaults that come from subnet.env applied.
type Settings struct {
	Name       string
	DataDir    string
	Bridge     string
	MTU        int
	IPMasq     bool
	Hairpin    bool
	DefaultGW  bool
	Routes     []types.Route
	Network    netip.Prefix // FLANNEL_NETWORK, the whole cluster network
	Subnet     netip.Prefix // this node's lease
	Gateway    netip.Addr   // the bridge address, FLANNEL_SUBNET's address
	SubnetFile string
}

func configError(field string, format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("invalid %q: %s", field, fmt.Sprintf(format, a...)), "")
}

// ParseConfig decodes and validates the network configuration. Errors are
// *types.Error with code ErrInvalidNetworkConfig (or ErrDecodingFailure for
// malformed JSON) and name the offending field.
func ParseConfig(data []byte) (*NetConf, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode network config: %v", err), "")
	}
	conf := &NetConf{}
	// Decode the standard fields; ours are decoded one by one below so
	// that an error names the field.
	if err := json.Unmarshal(data, &conf.NetConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode network config: %v", err), "")
	}
	fields := []struct {
		name string
		dst  any
	}{
		{"subnetFile", &conf.SubnetFile},
		{"dataDir", &conf.DataDir},
		{"bridge", &conf.Bridge},
		{"mtu", &conf.MTU},
		{"ipMasq", &conf.IPMasq},
		{"hairpinMode", &conf.HairpinMode},
		{"isDefaultGateway", &conf.IsDefaultGateway},
		{"routes", &conf.Routes},
		{"logFile", &conf.LogFile},
	}
	for _, f := range fields {
		v, ok := raw[f.name]
		if !ok || string(v) == "null" {
			continue
		}
		if err := json.Unmarshal(v, f.dst); err != nil {
			return nil, configError(f.name, "%v", err)
		}
	}
	// flannel configs carry bridge settings in "delegate"; honour the ones
	// we share when the top level does not set them.
	if v, ok := raw["delegate"]; ok && string(v) != "null" {
		var del map[string]json.RawMessage
		if err := json.Unmarshal(v, &del); err != nil {
			return nil, configError("delegate", "%v", err)
		}
		for _, f := range fields {
			dv, ok := del[f.name]
			if _, top := raw[f.name]; top || !ok || !delegated[f.name] || string(dv) == "null" {
				continue
			}
			if err := json.Unmarshal(dv, f.dst); err != nil {
				return nil, configError("delegate."+f.name, "%v", err)
			}
		}
	}
	if conf.SubnetFile == "" {
		conf.SubnetFile = DefaultSubnetFile
	}
	if conf.DataDir == "" {
		conf.DataDir = DefaultDataDir
	}
	if conf.Bridge == "" {
		conf.Bridge = DefaultBridge
	}
	if err := conf.validate(); err != nil {
		return nil, err
	}
	return conf, nil
}

func (c *NetConf) validate() error {
	if c.Name == "" {
		return configError("name", "must not be empty")
	}
	if strings.ContainsAny(c.Name, "/\x00") || c.Name == "." || c.Name == ".." {
		return configError("name", "%q cannot name a directory", c.Name)
	}
	if !filepath.IsAbs(c.DataDir) {
		return configError("dataDir", "%q is not an absolute path", c.DataDir)
	}
	if !filepath.IsAbs(c.SubnetFile) {
		return configError("subnetFile", "%q is not an absolute path", c.SubnetFile)
	}
	if c.LogFile != "" && !filepath.IsAbs(c.LogFile) {
		return configError("logFile", "%q is not an absolute path", c.LogFile)
	}
	if err := validIfName(c.Bridge); err != nil {
		return configError("bridge", "%v", err)
	}
	if c.MTU != nil {
		if err := validMTU(*c.MTU); err != nil {
			return configError("mtu", "%v", err)
		}
	}
	for i, r := range c.Routes {
		if r == nil || r.Dst.IP == nil || r.Dst.IP.To4() == nil || r.Dst.Mask == nil {
			return configError("routes", "route %d: dst must be an IPv4 CIDR", i)
		}
		if ones, bits := r.Dst.Mask.Size(); bits != 32 || ones < 0 {
			return configError("routes", "route %d: dst must be an IPv4 CIDR", i)
		}
		if r.GW != nil && r.GW.To4() == nil {
			return configError("routes", "route %d: gw %s is not IPv4", i, r.GW)
		}
	}
	return nil
}

func validIfName(n string) error {
	switch {
	case n == "":
		return fmt.Errorf("interface name is empty")
	case len(n) > 15:
		return fmt.Errorf("interface name %q is longer than 15 bytes", n)
	case n == "." || n == "..":
		return fmt.Errorf("interface name %q is reserved", n)
	case strings.ContainsAny(n, "/: \t\n\x00"):
		return fmt.Errorf("interface name %q contains '/', ':' or white space", n)
	}
	return nil
}

func validMTU(m int) error {
	if m < 68 || m > 65535 {
		return fmt.Errorf("%d is outside 68..65535", m)
	}
	return nil
}

// Resolve applies the defaults that come from subnet.env and checks that the
// lease is usable.
func (c *NetConf) Resolve(env subnet.Env) (*Settings, error) {
	s := &Settings{
		Name:    c.Name,
		DataDir: c.DataDir,
		Bridge:  c.Bridge,
		MTU:     env.MTU,
		// As with flannel's plugin and Docker's --ip-masq: the plugin
		// masquerades exactly when weftd does not (FLANNEL_IPMASQ=false).
		IPMasq:     !env.IPMasq,
		Hairpin:    c.HairpinMode,
		DefaultGW:  true,
		Network:    env.Network.Masked(),
		Subnet:     env.LeaseSubnet(),
		Gateway:    env.Subnet.Addr(),
		SubnetFile: c.SubnetFile,
	}
	if c.MTU != nil {
		s.MTU = *c.MTU
	} else if err := validMTU(s.MTU); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("FLANNEL_MTU in %s: %v", c.SubnetFile, err), "")
	}
	if c.IPMasq != nil {
		s.IPMasq = *c.IPMasq
	}
	if c.IsDefaultGateway != nil {
		s.DefaultGW = *c.IsDefaultGateway
	}
	if !s.Subnet.Addr().Is4() || s.Subnet.Bits() > 30 {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("FLANNEL_SUBNET in %s: %s is not an IPv4 subnet of /30 or larger", c.SubnetFile, env.Subnet), "")
	}
	if s.Gateway == s.Subnet.Addr() || !s.Network.Contains(s.Gateway) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("FLANNEL_SUBNET in %s: %s is not a host address inside FLANNEL_NETWORK %s", c.SubnetFile, env.Subnet, env.Network), "")
	}
	for _, r := range c.Routes {
		s.Routes = append(s.Routes, types.Route{Dst: net.IPNet{IP: r.Dst.IP.To4(), Mask: r.Dst.Mask}, GW: r.GW})
	}
	return s, nil
}
