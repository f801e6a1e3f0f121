package nftables

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	nft "github.com/google/nftables"
	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/internal/iptables"
)

var _ ForwardFallback = (*iptables.ForwardFallback)(nil)

// inNS runs fn on a locked OS thread inside n, for sockets and commands
// that must be made there (a socket stays in the namespace it was made
// in). The thread is left locked, and so discarded, if it cannot return
// to its namespace.
func inNS(t testing.TB, n *testNS, fn func() error) error {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(n.fd); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter %s: %w", n.Name, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		t.Errorf("return from %s: %v", n.Name, err)
		return ferr
	}
	runtime.UnlockOSThread()
	return ferr
}

// topo is a router namespace (where the rules live) between a pod
// namespace (198.18.4.2/24, default route via the router) and an
// "outside" namespace (203.0.113.2/24) that has no route back to the
// cluster network: only masqueraded traffic gets answers.
type topo struct {
	router, pod, outside *testNS
}

func newTopo(t *testing.T) *topo {
	t.Helper()
	tp := &topo{router: newNS(t, "r"), pod: newNS(t, "p"), outside: newNS(t, "o")}
	r := tp.router
	r.run(t, "ip", "link", "add", "rp", "type", "veth", "peer", "name", "eth0", "netns", tp.pod.Name)
	r.run(t, "ip", "link", "add", "ro", "type", "veth", "peer", "name", "eth0", "netns", tp.outside.Name)
	r.run(t, "ip", "addr", "add", "198.18.4.1/24", "dev", "rp")
	r.run(t, "ip", "addr", "add", "203.0.113.1/24", "dev", "ro")
	r.run(t, "ip", "link", "set", "rp", "up")
	r.run(t, "ip", "link", "set", "ro", "up")
	r.run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	tp.pod.run(t, "ip", "addr", "add", "198.18.4.2/24", "dev", "eth0")
	tp.pod.run(t, "ip", "link", "set", "eth0", "up")
	tp.pod.run(t, "ip", "route", "add", "default", "via", "198.18.4.1")
	tp.outside.run(t, "ip", "addr", "add", "203.0.113.2/24", "dev", "eth0")
	tp.outside.run(t, "ip", "link", "set", "eth0", "up")
	return tp
}

// ping reports whether the pod reaches the outside namespace.
func (tp *topo) ping() (bool, string) {
	out, err := tp.pod.exec("ping", "-c", "2", "-i", "0.2", "-W", "1", "203.0.113.2")
	return err == nil, out
}

// nftJSON is the part of `nft -j list table` the tests read.
type nftJSON struct {
	Nftables []struct {
		Chain *struct {
			Name, Type, Hook, Policy string
			Prio                     int
		} `json:"chain"`
		Rule *struct {
			Chain   string
			Handle  int
			Comment string
			Expr    []map[string]json.RawMessage
		} `json:"rule"`
	} `json:"nftables"`
}

func listJSON(t *testing.T, n *testNS) nftJSON {
	t.Helper()
	var out nftJSON
	if err := json.Unmarshal([]byte(n.run(t, "nft", "-j", "list", "table", "ip", "weft")), &out); err != nil {
		t.Fatalf("nft -j: %v", err)
	}
	return out
}

// jsonRuleText renders one rule of nft's JSON in the syntax of Text.
func jsonRuleText(t *testing.T, exprs []map[string]json.RawMessage) string {
	t.Helper()
	var words []string
	for _, e := range exprs {
		for k, v := range e {
			switch k {
			case "match":
				var m struct {
					Op          string
					Left, Right json.RawMessage
				}
				json.Unmarshal(v, &m)
				op := ""
				if m.Op == "!=" {
					op = "!= "
				}
				var left struct {
					Payload *struct{ Protocol, Field string }
					And     []json.RawMessage `json:"&"`
				}
				json.Unmarshal(m.Left, &left)
				var right struct {
					Prefix *struct {
						Addr string
						Len  int
					}
				}
				json.Unmarshal(m.Right, &right)
				switch {
				case left.Payload != nil && right.Prefix != nil:
					words = append(words, fmt.Sprintf("%s %s %s%s/%d", left.Payload.Protocol, left.Payload.Field, op, right.Prefix.Addr, right.Prefix.Len))
				case left.Payload != nil:
					var a string
					json.Unmarshal(m.Right, &a)
					words = append(words, fmt.Sprintf("%s %s %s%s", left.Payload.Protocol, left.Payload.Field, op, a))
				case len(left.And) == 2 && strings.Contains(string(left.And[0]), `"mark"`):
					var mask, val uint32
					json.Unmarshal(left.And[1], &mask)
					json.Unmarshal(m.Right, &val)
					words = append(words, fmt.Sprintf("meta mark & 0x%08x %s 0x%08x", mask, m.Op, val))
				default:
					words = append(words, "<match "+string(v)+">")
				}
			case "counter":
				words = append(words, "counter")
			case "accept", "return", "drop":
				words = append(words, k)
			case "masquerade":
				w := "masquerade"
				var f struct{ Flags json.RawMessage }
				json.Unmarshal(v, &f)
				if strings.Contains(string(f.Flags), "fully-random") {
					w += " fully-random"
				}
				words = append(words, w)
			default:
				words = append(words, "<"+k+">")
			}
		}
	}
	return strings.Join(words, " ")
}

// TestKernelTable installs the table in a namespace, reads it back through
// the library and through `nft -j list table ip weft`, and compares both
// with the wanted table, chain by chain and rule by rule.
func TestKernelTable(t *testing.T) {
	needTool(t, "nft")
	ns := newNS(t, "t")
	m := NewManager(ns.Kernel(), Config{Masq: true, Forward: true})
	if err := m.Set(network, lease); err != nil {
		t.Fatal(err)
	}
	want, _ := m.Want()
	have, ok, err := ns.Kernel().Read(nft.TableFamilyIPv4, "weft")
	if err != nil || !ok {
		t.Fatalf("read back: ok %v err %v", ok, err)
	}
	if !Equal(have, want) {
		t.Fatalf("read back through the library:\n%s\nwant\n%s", have, want)
	}
	if ok, err := Present(ns.Kernel()); !ok || err != nil {
		t.Errorf("Present = %v, %v", ok, err)
	}

	js := listJSON(t, ns)
	gotRules := map[string][]string{}
	var gotComments []string
	for _, o := range js.Nftables {
		if c := o.Chain; c != nil {
			wc, ok := want.chain(c.Name)
			if !ok {
				t.Errorf("nft lists chain %s, which weft did not make", c.Name)
				continue
			}
			wantHook := map[string]string{MasqChain: "postrouting", ForwardChain: "forward"}[c.Name]
			if c.Hook != wantHook || c.Prio != int(*wc.Priority) || c.Type != string(wc.Type) || c.Policy != "accept" {
				t.Errorf("nft: chain %s: type %s hook %s prio %d policy %s", c.Name, c.Type, c.Hook, c.Prio, c.Policy)
			}
		}
		if r := o.Rule; r != nil {
			gotRules[r.Chain] = append(gotRules[r.Chain], jsonRuleText(t, r.Expr))
			gotComments = append(gotComments, r.Comment)
		}
	}
	var wantComments []string
	for _, c := range want.Chains {
		var texts []string
		for _, r := range c.Rules {
			texts = append(texts, Text(want.Family, r.Exprs))
			wantComments = append(wantComments, r.Comment)
		}
		if !slices.Equal(gotRules[c.Name], texts) {
			t.Errorf("nft -j, chain %s:\n%s\nwant\n%s", c.Name, strings.Join(gotRules[c.Name], "\n"), strings.Join(texts, "\n"))
		}
	}
	if !slices.Equal(gotComments, wantComments) {
		t.Errorf("comments %q, want %q", gotComments, wantComments)
	}
	if len(gotRules) != 2 {
		t.Errorf("nft lists rules in %d chains, want 2", len(gotRules))
	}
}

// ruleHandle finds the handle of the rule with a comment in nft's listing.
func ruleHandle(t *testing.T, ns *testNS, comment string) string {
	t.Helper()
	for _, o := range listJSON(t, ns).Nftables {
		if o.Rule != nil && o.Rule.Comment == comment {
			return fmt.Sprint(o.Rule.Handle)
		}
	}
	t.Fatalf("no rule with comment %q", comment)
	return ""
}

// TestKernelDrift damages the table by hand, one way at a time: each is
// repaired by one Ensure and counted once; then Run repairs a deleted
// table within its interval and stops with its context.
func TestKernelDrift(t *testing.T) {
	needTool(t, "nft")
	ns := newNS(t, "d")
	k := ns.Kernel()
	m := NewManager(k, Config{Masq: true, Forward: true})
	if err := m.Set(network, lease); err != nil {
		t.Fatal(err)
	}
	want, _ := m.Want()
	damages := []struct {
		name string
		argv func() []string
	}{
		{"rule deleted", func() []string {
			return []string{"nft", "delete", "rule", "ip", "weft", "postrouting", "handle", ruleHandle(t, ns, "weft: pod to pod")}
		}},
		{"table deleted", func() []string { return []string{"nft", "delete", "table", "ip", "weft"} }},
		{"chain flushed", func() []string { return []string{"nft", "flush", "chain", "ip", "weft", "forward"} }},
		{"rule added", func() []string {
			return []string{"nft", "add", "rule", "ip", "weft", "forward", "ip", "saddr", "192.0.2.0/24", "drop"}
		}},
		{"rule replaced", func() []string {
			return []string{"nft", "replace", "rule", "ip", "weft", "forward", "handle", ruleHandle(t, ns, "weft: to pods"),
				"ip", "daddr", "198.19.0.0/16", "counter", "accept", "comment", `"weft: to pods"`}
		}},
		{"policy changed", func() []string {
			return []string{"nft", "add", "chain", "ip", "weft", "forward", "{", "type", "filter", "hook", "forward", "priority", "0", ";", "policy", "drop", ";", "}"}
		}},
	}
	for i, d := range damages {
		ns.run(t, d.argv()...)
		if have, _, _ := k.Read(nft.TableFamilyIPv4, "weft"); Equal(have, want) {
			t.Fatalf("%s: damage did not change the table", d.name)
		}
		if n, err := m.Ensure(); n != 1 || err != nil {
			t.Errorf("%s: Ensure fixed %d, err %v", d.name, n, err)
		}
		if have, _, _ := k.Read(nft.TableFamilyIPv4, "weft"); !Equal(have, want) {
			t.Errorf("%s: not restored:\n%s", d.name, have)
		}
		if m.Repairs() != uint64(i+1) {
			t.Errorf("%s: Repairs() = %d, want %d", d.name, m.Repairs(), i+1)
		}
	}
	if n, err := m.Ensure(); n != 0 || err != nil {
		t.Errorf("Ensure on a healthy table: fixed %d, err %v", n, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx, 200*time.Millisecond); close(done) }()
	ns.run(t, "nft", "delete", "table", "ip", "weft")
	start := time.Now()
	for {
		if have, ok, _ := k.Read(nft.TableFamilyIPv4, "weft"); ok && Equal(have, want) {
			break
		}
		if time.Since(start) > 2*time.Second {
			t.Fatal("Run did not restore the deleted table within 2 s (interval 200 ms)")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("Run restored the table after %s", time.Since(start).Round(time.Millisecond))
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// TestKernelAtomicReplace sends UDP from the pod to the outside, each
// datagram from a new source port so that each one is a new connection
// that the nat chain must masquerade, while the table is replaced again
// and again. Every datagram must arrive, and every one masqueraded: a
// replacement that left a moment without the rules would let some through
// with the pod's own address.
func TestKernelAtomicReplace(t *testing.T) {
	tp := newTopo(t)
	k := tp.router.Kernel()
	m := NewManager(k, Config{Masq: true, Forward: true})
	if err := m.Set(network, lease); err != nil {
		t.Fatal(err)
	}
	want, _ := m.Want()

	var rx *net.UDPConn
	if err := inNS(t, tp.outside, func() (err error) {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(203, 0, 113, 2), Port: 9999})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	rx.SetReadBuffer(4 << 20)

	// At least minSent datagrams and minReplaces replacements, however
	// slow the machine; source ports 20000 and up, so at most maxSent.
	const minSent, minReplaces, maxSent = 3000, 50, 40000
	sources := map[netip.Addr]int{}
	received := 0
	var sent atomic.Int64
	sendDone := make(chan struct{})
	var rxDone sync.WaitGroup
	rxDone.Go(func() {
		buf := make([]byte, 64)
		for {
			select {
			case <-sendDone:
				if int64(received) >= sent.Load() {
					return
				}
			default:
			}
			rx.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			_, from, err := rx.ReadFromUDPAddrPort(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				select {
				case <-sendDone: // nothing more for 500 ms after the last
					return
				default:
					continue
				}
			}
			if err != nil {
				return
			}
			sources[from.Addr()]++
			received++
		}
	})

	stop := make(chan struct{})
	var replaces atomic.Int64
	var replaceErr atomic.Value
	var replacer sync.WaitGroup
	replacer.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := k.Replace(want); err != nil {
				replaceErr.Store(err)
				return
			}
			replaces.Add(1)
		}
	})

	dst := &net.UDPAddr{IP: net.IPv4(203, 0, 113, 2), Port: 9999}
	sendErr := inNS(t, tp.pod, func() error {
		for i := 0; i < maxSent && (i < minSent || replaces.Load() < minReplaces); i++ {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(198, 18, 4, 2), Port: 20000 + i})
			if err != nil {
				return err
			}
			_, err = c.WriteToUDP([]byte("weft"), dst)
			c.Close()
			if err != nil {
				return err
			}
			sent.Add(1)
			if i%10 == 0 {
				time.Sleep(200 * time.Microsecond)
			}
		}
		return nil
	})
	close(stop)
	close(sendDone)
	replacer.Wait()
	rxDone.Wait()
	n := int(sent.Load())
	if sendErr != nil {
		t.Fatal(sendErr)
	}
	if err := replaceErr.Load(); err != nil {
		t.Fatalf("replace: %v", err)
	}
	t.Logf("%d datagrams sent, %d received, %d table replacements meanwhile; sources %v", n, received, replaces.Load(), sources)
	if replaces.Load() < minReplaces {
		t.Errorf("only %d replacements during the flood; the test proves nothing", replaces.Load())
	}
	if received != n {
		t.Errorf("received %d of %d datagrams", received, n)
	}
	if got := sources[netip.MustParseAddr("203.0.113.1")]; got != received {
		t.Errorf("%d of %d datagrams masqueraded (sources %v): the rules had a gap", got, received, sources)
	}
}

// snapshot is everything in the namespace's ruleset but weft's table, and
// iptables' own view of its filter and nat tables.
func snapshot(t *testing.T, ns *testNS) string {
	t.Helper()
	all := ns.run(t, "nft", "list", "ruleset")
	var keep []string
	skip := false
	for _, l := range strings.Split(all, "\n") {
		switch {
		case l == "table ip weft {":
			skip = true
		case skip && l == "}":
			skip = false
			continue
		}
		if !skip {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n") + ns.run(t, "iptables", "-S") + ns.run(t, "iptables", "-t", "nat", "-S")
}

// TestKernelCleanupLeavesOthersAlone: installing, replacing and removing
// weft's table changes no other table, native or iptables-nft's, and
// iptables can still read its own tables; Remove is idempotent.
func TestKernelCleanupLeavesOthersAlone(t *testing.T) {
	needTool(t, "nft")
	needTool(t, "iptables")
	ns := newNS(t, "c")
	ns.run(t, "nft", "add table inet other; add chain inet other fw { type filter hook forward priority 10; policy accept; }; add rule inet other fw ip saddr 192.0.2.0/24 counter accept comment \"someone else's\"")
	ns.run(t, "iptables", "-N", "DOCKER-USER")
	ns.run(t, "iptables", "-A", "FORWARD", "-j", "DOCKER-USER")
	ns.run(t, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "!", "-o", "lo", "-j", "MASQUERADE")
	before := snapshot(t, ns)

	k := ns.Kernel()
	m := NewManager(k, Config{Masq: true, Forward: true})
	if err := m.Set(network, lease); err != nil {
		t.Fatal(err)
	}
	ns.run(t, "nft", "flush", "chain", "ip", "weft", "postrouting")
	if n, err := m.Ensure(); n != 1 || err != nil {
		t.Fatalf("Ensure: %d %v", n, err)
	}
	if after := snapshot(t, ns); after != before {
		t.Errorf("other rules changed while weft's table is installed:\n%s\nwas\n%s", after, before)
	}
	for range 2 {
		if err := Remove(k); err != nil {
			t.Fatalf("Remove: %v", err)
		}
	}
	if ok, err := Present(k); ok || err != nil {
		t.Errorf("Present after Remove: %v %v", ok, err)
	}
	if out := ns.run(t, "nft", "list", "tables"); strings.Contains(out, "weft") {
		t.Errorf("tables after Remove:\n%s", out)
	}
	if after := snapshot(t, ns); after != before {
		t.Errorf("other rules changed by Remove:\n%s\nwas\n%s", after, before)
	}
}

// nsFallback runs an iptables fallback inside a namespace.
type nsFallback struct {
	t  *testing.T
	ns *testNS
	fb *iptables.ForwardFallback
}

func (f nsFallback) ForwardDrops() (drops bool, err error) {
	err = inNS(f.t, f.ns, func() (e error) { drops, e = f.fb.ForwardDrops(); return })
	return
}

func (f nsFallback) EnsureForward(n netip.Prefix) (changed bool, err error) {
	err = inNS(f.t, f.ns, func() (e error) { changed, e = f.fb.EnsureForward(n); return })
	return
}

func (f nsFallback) RemoveForward() error {
	return inNS(f.t, f.ns, f.fb.RemoveForward)
}

// TestKernelCoexistence runs with a docker-like `iptables -P FORWARD DROP`
// (iptables-nft: table ip filter, chain FORWARD, policy drop) in the
// router. The accept rules in weft's own table do not override that drop:
// a packet must pass every base chain at the forward hook. With the
// iptables fallback, WEFT-FWD in iptables' FORWARD chain lets pod traffic
// through; when the policy goes back to ACCEPT the fallback is removed.
func TestKernelCoexistence(t *testing.T) {
	needTool(t, "iptables-nft")
	needTool(t, "ping")
	tp := newTopo(t)
	r := tp.router
	k := r.Kernel()

	nftOnly := NewManager(k, Config{Masq: true, Forward: true})
	if err := nftOnly.Set(network, lease); err != nil {
		t.Fatal(err)
	}
	if ok, out := tp.ping(); !ok {
		t.Fatalf("no FORWARD DROP yet, masquerade in place, and the pod cannot reach the outside:\n%s", out)
	}
	r.run(t, "iptables-nft", "-P", "FORWARD", "DROP")
	if ok, _ := tp.ping(); ok {
		t.Fatal("pod reached the outside through iptables' FORWARD DROP policy with only table ip weft's accept; the test assumes nftables semantics that do not hold")
	}
	drops, err := k.ForwardDrops(nft.TableFamilyIPv4)
	if err != nil || !slices.Equal(drops, []string{"table ip filter chain FORWARD"}) {
		t.Errorf("ForwardDrops = %q, %v", drops, err)
	}

	var ipt iptables.IPTables
	if err := inNS(t, r, func() (err error) { ipt, err = iptables.New(); return }); err != nil {
		t.Fatal(err)
	}
	m := NewManager(k, Config{Masq: true, Forward: true, Fallback: nsFallback{t, r, iptables.NewForwardFallback(ipt)}})
	if err := m.Set(network, lease); err != nil {
		t.Fatal(err)
	}
	if ok, out := tp.ping(); !ok {
		t.Fatalf("with the iptables fallback the pod still cannot reach the outside:\n%s\n%s", out, r.run(t, "iptables", "-S"))
	}
	filter := r.run(t, "iptables", "-S")
	if !strings.Contains(filter, "-P FORWARD DROP") || !strings.Contains(filter, "-A FORWARD -m comment --comment weft -j WEFT-FWD") {
		t.Errorf("iptables filter table:\n%s", filter)
	}
	if n, err := m.Ensure(); n != 0 || err != nil {
		t.Errorf("Ensure on a healthy host: fixed %d, err %v", n, err)
	}
	// Someone deletes the jump; the next Ensure restores it and counts it.
	r.run(t, "iptables", "-D", "FORWARD", "-m", "comment", "--comment", "weft", "-j", "WEFT-FWD")
	if n, err := m.Ensure(); n != 1 || err != nil || m.Repairs() != 1 {
		t.Errorf("Ensure after the jump was deleted: fixed %d, err %v, repairs %d", n, err, m.Repairs())
	}
	if ok, out := tp.ping(); !ok {
		t.Errorf("after the repair:\n%s", out)
	}

	r.run(t, "iptables-nft", "-P", "FORWARD", "ACCEPT")
	if _, err := m.Ensure(); err != nil {
		t.Fatal(err)
	}
	if filter := r.run(t, "iptables", "-S"); strings.Contains(filter, "WEFT") {
		t.Errorf("fallback left after the DROP policy went:\n%s", filter)
	}
	if ok, out := tp.ping(); !ok {
		t.Errorf("after the DROP policy went:\n%s", out)
	}
}

// TestKernelPodMasq installs the CNI plugin's table in a namespace: the
// jump target is created before the jumps, the table reads back equal, and
// the subnets it jumps from read back too.
func TestKernelPodMasq(t *testing.T) {
	needTool(t, "nft")
	ns := newNS(t, "m")
	k := ns.Kernel()
	subs := []netip.Prefix{netip.MustParsePrefix("198.18.7.0/24"), lease}
	want := PodMasq("weft-cni-0a1b2c3d", "weft mynet", network, subs, true)
	if err := k.Replace(want); err != nil {
		t.Fatal(err)
	}
	have, ok, err := k.Read(nft.TableFamilyIPv4, "weft-cni-0a1b2c3d")
	if err != nil || !ok || !Equal(have, want) {
		t.Fatalf("read back (ok %v, err %v):\n%s\nwant\n%s", ok, err, have, want)
	}
	got := PodMasqSubnets(have)
	if len(got) != 2 || got[0] != lease || got[1] != subs[0] {
		t.Errorf("PodMasqSubnets = %v", got)
	}
	out := ns.run(t, "nft", "list", "table", "ip", "weft-cni-0a1b2c3d")
	for _, w := range []string{"ip saddr 198.18.4.0/24 counter packets 0 bytes 0 jump masq comment \"weft mynet\"", "ip daddr 198.18.0.0/16 counter packets 0 bytes 0 return", "masquerade fully-random"} {
		if !strings.Contains(out, w) {
			t.Errorf("nft list lacks %q:\n%s", w, out)
		}
	}
	if ok, _ := Present(k); ok {
		t.Error("Present is true with only the plugin's table")
	}
}
