package cnitest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weftnet/weft/cni-plugin/ipam"
	"github.com/weftnet/weft/cni-plugin/plugin"
	"github.com/weftnet/weft/subnet"
)

var pluginDir string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run()) // every test skips
	}
	dir, err := os.MkdirTemp("", "wcn-plugins-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := BuildPlugins(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	pluginDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	testEnv = subnet.Env{
		Network: netip.MustParsePrefix("198.18.0.0/16"),
		Subnet:  netip.MustParsePrefix("198.18.5.1/24"),
		MTU:     1450,
		IPMasq:  false, // weftd does not masquerade, so the plugin does
	}
	gw = "198.18.5.1"
)

type harness struct {
	hostName, hostNS string
	subnetFile       string
	dataDir          string
	cni              *libcni.CNIConfig
	list             *libcni.NetworkConfigList
}

type opts struct {
	version       string // default 1.1.0
	portmap       bool
	noSubnetFile  bool
	extraWeftConf string
}

func newHarness(t *testing.T, o opts) *harness {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	if o.version == "" {
		o.version = "1.1.0"
	}
	h := &harness{hostName: RandName("wcn-h", 8)}
	p, err := NewNS(h.hostName)
	if err != nil {
		t.Fatal(err)
	}
	h.hostNS = p
	t.Cleanup(func() { DeleteNS(h.hostName) })
	dir := t.TempDir()
	h.subnetFile = filepath.Join(dir, "subnet.env")
	h.dataDir = filepath.Join(dir, "data")
	if !o.noSubnetFile {
		if err := subnet.WriteEnvFile(h.subnetFile, testEnv); err != nil {
			t.Fatal(err)
		}
	}
	h.list = h.confList(t, "weft", o)
	h.cni = NewCNI(h.hostNS, pluginDir, filepath.Join(dir, "cache"))
	return h
}

// confList is a network config list named name for the harness's subnet
// file and data directory.
func (h *harness) confList(t *testing.T, name string, o opts) *libcni.NetworkConfigList {
	t.Helper()
	if o.version == "" {
		o.version = "1.1.0"
	}
	plugins := fmt.Sprintf(`{"type":"weft","subnetFile":%q,"dataDir":%q%s}`, h.subnetFile, h.dataDir, o.extraWeftConf)
	if o.portmap {
		plugins += `,{"type":"portmap","capabilities":{"portMappings":true}}`
	}
	conf := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[%s]}`, o.version, name, plugins)
	list, err := libcni.NetworkConfFromBytes([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	return list
}

type pod struct {
	name, path string
	rt         *libcni.RuntimeConf
}

func (h *harness) newPod(t *testing.T) *pod {
	t.Helper()
	name := RandName("wcn-p", 8)
	p, err := NewNS(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { DeleteNS(name) })
	return &pod{name: name, path: p, rt: &libcni.RuntimeConf{ContainerID: "ctr-" + name, NetNS: p, IfName: "eth0"}}
}

func (h *harness) add(t *testing.T, p *pod) *current.Result {
	t.Helper()
	r, err := h.cni.AddNetworkList(context.Background(), h.list, p.rt)
	if err != nil {
		t.Fatalf("ADD %s: %v", p.name, err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func (h *harness) del(t *testing.T, p *pod) {
	t.Helper()
	if err := h.cni.DelNetworkList(context.Background(), h.list, p.rt); err != nil {
		t.Fatalf("DEL %s: %v", p.name, err)
	}
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

func (h *harness) iptablesNAT(t *testing.T) string {
	return run(t, "ip", "netns", "exec", h.hostName, "iptables", "-w", "-t", "nat", "-S")
}

func (h *harness) reservations(t *testing.T) []ipam.Reservation {
	s, err := ipam.Open(h.dataDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	all, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	return all
}

func ping(p *pod, addr string) error {
	out, err := exec.Command("ip", "netns", "exec", p.name, "ping", "-c1", "-W2", addr).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v\n%s", addr, p.name, err, out)
	}
	return nil
}

func podAddr(t *testing.T, res *current.Result) netip.Prefix {
	t.Helper()
	if len(res.IPs) != 1 {
		t.Fatalf("result has %d IPs", len(res.IPs))
	}
	a, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	ones, _ := res.IPs[0].Address.Mask.Size()
	return netip.PrefixFrom(a, ones)
}

func mustCIDR(t *testing.T, s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return n
}

func TestAddCheckDel(t *testing.T) {
	h := newHarness(t, opts{})
	p := h.newPod(t)
	res := h.add(t, p)

	// The result is spec-conformant.
	if len(res.Interfaces) != 3 || res.Interfaces[0].Name != "cni0" || res.Interfaces[2].Name != "eth0" || res.Interfaces[2].Sandbox != p.path {
		t.Fatalf("interfaces: %+v", res.Interfaces)
	}
	if res.Interfaces[1].Name != plugin.HostVethName(p.rt.ContainerID, "eth0") {
		t.Fatalf("host veth %q", res.Interfaces[1].Name)
	}
	addr := podAddr(t, res)
	if *res.IPs[0].Interface != 2 || res.IPs[0].Gateway.String() != gw {
		t.Fatalf("ip config: %+v", res.IPs[0])
	}
	sub := testEnv.LeaseSubnet()
	if !sub.Contains(addr.Addr()) || addr.Bits() != 24 || addr.Addr().String() == gw || addr.Addr() == sub.Addr() {
		t.Fatalf("address %s", addr)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[0].GW.String() != gw {
		t.Fatalf("routes: %v", res.Routes)
	}
	// The kernel agrees.
	link := run(t, "ip", "-n", p.name, "addr", "show", "eth0")
	if !strings.Contains(link, "mtu 1450") || !strings.Contains(link, addr.String()) {
		t.Fatalf("pod eth0:\n%s", link)
	}
	if r := run(t, "ip", "-n", p.name, "route", "show", "default"); !strings.Contains(r, "via "+gw) {
		t.Fatalf("pod default route: %s", r)
	}
	if br := run(t, "ip", "-n", h.hostName, "addr", "show", "cni0"); !strings.Contains(br, gw+"/24") {
		t.Fatalf("bridge:\n%s", br)
	}
	if err := ping(p, gw); err != nil {
		t.Fatal(err)
	}
	// The bridge (gateway) MAC stays put when ports come and go.
	p2 := h.newPod(t)
	res2 := h.add(t, p2)
	if res2.Interfaces[0].Mac != res.Interfaces[0].Mac {
		t.Fatalf("bridge MAC changed from %s to %s when a port was added", res.Interfaces[0].Mac, res2.Interfaces[0].Mac)
	}
	h.del(t, p2)
	chain := plugin.MasqChain("weft")
	nat := h.iptablesNAT(t)
	if !strings.Contains(nat, "-A POSTROUTING -s 198.18.5.0/24 ") || !strings.Contains(nat, "-A "+chain+" -d 198.18.0.0/16 -j RETURN") || !strings.Contains(nat, "-A "+chain+" -j MASQUERADE") {
		t.Fatalf("masquerade rules missing:\n%s", nat)
	}

	if err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt); err != nil {
		t.Fatalf("CHECK on a healthy pod: %v", err)
	}
	// CHECK must notice the pod's interface going away.
	run(t, "ip", "-n", p.name, "link", "del", "eth0")
	err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt)
	if err == nil || !strings.Contains(err.Error(), "eth0") {
		t.Fatalf("CHECK after deleting eth0: got %v, want an error naming eth0", err)
	}

	h.del(t, p)
	h.del(t, p) // idempotent
	if rs := h.reservations(t); len(rs) != 0 {
		t.Fatalf("reservations left after DEL: %v", rs)
	}
	if out := run(t, "ip", "-n", h.hostName, "link", "show"); strings.Contains(out, res.Interfaces[1].Name) {
		t.Fatalf("host veth left:\n%s", out)
	}
	if nat := h.iptablesNAT(t); strings.Contains(nat, "198.18.5.0/24") || strings.Contains(nat, chain) {
		t.Fatalf("masquerade rules left after the last DEL:\n%s", nat)
	}
}

// TestCheckDetectsDrift: CHECK fails, naming the problem, when a pod's own
// setup drifts. (Missing masquerade rules, shared by every pod, are restored
// instead: TestMasqueradeRestoredAfterReload.)
func TestCheckDetectsDrift(t *testing.T) {
	h := newHarness(t, opts{})
	p := h.newPod(t)
	h.add(t, p)
	hostVeth := plugin.HostVethName(p.rt.ContainerID, "eth0")
	steps := []struct {
		name   string
		break_ []string
		fix    []string
		want   string
	}{
		{"mtu", []string{"ip", "-n", p.name, "link", "set", "eth0", "mtu", "1400"}, []string{"ip", "-n", p.name, "link", "set", "eth0", "mtu", "1450"}, "mtu"},
		{"route", []string{"ip", "-n", p.name, "route", "del", "default"}, []string{"ip", "-n", p.name, "route", "add", "default", "via", gw}, "route"},
		{"bridge port", []string{"ip", "-n", h.hostName, "link", "set", hostVeth, "nomaster"}, []string{"ip", "-n", h.hostName, "link", "set", hostVeth, "master", "cni0"}, "not attached"},
	}
	for _, s := range steps {
		run(t, s.break_...)
		err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt)
		if err == nil || !strings.Contains(err.Error(), s.want) {
			t.Errorf("%s broken: CHECK gave %v, want an error containing %q", s.name, err, s.want)
		}
		run(t, s.fix...)
		if err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt); err != nil {
			t.Errorf("%s repaired: CHECK gave %v", s.name, err)
		}
	}
}

// TestMasqueradeRestoredAfterReload: a firewall reload that flushes the
// nat table does not leave pods unmasqueraded: the next ADD, or a CHECK,
// restores the rules, and repeated calls never duplicate them.
func TestMasqueradeRestoredAfterReload(t *testing.T) {
	h := newHarness(t, opts{})
	chain := plugin.MasqChain("weft")
	assertMasq := func(when string) {
		t.Helper()
		nat := h.iptablesNAT(t)
		if n := strings.Count(nat, "-A POSTROUTING -s 198.18.5.0/24 "); n != 1 {
			t.Fatalf("%s: %d masquerade jumps, want 1:\n%s", when, n, nat)
		}
		if n := strings.Count(nat, "-A "+chain+" "); n != 3 || !strings.Contains(nat, "-A "+chain+" -d 198.18.0.0/16 -j RETURN") || !strings.Contains(nat, "-A "+chain+" -j MASQUERADE") {
			t.Fatalf("%s: chain %s does not hold its 3 rules:\n%s", when, chain, nat)
		}
	}
	iptables := func(args ...string) {
		run(t, append([]string{"ip", "netns", "exec", h.hostName, "iptables", "-w", "-t", "nat"}, args...)...)
	}
	p1 := h.newPod(t)
	h.add(t, p1)
	assertMasq("first ADD")

	// A firewall reload: every nat chain flushed, the user chains deleted.
	iptables("-F")
	iptables("-X")
	p2 := h.newPod(t)
	h.add(t, p2)
	assertMasq("ADD after a reload")
	h.add(t, p2) // the same attachment again
	p3 := h.newPod(t)
	h.add(t, p3)
	assertMasq("further ADDs")

	// Only the jumps flushed: CHECK puts them back and succeeds.
	iptables("-F", "POSTROUTING")
	if err := h.cni.CheckNetworkList(context.Background(), h.list, p1.rt); err != nil {
		t.Fatalf("CHECK after POSTROUTING was flushed: %v", err)
	}
	assertMasq("CHECK after POSTROUTING was flushed")
	// Only the chain flushed, and a jump duplicated by hand.
	iptables("-F", chain)
	iptables("-A", "POSTROUTING", "-s", "198.18.5.0/24", "-m", "comment", "--comment", "weft weft", "-j", chain)
	if err := h.cni.CheckNetworkList(context.Background(), h.list, p2.rt); err != nil {
		t.Fatalf("CHECK after the chain was flushed: %v", err)
	}
	assertMasq("CHECK after the chain was flushed")

	for _, p := range []*pod{p1, p2, p3} {
		h.del(t, p)
	}
	if nat := h.iptablesNAT(t); strings.Contains(nat, "WEFT-MASQ") {
		t.Fatalf("masquerade rules left after the last DEL:\n%s", nat)
	}
}

func TestParallelAdds(t *testing.T) {
	h := newHarness(t, opts{})
	const n = 100
	pods := make([]*pod, n)
	for i := range pods {
		pods[i] = h.newPod(t)
	}
	addrs := make([]netip.Prefix, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := h.cni.AddNetworkList(context.Background(), h.list, p.rt)
			if err != nil {
				errs[i] = err
				return
			}
			res, err := current.NewResultFromResult(r)
			if err != nil {
				errs[i] = err
				return
			}
			addrs[i] = podAddr(t, res)
		}()
	}
	wg.Wait()
	seen := map[netip.Prefix]int{}
	for i := range pods {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %v", i, errs[i])
		}
		if j, dup := seen[addrs[i]]; dup {
			t.Fatalf("pods %d and %d both got %s", j, i, addrs[i])
		}
		seen[addrs[i]] = i
	}
	if rs := h.reservations(t); len(rs) != n {
		t.Fatalf("%d reservations, want %d", len(rs), n)
	}
	// Every pod reaches the gateway.
	sem := make(chan struct{}, 10)
	for i, p := range pods {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = ping(p, gw)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.cni.DelNetworkList(context.Background(), h.list, p.rt)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if rs := h.reservations(t); len(rs) != 0 {
		t.Fatalf("%d reservations left", len(rs))
	}
	if nat := h.iptablesNAT(t); strings.Contains(nat, "198.18.5.") {
		t.Fatalf("masquerade rules left:\n%s", nat)
	}
}

// TestTwoNetworksShareAddresses: a second conflist with another name but
// the same subnet file (an operator's second config on the node) never
// hands out an address that a pod of the first holds, even with ADDs of
// both running at once.
func TestTwoNetworksShareAddresses(t *testing.T) {
	h := newHarness(t, opts{})
	lists := []*libcni.NetworkConfigList{h.list, h.confList(t, "weft-second", opts{})}
	const perNet = 12
	type attach struct {
		list *libcni.NetworkConfigList
		pod  *pod
	}
	var all []attach
	for _, l := range lists {
		for i := 0; i < perNet; i++ {
			all = append(all, attach{l, h.newPod(t)})
		}
	}
	addrs := make([]netip.Prefix, len(all))
	errs := make([]error, len(all))
	var wg sync.WaitGroup
	for i, a := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := h.cni.AddNetworkList(context.Background(), a.list, a.pod.rt)
			if err != nil {
				errs[i] = err
				return
			}
			res, err := current.NewResultFromResult(r)
			if err != nil {
				errs[i] = err
				return
			}
			addrs[i] = podAddr(t, res)
		}()
	}
	wg.Wait()
	seen := map[netip.Prefix]int{}
	for i, a := range all {
		if errs[i] != nil {
			t.Fatalf("ADD %s to %s: %v", a.pod.name, a.list.Name, errs[i])
		}
		if j, dup := seen[addrs[i]]; dup {
			t.Fatalf("%s of %s and %s of %s both got %s", all[j].pod.name, all[j].list.Name, a.pod.name, a.list.Name, addrs[i])
		}
		seen[addrs[i]] = i
	}
	for _, a := range all {
		if err := h.cni.DelNetworkList(context.Background(), a.list, a.pod.rt); err != nil {
			t.Fatalf("DEL %s: %v", a.pod.name, err)
		}
	}
	if rs := h.reservations(t); len(rs) != 0 {
		t.Fatalf("reservations left: %v", rs)
	}
	if nat := h.iptablesNAT(t); strings.Contains(nat, "WEFT-MASQ") {
		t.Fatalf("masquerade rules left after the last DEL of both networks:\n%s", nat)
	}
}

// TestBridgeWithForeignAddressIsRefused: a config that names a bridge
// holding an address outside the lease (the host's own, say) makes ADD fail
// with an error naming the bridge and the address, and the bridge keeps its
// address, its MTU and its state.
func TestBridgeWithForeignAddressIsRefused(t *testing.T) {
	h := newHarness(t, opts{})
	run(t, "ip", "-n", h.hostName, "link", "add", "cni0", "mtu", "1500", "type", "bridge")
	run(t, "ip", "-n", h.hostName, "addr", "add", "192.0.2.10/24", "dev", "cni0")
	p := h.newPod(t)
	_, err := h.cni.AddNetworkList(context.Background(), h.list, p.rt)
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, "bridge cni0 holds 192.0.2.10/24") {
		t.Fatalf("ADD on a bridge holding 192.0.2.10/24: got %v, want an invalid-config error naming cni0 and the address", err)
	}
	br := run(t, "ip", "-n", h.hostName, "-4", "addr", "show", "cni0")
	if !strings.Contains(br, "192.0.2.10/24") || strings.Contains(br, gw) || !strings.Contains(br, "mtu 1500") || strings.Contains(br, ",UP") {
		t.Fatalf("the refused bridge was changed:\n%s", br)
	}
	if rs := h.reservations(t); len(rs) != 0 {
		t.Fatalf("refused ADD left reservations: %v", rs)
	}
	if out := run(t, "ip", "-n", h.hostName, "link", "show"); strings.Contains(out, plugin.HostVethName(p.rt.ContainerID, "eth0")) {
		t.Fatalf("refused ADD left the host veth:\n%s", out)
	}
	// Without the foreign address the bridge is fine.
	run(t, "ip", "-n", h.hostName, "addr", "del", "192.0.2.10/24", "dev", "cni0")
	h.add(t, p)
	h.del(t, p)
}

// TestBridgeStaleAddressInLease: an address inside the lease subnet that is
// not the gateway (left from an earlier lease overlapping this one) is ours
// to remove; it goes, so that no pod can get an address the bridge holds.
func TestBridgeStaleAddressInLease(t *testing.T) {
	h := newHarness(t, opts{})
	run(t, "ip", "-n", h.hostName, "link", "add", "cni0", "type", "bridge")
	run(t, "ip", "-n", h.hostName, "addr", "add", "198.18.5.77/25", "dev", "cni0")
	p := h.newPod(t)
	h.add(t, p)
	br := run(t, "ip", "-n", h.hostName, "-4", "addr", "show", "cni0")
	if strings.Contains(br, "198.18.5.77") || !strings.Contains(br, gw+"/24") {
		t.Fatalf("bridge after ADD:\n%s", br)
	}
	h.del(t, p)
}

func TestDelUnknownAndGoneNetns(t *testing.T) {
	h := newHarness(t, opts{})
	p := h.newPod(t)
	// Never added.
	h.del(t, p)
	h.add(t, p)
	// The namespace goes away before DEL (the runtime lost it).
	if err := DeleteNS(p.name); err != nil {
		t.Fatal(err)
	}
	h.del(t, p)
	h.del(t, p)
	if rs := h.reservations(t); len(rs) != 0 {
		t.Fatalf("reservations left: %v", rs)
	}
}

func TestStatus(t *testing.T) {
	h := newHarness(t, opts{noSubnetFile: true})
	err := h.cni.GetStatusNetworkList(context.Background(), h.list)
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("STATUS without subnet file: got %v, want a CNI error", err)
	}
	want := "weftd has not written " + h.subnetFile + "; is weftd running?"
	if te.Code != types.ErrPluginNotAvailable || te.Msg != want {
		t.Fatalf("STATUS: code %d msg %q, want %d %q", te.Code, te.Msg, types.ErrPluginNotAvailable, want)
	}
	// ADD fails the same way; DEL still works.
	p := h.newPod(t)
	if _, err := h.cni.AddNetworkList(context.Background(), h.list, p.rt); !errors.As(err, &te) || te.Code != types.ErrPluginNotAvailable {
		t.Fatalf("ADD without subnet file: %v", err)
	}
	h.del(t, p)

	os.WriteFile(h.subnetFile, []byte("garbage\n"), 0o644)
	if err := h.cni.GetStatusNetworkList(context.Background(), h.list); !errors.As(err, &te) || te.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS with unreadable subnet file: %v", err)
	}
	if err := subnet.WriteEnvFile(h.subnetFile, testEnv); err != nil {
		t.Fatal(err)
	}
	if err := h.cni.GetStatusNetworkList(context.Background(), h.list); err != nil {
		t.Fatalf("STATUS with subnet file: %v", err)
	}
}

func TestGCReleasesLeaks(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "weft.log")
	h := newHarness(t, opts{extraWeftConf: fmt.Sprintf(`,"logFile":%q`, logFile)})
	pods := []*pod{h.newPod(t), h.newPod(t), h.newPod(t)}
	for _, p := range pods {
		h.add(t, p)
	}
	// A plugin killed after reserving, before any interface existed.
	s, err := ipam.Open(h.dataDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Do(func(tx *ipam.Tx) error {
		_, _, err := tx.Allocate(testEnv.LeaseSubnet(), testEnv.Subnet.Addr(), ipam.Owner{Network: "weft", ContainerID: "crashed", IfName: "eth0"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// The runtime forgot pods 1 and 2 (a fresh libcni cache), so only the
	// plugin's own GC can reclaim them.
	var stderr lockedBuffer
	fresh := libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, t.TempDir(), &HostExec{NSPath: h.hostNS, raw: invoke.RawExec{Stderr: &stderr}})
	valid := []types.GCAttachment{{ContainerID: pods[0].rt.ContainerID, IfName: "eth0"}}
	if err := fresh.GCNetworkList(context.Background(), h.list, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	rs := h.reservations(t)
	if len(rs) != 1 || rs[0].ContainerID != pods[0].rt.ContainerID {
		t.Fatalf("after GC: %v, want only pod 0", rs)
	}
	links := run(t, "ip", "-n", h.hostName, "link", "show")
	for _, p := range pods[1:] {
		if strings.Contains(links, plugin.HostVethName(p.rt.ContainerID, "eth0")) {
			t.Fatalf("GC left the host veth of %s", p.name)
		}
	}
	if n := strings.Count(h.iptablesNAT(t), "-A POSTROUTING -s 198.18.5.0/24 "); n != 1 {
		t.Fatalf("%d masquerade jumps after GC, want 1 (pod 0 still needs it)", n)
	}
	if err := h.cni.CheckNetworkList(context.Background(), h.list, pods[0].rt); err != nil {
		t.Fatalf("CHECK of the valid pod after GC: %v", err)
	}
	// Each released attachment is logged to stderr and to the log file.
	logged, _ := os.ReadFile(logFile)
	for _, id := range []string{pods[1].rt.ContainerID, pods[2].rt.ContainerID, "crashed"} {
		for where, text := range map[string]string{"stderr": stderr.String(), "log file": string(logged)} {
			if !strings.Contains(text, "gc: released") || !strings.Contains(text, "container="+id) {
				t.Errorf("%s does not log the release of %s:\n%s", where, id, text)
			}
		}
	}
	if strings.Contains(stderr.String(), pods[0].rt.ContainerID) {
		t.Errorf("stderr names the valid pod 0:\n%s", stderr.String())
	}
	// stdout carries only the result, which GC does not have.
	h.add(t, pods[1])
	out := h.execGC(t, valid)
	if len(out) != 0 {
		t.Fatalf("GC wrote %q to stdout", out)
	}
	if rs := h.reservations(t); len(rs) != 1 {
		t.Fatalf("after the second GC: %v, want only pod 0", rs)
	}
}

// execGC runs the plugin's GC directly, with valid as the list, and returns
// what it wrote to stdout.
func (h *harness) execGC(t *testing.T, valid []types.GCAttachment) []byte {
	t.Helper()
	conf, err := libcni.InjectConf(h.list.Plugins[0], map[string]interface{}{"name": h.list.Name, "cniVersion": h.list.CNIVersion, "cni.dev/valid-attachments": valid})
	if err != nil {
		t.Fatal(err)
	}
	args := &invoke.Args{Command: "GC", Path: pluginDir}
	out, err := NewHostExec(h.hostNS).ExecPlugin(context.Background(), filepath.Join(pluginDir, "weft"), conf.Bytes, args.AsEnv())
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	return out
}

// TestGCRefusesWithoutList: a GC without cni.dev/valid-attachments (libcni
// sends none for nil GCArgs, and null for an unset list) fails and leaves
// every pod attached.
func TestGCRefusesWithoutList(t *testing.T) {
	h := newHarness(t, opts{})
	pods := []*pod{h.newPod(t), h.newPod(t)}
	for _, p := range pods {
		h.add(t, p)
	}
	fresh := NewCNI(h.hostNS, pluginDir, t.TempDir())
	for name, args := range map[string]*libcni.GCArgs{"no args": nil, "nil list": {}} {
		err := fresh.GCNetworkList(context.Background(), h.list, args)
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, "cni.dev/valid-attachments") {
			t.Errorf("GC with %s: got %v, want an invalid-config error naming cni.dev/valid-attachments", name, err)
		}
	}
	if rs := h.reservations(t); len(rs) != len(pods) {
		t.Fatalf("GC without a list left %d of %d reservations", len(rs), len(pods))
	}
	for _, p := range pods {
		if err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt); err != nil {
			t.Errorf("CHECK of %s after a refused GC: %v", p.name, err)
		}
	}
	// An explicit empty list means the runtime has no attachments: GC
	// releases them all.
	if err := fresh.GCNetworkList(context.Background(), h.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}); err != nil {
		t.Fatalf("GC with an empty list: %v", err)
	}
	if rs := h.reservations(t); len(rs) != 0 {
		t.Fatalf("GC with an empty list left %v", rs)
	}
}

// lockedBuffer is a bytes.Buffer that plugin processes may write to from
// several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestDelReclaimsCrashedAdd(t *testing.T) {
	h := newHarness(t, opts{})
	p := h.newPod(t)
	s, _ := ipam.Open(h.dataDir, nil)
	err := s.Do(func(tx *ipam.Tx) error {
		_, _, err := tx.Allocate(testEnv.LeaseSubnet(), testEnv.Subnet.Addr(), ipam.Owner{Network: "weft", ContainerID: p.rt.ContainerID, IfName: "eth0"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	h.del(t, p)
	if rs := h.reservations(t); len(rs) != 0 {
		t.Fatalf("DEL left %v", rs)
	}
}

func TestPortmapChained(t *testing.T) {
	h := newHarness(t, opts{portmap: true})
	p := h.newPod(t)
	p.rt.CapabilityArgs = map[string]interface{}{
		"portMappings": []map[string]interface{}{{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}},
	}
	res := h.add(t, p)
	addr := podAddr(t, res).Addr().String()
	nat := h.iptablesNAT(t)
	if !strings.Contains(nat, "--dport 18080") || !strings.Contains(nat, "--to-destination "+addr+":80") {
		t.Fatalf("no DNAT rule for the port mapping:\n%s", nat)
	}
	if err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	h.del(t, p)
	if nat := h.iptablesNAT(t); strings.Contains(nat, "--dport 18080") {
		t.Fatalf("DNAT rule left after DEL:\n%s", nat)
	}
}

func TestSubnetChange(t *testing.T) {
	h := newHarness(t, opts{})
	p1 := h.newPod(t)
	a1 := podAddr(t, h.add(t, p1))
	newEnv := testEnv
	newEnv.Subnet = netip.MustParsePrefix("198.18.7.1/24")
	if err := subnet.WriteEnvFile(h.subnetFile, newEnv); err != nil {
		t.Fatal(err)
	}
	p2 := h.newPod(t)
	a2 := podAddr(t, h.add(t, p2))
	if !newEnv.LeaseSubnet().Contains(a2.Addr()) {
		t.Fatalf("pod after the change got %s, want one in %s (first pod had %s)", a2, newEnv.LeaseSubnet(), a1)
	}
	br := run(t, "ip", "-n", h.hostName, "-4", "addr", "show", "cni0")
	if !strings.Contains(br, "198.18.7.1/24") || strings.Contains(br, "198.18.5.1") {
		t.Fatalf("bridge address not replaced:\n%s", br)
	}
	if err := ping(p2, "198.18.7.1"); err != nil {
		t.Fatal(err)
	}
	nat := h.iptablesNAT(t)
	if !strings.Contains(nat, "-A POSTROUTING -s 198.18.7.0/24 ") || !strings.Contains(nat, "-A POSTROUTING -s 198.18.5.0/24 ") {
		t.Fatalf("both subnets need their masquerade jump while pods of both exist:\n%s", nat)
	}
	// The old pod's attachment no longer matches the node's subnet.
	if err := h.cni.CheckNetworkList(context.Background(), h.list, p1.rt); err == nil {
		t.Fatal("CHECK of a pod from the old subnet succeeded")
	}
	h.del(t, p1)
	h.del(t, p2)
	if rs := h.reservations(t); len(rs) != 0 {
		t.Fatalf("left: %v", rs)
	}
	if nat := h.iptablesNAT(t); strings.Contains(nat, "198.18.") {
		t.Fatalf("masquerade rules left after the last DEL:\n%s", nat)
	}
}

func TestResultConversion(t *testing.T) {
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0"} {
		t.Run(v, func(t *testing.T) {
			h := newHarness(t, opts{version: v})
			p := h.newPod(t)
			r, err := h.cni.AddNetworkList(context.Background(), h.list, p.rt)
			if err != nil {
				t.Fatal(err)
			}
			if r.Version() != v {
				t.Fatalf("result version %s, want %s", r.Version(), v)
			}
			switch v {
			case "1.0.0":
				res := r.(*current.Result)
				if len(res.IPs) != 1 || *res.IPs[0].Interface != 2 {
					t.Fatalf("result: %+v", res)
				}
			default:
				res, ok := r.(*types040.Result)
				if !ok {
					t.Fatalf("result type %T", r)
				}
				if len(res.Interfaces) != 3 || len(res.IPs) != 1 || *res.IPs[0].Interface != 2 || res.IPs[0].Gateway.String() != gw {
					t.Fatalf("result: %+v", res)
				}
				if res.Interfaces[2].Sandbox != p.path {
					t.Fatalf("sandbox %q", res.Interfaces[2].Sandbox)
				}
			}
			if v == "0.4.0" || v == "1.0.0" {
				if err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}
			h.del(t, p)
		})
	}
}

func TestNoHostLeakIntoRootNamespace(t *testing.T) {
	h := newHarness(t, opts{})
	p := h.newPod(t)
	h.add(t, p)
	root := run(t, "ip", "-o", "link", "show")
	if strings.Contains(root, plugin.HostVethName(p.rt.ContainerID, "eth0")) {
		t.Fatal("the plugin created its host veth in the root namespace")
	}
	if !strings.Contains(run(t, "ip", "-n", h.hostName, "-o", "link", "show"), plugin.HostVethName(p.rt.ContainerID, "eth0")) {
		t.Fatal("host veth not in the host namespace")
	}
	h.del(t, p)
}

func TestAddRollsBackOnFailure(t *testing.T) {
	h := newHarness(t, opts{})
	p := h.newPod(t)
	// An eth0 that is not ours makes ADD fail after the reservation and the
	// bridge, before the veth.
	run(t, "ip", "-n", p.name, "link", "add", "eth0", "type", "veth", "peer", "name", "wcnx0")
	if _, err := h.cni.AddNetworkList(context.Background(), h.list, p.rt); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("ADD over a foreign eth0: got %v, want an 'already exists' error", err)
	}
	if rs := h.reservations(t); len(rs) != 0 {
		t.Fatalf("failed ADD left reservations: %v", rs)
	}
	if out := run(t, "ip", "-n", h.hostName, "link", "show"); strings.Contains(out, plugin.HostVethName(p.rt.ContainerID, "eth0")) {
		t.Fatalf("failed ADD left the host veth:\n%s", out)
	}
	// Once the obstacle is gone, the same attachment works.
	run(t, "ip", "-n", p.name, "link", "del", "eth0")
	h.add(t, p)
	if err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt); err != nil {
		t.Fatal(err)
	}
	h.del(t, p)
}

func TestVersion(t *testing.T) {
	h := newHarness(t, opts{})
	info, err := h.cni.GetVersionInfo(context.Background(), "weft")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(info.SupportedVersions(), ",")
	if got != "0.3.0,0.3.1,0.4.0,1.0.0,1.1.0" {
		t.Fatalf("supported versions %s", got)
	}
}

func TestCheckRejectsWrongPrevResult(t *testing.T) {
	h := newHarness(t, opts{})
	p := h.newPod(t)
	h.add(t, p)
	// Run CHECK for the single plugin with a prevResult naming another address.
	conf := h.list.Plugins[0]
	prev := &current.Result{CNIVersion: "1.1.0", IPs: []*current.IPConfig{{Address: *mustCIDR(t, "198.18.5.200/24")}}}
	net, err := libcni.InjectConf(conf, map[string]interface{}{"name": "weft", "cniVersion": "1.1.0", "prevResult": prev})
	if err != nil {
		t.Fatal(err)
	}
	// libcni would substitute its cached result, so call the plugin directly.
	args := &invoke.Args{Command: "CHECK", ContainerID: p.rt.ContainerID, NetNS: p.path, IfName: "eth0", Path: pluginDir}
	err = invoke.ExecPluginWithoutResult(context.Background(), filepath.Join(pluginDir, "weft"), net.Bytes, args, NewHostExec(h.hostNS))
	if err == nil || !strings.Contains(err.Error(), "prevResult") {
		t.Fatalf("CHECK with a foreign prevResult: %v", err)
	}
	h.del(t, p)
}

func TestRoutesHairpinAndMTUOverride(t *testing.T) {
	h := newHarness(t, opts{extraWeftConf: `,"hairpinMode":true,"isDefaultGateway":false,"mtu":1400,"ipMasq":false,"routes":[{"dst":"198.19.0.0/16"},{"dst":"198.19.1.0/24","gw":"198.18.5.254"}]`})
	p := h.newPod(t)
	res := h.add(t, p)
	routes := run(t, "ip", "-n", p.name, "-4", "route", "show")
	for _, want := range []string{"198.18.0.0/16 via " + gw, "198.19.0.0/16 via " + gw, "198.19.1.0/24 via 198.18.5.254"} {
		if !strings.Contains(routes, want) {
			t.Errorf("pod routes lack %q:\n%s", want, routes)
		}
	}
	if strings.Contains(routes, "default") {
		t.Errorf("pod has a default route with isDefaultGateway=false:\n%s", routes)
	}
	if len(res.Routes) != 3 {
		t.Errorf("result routes: %v", res.Routes)
	}
	if l := run(t, "ip", "-n", p.name, "link", "show", "eth0"); !strings.Contains(l, "mtu 1400") {
		t.Errorf("mtu override ignored:\n%s", l)
	}
	hostVeth := plugin.HostVethName(p.rt.ContainerID, "eth0")
	if b := run(t, "bridge", "-n", h.hostName, "-d", "link", "show", "dev", hostVeth); !strings.Contains(b, "hairpin on") {
		t.Errorf("hairpin not set:\n%s", b)
	}
	if nat := h.iptablesNAT(t); strings.Contains(nat, "WEFT-MASQ") {
		t.Errorf("ipMasq=false still installed masquerade rules:\n%s", nat)
	}
	if err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt); err != nil {
		t.Fatal(err)
	}
	h.del(t, p)
}

func TestNoMasqueradeWhenWeftdDoesIt(t *testing.T) {
	h := newHarness(t, opts{})
	e := testEnv
	e.IPMasq = true // weftd --ip-masq
	if err := subnet.WriteEnvFile(h.subnetFile, e); err != nil {
		t.Fatal(err)
	}
	p := h.newPod(t)
	h.add(t, p)
	if nat := h.iptablesNAT(t); strings.Contains(nat, "WEFT-MASQ") {
		t.Fatalf("the plugin masqueraded although FLANNEL_IPMASQ=true:\n%s", nat)
	}
	if err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt); err != nil {
		t.Fatal(err)
	}
	h.del(t, p)
}
