package plugin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
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
// weft's own. Unknown fields are ignored; those that look like a misspelt
// known field produce a warning (Warnings).
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

	// Warnings are problems that do not stop the plugin, such as a field
	// name that looks like a misspelling of a known one.
	Warnings []string `json:"-"`
	// written maps a field to the name the user wrote it under: "mtu" or
	// "delegate.mtu".
	written map[string]string
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

	// Network6, Subnet6 and Gateway6 are the IPv6 counterparts, from
	// FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET; all invalid when
	// subnet.env has no IPv6 variables (an IPv4-only network).
	Network6 netip.Prefix
	Subnet6  netip.Prefix
	Gateway6 netip.Addr
}

// DualStack reports whether pods get an IPv6 address too.
func (s *Settings) DualStack() bool { return s.Subnet6.IsValid() }

// family is one address family of a pod's attachment: what it gets from
// the node's lease of that family.
type family struct {
	name    string // "IPv4" or "IPv6", for messages
	network netip.Prefix
	subnet  netip.Prefix
	gateway netip.Addr
}

// families returns the families pods get addresses of: IPv4, then IPv6
// when the node has an IPv6 lease.
func (s *Settings) families() []family {
	out := []family{{"IPv4", s.Network, s.Subnet, s.Gateway}}
	if s.DualStack() {
		out = append(out, family{"IPv6", s.Network6, s.Subnet6, s.Gateway6})
	}
	return out
}

// defaultRoute is 0.0.0.0/0 or ::/0.
func (f family) defaultRoute() netip.Prefix {
	if f.gateway.Is6() {
		return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
}

// MinMTU6 is the smallest link MTU that carries IPv6 (RFC 8200); the
// kernel turns IPv6 off on a device with a smaller one.
const MinMTU6 = 1280

// configError is an invalid-network-config error that starts with the field
// as the user wrote it, e.g. "delegate.mtu: 70000 is outside 68..65535".
func configError(field string, format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, field+": "+fmt.Sprintf(format, a...), "")
}

// field is one of weft's own fields and how to decode it.
type field struct {
	name   string
	decode func(path string, v json.RawMessage) error
}

func (c *NetConf) fields() []field {
	return []field{
		{"subnetFile", decodeString(&c.SubnetFile)},
		{"dataDir", decodeString(&c.DataDir)},
		{"bridge", decodeString(&c.Bridge)},
		{"mtu", decodeInt(&c.MTU)},
		{"ipMasq", decodeBoolPtr(&c.IPMasq)},
		{"hairpinMode", decodeBool(&c.HairpinMode)},
		{"isDefaultGateway", decodeBoolPtr(&c.IsDefaultGateway)},
		{"routes", decodeRoutes(&c.Routes)},
		{"logFile", decodeString(&c.LogFile)},
	}
}

// standardFields are the top-level names CNI defines or runtimes inject;
// they are neither weft's nor unknown.
var standardFields = []string{
	"cniVersion", "cniVersions", "name", "type", "ipam", "dns", "capabilities", "runtimeConfig",
	"prevResult", "args", "cni.dev/valid-attachments", "cni.dev/attachments", "delegate",
}

// delegateKnown are the names a flannel "delegate" object may carry: the
// reference bridge plugin's fields. Only the delegated ones are read.
var delegateKnown = []string{
	"cniVersion", "name", "type", "bridge", "isGateway", "isDefaultGateway", "forceAddress", "ipMasq",
	"mtu", "hairpinMode", "ipam", "promiscMode", "vlan", "vlanTrunk", "preserveDefaultVlan",
	"enabledad", "macspoofchk", "disableContainerInterface", "portIsolation", "dns",
}

// ParseConfig decodes and validates the network configuration. Errors are
// *types.Error with code ErrInvalidNetworkConfig (or ErrDecodingFailure for
// malformed JSON) whose message starts with the offending field as the user
// wrote it.
func ParseConfig(data []byte) (*NetConf, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode network config: %v", err), "")
	}
	conf := &NetConf{written: map[string]string{}}
	// The standard string fields get the same messages as ours; the rest
	// of the standard fields are decoded by the CNI library.
	for _, name := range []string{"cniVersion", "name", "type"} {
		if v, ok := raw[name]; ok && !isNull(v) && jsonKind(v) != "a string" {
			return nil, configError(name, "want a string, got %s", jsonKind(v))
		}
	}
	for _, name := range []string{"cni.dev/valid-attachments", "cni.dev/attachments"} {
		var list []types.GCAttachment
		if v, ok := raw[name]; ok && !isNull(v) && (jsonKind(v) != "a list" || json.Unmarshal(v, &list) != nil) {
			return nil, configError(name, `want a list of {"containerID": ..., "ifname": ...}, got %s`, jsonKind(v))
		}
	}
	if err := json.Unmarshal(data, &conf.NetConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode network config: %v", err), "")
	}
	fields := conf.fields()
	known := slices.Clone(standardFields)
	for _, f := range fields {
		known = append(known, f.name)
		v, ok := raw[f.name]
		if !ok || isNull(v) {
			continue
		}
		conf.written[f.name] = f.name
		if err := f.decode(f.name, v); err != nil {
			return nil, err
		}
	}
	conf.Warnings = append(conf.Warnings, misspelt(raw, known, "")...)
	// flannel configs carry bridge settings in "delegate"; honour the ones
	// we share when the top level does not set them.
	if v, ok := raw["delegate"]; ok && !isNull(v) {
		var del map[string]json.RawMessage
		if jsonKind(v) != "an object" || json.Unmarshal(v, &del) != nil {
			return nil, configError("delegate", "want an object, got %s", jsonKind(v))
		}
		for _, f := range fields {
			dv, ok := del[f.name]
			if _, top := raw[f.name]; top || !ok || !delegated[f.name] || isNull(dv) {
				continue
			}
			path := "delegate." + f.name
			conf.written[f.name] = path
			if err := f.decode(path, dv); err != nil {
				return nil, err
			}
		}
		conf.Warnings = append(conf.Warnings, misspelt(del, delegateKnown, "delegate.")...)
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

// path is the name under which the user wrote field.
func (c *NetConf) path(field string) string {
	if p, ok := c.written[field]; ok {
		return p
	}
	return field
}

func (c *NetConf) validate() error {
	if c.Name == "" {
		return configError("name", "must not be empty")
	}
	if strings.ContainsAny(c.Name, "/\x00") || c.Name == "." || c.Name == ".." {
		return configError("name", "%q cannot name a directory", c.Name)
	}
	if !filepath.IsAbs(c.DataDir) {
		return configError(c.path("dataDir"), "%q is not an absolute path", c.DataDir)
	}
	if !filepath.IsAbs(c.SubnetFile) {
		return configError(c.path("subnetFile"), "%q is not an absolute path", c.SubnetFile)
	}
	if c.LogFile != "" && !filepath.IsAbs(c.LogFile) {
		return configError(c.path("logFile"), "%q is not an absolute path", c.LogFile)
	}
	if err := validIfName(c.Bridge); err != nil {
		return configError(c.path("bridge"), "%v", err)
	}
	if c.MTU != nil {
		if err := validMTU(*c.MTU); err != nil {
			return configError(c.path("mtu"), "%v", err)
		}
	}
	return nil
}

func isNull(v json.RawMessage) bool { return string(bytes.TrimSpace(v)) == "null" }

// jsonKind names the kind of a JSON value for messages: "a string",
// "a number", "true or false", "an object", "a list" or "null".
func jsonKind(v json.RawMessage) string {
	v = bytes.TrimSpace(v)
	if len(v) == 0 {
		return "nothing"
	}
	switch v[0] {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "a list"
	case 't', 'f':
		return "true or false"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

func decodeString(dst *string) func(string, json.RawMessage) error {
	return func(path string, v json.RawMessage) error {
		if jsonKind(v) != "a string" || json.Unmarshal(v, dst) != nil {
			return configError(path, "want a string, got %s", jsonKind(v))
		}
		return nil
	}
}

func decodeBool(dst *bool) func(string, json.RawMessage) error {
	return func(path string, v json.RawMessage) error {
		if jsonKind(v) != "true or false" || json.Unmarshal(v, dst) != nil {
			return configError(path, "want true or false, got %s", jsonKind(v))
		}
		return nil
	}
}

func decodeBoolPtr(dst **bool) func(string, json.RawMessage) error {
	return func(path string, v json.RawMessage) error {
		var b bool
		if err := decodeBool(&b)(path, v); err != nil {
			return err
		}
		*dst = &b
		return nil
	}
}

func decodeInt(dst **int) func(string, json.RawMessage) error {
	return func(path string, v json.RawMessage) error {
		var n int
		if jsonKind(v) != "a number" {
			return configError(path, "want an integer, got %s", jsonKind(v))
		}
		if json.Unmarshal(v, &n) != nil {
			return configError(path, "want an integer, got %s", bytes.TrimSpace(v))
		}
		*dst = &n
		return nil
	}
}

// decodeRoutes reads a list of {"dst": "CIDR", "gw": "IP"}; both must be
// IPv4.
func decodeRoutes(dst *[]*types.Route) func(string, json.RawMessage) error {
	return func(path string, v json.RawMessage) error {
		var list []json.RawMessage
		if jsonKind(v) != "a list" || json.Unmarshal(v, &list) != nil {
			return configError(path, `want a list of routes ({"dst": "CIDR", "gw": "IP"}), got %s`, jsonKind(v))
		}
		out := make([]*types.Route, 0, len(list))
		for i, rv := range list {
			rpath := fmt.Sprintf("%s[%d]", path, i)
			var r map[string]json.RawMessage
			if jsonKind(rv) != "an object" || json.Unmarshal(rv, &r) != nil {
				return configError(rpath, `want a route ({"dst": "CIDR", "gw": "IP"}), got %s`, jsonKind(rv))
			}
			var dstS, gwS string
			dv, ok := r["dst"]
			if !ok || isNull(dv) {
				return configError(rpath+".dst", "missing; want an IPv4 CIDR such as 198.19.0.0/16")
			}
			if err := decodeString(&dstS)(rpath+".dst", dv); err != nil {
				return err
			}
			ip, n, err := net.ParseCIDR(dstS)
			if err != nil || ip.To4() == nil {
				return configError(rpath+".dst", "want an IPv4 CIDR such as 198.19.0.0/16, got %q", dstS)
			}
			route := &types.Route{Dst: net.IPNet{IP: ip, Mask: n.Mask}}
			if gv, ok := r["gw"]; ok && !isNull(gv) {
				if err := decodeString(&gwS)(rpath+".gw", gv); err != nil {
					return err
				}
				gw := net.ParseIP(gwS)
				if gw == nil || gw.To4() == nil {
					return configError(rpath+".gw", "want an IPv4 address, got %q", gwS)
				}
				route.GW = gw
			}
			out = append(out, route)
		}
		*dst = out
		return nil
	}
}

// misspelt returns a warning for each name of obj that is not known but
// is close to a known one (a typo, or the wrong case: JSON names are
// case-sensitive, so "MTU" is not "mtu").
func misspelt(obj map[string]json.RawMessage, known []string, prefix string) []string {
	var out []string
	names := make([]string, 0, len(obj))
	for name := range obj {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if slices.Contains(known, name) {
			continue
		}
		if k, ok := closest(name, known); ok {
			out = append(out, fmt.Sprintf("unknown field %q is ignored; did you mean %q?", prefix+name, prefix+k))
		}
	}
	return out
}

// closest returns the known name within a small edit distance of name,
// ignoring case: at most 1 for names of up to 7 bytes, else 2.
func closest(name string, known []string) (string, bool) {
	best, bestD := "", -1
	for _, k := range known {
		limit := 1
		if len(k) > 7 {
			limit = 2
		}
		if len(name) > len(k)+limit || len(name) < len(k)-limit {
			continue // too far apart, and keeps the distance cheap for huge names
		}
		d := editDistance(strings.ToLower(name), strings.ToLower(k))
		if d <= limit && (bestD < 0 || d < bestD) {
			best, bestD = k, d
		}
	}
	return best, bestD >= 0
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and transpositions of adjacent bytes.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
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
	if env.IPv6Subnet.IsValid() {
		if err := c.resolve6(env, s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// resolve6 fills the IPv6 settings from FLANNEL_IPV6_NETWORK and
// FLANNEL_IPV6_SUBNET, which subnet.ParseEnv has seen to be IPv6 prefixes,
// set together, the subnet inside the network. It refuses what would
// break the pod or the host: a subnet too small for a gateway and a pod, a
// gateway that is the subnet's own address, ranges that cannot be a pod
// network, and an MTU too small for IPv6.
func (c *NetConf) resolve6(env subnet.Env, s *Settings) error {
	bad := func(format string, a ...any) error {
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("FLANNEL_IPV6_SUBNET in %s: ", c.SubnetFile)+fmt.Sprintf(format, a...), "")
	}
	sub := env.LeaseSubnet6()
	gw := env.IPv6Subnet.Addr()
	switch {
	case sub.Bits() > 126:
		return bad("%s is not an IPv6 subnet of /126 or larger", env.IPv6Subnet)
	case gw == sub.Addr():
		return bad("%s is the subnet's own address (the subnet-router anycast), not a host address for the gateway", env.IPv6Subnet)
	case !env.IPv6Network.Masked().Contains(gw) || sub.Bits() < env.IPv6Network.Bits():
		return bad("%s is not inside FLANNEL_IPV6_NETWORK %s", env.IPv6Subnet, env.IPv6Network)
	}
	for _, r := range subnet.ReservedRanges6 {
		if env.IPv6Network.Overlaps(r) {
			return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("FLANNEL_IPV6_NETWORK in %s: %s overlaps the reserved range %s, which cannot be a pod network", c.SubnetFile, env.IPv6Network, r), "")
		}
	}
	if s.MTU < MinMTU6 {
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("%s: %d is below %d, the smallest MTU that carries IPv6, and %s has IPv6 subnets", c.mtuSource(), s.MTU, MinMTU6, c.SubnetFile), "")
	}
	s.Network6 = env.IPv6Network.Masked()
	s.Subnet6 = sub
	s.Gateway6 = gw
	return nil
}

// mtuSource names where the MTU came from, for messages.
func (c *NetConf) mtuSource() string {
	if c.MTU != nil {
		return c.path("mtu")
	}
	return "FLANNEL_MTU in " + c.SubnetFile
}
