package cnitest

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weftnet/weft/cni-plugin/plugin"
	"github.com/weftnet/weft/subnet"
)

// testEnv6 is testEnv with an IPv6 lease: what a dual-stack weftd writes.
var (
	testEnv6 = func() subnet.Env {
		e := testEnv
		e.IPv6Network = netip.MustParsePrefix("2001:db8:100::/48")
		e.IPv6Subnet = netip.MustParsePrefix("2001:db8:100:59::1/64")
		return e
	}()
	gw6 = "2001:db8:100:59::1"
)

// newDualHarness is a harness whose subnet.env has the IPv6 variables.
func newDualHarness(t *testing.T, o opts) *harness {
	t.Helper()
	h := newHarness(t, o)
	if err := subnet.WriteEnvFile(h.subnetFile, testEnv6); err != nil {
		t.Fatal(err)
	}
	return h
}

// podAddrs returns the result's IPv4 and IPv6 addresses, failing unless
// there is exactly one of each, on the container interface, each with its
// family's gateway.
func podAddrs(t *testing.T, res *current.Result) (v4, v6 netip.Prefix) {
	t.Helper()
	if len(res.IPs) != 2 {
		t.Fatalf("result has %d IPs, want one per family: %+v", len(res.IPs), res.IPs)
	}
	for _, ipc := range res.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		a = a.Unmap()
		ones, _ := ipc.Address.Mask.Size()
		p := netip.PrefixFrom(a, ones)
		if ipc.Interface == nil || *ipc.Interface != 2 || res.Interfaces[*ipc.Interface].Name != "eth0" {
			t.Fatalf("ip config %s does not point at eth0: %+v", p, ipc)
		}
		switch {
		case a.Is4():
			if ipc.Gateway.String() != gw {
				t.Fatalf("IPv4 gateway %s, want %s", ipc.Gateway, gw)
			}
			v4 = p
		case a.Is6():
			if ipc.Gateway.String() != gw6 {
				t.Fatalf("IPv6 gateway %s, want %s", ipc.Gateway, gw6)
			}
			v6 = p
		}
	}
	if !v4.IsValid() || !v6.IsValid() {
		t.Fatalf("result lacks a family: %+v", res.IPs)
	}
	return v4, v6
}

func (h *harness) ip6tablesNAT(t *testing.T) string {
	return run(t, "ip", "netns", "exec", h.hostName, "ip6tables", "-w", "-t", "nat", "-S")
}

func sysctlIn(t *testing.T, netnsName, key string) string {
	t.Helper()
	return strings.TrimSpace(run(t, "ip", "netns", "exec", netnsName, "cat", "/proc/sys/"+strings.ReplaceAll(key, ".", "/")))
}

// TestDualStackAddCheckDel: with the IPv6 variables in subnet.env, ADD gives
// the pod an address and a default route per family, usable at once; CHECK
// passes; DEL releases both addresses and removes both families' rules.
func TestDualStackAddCheckDel(t *testing.T) {
	h := newDualHarness(t, opts{})
	p := h.newPod(t)
	res := h.add(t, p)
	v4, v6 := podAddrs(t, res)
	sub6 := testEnv6.LeaseSubnet6()
	if !testEnv.LeaseSubnet().Contains(v4.Addr()) || v4.Bits() != 24 {
		t.Fatalf("IPv4 address %s", v4)
	}
	if !sub6.Contains(v6.Addr()) || v6.Bits() != 64 || v6.Addr().String() == gw6 || v6.Addr() == sub6.Addr() {
		t.Fatalf("IPv6 address %s", v6)
	}
	routes := map[string]string{}
	for _, r := range res.Routes {
		routes[r.Dst.String()] = r.GW.String()
	}
	if len(res.Routes) != 2 || routes["0.0.0.0/0"] != gw || routes["::/0"] != gw6 {
		t.Fatalf("result routes: %v", res.Routes)
	}

	// The kernel agrees, and the IPv6 address is usable at once.
	a6 := run(t, "ip", "-n", p.name, "-6", "addr", "show", "dev", "eth0", "scope", "global")
	if !strings.Contains(a6, v6.String()) || strings.Contains(a6, "tentative") {
		t.Fatalf("pod eth0 IPv6 addresses (want %s, not tentative):\n%s", v6, a6)
	}
	if r := run(t, "ip", "-n", p.name, "-6", "route", "show", "default"); !strings.Contains(r, "via "+gw6) {
		t.Fatalf("pod IPv6 default route: %s", r)
	}
	if r := run(t, "ip", "-n", p.name, "-4", "route", "show", "default"); !strings.Contains(r, "via "+gw) {
		t.Fatalf("pod IPv4 default route: %s", r)
	}
	if br := run(t, "ip", "-n", h.hostName, "-6", "addr", "show", "cni0"); !strings.Contains(br, gw6+"/64") {
		t.Fatalf("bridge lacks the IPv6 gateway:\n%s", br)
	}
	if v := sysctlIn(t, p.name, "net.ipv6.conf.eth0.accept_ra"); v != "0" {
		t.Errorf("pod eth0 accept_ra=%s, want 0", v)
	}
	if v := sysctlIn(t, h.hostName, "net.ipv6.conf.all.forwarding"); v != "1" {
		t.Errorf("host namespace net.ipv6.conf.all.forwarding=%s, want 1", v)
	}
	for _, a := range []string{gw, gw6} {
		if err := ping(p, a); err != nil {
			t.Fatal(err)
		}
	}
	// A second pod reaches the first over both families.
	p2 := h.newPod(t)
	v4b, v6b := podAddrs(t, h.add(t, p2))
	if v4b == v4 || v6b == v6 {
		t.Fatalf("two pods share an address: %s %s / %s %s", v4, v6, v4b, v6b)
	}
	if err := ping(p2, v6.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if err := ping(p2, v4.Addr().String()); err != nil {
		t.Fatal(err)
	}

	// Masquerade per family: ip6tables holds the IPv6 rules.
	chain := plugin.MasqChain("weft")
	nat6 := h.ip6tablesNAT(t)
	for _, want := range []string{
		"-A POSTROUTING -s 2001:db8:100:59::/64 ",
		"-A " + chain + " -d 2001:db8:100::/48 -j RETURN",
		"-A " + chain + " -d ff00::/8 -j RETURN",
		"-A " + chain + " -j MASQUERADE",
	} {
		if !strings.Contains(nat6, want) {
			t.Fatalf("ip6tables nat lacks %q:\n%s", want, nat6)
		}
	}
	if nat := h.iptablesNAT(t); !strings.Contains(nat, "-A POSTROUTING -s 198.18.5.0/24 ") || strings.Contains(nat, "2001:db8") {
		t.Fatalf("iptables nat:\n%s", nat)
	}

	if err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt); err != nil {
		t.Fatalf("CHECK on a healthy dual-stack pod: %v", err)
	}

	h.del(t, p2)
	h.del(t, p)
	if rs := h.reservations(t); len(rs) != 0 {
		t.Fatalf("reservations left after DEL: %v", rs)
	}
	if nat6 := h.ip6tablesNAT(t); strings.Contains(nat6, chain) || strings.Contains(nat6, "2001:db8") {
		t.Fatalf("ip6tables masquerade rules left after the last DEL:\n%s", nat6)
	}
	if nat := h.iptablesNAT(t); strings.Contains(nat, chain) {
		t.Fatalf("iptables masquerade rules left after the last DEL:\n%s", nat)
	}
}

// TestDualStackCheckNamesWhatIsMissing: CHECK fails when one family's
// address, route or gateway goes, naming it, and passes again once it is
// back.
func TestDualStackCheckNamesWhatIsMissing(t *testing.T) {
	h := newDualHarness(t, opts{})
	p := h.newPod(t)
	_, v6 := podAddrs(t, h.add(t, p))
	steps := []struct {
		name   string
		break_ []string
		fix    [][]string
		want   string
	}{
		{"IPv6 default route",
			[]string{"ip", "-n", p.name, "-6", "route", "del", "default"},
			[][]string{{"ip", "-n", p.name, "-6", "route", "add", "default", "via", gw6, "dev", "eth0"}},
			"IPv6 route ::/0 via " + gw6},
		{"IPv4 default route",
			[]string{"ip", "-n", p.name, "-4", "route", "del", "default"},
			[][]string{{"ip", "-n", p.name, "-4", "route", "add", "default", "via", gw}},
			"IPv4 route 0.0.0.0/0 via " + gw},
		{"IPv6 address",
			[]string{"ip", "-n", p.name, "addr", "del", v6.String(), "dev", "eth0"},
			// The default route goes with the address's connected route.
			[][]string{
				{"ip", "-n", p.name, "addr", "add", v6.String(), "dev", "eth0", "nodad"},
				{"ip", "-n", p.name, "-6", "route", "replace", "default", "via", gw6, "dev", "eth0"},
			},
			"IPv6 address " + v6.String()},
		{"IPv6 gateway on the bridge",
			[]string{"ip", "-n", h.hostName, "addr", "del", gw6 + "/64", "dev", "cni0"},
			[][]string{{"ip", "-n", h.hostName, "addr", "add", gw6 + "/64", "dev", "cni0", "nodad"}},
			"IPv6 gateway " + gw6},
	}
	for _, s := range steps {
		run(t, s.break_...)
		err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt)
		if err == nil || !strings.Contains(err.Error(), s.want) {
			t.Errorf("%s removed: CHECK gave %v, want an error containing %q", s.name, err, s.want)
		}
		for _, f := range s.fix {
			run(t, f...)
		}
		if err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt); err != nil {
			t.Errorf("%s restored: CHECK gave %v", s.name, err)
		}
	}
	h.del(t, p)
}

// TestDualStackPodNamespaceWithoutIPv6: a runtime that turns IPv6 off by
// default in the pod's namespace does not stop the IPv6 address.
func TestDualStackPodNamespaceWithoutIPv6(t *testing.T) {
	h := newDualHarness(t, opts{})
	p := h.newPod(t)
	run(t, "ip", "netns", "exec", p.name, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6")
	_, v6 := podAddrs(t, h.add(t, p))
	if v := sysctlIn(t, p.name, "net.ipv6.conf.eth0.disable_ipv6"); v != "0" {
		t.Fatalf("eth0 disable_ipv6=%s after ADD", v)
	}
	if a := run(t, "ip", "-n", p.name, "-6", "addr", "show", "dev", "eth0"); !strings.Contains(a, v6.String()) {
		t.Fatalf("eth0 lacks %s:\n%s", v6, a)
	}
	if err := ping(p, gw6); err != nil {
		t.Fatal(err)
	}
	h.del(t, p)
}

// TestDualStackOnV4Pods: turning dual stack on under running IPv4 pods
// keeps their addresses (a re-ADD keeps its IPv4 address and gains an IPv6
// one), and turning it off again gives IPv4-only results.
func TestDualStackOnV4Pods(t *testing.T) {
	h := newHarness(t, opts{})
	p := h.newPod(t)
	before := podAddr(t, h.add(t, p))
	if err := subnet.WriteEnvFile(h.subnetFile, testEnv6); err != nil {
		t.Fatal(err)
	}
	// The runtime's CHECK now notices the missing IPv6 address.
	err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt)
	if err == nil || !strings.Contains(err.Error(), "no IPv6 address") {
		t.Fatalf("CHECK of an IPv4-only pod on a dual-stack node: %v", err)
	}
	h.del(t, p)
	p2 := h.newPod(t)
	v4, _ := podAddrs(t, h.add(t, p2))
	if !testEnv.LeaseSubnet().Contains(v4.Addr()) || before.Bits() != v4.Bits() {
		t.Fatalf("IPv4 address %s after the switch", v4)
	}
	if err := subnet.WriteEnvFile(h.subnetFile, testEnv); err != nil {
		t.Fatal(err)
	}
	p3 := h.newPod(t)
	res := h.add(t, p3)
	podAddr(t, res) // exactly one IP
	if r := run(t, "ip", "-n", p3.name, "-6", "route", "show", "default"); strings.TrimSpace(r) != "" {
		t.Fatalf("IPv4-only pod has an IPv6 default route: %s", r)
	}
	h.del(t, p2)
	h.del(t, p3)
	if rs := h.reservations(t); len(rs) != 0 {
		t.Fatalf("left: %v", rs)
	}
}

// TestDualStackResultConversion: older result versions carry both
// addresses too.
func TestDualStackResultConversion(t *testing.T) {
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0"} {
		t.Run(v, func(t *testing.T) {
			h := newDualHarness(t, opts{version: v})
			p := h.newPod(t)
			r, err := h.cni.AddNetworkList(context.Background(), h.list, p.rt)
			if err != nil {
				t.Fatal(err)
			}
			switch res := r.(type) {
			case *current.Result:
				podAddrs(t, res)
			case *types040.Result:
				if len(res.IPs) != 2 {
					t.Fatalf("result IPs: %+v", res.IPs)
				}
				got := map[string]string{}
				for _, ipc := range res.IPs {
					if *ipc.Interface != 2 {
						t.Fatalf("ip config %+v does not point at eth0", ipc)
					}
					got[ipc.Version] = ipc.Gateway.String()
				}
				if got["4"] != gw || got["6"] != gw6 {
					t.Fatalf("result IPs by version: %v", got)
				}
			default:
				t.Fatalf("result type %T", r)
			}
			if v != "0.3.1" {
				if err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}
			h.del(t, p)
		})
	}
}

// TestDualStackBadEnvRefused: a subnet.env whose IPv6 part would break pods
// or the host is refused with a message naming the variable, and nothing is
// reserved or created.
func TestDualStackBadEnvRefused(t *testing.T) {
	cases := []struct {
		name string
		env  func(e *subnet.Env)
		want string
	}{
		{"gateway is the subnet's own address", func(e *subnet.Env) { e.IPv6Subnet = netip.MustParsePrefix("2001:db8:100:59::/64") }, "FLANNEL_IPV6_SUBNET"},
		{"subnet too small", func(e *subnet.Env) { e.IPv6Subnet = netip.MustParsePrefix("2001:db8:100:59::1/127") }, "FLANNEL_IPV6_SUBNET"},
		{"MTU too small for IPv6", func(e *subnet.Env) { e.MTU = 1200 }, "1280"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, opts{})
			e := testEnv6
			c.env(&e)
			if err := subnet.WriteEnvFile(h.subnetFile, e); err != nil {
				t.Fatal(err)
			}
			p := h.newPod(t)
			_, err := h.cni.AddNetworkList(context.Background(), h.list, p.rt)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("ADD: got %v, want an error naming %q", err, c.want)
			}
			if rs := h.reservations(t); len(rs) != 0 {
				t.Fatalf("refused ADD reserved %v", rs)
			}
			if out := run(t, "ip", "-n", h.hostName, "link", "show"); strings.Contains(out, "cni0") {
				t.Fatalf("refused ADD created the bridge:\n%s", out)
			}
		})
	}
}

// TestDualStackNFTablesMasquerade: in nftables mode (weftd's table ip weft
// exists) the IPv6 masquerade rules live in a table ip6 of the network's
// own, beside the table ip, and the last DEL removes both.
func TestDualStackNFTablesMasquerade(t *testing.T) {
	h := newDualHarness(t, opts{})
	run(t, "ip", "netns", "exec", h.hostName, "nft", "add", "table", "ip", "weft")
	p := h.newPod(t)
	h.add(t, p)
	table := plugin.MasqTable("weft")
	t6 := run(t, "ip", "netns", "exec", h.hostName, "nft", "list", "table", "ip6", table)
	for _, want := range []string{"ip6 daddr 2001:db8:100::/48", "ip6 daddr ff00::/8", "masquerade", "ip6 saddr 2001:db8:100:59::/64"} {
		if !strings.Contains(t6, want) {
			t.Fatalf("table ip6 %s lacks %q:\n%s", table, want, t6)
		}
	}
	if t4 := run(t, "ip", "netns", "exec", h.hostName, "nft", "list", "table", "ip", table); !strings.Contains(t4, "ip saddr 198.18.5.0/24") {
		t.Fatalf("table ip %s:\n%s", table, t4)
	}
	if nat6 := h.ip6tablesNAT(t); strings.Contains(nat6, plugin.MasqChain("weft")) {
		t.Fatalf("nftables mode also wrote ip6tables rules:\n%s", nat6)
	}
	// A flushed ip6 table is rebuilt by CHECK.
	run(t, "ip", "netns", "exec", h.hostName, "nft", "delete", "table", "ip6", table)
	if err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt); err != nil {
		t.Fatalf("CHECK after the ip6 table was deleted: %v", err)
	}
	if t6 := run(t, "ip", "netns", "exec", h.hostName, "nft", "list", "table", "ip6", table); !strings.Contains(t6, "ip6 saddr 2001:db8:100:59::/64") {
		t.Fatalf("CHECK did not restore table ip6 %s:\n%s", table, t6)
	}
	h.del(t, p)
	if out := run(t, "ip", "netns", "exec", h.hostName, "nft", "list", "tables"); strings.Contains(out, table) {
		t.Fatalf("masquerade tables left after the last DEL:\n%s", out)
	}
}

// TestDualStackRollbackKeepsHeldIPv4: an ADD repeated after dual stack was
// turned on that fails (here: a foreign IPv6 address on the bridge) keeps
// the attachment's IPv4 address and releases only the new IPv6 one; once
// the obstacle is gone the same ADD succeeds with the same IPv4 address.
func TestDualStackRollbackKeepsHeldIPv4(t *testing.T) {
	h := newHarness(t, opts{})
	p := h.newPod(t)
	v4 := podAddr(t, h.add(t, p))
	if err := subnet.WriteEnvFile(h.subnetFile, testEnv6); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "-n", h.hostName, "addr", "add", "2001:db8:ffff::5/64", "dev", "cni0", "nodad")
	_, err := h.cni.AddNetworkList(context.Background(), h.list, p.rt)
	if err == nil || !strings.Contains(err.Error(), "2001:db8:ffff::5/64") {
		t.Fatalf("ADD with a foreign IPv6 address on the bridge: got %v, want a refusal naming it", err)
	}
	rs := h.reservations(t)
	if len(rs) != 1 || rs[0].IP != v4.Addr() || rs[0].ContainerID != p.rt.ContainerID {
		t.Fatalf("after the failed ADD: %v, want only the IPv4 address %s", rs, v4.Addr())
	}
	run(t, "ip", "-n", h.hostName, "addr", "del", "2001:db8:ffff::5/64", "dev", "cni0")
	got4, _ := podAddrs(t, h.add(t, p))
	if got4 != v4 {
		t.Fatalf("IPv4 address %s after the repeated ADD, want %s", got4, v4)
	}
	if err := h.cni.CheckNetworkList(context.Background(), h.list, p.rt); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	h.del(t, p)
	if rs := h.reservations(t); len(rs) != 0 {
		t.Fatalf("left: %v", rs)
	}
}

// TestDualStackGC: GC releases both addresses of a stale attachment, and
// keeps the IPv6 masquerade jump while a valid pod needs it.
func TestDualStackGC(t *testing.T) {
	h := newDualHarness(t, opts{})
	pods := []*pod{h.newPod(t), h.newPod(t)}
	for _, p := range pods {
		h.add(t, p)
	}
	fresh := NewCNI(h.hostNS, pluginDir, t.TempDir())
	valid := []types.GCAttachment{{ContainerID: pods[0].rt.ContainerID, IfName: "eth0"}}
	if err := fresh.GCNetworkList(context.Background(), h.list, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	rs := h.reservations(t)
	if len(rs) != 2 || rs[0].ContainerID != pods[0].rt.ContainerID || rs[1].ContainerID != pods[0].rt.ContainerID || rs[0].IP.Is6() == rs[1].IP.Is6() {
		t.Fatalf("after GC: %v, want pod 0's two addresses", rs)
	}
	if n := strings.Count(h.ip6tablesNAT(t), "-A POSTROUTING -s 2001:db8:100:59::/64 "); n != 1 {
		t.Fatalf("%d IPv6 masquerade jumps after GC, want 1", n)
	}
	h.del(t, pods[0])
	if nat6 := h.ip6tablesNAT(t); strings.Contains(nat6, "WEFT-MASQ") {
		t.Fatalf("IPv6 masquerade rules left after the last DEL:\n%s", nat6)
	}
}

// TestDualStackParallelAdds: concurrent dual-stack ADDs all succeed and
// never share an address of either family. (Their host ends' link-local
// addresses come and go meanwhile, which can interrupt the plugin's
// address dumps; it retries them through nl.RetryDump. A run of 100 pods,
// 20 at a time, in cnibench's TestLatency hit that once before the retry.)
func TestDualStackParallelAdds(t *testing.T) {
	h := newDualHarness(t, opts{})
	const n = 40
	pods := make([]*pod, n)
	for i := range pods {
		pods[i] = h.newPod(t)
	}
	results := make([]*current.Result, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := h.cni.AddNetworkList(context.Background(), h.list, p.rt)
			if err == nil {
				results[i], err = current.NewResultFromResult(r)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	seen := map[netip.Prefix]int{}
	for i := range pods {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %v", i, errs[i])
		}
		v4, v6 := podAddrs(t, results[i])
		for _, a := range []netip.Prefix{v4, v6} {
			if j, dup := seen[a]; dup {
				t.Fatalf("pods %d and %d both got %s", j, i, a)
			}
			seen[a] = i
		}
	}
	if rs := h.reservations(t); len(rs) != 2*n {
		t.Fatalf("%d reservations, want %d", len(rs), 2*n)
	}
	for _, i := range []int{0, n / 2, n - 1} {
		if err := ping(pods[i], gw6); err != nil {
			t.Fatal(err)
		}
		if err := h.cni.CheckNetworkList(context.Background(), h.list, pods[i].rt); err != nil {
			t.Fatalf("CHECK of pod %d: %v", i, err)
		}
	}
	for _, p := range pods {
		h.del(t, p)
	}
	if rs := h.reservations(t); len(rs) != 0 {
		t.Fatalf("left: %v", rs)
	}
}
