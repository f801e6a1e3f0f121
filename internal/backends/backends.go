// Package backends is the one registry of weft's data paths: the
// backend.Descriptor of each type, one line each. weftd builds its backend from it,
// and weftctl config set uses it to refuse, before anything is written to
// etcd, a config that weftd would refuse at start on every host.
//
// The registry is a plain list written out here, not filled by init()
// functions, so that who is wired to whom is visible in one place.
package backends

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/backend/hostgw"
	"github.com/weftnet/weft/backend/udp"
	"github.com/weftnet/weft/backend/vxlan"
	"github.com/weftnet/weft/backend/wireguard"
	"github.com/weftnet/weft/subnet"
)

// Descriptor is one registered data path (see backend.Descriptor).
type Descriptor = backend.Descriptor

// all lists every backend, sorted by Type: one line each.
var all = []Descriptor{
	hostgw.Descriptor,
	udp.Descriptor,
	vxlan.Descriptor,
	wireguard.Descriptor,
}

// All returns every registered backend, sorted by Type. The slice is a
// copy: callers may keep or modify it.
func All() []Descriptor {
	return append([]Descriptor(nil), all...)
}

// Types returns the registered type names, sorted.
func Types() []string {
	t := make([]string, len(all))
	for i, d := range all {
		t[i] = d.Type
	}
	return t
}

// Lookup finds the backend of a Backend.Type (already lower-cased by
// subnet.ParseConfig).
func Lookup(typ string) (Descriptor, bool) {
	for _, d := range all {
		if d.Type == typ {
			return d, true
		}
	}
	return Descriptor{}, false
}

// placeholderExt stands in for the underlay interface when a config is
// checked away from the host that will run it. Backends check only that the
// address is IPv4 (and host-gw that the public IP equals it), so a
// documentation address (RFC 5737) with a typical MTU serves.
var placeholderExt = backend.ExternalInterface{
	Name:     "placeholder",
	Addr:     netip.AddrFrom4([4]byte{192, 0, 2, 1}),
	PublicIP: netip.AddrFrom4([4]byte{192, 0, 2, 1}),
	MTU:      1500,
}

// Check refuses a network config that weftd would refuse at start: an
// unknown Backend.Type, or backend options its backend's own parser
// rejects (a VNI of 2^24, a port given as a string, a port out of range).
// Warnings the backend logs (unknown options, for example) go to logger,
// which may be nil to drop them.
func Check(cfg *subnet.Config, logger *slog.Logger) error {
	d, ok := Lookup(cfg.BackendType)
	if !ok {
		return &subnet.FieldError{
			Field: "Backend.Type",
			Rule:  fmt.Sprintf("unknown backend %q (want %s)", cfg.BackendType, strings.Join(Types(), ", ")),
		}
	}
	if cfg.EnableIPv6 && !d.DualStack {
		return &subnet.FieldError{
			Field: "EnableIPv6",
			Rule:  fmt.Sprintf("backend %s carries IPv4 only; dual stack needs %s", d.Type, strings.Join(dualStackTypes(), ", ")),
		}
	}
	return CheckOptions(d, cfg, logger)
}

// dualStackTypes returns the types of the backends that carry IPv6.
func dualStackTypes() []string {
	var t []string
	for _, d := range all {
		if d.DualStack {
			t = append(t, d.Type)
		}
	}
	if len(t) == 0 {
		return []string{"(none yet)"}
	}
	return t
}

// CheckOptions runs d's own option parser on cfg.Backend: it calls d.New
// with a placeholder underlay interface and discards the backend, which a
// Factory allows (it touches no kernel state). logger may be nil.
func CheckOptions(d Descriptor, cfg *subnet.Config, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	_, err := d.New(backend.Config{
		Network: cfg,
		Options: cfg.Backend,
		Ext:     placeholderExt,
		Netns:   netns.None(),
		Logger:  logger,
	})
	if err != nil {
		return fmt.Errorf("config field Backend: %w", err)
	}
	return nil
}
