package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

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
// printed, with a warning on stderr.
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
	if json.Indent(&buf, bytes.TrimSpace(raw), "", "  ") == nil {
		buf.WriteByte('\n')
		raw = buf.Bytes()
	}
	if _, err := e.stdout.Write(raw); err != nil {
		return err
	}
	if _, err := subnet.ParseConfig(raw); err != nil {
		fmt.Fprintf(e.stderr, "weftctl config get: warning: the stored config is invalid: %v\n", err)
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
	// Validate before connecting, so a bad file fails fast and offline.
	cfg, err := subnet.ParseConfig(raw)
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
