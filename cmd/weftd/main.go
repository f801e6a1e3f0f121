// Command weftd is weft's per-host daemon: it leases a subnet of the
// cluster network from etcd, programs the configured backend so that pods
// on every host reach each other, and writes subnet.env for the CNI plugin.
//
// main only parses flags, wires the pieces together and exits once; the
// work lives in subnet/, backend/ and internal/.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/weftnet/weft/internal/backends"
)

// defaultGCPercent is weftd's GOGC unless the environment sets one.
const defaultGCPercent = 50

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// backendEntry is one registered data path. It is the shared registry's
// Descriptor, so weftd and weftctl config set know the same backends.
type backendEntry = backends.Descriptor

// backendMap indexes the registry in internal/backends by Backend.Type.
func backendMap() map[string]backendEntry {
	m := map[string]backendEntry{}
	for _, d := range backends.All() {
		m[d.Type] = d
	}
	return m
}

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "weftd: %v\n", err)
		return 2
	}
	if cfg.Version {
		fmt.Fprintf(stdout, "weftd %s\n", version)
		return 0
	}
	logger := newLogger(cfg, stderr)
	for _, note := range cfg.Ignored {
		logger.Warn("ignoring a flanneld flag", "why", note)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	d := newDaemon(cfg, backendMap(), logger)
	if getenv("GOGC") == "" {
		// A resident daemon whose heap is mostly long-lived lease state:
		// collecting at 50 % growth instead of Go's default 100 % keeps
		// its RSS about a sixth lower at 5000 peers (63 -> 52 MiB in
		// make bench) without slowing start-up or joins measurably.
		debug.SetGCPercent(defaultGCPercent)
		d.collector = newPassCollector()
	}
	if err := d.Run(ctx); err != nil {
		logger.Error("weftd stopped", "err", err)
		return 1
	}
	logger.Info("weftd stopped; lease, devices, routes and rules are kept for the next start")
	return 0
}

func newLogger(cfg *Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
