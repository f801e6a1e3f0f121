// Package nltest builds throwaway network namespaces for kernel tests: a
// "switch" namespace holding a bridge, "host" namespaces cabled to it by veth
// pairs on the underlay 192.0.2.0/24, and "pod" namespaces behind a host.
// Nothing is ever created in the root namespace: every veth pair is created
// inside a test namespace with its peer placed directly into another one.
package nltest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Prefix starts the name of every namespace this package creates.
const Prefix = "wvx"

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root to create network namespaces")
	}
}

// NS is a named network namespace removed at the end of the test.
type NS struct {
	Name   string
	Handle netns.NsHandle
	// NL is a netlink handle inside the namespace.
	NL *netlink.Handle
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)[:n]
}

// NewNS creates a namespace named Prefix + random + suffix (suffix at most 6
// characters, so the name stays within 15).
func NewNS(t testing.TB, suffix string) *NS {
	t.Helper()
	return NewNSPrefix(t, Prefix, suffix)
}

// NewNSPrefix is NewNS with another name prefix (3 characters), for tests
// that must use their own.
func NewNSPrefix(t testing.TB, prefix, suffix string) *NS {
	t.Helper()
	RequireRoot(t)
	name := prefix + randHex(6) + suffix
	if len(name) > 15 {
		t.Fatalf("namespace name %q too long", name)
	}
	Cmd(t, "ip", "netns", "add", name)
	n := &NS{Name: name}
	t.Cleanup(func() {
		if n.NL != nil {
			n.NL.Close()
		}
		if n.Handle.IsOpen() {
			n.Handle.Close()
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	n.Handle = h
	nlh, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	n.NL = nlh
	n.IP(t, "link", "set", "lo", "up")
	return n
}

// Cmd runs a command and fails the test if it fails; it returns stdout.
func Cmd(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// IP runs "ip -n <ns> args...".
func (n *NS) IP(t testing.TB, args ...string) string {
	t.Helper()
	return Cmd(t, "ip", append([]string{"-n", n.Name}, args...)...)
}

// Exec runs a command inside the namespace and returns its combined output
// and error without failing the test.
func (n *NS) Exec(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...).CombinedOutput()
	return string(out), err
}

// Sysctl sets a sysctl inside the namespace.
func (n *NS) Sysctl(t testing.TB, key, value string) {
	t.Helper()
	if out, err := n.Exec("sysctl", "-qw", key+"="+value); err != nil {
		t.Fatalf("sysctl %s=%s in %s: %v: %s", key, value, n.Name, err, out)
	}
}

// Host is a namespace cabled to the lab switch through its "eth0".
type Host struct {
	*NS
	// Ext describes eth0.
	ExtName  string
	ExtIndex int
	Addr     netip.Addr
	MTU      int
}

// Lab is a switch namespace with hosts attached.
type Lab struct {
	Switch *NS
	Hosts  []*Host
}

// NewLab builds a switch and n hosts; host i has eth0 = 192.0.2.(10+i)/24.
func NewLab(t testing.TB, n int) *Lab {
	t.Helper()
	sw := NewNS(t, "sw")
	sw.IP(t, "link", "add", "br0", "type", "bridge")
	sw.IP(t, "link", "set", "br0", "up")
	lab := &Lab{Switch: sw}
	for i := 0; i < n; i++ {
		lab.AddHost(t, netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}), 24)
	}
	return lab
}

// AddHost attaches one more host with the given underlay address.
func (l *Lab) AddHost(t testing.TB, addr netip.Addr, bits int) *Host {
	t.Helper()
	i := len(l.Hosts)
	ns := NewNS(t, fmt.Sprintf("h%d", i))
	port := fmt.Sprintf("p%d", i)
	ns.IP(t, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", l.Switch.Name)
	l.Switch.IP(t, "link", "set", port, "master", "br0", "up")
	ns.IP(t, "addr", "add", netip.PrefixFrom(addr, bits).String(), "dev", "eth0")
	ns.IP(t, "link", "set", "eth0", "up")
	ns.Sysctl(t, "net.ipv4.ip_forward", "1")
	ns.Sysctl(t, "net.ipv4.conf.all.rp_filter", "0")
	ns.Sysctl(t, "net.ipv4.conf.default.rp_filter", "0")
	link, err := ns.NL.LinkByName("eth0")
	if err != nil {
		t.Fatalf("eth0 in %s: %v", ns.Name, err)
	}
	h := &Host{NS: ns, ExtName: "eth0", ExtIndex: link.Attrs().Index, Addr: addr, MTU: link.Attrs().MTU}
	l.Hosts = append(l.Hosts, h)
	return h
}

// AddPod creates a pod namespace behind the host: the host side "pod0" gets
// the subnet's first address (as a CNI bridge would), the pod's eth0 the
// second, with a default route via the first. It returns the pod and its
// address.
func (h *Host) AddPod(t testing.TB, sn netip.Prefix) (*NS, netip.Addr) {
	t.Helper()
	gw := sn.Addr().Next()
	podIP := gw.Next()
	pod := NewNS(t, "pod")
	h.IP(t, "link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", pod.Name)
	h.IP(t, "addr", "add", netip.PrefixFrom(gw, sn.Bits()).String(), "dev", "pod0")
	h.IP(t, "link", "set", "pod0", "up")
	pod.IP(t, "addr", "add", netip.PrefixFrom(podIP, sn.Bits()).String(), "dev", "eth0")
	pod.IP(t, "link", "set", "eth0", "up")
	pod.IP(t, "route", "add", "default", "via", gw.String())
	return pod, podIP
}

// Ping sends a few pings from ns to dst and reports whether one came back.
func (n *NS) Ping(dst netip.Addr) (string, error) {
	return n.Exec("ping", "-c", "3", "-i", "0.2", "-W", "1", dst.String())
}

// AddIPv6 gives the host's eth0 the IPv6 address addr/64 (inside
// 2001:db8::/32), usable at once (no duplicate address detection), and
// turns IPv6 forwarding on: the IPv6 underlay of a dual-stack test.
func (h *Host) AddIPv6(t testing.TB, addr netip.Addr) {
	t.Helper()
	h.Sysctl(t, "net.ipv6.conf.all.forwarding", "1")
	h.IP(t, "addr", "add", netip.PrefixFrom(addr, 64).String(), "dev", "eth0", "nodad")
}

// AddPod6 gives a pod that AddPod created behind the host an IPv6 address
// too: the host side "pod0" gets sn6's first address, the pod's eth0 the
// second, with a default route via the first. It returns the pod's
// address.
func (h *Host) AddPod6(t testing.TB, pod *NS, sn6 netip.Prefix) netip.Addr {
	t.Helper()
	gw := sn6.Addr().Next()
	podIP := gw.Next()
	h.IP(t, "addr", "add", netip.PrefixFrom(gw, sn6.Bits()).String(), "dev", "pod0", "nodad")
	pod.IP(t, "addr", "add", netip.PrefixFrom(podIP, sn6.Bits()).String(), "dev", "eth0", "nodad")
	pod.IP(t, "-6", "route", "add", "default", "via", gw.String())
	return podIP
}

// WaitDAD waits until no IPv6 address in the namespaces is tentative any
// more. A device's link-local address takes a second or two of duplicate
// address detection after it comes up, and until then the kernel sends no
// neighbour solicitations from it: a ping to a freshly created pod would
// find no neighbour.
func WaitDAD(t testing.TB, nss ...*NS) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, n := range nss {
		for {
			out := n.IP(t, "-6", "addr", "show", "tentative")
			if strings.TrimSpace(out) == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("IPv6 addresses in %s still tentative:\n%s", n.Name, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
