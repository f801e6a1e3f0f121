package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"

	"github.com/weftnet/weft/internal/etcdserver"
)

// runEtcd serves etcd until ctx ends (SIGTERM or SIGINT). The lab runs it
// inside the switch namespace; readiness is signalled by a line
// "etcd ready <endpoints>" on stderr.
func runEtcd(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "http://192.0.2.1:2379", "client URL to listen on")
	dataDir := fs.String("data-dir", "", "etcd data directory (required)")
	peer := fs.String("peer", "", "peer URL; default port 2380 on the listen host")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if *dataDir == "" {
		return fmt.Errorf("%w: etcd: --data-dir is required", errUsage)
	}
	if *peer == "" {
		u, err := url.Parse(*listen)
		if err != nil {
			return fmt.Errorf("%w: etcd: --listen: %v", errUsage, err)
		}
		*peer = "http://" + net.JoinHostPort(u.Hostname(), "2380")
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	srv, err := etcdserver.Start(ctx, etcdserver.Options{
		Dir:        *dataDir,
		Name:       "weft-lab",
		ClientURLs: []string{*listen},
		PeerURL:    *peer,
		Logger:     logger,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Fprintf(stderr, "etcd ready %v\n", srv.Endpoints())
	select {
	case <-ctx.Done():
		return nil
	case err := <-srv.Etcd().Err():
		return fmt.Errorf("etcd: %w", err)
	}
}
