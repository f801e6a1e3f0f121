package etcdserver

import (
	"context"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func TestStartPortZero(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	start := time.Now()
	s, err := Start(ctx, Options{Dir: dir, ClientURLs: []string{"http://127.0.0.1:0"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("started in %s", time.Since(start).Round(time.Millisecond))
	defer s.Close()
	eps := s.Endpoints()
	if len(eps) != 1 {
		t.Fatalf("Endpoints() = %v", eps)
	}
	u, err := url.Parse(eps[0])
	if err != nil || u.Hostname() != "127.0.0.1" || u.Port() == "0" || u.Port() == "" {
		t.Fatalf("endpoint %q: port 0 not replaced", eps[0])
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	// A short lease TTL is accepted (single node: small election timeout).
	g, err := cli.Grant(ctx, 1)
	if err != nil || g.TTL > 2 {
		t.Fatalf("Grant(1) = %+v, %v", g, err)
	}
	s.Close()
	s.Close() // idempotent

	// Restart on the same data directory keeps the data.
	s2, err := Start(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	cli2, err := clientv3.New(clientv3.Config{Endpoints: s2.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli2.Close()
	resp, err := cli2.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v, %v", resp, err)
	}
}

func TestStartErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := Start(ctx, Options{}); err == nil {
		t.Fatal("Start without Dir succeeded")
	}
	if _, err := Start(ctx, Options{Dir: filepath.Join(t.TempDir(), "d"), ClientURLs: []string{"ftp://127.0.0.1:0"}}); err == nil {
		t.Fatal("Start with an ftp URL succeeded")
	}
}
