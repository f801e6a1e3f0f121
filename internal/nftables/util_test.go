package nftables

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// testNS is a network namespace made for one test and deleted after it.
type testNS struct {
	Name string
	fd   netns.NsHandle
}

// newNS creates a namespace named wnf<random><suffix> (suffix at most 5
// characters) with lo up; it skips the test when not root.
func newNS(t testing.TB, suffix string) *testNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root to create network namespaces")
	}
	b := make([]byte, 3)
	rand.Read(b)
	name := "wnf" + hex.EncodeToString(b) + suffix
	run(t, "ip", "netns", "add", name)
	n := &testNS{Name: name}
	t.Cleanup(func() {
		if n.fd.IsOpen() {
			n.fd.Close()
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	fd, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	n.fd = fd
	n.run(t, "ip", "link", "set", "lo", "up")
	return n
}

// Kernel is the netlink Kernel of the namespace.
func (n *testNS) Kernel() Kernel { return NewKernel(int(n.fd)) }

// run runs argv inside the namespace and fails the test on error.
func (n *testNS) run(t testing.TB, argv ...string) string {
	t.Helper()
	return run(t, append([]string{"ip", "netns", "exec", n.Name}, argv...)...)
}

// exec runs argv inside the namespace and returns its output and error.
func (n *testNS) exec(argv ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.Name}, argv...)...).CombinedOutput()
	return string(out), err
}

func run(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// needTool skips the test when a command is missing.
func needTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("kernel test: needs %s (apt-get install nftables iptables)", name)
	}
}
