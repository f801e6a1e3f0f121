package wireguard

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Options are the wireguard settings of the network config's Backend
// object, with defaults applied. Names match case-insensitively, as
// flannel's do.
type Options struct {
	ListenPort   int
	ListenPortV6 int
	// MTU is the underlay MTU the device's MTU is derived from (MTU -
	// 80); 0 means the external interface's.
	MTU int
	// PSK is the cluster's pre-shared key (zero: none). It is a secret:
	// String hides it.
	PSK       wgtypes.Key
	HavePSK   bool
	Keepalive time.Duration
	Mode      string
}

// Defaults, as flannel's.
const (
	DefaultListenPort   = 51820
	DefaultListenPortV6 = 51821
	// overhead is what WireGuard adds to an inner packet over IPv4 or
	// IPv6: outer IP header (IPv6's 40), UDP (8), WireGuard header (16)
	// and authentication tag (16).
	overhead = 80
)

// The modes flannel knows. weft runs IPv4 only for now: "ipv6" and
// "separate" (one device per family) need IPv6 leases.
var modes = map[string]string{
	"":         "",
	"auto":     "",
	"ipv4":     "",
	"separate": "needs IPv6 (dual stack), which weft does not support yet",
	"ipv6":     "needs IPv6 (dual stack), which weft does not support yet",
}

// parseOptions reads a Backend object. A PSK is refused unless it is 32
// bytes of base64; the error never quotes it.
func parseOptions(raw json.RawMessage) (Options, error) {
	o := Options{ListenPort: DefaultListenPort, ListenPortV6: DefaultListenPortV6, Mode: "auto"}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return o, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return o, fmt.Errorf("wireguard backend options: %w", err)
	}
	port := func(v json.RawMessage, def int) (int, error) {
		var p int
		if err := json.Unmarshal(v, &p); err != nil {
			return 0, err
		}
		if p == 0 {
			return def, nil
		}
		if p < 1 || p > 65535 {
			return 0, fmt.Errorf("%d is not a UDP port", p)
		}
		return p, nil
	}
	for k, v := range m {
		var err error
		switch strings.ToLower(k) {
		case "type":
		case "listenport":
			o.ListenPort, err = port(v, DefaultListenPort)
		case "listenportv6":
			o.ListenPortV6, err = port(v, DefaultListenPortV6)
		case "mtu":
			err = json.Unmarshal(v, &o.MTU)
			if err == nil && o.MTU != 0 && (o.MTU < 576+overhead || o.MTU > 65535) {
				err = fmt.Errorf("%d is outside %d..65535", o.MTU, 576+overhead)
			}
		case "psk":
			var s string
			if err = json.Unmarshal(v, &s); err != nil {
				break
			}
			if s == "" {
				break
			}
			b, derr := base64.StdEncoding.DecodeString(s)
			if derr != nil || len(b) != wgtypes.KeyLen {
				err = fmt.Errorf("not a base64 WireGuard key (32 bytes); generate one with wg genpsk")
				break
			}
			copy(o.PSK[:], b)
			o.HavePSK = true
		case "persistentkeepaliveinterval":
			var s int64
			err = json.Unmarshal(v, &s)
			if err == nil && (s < 0 || s > 65535) {
				err = fmt.Errorf("%d seconds is outside 0..65535", s)
			}
			o.Keepalive = time.Duration(s) * time.Second
		case "mode":
			err = json.Unmarshal(v, &o.Mode)
			o.Mode = strings.ToLower(o.Mode)
			if why, ok := modes[o.Mode]; err == nil && !ok {
				err = fmt.Errorf("%q is not separate, auto, ipv4 or ipv6", o.Mode)
			} else if err == nil && why != "" {
				err = fmt.Errorf("%q %s; use auto or ipv4", o.Mode, why)
			}
			if o.Mode == "" {
				o.Mode = "auto"
			}
		default:
			// Unknown keys are ignored, as flannel does.
			continue
		}
		if err != nil {
			return o, fmt.Errorf("wireguard backend option %s: %w", k, err)
		}
	}
	return o, nil
}

// String describes the options without the PSK.
func (o Options) String() string {
	return fmt.Sprintf("ListenPort=%d MTU=%d PSK=%v PersistentKeepaliveInterval=%s Mode=%s", o.ListenPort, o.MTU, o.HavePSK, o.Keepalive, o.Mode)
}
