// Package etcdtest starts a throwaway embedded etcd for tests.
package etcdtest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weftnet/weft/internal/etcdserver"
)

// Start runs a single-node etcd on 127.0.0.1 with random ports in
// t.TempDir() and returns a client for it. Both are closed in t.Cleanup.
func Start(t testing.TB) (*clientv3.Client, *etcdserver.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(srv.Close)
	cli, err := NewClient(srv)
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli, srv
}

// NewClient returns another client for srv; the caller closes it.
func NewClient(srv *etcdserver.Server) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   srv.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}
