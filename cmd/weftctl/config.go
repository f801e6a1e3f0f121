package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/weftnet/weft/internal/backends"
	"github.com/weftnet/weft/subnet"
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
		return configGet(ctx, e)
	case "set":
		if len(args) != 2 {
			return usagef("config set takes one argument: a file, or - for standard input")
		}
		return configSet(ctx, e, args[1])
	}
	return usagef("unknown config subcommand %q (want get or set)", args[0])
}

// configGet prints the stored config, indented. An invalid config is still
// printed, with a warning on stderr. What is stored may be anything, so a
// config that is not JSON is printed with its non-printing runes escaped.
func configGet(ctx context.Context, e *env) error {
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

func configSet(ctx context.Context, e *env, file string) error {
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
	if err := reg.PutConfig(ctx, raw); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "config written to %s\n", reg.ConfigKey())
	return nil
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
