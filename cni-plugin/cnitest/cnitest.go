// Package cnitest drives the weft CNI plugin the way a container runtime
// does, through libcni, against network namespaces made for the purpose.
//
// The plugin programs host-side objects (bridge, host veth ends, iptables)
// in whatever namespace it runs in, so tests must never run it in the root
// namespace. HostExec solves this without wrapper scripts: it is a libcni
// invoke.Exec that forks the plugin from an OS thread which has joined the
// "host" namespace. The child inherits that thread's namespace, while the
// test process and libcni itself (config parsing, result cache) stay in the
// root namespace and the thread is discarded afterwards.
package cnitest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named namespaces are bound, as with `ip netns add`.
const NetnsDir = "/var/run/netns"

// HostExec runs CNI plugins inside the network namespace at NSPath.
type HostExec struct {
	NSPath string
	raw    invoke.RawExec
	version.PluginDecoder
}

var _ invoke.Exec = (*HostExec)(nil)

// NewHostExec returns an exec that runs plugins in the namespace at nsPath;
// plugin stderr goes to the test process's stderr.
func NewHostExec(nsPath string) *HostExec {
	return &HostExec{NSPath: nsPath, raw: invoke.RawExec{Stderr: os.Stderr}}
}

// ExecPlugin forks the plugin from a thread in the host namespace.
func (e *HostExec) ExecPlugin(ctx context.Context, pluginPath string, stdinData []byte, environ []string) ([]byte, error) {
	type ret struct {
		out []byte
		err error
	}
	ch := make(chan ret, 1)
	go func() {
		// The thread is never unlocked: it exits with the goroutine, so
		// its namespace cannot leak to other goroutines.
		runtime.LockOSThread()
		h, err := netns.GetFromPath(e.NSPath)
		if err != nil {
			ch <- ret{nil, fmt.Errorf("open host netns %s: %w", e.NSPath, err)}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			ch <- ret{nil, fmt.Errorf("enter host netns %s: %w", e.NSPath, err)}
			return
		}
		out, err := e.raw.ExecPlugin(ctx, pluginPath, stdinData, environ)
		ch <- ret{out, err}
	}()
	r := <-ch
	return r.out, r.err
}

// FindInPath finds the plugin binary.
func (e *HostExec) FindInPath(plugin string, paths []string) (string, error) {
	return e.raw.FindInPath(plugin, paths)
}

// NewCNI returns a libcni client that runs plugins from pluginDir inside the
// namespace at hostNS and caches results in cacheDir.
func NewCNI(hostNS, pluginDir, cacheDir string) *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, cacheDir, NewHostExec(hostNS))
}

// RandName returns prefix followed by n random hex digits.
func RandName(prefix string, n int) string {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)[:n]
}

// NewNS creates a named network namespace (bound under NetnsDir) with its
// loopback up and returns its path. The creating thread is discarded, so
// the caller's namespace never changes.
func NewNS(name string) (string, error) {
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return "", err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with us
		h, err := netns.NewNamed(name)
		if err != nil {
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		defer h.Close()
		nh, err := netlink.NewHandleAt(h)
		if err != nil {
			errc <- fmt.Errorf("netlink in %s: %w", name, err)
			return
		}
		defer nh.Close()
		lo, err := nh.LinkByName("lo")
		if err == nil {
			err = nh.LinkSetUp(lo)
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		DeleteNS(name)
		return "", err
	}
	return filepath.Join(NetnsDir, name), nil
}

// DeleteNS unbinds and removes a named namespace; a missing one is fine.
func DeleteNS(name string) error {
	p := filepath.Join(NetnsDir, name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("unmount %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// BuildPlugins builds the weft plugin and the reference portmap plugin into
// dir. It must run inside the weft module (any package directory will do).
func BuildPlugins(dir string) error {
	for name, pkg := range map[string]string{
		"weft":    "github.com/weftnet/weft/cni-plugin",
		"portmap": "github.com/containernetworking/plugins/plugins/meta/portmap",
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", name, err, out)
		}
	}
	return nil
}
