package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/internal/lab/labtest"
)

// internetIP stands in for an address on the internet: a namespace on the
// switch, outside the cluster network and the underlay.
var internetIP = netip.MustParseAddr("203.0.113.2")

// addInternet attaches a namespace holding internetIP to the lab's switch
// (which routes 203.0.113.0/24 to it) and routes 203.0.113.0/24 via the
// switch on every host. The namespace has no route to the cluster network,
// so only masqueraded pod traffic gets answers.
func addInternet(t *testing.T, ctx context.Context, l *lab.Lab) {
	t.Helper()
	name := l.Name + "-in"
	sh := func(argv ...string) {
		t.Helper()
		if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
		}
	}
	sh("ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	sh("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "inet0", "netns", l.Switch)
	sh("ip", "-n", name, "link", "set", "lo", "up")
	sh("ip", "-n", name, "addr", "add", internetIP.String()+"/24", "dev", "eth0")
	sh("ip", "-n", name, "link", "set", "eth0", "up")
	sh("ip", "-n", name, "route", "add", "default", "via", "203.0.113.1")
	sh("ip", "-n", l.Switch, "addr", "add", "203.0.113.1/24", "dev", "inet0")
	sh("ip", "-n", l.Switch, "link", "set", "inet0", "up")
	sh("ip", "netns", "exec", l.Switch, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	for _, h := range l.Hosts {
		sh("ip", "-n", h.Name, "route", "add", "203.0.113.0/24", "via", lab.SwitchIP)
	}
}

// expectInternet pings internetIP from every pod: each must get every
// answer, which only masquerading makes possible.
func expectInternet(t *testing.T, ctx context.Context, pods []*lab.Pod) {
	t.Helper()
	for _, p := range pods {
		r, err := p.Ping(ctx, internetIP, 3, 200*time.Millisecond)
		if err != nil || !r.OK() {
			t.Errorf("pod %s (%s) → %s: %+v %v", p.Name, p.IP, internetIP, r, err)
		}
	}
}

// hostOut runs argv on h and returns its output, failing the test on error.
func hostOut(t *testing.T, ctx context.Context, h *lab.Host, argv ...string) string {
	t.Helper()
	out, err := h.Exec(ctx, argv...)
	if err != nil {
		t.Fatalf("%s: %v", h.Name, err)
	}
	return string(out)
}

// TestFaultNFTables runs three vxlan hosts with EnableNFTables: true. h1
// and h2 leave masquerading to the CNI plugin, h3 runs --ip-masq; h2 has a
// docker-like iptables FORWARD DROP policy. Every pod reaches every other
// and, masqueraded, an address outside the cluster; the rules live in
// nftables (only h2 keeps WEFT-FWD in iptables, for its DROP policy);
// deleting weft's table or the fallback's jump is repaired within the
// resync interval and counted.
func TestFaultNFTables(t *testing.T) {
	t.Parallel()
	l := faultLab(t, lab.Options{Hosts: 3, ExtraConfig: map[string]any{"EnableNFTables": true}})
	ctx := testCtx(t, 3*time.Minute)
	addInternet(t, ctx, l)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	hostOut(t, ctx, h2, "iptables-nft", "-P", "FORWARD", "DROP")
	for _, h := range l.Hosts {
		args := []string{"--iptables-resync=1"}
		if h == h3 {
			args = append(args, "--ip-masq")
		}
		if err := h.StartWeftd(args...); err != nil {
			t.Fatal(err)
		}
	}
	waitAllReady(t, ctx, l.Hosts, 30*time.Second)
	pods := onePodPerHost(t, ctx, l)
	t.Logf("ping matrix with EnableNFTables:\n%s", l.PingMatrix(ctx))
	expectInternet(t, ctx, pods)

	for _, h := range l.Hosts {
		if lines := logLines(h, "masquerade and forward rules in nftables", "EnableNFTables is true"); len(lines) == 0 {
			t.Errorf("%s: weftd did not log that it uses nftables because of EnableNFTables", h.Name)
		}
		table := hostOut(t, ctx, h, "nft", "list", "table", "ip", "weft")
		if !strings.Contains(table, "ip saddr 198.18.0.0/16 counter packets") || strings.Contains(table, "counter packets 0 bytes 0 accept comment \"weft: from pods\"") {
			t.Errorf("%s: forward chain missing or never used:\n%s", h.Name, table)
		}
		if masq := strings.Contains(table, "masquerade fully-random"); masq != (h == h3) {
			t.Errorf("%s: masquerade in table ip weft %v, want %v:\n%s", h.Name, masq, h == h3, table)
		}
		plugin := strings.Contains(hostOut(t, ctx, h, "nft", "list", "tables"), "table ip weft-cni-")
		if plugin != (h != h3) {
			t.Errorf("%s: CNI plugin's nftables table present %v, want %v", h.Name, plugin, h != h3)
		}
		nat := hostOut(t, ctx, h, "iptables", "-w", "-t", "nat", "-S")
		filter := hostOut(t, ctx, h, "iptables", "-w", "-S")
		if strings.Contains(nat, "WEFT") || strings.Contains(filter, "WEFT") != (h == h2) {
			t.Errorf("%s: iptables rules of weft (WEFT-FWD wanted only with the DROP policy):\n%s%s", h.Name, nat, filter)
		}
	}

	const metric = `weft_repairs_total{kind="iptables"}`
	drift := []struct {
		h       *lab.Host
		argv    []string
		back    func() (bool, string)
		restore string
	}{
		{h3, []string{"nft", "delete", "table", "ip", "weft"}, func() (bool, string) {
			out, err := h3.Exec(ctx, "nft", "list", "table", "ip", "weft")
			return err == nil && strings.Contains(string(out), "masquerade fully-random"), "table ip weft: " + string(out)
		}, "table deleted"},
		{h1, []string{"nft", "flush", "chain", "ip", "weft", "forward"}, func() (bool, string) {
			out, err := h1.Exec(ctx, "nft", "list", "chain", "ip", "weft", "forward")
			return err == nil && strings.Contains(string(out), "weft: to pods"), "chain forward: " + string(out)
		}, "chain flushed"},
		{h2, []string{"iptables", "-w", "-D", "FORWARD", "-m", "comment", "--comment", "weft", "-j", "WEFT-FWD"}, func() (bool, string) {
			out, err := h2.Exec(ctx, "iptables", "-w", "-S", "FORWARD")
			return err == nil && strings.Contains(string(out), "-j WEFT-FWD"), "FORWARD: " + string(out)
		}, "fallback jump deleted"},
	}
	for _, d := range drift {
		before := mustMetrics(t, ctx, d.h)[metric]
		hostOut(t, ctx, d.h, d.argv...)
		took, err := waitFor(ctx, 4*time.Second, 20*time.Millisecond, d.back)
		if err != nil {
			t.Errorf("%s on %s: not restored: %v", d.restore, d.h.Name, err)
			continue
		}
		t.Logf("%s on %s: restored after %s", d.restore, d.h.Name, took.Round(time.Millisecond))
		if _, err := waitFor(ctx, 3*time.Second, 100*time.Millisecond, func() (bool, string) {
			got := mustMetrics(t, ctx, d.h)[metric]
			return got > before, fmt.Sprintf("%s = %v, was %v", metric, got, before)
		}); err != nil {
			t.Errorf("%s on %s: repair not counted: %v", d.restore, d.h.Name, err)
		}
	}
	if m, err := l.WaitConnectivity(ctx, 10*time.Second); err != nil {
		t.Errorf("after the repairs: %v\n%s", err, m)
	}
	expectInternet(t, ctx, pods)
}

// noIPTablesBinDir makes a bin dir whose weftd and weft run the real ones
// with PATH set to an empty directory: no iptables, no nft, nothing.
func noIPTablesBinDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty-path")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"weft-lab", "weftctl"} {
		if err := os.Symlink(filepath.Join(binDir, b), filepath.Join(dir, b)); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range []string{"weftd", "weft"} {
		script := fmt.Sprintf("#!/bin/sh\nPATH=%s\nexport PATH\nexec %s \"$@\"\n", empty, filepath.Join(binDir, b))
		if err := os.WriteFile(filepath.Join(dir, b), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestFaultNFTablesNoIPTables runs weftd and the CNI plugin with a PATH
// that holds no iptables (nor anything else), and a config without
// EnableNFTables: weftd picks nftables by itself, the ping matrix passes,
// and pods reach the outside masqueraded by weftd (h2) or by the plugin
// (h1).
func TestFaultNFTablesNoIPTables(t *testing.T) {
	t.Parallel()
	needBins(t, "weft-lab", "weftd", "weft", "weftctl")
	opts := lab.Options{Hosts: 2, Name: faultPrefix, Logger: testLogger(t)}
	opts.BinDir = noIPTablesBinDir(t)
	l := labtest.New(t, opts)
	ctx := testCtx(t, 3*time.Minute)
	addInternet(t, ctx, l)
	if err := l.Host(1).StartWeftd("--iptables-resync=1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Host(2).StartWeftd("--iptables-resync=1", "--ip-masq"); err != nil {
		t.Fatal(err)
	}
	waitAllReady(t, ctx, l.Hosts, 30*time.Second)
	pods := onePodPerHost(t, ctx, l)
	t.Logf("ping matrix without an iptables binary:\n%s", l.PingMatrix(ctx))
	expectInternet(t, ctx, pods)
	for _, h := range l.Hosts {
		if lines := logLines(h, "masquerade and forward rules in nftables", "no iptables binary"); len(lines) == 0 {
			t.Errorf("%s: weftd did not log that it uses nftables for want of an iptables binary", h.Name)
		}
		if out := hostOut(t, ctx, h, "nft", "list", "tables"); !strings.Contains(out, "table ip weft\n") {
			t.Errorf("%s: no table ip weft:\n%s", h.Name, out)
		}
	}
	if out := hostOut(t, ctx, l.Host(1), "nft", "list", "tables"); !strings.Contains(out, "table ip weft-cni-") {
		t.Errorf("h1: the CNI plugin did not masquerade in nftables:\n%s", out)
	}
}

// TestFaultNFTablesSwitch restarts weftd on one host from iptables mode to
// --nftables=on and back: each start removes the other mode's rules, the
// CNI plugin moves its masquerade at the next ADD, and the pods keep
// reaching each other and the outside.
func TestFaultNFTablesSwitch(t *testing.T) {
	t.Parallel()
	l := faultLab(t, lab.Options{Hosts: 2})
	ctx := testCtx(t, 3*time.Minute)
	addInternet(t, ctx, l)
	h := l.Host(1)
	startWeftds(t, ctx, l.Hosts, "--iptables-resync=1")
	pods := onePodPerHost(t, ctx, l)
	expectInternet(t, ctx, pods)

	type state struct{ table, cniTable, fwdChain, masqChain bool }
	look := func() state {
		tables := hostOut(t, ctx, h, "nft", "list", "tables")
		ipt := hostOut(t, ctx, h, "iptables", "-w", "-S") + hostOut(t, ctx, h, "iptables", "-w", "-t", "nat", "-S")
		return state{
			table:     strings.Contains(tables, "table ip weft\n"),
			cniTable:  strings.Contains(tables, "table ip weft-cni-"),
			fwdChain:  strings.Contains(ipt, "-N WEFT-FWD"),
			masqChain: strings.Contains(ipt, "-N WEFT-MASQ-"),
		}
	}
	if got, want := look(), (state{fwdChain: true, masqChain: true}); got != want {
		t.Fatalf("iptables mode: %+v, want %+v", got, want)
	}
	steps := []struct {
		flag string
		want state
	}{
		{"--nftables=on", state{table: true, cniTable: true}},
		{"--nftables=off", state{fwdChain: true, masqChain: true}},
	}
	for _, s := range steps {
		if err := h.StopWeftd(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := h.StartWeftd("--iptables-resync=1", s.flag); err != nil {
			t.Fatal(err)
		}
		waitAllReady(t, ctx, []*lab.Host{h}, 30*time.Second)
		p, err := h.AddPod(ctx, "") // the plugin moves its rules at this ADD
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
		if got := look(); got != s.want {
			t.Errorf("after restarting with %s and one ADD: %+v, want %+v", s.flag, got, s.want)
		}
		if m, err := l.WaitConnectivity(ctx, 20*time.Second); err != nil {
			t.Errorf("after restarting with %s: %v\n%s", s.flag, err, m)
		}
		expectInternet(t, ctx, pods)
	}
}
