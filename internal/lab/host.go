package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weftnet/weft/subnet"
)

// Host is one simulated node: a network namespace with eth0 on the switch.
type Host struct {
	Name  string     // namespace name, e.g. "wl3f9a-h1"
	Index int        // 1-based
	NS    string     // /var/run/netns/<Name>
	IP    netip.Addr // eth0 address, 192.0.2.(10+Index)
	IP6   netip.Addr // eth0 IPv6 address with Options.IPv6, 2001:db8::(10+Index in hex)
	Dir   string     // per-host temp dir: subnet.env, weftd.log, CNI data

	lab *Lab

	mu      sync.Mutex
	weftd   *proc
	podSeq  int
	started int    // how many times weftd was started
	healthz string // host:port of weftd's HTTP endpoints, from its flags
}

// HealthzAddr is where the running weftd serves /healthz and /readyz
// (inside the host namespace): 127.0.0.1:8471 unless StartWeftd was given
// other --healthz-ip/--healthz-port flags.
func (h *Host) HealthzAddr() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.healthz == "" {
		return fmt.Sprintf("127.0.0.1:%d", HealthzPort)
	}
	return h.healthz
}

// healthzFromArgs finds the last --healthz-ip and --healthz-port in argv.
func healthzFromArgs(argv []string) string {
	ip, port := "127.0.0.1", fmt.Sprint(HealthzPort)
	for i, a := range argv {
		a = "--" + strings.TrimLeft(a, "-")
		for _, f := range []struct {
			name string
			dst  *string
		}{{"--healthz-ip", &ip}, {"--healthz-port", &port}} {
			if v, ok := strings.CutPrefix(a, f.name+"="); ok {
				*f.dst = v
			} else if a == f.name && i+1 < len(argv) {
				*f.dst = argv[i+1]
			}
		}
	}
	if ip == "0.0.0.0" || ip == "" {
		ip = "127.0.0.1"
	}
	return net.JoinHostPort(ip, port)
}

// SubnetFile is the path weftd writes subnet.env to.
func (h *Host) SubnetFile() string { return filepath.Join(h.Dir, "subnet.env") }

// WeftdLog is the path of weftd's combined stdout and stderr.
func (h *Host) WeftdLog() string { return filepath.Join(h.Dir, "weftd.log") }

// Exec runs argv inside the host namespace and returns its standard
// output; on failure the error holds its standard error.
func (h *Host) Exec(ctx context.Context, argv ...string) ([]byte, error) {
	return nsExec(ctx, h.Name, argv...)
}

func nsExec(ctx context.Context, ns string, argv ...string) ([]byte, error) {
	return output(ctx, append([]string{"ip", "netns", "exec", ns}, argv...)...)
}

// WireGuardKeyFile is the host's WireGuard private key file, which
// StartWeftd passes as --wireguard-key-file: all hosts share one file
// system, so each needs its own.
func (h *Host) WireGuardKeyFile() string { return filepath.Join(h.Dir, "wgkey") }

// WireGuardRunDir is the host's own /var/run/wireguard, where the
// in-process WireGuard driver of its weftd serves weft-wg.sock (so
// WireGuardSocket is the socket seen from outside). The UAPI socket path
// depends only on the device name, and all hosts share one file system:
// weftd therefore runs with this directory bind-mounted over
// /var/run/wireguard in the mount namespace ip netns exec gives it (a
// slave of the root's, so the mount stays there). weftd itself knows
// nothing of this: its socket directory is the product default.
func (h *Host) WireGuardRunDir() string { return filepath.Join(h.Dir, "wireguard") }

// WireGuardSocket is the UAPI socket of the host's weft-wg device.
func (h *Host) WireGuardSocket() string { return filepath.Join(h.WireGuardRunDir(), "weft-wg.sock") }

// privateRun prefixes argv with the bind mount of WireGuardRunDir over
// /var/run/wireguard. The shell execs argv, so the process stays the one
// started (and its pid weftd's).
func (h *Host) privateRun(argv []string) ([]string, error) {
	if err := os.MkdirAll(h.WireGuardRunDir(), 0o700); err != nil {
		return nil, fmt.Errorf("%s: %w", h.Name, err)
	}
	return append([]string{"sh", "-c", `mkdir -p -m 0700 /var/run/wireguard && mount --bind "$0" /var/run/wireguard && exec "$@"`, h.WireGuardRunDir()}, argv...), nil
}

// WeftdArgs returns the full weftd command line StartWeftd uses.
func (h *Host) WeftdArgs(extra ...string) []string {
	args := []string{
		filepath.Join(h.lab.BinDir, "weftd"),
		"--etcd-endpoints=" + EtcdEndpoint,
		"--iface=eth0",
		"--subnet-file=" + h.SubnetFile(),
		"--wireguard-key-file=" + h.WireGuardKeyFile(),
		"--healthz-ip=127.0.0.1",
		fmt.Sprintf("--healthz-port=%d", HealthzPort),
	}
	return append(args, extra...)
}

// StartWeftd starts weftd inside the host namespace with the lab's standard
// flags followed by args. Output is appended to WeftdLog.
func (h *Host) StartWeftd(args ...string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.weftd != nil && !h.weftd.exited() {
		return fmt.Errorf("%s: weftd already running (pid %d)", h.Name, h.weftd.pid())
	}
	bin := filepath.Join(h.lab.BinDir, "weftd")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%s: start weftd: %w", h.Name, err)
	}
	argv := h.WeftdArgs(args...)
	run, err := h.privateRun(argv)
	if err != nil {
		return err
	}
	p, err := startProc("weftd", h.Name, h.WeftdLog(), run...)
	if err != nil {
		return fmt.Errorf("%s: %w", h.Name, err)
	}
	h.weftd = p
	h.healthz = healthzFromArgs(argv[1:])
	h.started++
	h.lab.log.Debug("weftd started", "host", h.Name, "pid", p.pid())
	return nil
}

// WeftdPID is weftd's pid, 0 when it is not running.
func (h *Host) WeftdPID() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.weftd == nil || h.weftd.exited() {
		return 0
	}
	return h.weftd.pid()
}

// StopWeftd sends sig to weftd and waits up to 10 s for it to exit, then
// kills it. It returns weftd's exit error, if it exited with one that was
// not caused by sig (SIGKILL, SIGTERM and SIGINT deaths count as clean).
func (h *Host) StopWeftd(sig os.Signal) error {
	h.mu.Lock()
	p := h.weftd
	h.mu.Unlock()
	if p == nil {
		return fmt.Errorf("%s: weftd was never started", h.Name)
	}
	if p.exited() {
		return fmt.Errorf("%s: weftd already exited: %v", h.Name, p.err)
	}
	if err := p.signal(sig); err != nil {
		return err
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.stop(0)
		return fmt.Errorf("%s: weftd did not exit within 10 s of %v; killed", h.Name, sig)
	}
	return exitError(p.err)
}

// exitError treats exit status 0 and death by the usual stop signals as
// success.
func exitError(err error) error {
	if err == nil {
		return nil
	}
	var ee interface{ Sys() any }
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			switch ws.Signal() {
			case syscall.SIGTERM, syscall.SIGINT, syscall.SIGKILL:
				return nil
			}
		}
	}
	return err
}

// KillWeftd kills weftd with SIGKILL and waits for it: a crash.
func (h *Host) KillWeftd() error { return h.StopWeftd(syscall.SIGKILL) }

// WaitReady waits until weftd reports ready: GET /readyz on HealthzAddr
// inside the host namespace answers 200. If weftd has
// no /readyz (404), the subnet file existing counts as ready. It fails early
// when weftd exits.
func (h *Host) WaitReady(ctx context.Context) error {
	client := HTTPClient(h.NS, 2*time.Second)
	url := "http://" + h.HealthzAddr() + "/readyz"
	var last string
	for {
		h.mu.Lock()
		p := h.weftd
		h.mu.Unlock()
		if p == nil {
			return fmt.Errorf("%s: weftd not started", h.Name)
		}
		if p.exited() {
			return fmt.Errorf("%s: weftd exited: %v; log tail:\n%s", h.Name, p.err, h.logTail(20))
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusOK:
				return nil
			case resp.StatusCode == http.StatusNotFound:
				if _, err := os.Stat(h.SubnetFile()); err == nil {
					return nil
				}
			}
			last = fmt.Sprintf("readyz: %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: weftd not ready: %w (last: %s)", h.Name, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (h *Host) logTail(n int) string {
	data, err := os.ReadFile(h.WeftdLog())
	if err != nil {
		return err.Error()
	}
	return tail(data, n)
}

// SubnetEnv reads the subnet file weftd wrote.
func (h *Host) SubnetEnv() (subnet.Env, error) {
	return subnet.ReadEnvFile(h.SubnetFile())
}

// cniBinDir holds the per-host wrapper that runs the plugin inside the
// host namespace.
func (h *Host) cniBinDir() string { return filepath.Join(h.Dir, "cni-bin") }

func (h *Host) writeCNIWrapper() error {
	if err := os.MkdirAll(h.cniBinDir(), 0o755); err != nil {
		return err
	}
	script := fmt.Sprintf("#!/bin/sh\n# Runs the weft CNI plugin inside host namespace %s.\nexec ip netns exec %s %s \"$@\"\n",
		h.Name, h.Name, filepath.Join(h.lab.BinDir, "weft"))
	return os.WriteFile(filepath.Join(h.cniBinDir(), "weft"), []byte(script), 0o755)
}
