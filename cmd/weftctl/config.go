package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/weftnet/weft/internal/backends"
	"github.com/weftnet/weft/subnet"
	"github.com/weftnet/weft/subnet/etcd"
)

func cmdConfig(ctx context.Context, e *env, c *cmdFlags, args []string) error {
	if len(args) == 0 {
		return usagef("want 'config get' or 'config set FILE|-'")
	}
	switch args[0] {
	case "get":
		if len(args) != 1 {
			return usagef("config get takes no arguments")
		}
		return configGet(ctx, e, c.output == "json")
	case "set":
		if len(args) != 2 {
			return usagef("config set takes one argument: a file, or - for standard input")
		}
		return configSet(ctx, e, args[1], c.output == "json")
	}
	return usagef("unknown config subcommand %q (want get or set)", args[0])
}

// configGet prints the stored config, indented. An invalid config is still
// printed, with a warning on stderr. What is stored may be anything, so a
// config that is not JSON is printed with its non-printing runes escaped,
// or as one JSON string with asJSON.
func configGet(ctx context.Context, e *env, asJSON bool) error {
	reg, err := e.registry()
	if err != nil {
		return err
	}
	raw, _, err := reg.ConfigRaw(ctx)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	out := []byte(textLines(string(raw)))
	if json.Indent(&buf, bytes.TrimSpace(raw), "", "  ") == nil {
		buf.WriteByte('\n')
		out = safeJSON(buf.Bytes())
	} else if asJSON {
		buf.Reset()
		if err := writeJSON(&buf, string(raw)); err != nil {
			return err
		}
		out = buf.Bytes()
	}
	if _, err := e.stdout.Write(out); err != nil {
		return err
	}
	cfg, err := subnet.ParseConfig(raw)
	if err == nil {
		err = backends.Check(cfg, nil)
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "weftctl config get: warning: the stored config is invalid: %s\n", text(err.Error()))
	}
	return nil
}

func configSet(ctx context.Context, e *env, file string, asJSON bool) error {
	var raw []byte
	var err error
	if file == "-" {
		raw, err = io.ReadAll(e.stdin)
	} else {
		raw, err = os.ReadFile(file)
	}
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	// Validate before connecting, so a bad file fails fast and offline:
	// first the network config, then the backend's own option parser, the
	// same code weftd runs at start.
	cfg, err := subnet.ParseConfig(raw)
	if err == nil {
		err = backends.Check(cfg, warnLogger(e.stderr, "weftctl config set: warning: "))
	}
	if err != nil {
		return fmt.Errorf("refusing invalid config: %w", err)
	}
	if cfg.BackendDefaulted {
		fmt.Fprintf(e.stderr, "weftctl config set: warning: no Backend section: weftd uses %s, flanneld would use udp; set Backend.Type in a mixed cluster\n", subnet.DefaultBackendType)
	}
	reg, err := e.registry()
	if err != nil {
		return err
	}
	if err := checkUnderlay(ctx, e, reg, cfg); err != nil {
		return fmt.Errorf("refusing invalid config: %w", err)
	}
	if err := reg.PutConfig(ctx, raw); err != nil {
		return err
	}
	if asJSON {
		return writeJSON(e.stdout, struct {
			Key     string `json:"key"`
			Written bool   `json:"written"`
		}{reg.ConfigKey(), true})
	}
	_, err = fmt.Fprintf(e.stdout, "config written to %s\n", reg.ConfigKey())
	return err
}

// checkUnderlay refuses a Network that contains an underlay address: one of
// this machine's own (every interface of the current network namespace), or
// the PublicIP of a lease or reservation already in etcd. weftd would route
// the whole network into the overlay, capturing the traffic between the
// hosts themselves. The error says where the address came from.
func checkUnderlay(ctx context.Context, e *env, reg *etcd.Registry, cfg *subnet.Config) error {
	list := e.localAddrs
	if list == nil {
		list = interfaceAddrs
	}
	local, err := list()
	if err != nil {
		return fmt.Errorf("list this machine's addresses to check Network against them: %w", err)
	}
	for _, a := range local {
		if err := cfg.CheckUnderlay(a.addr); err != nil {
			return fmt.Errorf("%w (%s is an address of interface %s on this machine)", err, a.addr, a.iface)
		}
	}
	snap, err := reg.Leases(ctx)
	if err != nil {
		return fmt.Errorf("list leases to check Network against their PublicIPs: %w", err)
	}
	for _, l := range snap.Leases {
		if err := cfg.CheckUnderlay(l.Attrs.PublicIP); err != nil {
			kind := "lease"
			if l.Reservation {
				kind = "reservation"
			}
			return fmt.Errorf("%w (%s is the PublicIP of the %s %s in etcd)", err, l.Attrs.PublicIP, kind, l.Subnet)
		}
	}
	return nil
}

// localAddr is one address of an interface of this machine.
type localAddr struct {
	iface string
	addr  netip.Addr
}

// interfaceAddrs lists the addresses of every interface in the current
// network namespace.
func interfaceAddrs() ([]localAddr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var out []localAddr
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", ifc.Name, err)
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
				out = append(out, localAddr{iface: ifc.Name, addr: ip.Unmap()})
			}
		}
	}
	return out, nil
}

// warnLogger turns what a backend logs while it checks its options (an
// unknown option, for example) into one warning line each on w:
// "<prefix><message> key=value ...".
func warnLogger(w io.Writer, prefix string) *slog.Logger {
	return slog.New(&lineHandler{w: w, prefix: prefix})
}

// lineHandler is a minimal slog.Handler for warnLogger. Groups are
// flattened; the backends do not use them.
type lineHandler struct {
	w      io.Writer
	prefix string
	attrs  []slog.Attr
}

func (h *lineHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *lineHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	_, err := fmt.Fprintf(h.w, "%s%s\n", h.prefix, text(b.String()))
	return err
}

func (h *lineHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &lineHandler{w: h.w, prefix: h.prefix, attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...)}
}

func (h *lineHandler) WithGroup(string) slog.Handler { return h }
