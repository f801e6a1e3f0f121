package vxlan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// options are the vxlan settings of the network config's Backend object.
// Names match case-insensitively, as flannel's do.
type options struct {
	VNI           int
	Port          int
	MTU           int // 0: underlay MTU - 50
	GBP           bool
	DirectRouting bool
	// Unknown lists option names we do not use, for a warning.
	Unknown []string
}

const (
	defaultVNI  = 1
	defaultPort = 8472
	// overhead is what VXLAN encapsulation adds to an IPv4 packet:
	// outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
	overhead = 50
	// overhead6 is the same over an IPv6 underlay: the outer IPv6 header
	// is 40 bytes.
	overhead6 = 70
)

func parseOptions(raw json.RawMessage) (options, error) {
	o := options{VNI: defaultVNI, Port: defaultPort}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return o, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return o, fmt.Errorf("vxlan backend options: %w", err)
	}
	for k, v := range m {
		var err error
		switch strings.ToLower(k) {
		case "type":
		case "vni":
			err = json.Unmarshal(v, &o.VNI)
			if err == nil && (o.VNI < 0 || o.VNI >= 1<<24) {
				err = fmt.Errorf("%d is not a 24-bit VXLAN network identifier", o.VNI)
			}
		case "port":
			err = json.Unmarshal(v, &o.Port)
			if err == nil && o.Port == 0 {
				o.Port = defaultPort
			}
			if err == nil && (o.Port < 0 || o.Port > 65535) {
				err = fmt.Errorf("%d is not a UDP port", o.Port)
			}
		case "mtu":
			err = json.Unmarshal(v, &o.MTU)
			if err == nil && o.MTU != 0 && (o.MTU < 68 || o.MTU > 65535) {
				err = fmt.Errorf("%d is outside 68..65535", o.MTU)
			}
		case "gbp":
			err = json.Unmarshal(v, &o.GBP)
		case "directrouting":
			err = json.Unmarshal(v, &o.DirectRouting)
		default:
			o.Unknown = append(o.Unknown, k)
		}
		if err != nil {
			return o, fmt.Errorf("vxlan backend option %s: %w", k, err)
		}
	}
	return o, nil
}
