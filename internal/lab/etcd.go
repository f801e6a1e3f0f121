package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// EtcdDataDir is the etcd data directory, kept across StopEtcd/StartEtcd.
func (l *Lab) EtcdDataDir() string { return filepath.Join(l.Dir, "etcd-data") }

// StartEtcd starts etcd inside the switch namespace (same data dir as
// before, if it ran already) and waits until it serves requests.
func (l *Lab) StartEtcd() error {
	l.mu.Lock()
	if l.etcd != nil && !l.etcd.exited() {
		l.mu.Unlock()
		return fmt.Errorf("start etcd: already running (pid %d)", l.etcd.pid())
	}
	p, err := startProc("etcd", l.Switch, filepath.Join(l.Dir, "etcd.log"),
		filepath.Join(l.BinDir, "weft-lab"), "etcd",
		"--listen", EtcdEndpoint, "--data-dir", l.EtcdDataDir())
	if err != nil {
		l.mu.Unlock()
		return err
	}
	l.etcd = p
	l.etcdPause = false
	l.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.waitEtcd(ctx, p); err != nil {
		return fmt.Errorf("start etcd: %w (log: %s)", err, filepath.Join(l.Dir, "etcd.log"))
	}
	l.log.Debug("etcd ready", "pid", p.pid(), "endpoint", EtcdEndpoint)
	return nil
}

func (l *Lab) waitEtcd(ctx context.Context, p *proc) error {
	cli, err := l.Etcd(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	for {
		if p.exited() {
			return fmt.Errorf("etcd exited: %v", p.err)
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Get(rctx, "/lab-readiness-probe")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd not ready: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// StopEtcd stops etcd with SIGTERM (SIGKILL after 5 s) and waits for it.
func (l *Lab) StopEtcd() error {
	l.mu.Lock()
	p := l.etcd
	l.mu.Unlock()
	if p == nil || p.exited() {
		return errors.New("stop etcd: not running")
	}
	p.stop(5 * time.Second)
	return nil
}

// PauseEtcd freezes etcd with SIGSTOP: connections stay open but nothing
// answers, the way a partitioned or overloaded etcd looks. It returns once
// every etcd thread is stopped.
func (l *Lab) PauseEtcd() error {
	if err := l.signalEtcd(syscall.SIGSTOP, true); err != nil {
		return err
	}
	if pid := l.EtcdPID(); pid != 0 {
		return waitThreadsStopped(pid, 5*time.Second)
	}
	return nil
}

// waitThreadsStopped waits until every thread of pid is in state T
// (stopped): kill returns before a busy thread has taken the stop.
func waitThreadsStopped(pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		if err != nil || len(tasks) == 0 {
			return fmt.Errorf("pause etcd: no threads for pid %d", pid)
		}
		stopped := true
		for _, t := range tasks {
			data, err := os.ReadFile(t)
			if err != nil {
				continue // thread ended
			}
			// Fields after the parenthesised command: state first.
			if i := bytes.LastIndexByte(data, ')'); i < 0 || i+2 >= len(data) || data[i+2] != 'T' {
				stopped = false
				break
			}
		}
		if stopped {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pause etcd: pid %d not stopped after %v", pid, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ResumeEtcd undoes PauseEtcd with SIGCONT.
func (l *Lab) ResumeEtcd() error { return l.signalEtcd(syscall.SIGCONT, false) }

func (l *Lab) signalEtcd(sig syscall.Signal, paused bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.etcd == nil {
		return errors.New("etcd: not running")
	}
	if err := l.etcd.signal(sig); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	l.etcdPause = paused
	return nil
}

// EtcdPID is the pid of the etcd process (0 when not running).
func (l *Lab) EtcdPID() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.etcd == nil || l.etcd.exited() {
		return 0
	}
	return l.etcd.pid()
}

// Etcd returns a client for the lab's etcd, usable from the root namespace:
// every gRPC connection is opened inside the switch namespace. The caller
// closes it.
func (l *Lab) Etcd(ctx context.Context) (*clientv3.Client, error) {
	sw := l.SwitchNS
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{EtcdEndpoint},
		DialTimeout: 5 * time.Second,
		Context:     context.WithoutCancel(ctx),
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return DialInNS(ctx, sw, "tcp", addr)
			}),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return cli, nil
}

// WriteConfig stores the network config JSON at /coreos.com/network/config.
func (l *Lab) WriteConfig(config string) error {
	return l.Put(ConfigKey, config)
}

// Put writes one key, with a 10 s deadline.
func (l *Lab) Put(key, value string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli, err := l.Etcd(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, key, value); err != nil {
		return fmt.Errorf("etcd put %s: %w", key, err)
	}
	return nil
}
