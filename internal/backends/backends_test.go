package backends

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl/nltest"
	"github.com/weftnet/weft/subnet"
)

func parse(t *testing.T, raw string) *subnet.Config {
	t.Helper()
	cfg, err := subnet.ParseConfig([]byte(raw))
	if err != nil {
		t.Fatalf("ParseConfig(%s): %v", raw, err)
	}
	return cfg
}

func TestRegistry(t *testing.T) {
	types := Types()
	if !slices.IsSorted(types) {
		t.Errorf("Types() = %v, not sorted", types)
	}
	if want := []string{"host-gw", "udp", "vxlan", "wireguard"}; !slices.Equal(types, want) {
		t.Errorf("Types() = %v, want %v", types, want)
	}
	for _, d := range All() {
		got, ok := Lookup(d.Type)
		if !ok || got.Type != d.Type || got.New == nil || got.Cleanup == nil {
			t.Errorf("Lookup(%q) = %+v, %v", d.Type, got, ok)
		}
	}
	if _, ok := Lookup("vxlam"); ok {
		t.Error("Lookup(vxlam) found something")
	}
	// All hands out a copy.
	a := All()
	a[0].Type = "changed"
	if All()[0].Type == "changed" {
		t.Error("All() exposes the registry itself")
	}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name, backend string
		field         string // "" means valid
	}{
		{"vxlan defaults", `{"Type":"vxlan"}`, ""},
		{"vxlan all options", `{"Type":"VXLAN","VNI":4096,"Port":4789,"MTU":1400,"GBP":true,"DirectRouting":true}`, ""},
		{"vxlan largest VNI", `{"Type":"vxlan","VNI":16777215}`, ""},
		{"vxlan VNI too large", `{"Type":"vxlan","VNI":16777216}`, "VNI"},
		{"vxlan VNI negative", `{"Type":"vxlan","VNI":-1}`, "VNI"},
		{"vxlan VNI a string", `{"Type":"vxlan","VNI":"1"}`, "VNI"},
		{"vxlan port too large", `{"Type":"vxlan","Port":65536}`, "Port"},
		{"vxlan port negative", `{"Type":"vxlan","Port":-8472}`, "Port"},
		{"vxlan port a string", `{"Type":"vxlan","Port":"8472"}`, "Port"},
		{"vxlan MTU too small", `{"Type":"vxlan","MTU":60}`, "MTU"},
		{"vxlan DirectRouting a string", `{"Type":"vxlan","DirectRouting":"yes"}`, "DirectRouting"},
		{"host-gw", `{"Type":"host-gw"}`, ""},
		{"udp defaults", `{"Type":"udp"}`, ""},
		{"udp port", `{"Type":"udp","Port":9000}`, ""},
		{"udp port zero", `{"Type":"udp","Port":0}`, "Port"},
		{"udp port too large", `{"Type":"udp","Port":65536}`, "Port"},
		{"udp port a string", `{"Type":"udp","Port":"8285"}`, "Port"},
		{"udp MTU too small", `{"Type":"udp","MTU":100}`, "MTU"},
		{"wireguard defaults", `{"Type":"wireguard"}`, ""},
		{"wireguard all options", `{"Type":"wireguard","ListenPort":51000,"ListenPortV6":51001,"MTU":1500,"PSK":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","PersistentKeepaliveInterval":25,"Mode":"ipv4"}`, ""},
		{"wireguard port too large", `{"Type":"wireguard","ListenPort":65536}`, "ListenPort"},
		{"wireguard PSK short", `{"Type":"wireguard","PSK":"c2hvcnQ="}`, "PSK"},
		{"wireguard keepalive negative", `{"Type":"wireguard","PersistentKeepaliveInterval":-1}`, "PersistentKeepaliveInterval"},
		{"wireguard mode ipv6 pending", `{"Type":"wireguard","Mode":"ipv6"}`, "Mode"},
		{"wireguard mode unknown", `{"Type":"wireguard","Mode":"both"}`, "Mode"},
		{"unknown type", `{"Type":"vxlam"}`, "Backend.Type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := parse(t, `{"Network":"198.18.0.0/16","Backend":`+tc.backend+`}`)
			err := Check(cfg, nil)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Check accepted %s", tc.backend)
			}
			if !strings.Contains(err.Error(), tc.field) || !strings.HasPrefix(err.Error(), "config field Backend") {
				t.Fatalf("Check: %q, want an error naming config field Backend and %s", err, tc.field)
			}
		})
	}
	t.Run("unknown type is a FieldError listing the known ones", func(t *testing.T) {
		err := Check(parse(t, `{"Network":"198.18.0.0/16","Backend":{"Type":"vxlam"}}`), nil)
		var fe *subnet.FieldError
		if !errors.As(err, &fe) || fe.Field != "Backend.Type" || !strings.Contains(fe.Rule, "host-gw, udp, vxlan, wireguard") {
			t.Fatalf("Check: %#v", err)
		}
	})
	t.Run("warnings reach the logger", func(t *testing.T) {
		var buf bytes.Buffer
		err := Check(parse(t, `{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan","VNl":2}}`), slog.New(slog.NewTextHandler(&buf, nil)))
		if err != nil || !strings.Contains(buf.String(), "VNl") {
			t.Fatalf("Check: %v; log %q; want the unknown option VNl warned about", err, buf.String())
		}
	})
}

// TestFactoriesTouchNoKernelState holds every backend's Factory to its
// documented contract, which Check relies on: it validates options and
// touches no kernel state. Each Factory is pointed at a fresh namespace,
// whose links and routes must not change, and must start no goroutine.
func TestFactoriesTouchNoKernelState(t *testing.T) {
	ns := nltest.NewNS(t, "bk")
	state := func(h *netlink.Handle) string {
		links, err := h.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, l := range links {
			fmt.Fprintf(&b, "link %s %s\n", l.Attrs().Name, l.Attrs().Flags)
		}
		for _, r := range routes {
			fmt.Fprintf(&b, "route %s\n", r)
		}
		return b.String()
	}
	root, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	rootLinks := func() int {
		l, err := root.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		return len(l)
	}
	rootBefore := rootLinks()
	for _, d := range All() {
		t.Run(d.Type, func(t *testing.T) {
			cfg := parse(t, `{"Network":"198.18.0.0/16","Backend":{"Type":"`+d.Type+`"}}`)
			nsBefore := state(ns.NL)
			goroutines := runtime.NumGoroutine()
			be, err := d.New(backend.Config{
				Network: cfg, Options: cfg.Backend, Ext: placeholderExt,
				Netns: ns.Handle, Logger: slog.New(slog.DiscardHandler),
			})
			if err != nil || be == nil {
				t.Fatalf("New: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
			if after := runtime.NumGoroutine(); after > goroutines {
				t.Errorf("New started %d goroutine(s)", after-goroutines)
			}
			if after := state(ns.NL); after != nsBefore {
				t.Errorf("New changed the namespace:\n--- before:\n%s--- after:\n%s", nsBefore, after)
			}
		})
	}
	if rootLinks() != rootBefore {
		t.Error("the number of links in the test's own namespace changed")
	}
}
