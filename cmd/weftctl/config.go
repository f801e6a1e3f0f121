package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
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
		return configSet(ctx, e, args[1], c.output == "json", c.force)
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

func configSet(ctx context.Context, e *env, file string, asJSON, force bool) error {
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
	if unknown := unknownKeys(raw, cfg.BackendType); len(unknown) > 0 {
		if !force {
			return fmt.Errorf("refusing config: %s (--force stores unknown fields, for a newer weftd)", strings.Join(unknown, "; "))
		}
		for _, u := range unknown {
			fmt.Fprintf(e.stderr, "weftctl config set: warning: %s; stored anyway (--force): this weftd ignores it\n", u)
		}
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

// unknownKeys names every key of the config that weftd does not read, with
// the nearest known key when one is close: the top-level keys of
// subnet.ConfigKeys and, inside Backend, Type and the keys of the backend's
// descriptor. Keys match case-insensitively, as encoding/json matches them.
// raw has been parsed already; what does not decode has no unknown keys.
func unknownKeys(raw []byte, backendType string) []string {
	var top map[string]json.RawMessage
	if json.Unmarshal(raw, &top) != nil {
		return nil
	}
	var out []string
	check := func(prefix string, m map[string]json.RawMessage, known []string) {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if slices.ContainsFunc(known, func(n string) bool { return strings.EqualFold(n, k) }) {
				continue
			}
			msg := fmt.Sprintf("unknown field %s%s", prefix, text(k))
			if near := nearest(k, known); near != "" {
				msg += "; did you mean " + near + "?"
			}
			out = append(out, msg)
		}
	}
	check("", top, subnet.ConfigKeys())
	for k, v := range top {
		if !strings.EqualFold(k, "Backend") {
			continue
		}
		var be map[string]json.RawMessage
		if json.Unmarshal(v, &be) != nil {
			continue
		}
		known := []string{"Type"}
		if d, ok := backends.Lookup(backendType); ok {
			known = append(known, d.Keys...)
		}
		check("Backend.", be, known)
	}
	return out
}

// nearest returns the known key closest to k (case-insensitive edit
// distance, a swap of two neighbours counting once), or "" when none is
// close enough to be a likely typo.
func nearest(k string, known []string) string {
	best, bestD := "", 0
	for _, n := range known {
		d := editDistance(strings.ToLower(k), strings.ToLower(n))
		if best == "" || d < bestD {
			best, bestD = n, d
		}
	}
	if best == "" || bestD > max(2, len(best)/3) {
		return ""
	}
	return best
}

// editDistance is the optimal string alignment distance of a and b.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
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
		kind := "lease"
		if l.Reservation {
			kind = "reservation"
		}
		if err := cfg.CheckUnderlay(l.Attrs.PublicIP); err != nil {
			return fmt.Errorf("%w (%s is the PublicIP of the %s %s in etcd)", err, l.Attrs.PublicIP, kind, l.Subnet)
		}
		if a := l.Attrs.PublicIPv6; a.IsValid() {
			if err := cfg.CheckUnderlay(a); err != nil {
				return fmt.Errorf("%w (%s is the PublicIPv6 of the %s %s in etcd)", err, a, kind, l.Key())
			}
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
