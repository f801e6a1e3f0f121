package vxlan

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nltest"
	"github.com/weftnet/weft/subnet"
)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

func netConfig(t testing.TB) *subnet.Config {
	t.Helper()
	c, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newBackend(t testing.TB, h *nltest.Host, opts string, prev subnet.LeaseAttrs) *Backend {
	t.Helper()
	if opts == "" {
		opts = `{"Type":"vxlan"}`
	}
	b, err := New(backend.Config{
		Network: netConfig(t),
		Options: json.RawMessage(opts),
		Ext: backend.ExternalInterface{
			Name: h.ExtName, Index: h.ExtIndex, Addr: h.Addr, PublicIP: h.Addr, MTU: h.MTU,
		},
		Netns:    h.Handle,
		Previous: prev,
		Logger:   testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	vb := b.(*Backend)
	t.Cleanup(func() {
		vb.kmu.Lock()
		vb.closeHandles()
		vb.kmu.Unlock()
	})
	return vb
}

func vxLease(sn, pub, mac string) subnet.Lease {
	data, _ := json.Marshal(subnet.VXLANData{VNI: 1, VtepMAC: mac})
	return subnet.Lease{
		Subnet: netip.MustParsePrefix(sn),
		Attrs:  subnet.LeaseAttrs{PublicIP: netip.MustParseAddr(pub), BackendType: Type, BackendData: data},
	}
}

func ownLease(h *nltest.Host, sn string, attrs subnet.LeaseAttrs) subnet.Lease {
	attrs.PublicIP = h.Addr
	return subnet.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: attrs}
}

// kernelState is what the kernel holds for the backend, as strings.
type kernelState struct {
	neigh  []string // "ip mac"
	fdb    []string // "mac dst"
	routes []string // "dst via gw dev N [onlink]"
	addrs  []string
}

func dumpState(t testing.TB, h *nltest.Host, dev string) kernelState {
	t.Helper()
	var ks kernelState
	l, err := h.NL.LinkByName(dev)
	if err != nil {
		t.Fatalf("device %s: %v", dev, err)
	}
	idx := l.Attrs().Index
	ns, err := h.NL.NeighList(idx, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if n.State&netlink.NUD_PERMANENT != 0 {
			ks.neigh = append(ks.neigh, n.IP.String()+" "+n.HardwareAddr.String())
		}
	}
	fs, err := h.NL.NeighList(idx, unix.AF_BRIDGE)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range fs {
		if n.LinkIndex == idx {
			ks.fdb = append(ks.fdb, n.HardwareAddr.String()+" "+n.IP.String())
		}
	}
	rs, err := h.NL.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: backend.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		s := fmt.Sprintf("%s via %s dev %d", r.Dst, r.Gw, r.LinkIndex)
		if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
			s += " onlink"
		}
		ks.routes = append(ks.routes, s)
	}
	as, err := h.NL.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		ks.addrs = append(ks.addrs, a.IPNet.String())
	}
	sort.Strings(ks.neigh)
	sort.Strings(ks.fdb)
	sort.Strings(ks.routes)
	sort.Strings(ks.addrs)
	return ks
}

func wantList(t testing.TB, what string, got []string, want ...string) {
	t.Helper()
	sort.Strings(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("%s:\n got %q\nwant %q", what, got, want)
	}
}

const (
	macA = "02:aa:00:00:00:01"
	macB = "02:bb:00:00:00:02"
	macC = "02:cc:00:00:00:03"
)

// eventCounter counts route and neighbour events in a namespace.
func eventCounter(t *testing.T, h *nltest.Host) *atomic.Int64 {
	var n atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	all := func() bool { n.Add(1); return false }
	go func() {
		defer close(done)
		nl.Watch(ctx, h.Handle, testLogger(t), nl.Events{
			Route: func(nl.RouteEvent) bool { return all() },
			Neigh: func(nl.NeighEvent) bool { return all() },
			Link:  func(nl.LinkEvent) bool { return all() },
			Addr:  func(nl.AddrEvent) bool { return all() },
		}, func() {})
	}()
	t.Cleanup(func() { cancel(); <-done })
	time.Sleep(200 * time.Millisecond) // let the subscriptions start
	return &n
}

func TestSetupAndPeers(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	b := newBackend(t, h, "", subnet.LeaseAttrs{})
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if attrs.BackendType != "vxlan" {
		t.Fatalf("BackendType %q", attrs.BackendType)
	}
	d, mac, err := subnet.ParseVXLANData(attrs.BackendData)
	if err != nil || d.VNI != 1 {
		t.Fatalf("BackendData %s: %v", attrs.BackendData, err)
	}
	if b.MTU() != h.MTU-50 {
		t.Fatalf("MTU %d, want %d", b.MTU(), h.MTU-50)
	}

	l, err := h.NL.LinkByName("weft.1")
	if err != nil {
		t.Fatal(err)
	}
	vx, ok := l.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("weft.1 is a %s", l.Type())
	}
	if vx.VxlanId != 1 || vx.Port != 8472 || vx.Learning || !vx.SrcAddr.Equal(net.ParseIP("192.0.2.10")) ||
		vx.VtepDevIndex != h.ExtIndex || vx.MTU != h.MTU-50 || vx.Flags&net.FlagUp == 0 ||
		vx.HardwareAddr.String() != mac.String() {
		t.Fatalf("device attributes wrong: %+v", vx)
	}

	own := ownLease(h, "198.18.1.0/24", attrs)
	peers := []subnet.Lease{
		vxLease("198.18.2.0/24", "192.0.2.20", macA),
		vxLease("198.18.3.0/24", "203.0.113.30", macB),
	}
	b.SetDesired(own, subnet.Pointers(peers))
	b.loop.Reconcile()
	st := b.Status()
	if st.LastError != "" || st.PeersWanted != 2 || st.PeersProgrammed != 2 || !st.Ready() {
		t.Fatalf("status: %+v", st)
	}
	if len(st.Repairs) != 0 {
		for k, v := range st.Repairs {
			if v != 0 {
				t.Fatalf("first install counted as repair: %v", st.Repairs)
			}
			_ = k
		}
	}
	idx := vx.Index
	ks := dumpState(t, h, "weft.1")
	wantList(t, "neigh", ks.neigh, "198.18.2.0 "+macA, "198.18.3.0 "+macB)
	wantList(t, "fdb", ks.fdb, macA+" 192.0.2.20", macB+" 203.0.113.30")
	wantList(t, "routes", ks.routes,
		fmt.Sprintf("198.18.2.0/24 via 198.18.2.0 dev %d onlink", idx),
		fmt.Sprintf("198.18.3.0/24 via 198.18.3.0 dev %d onlink", idx))
	wantList(t, "addrs", ks.addrs, "198.18.1.0/32")

	// Idempotence: a second pass writes nothing to the kernel.
	events := eventCounter(t, h)
	b.loop.Reconcile()
	time.Sleep(100 * time.Millisecond)
	if n := events.Load(); n != 0 {
		t.Fatalf("second reconcile caused %d kernel events", n)
	}

	// Peer removal and a stale MAC (peer rebooted with a new MAC).
	b.SetDesired(own, subnet.Pointers([]subnet.Lease{vxLease("198.18.3.0/24", "203.0.113.30", macC)}))
	b.loop.Reconcile()
	waitFor(t, "events from a real change (the counter works)", time.Second, func() bool { return events.Load() > 0 })
	ks = dumpState(t, h, "weft.1")
	wantList(t, "neigh after removal", ks.neigh, "198.18.3.0 "+macC)
	wantList(t, "fdb after removal", ks.fdb, macC+" 203.0.113.30")
	wantList(t, "routes after removal", ks.routes, fmt.Sprintf("198.18.3.0/24 via 198.18.3.0 dev %d onlink", idx))

	// A peer that moved to another public IP.
	b.SetDesired(own, subnet.Pointers([]subnet.Lease{vxLease("198.18.3.0/24", "203.0.113.31", macC)}))
	b.loop.Reconcile()
	ks = dumpState(t, h, "weft.1")
	wantList(t, "fdb after move", ks.fdb, macC+" 203.0.113.31")

	// Our own subnet changes: the address is replaced.
	b.SetDesired(ownLease(h, "198.18.9.0/24", attrs), nil)
	b.loop.Reconcile()
	ks = dumpState(t, h, "weft.1")
	wantList(t, "addrs after subnet change", ks.addrs, "198.18.9.0/32")
	wantList(t, "neigh when empty", ks.neigh)
	wantList(t, "fdb when empty", ks.fdb)
	wantList(t, "routes when empty", ks.routes)
	if st := b.Status(); st.LastError != "" || st.Repairs["route"]+st.Repairs["neigh"]+st.Repairs["fdb"] != 0 {
		t.Fatalf("status after changes: %+v", st)
	}
}

func TestRefusedPeers(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	b := newBackend(t, h, "", subnet.LeaseAttrs{})
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	bad := vxLease("198.18.4.0/24", "192.0.2.40", macA)
	bad.Attrs.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"not-a-mac"}`)
	// A peer whose subnet would cover the underlay: the network config
	// does not allow it, so build a host-side conflict instead: a
	// connected route inside the cluster network.
	h.IP(t, "link", "add", "cni0", "type", "veth", "peer", "name", "cni1")
	h.IP(t, "addr", "add", "198.18.5.1/24", "dev", "cni0")
	h.IP(t, "link", "set", "cni0", "up")
	clash := vxLease("198.18.5.0/24", "192.0.2.50", macB)
	good := vxLease("198.18.6.0/24", "192.0.2.60", macC)
	b.SetDesired(ownLease(h, "198.18.1.0/24", attrs), subnet.Pointers([]subnet.Lease{bad, clash, good}))
	b.loop.Reconcile()
	st := b.Status()
	if len(st.Refused) != 2 || st.Refused[bad.Subnet] == "" || st.Refused[clash.Subnet] == "" {
		t.Fatalf("refused: %v", st.Refused)
	}
	if st.PeersProgrammed != 1 || !st.Ready() {
		t.Fatalf("status: %+v", st)
	}
	ks := dumpState(t, h, "weft.1")
	wantList(t, "neigh", ks.neigh, "198.18.6.0 "+macC)
	wantList(t, "fdb", ks.fdb, macC+" 192.0.2.60")
	if len(ks.routes) != 1 || !strings.HasPrefix(ks.routes[0], "198.18.6.0/24") {
		t.Fatalf("routes: %q", ks.routes)
	}
}

func TestDirectRouting(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	b := newBackend(t, h, `{"Type":"vxlan","DirectRouting":true}`, subnet.LeaseAttrs{})
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b.SetDesired(ownLease(h, "198.18.1.0/24", attrs), subnet.Pointers([]subnet.Lease{
		vxLease("198.18.2.0/24", "192.0.2.20", macA),   // same L2 segment
		vxLease("198.18.3.0/24", "203.0.113.30", macB), // behind a router
	}))
	b.loop.Reconcile()
	l, _ := h.NL.LinkByName("weft.1")
	ks := dumpState(t, h, "weft.1")
	wantList(t, "routes", ks.routes,
		fmt.Sprintf("198.18.2.0/24 via 192.0.2.20 dev %d onlink", h.ExtIndex),
		fmt.Sprintf("198.18.3.0/24 via 198.18.3.0 dev %d onlink", l.Attrs().Index))
	wantList(t, "neigh", ks.neigh, "198.18.3.0 "+macB)
	wantList(t, "fdb", ks.fdb, macB+" 203.0.113.30")

	// Cleanup of vxlan leaves a host-gw route (gateway, no onlink) and a
	// udp-style device route alone, and removes all of its own.
	h.IP(t, "route", "add", "198.18.7.0/24", "via", "192.0.2.70", "dev", "eth0", "proto", "87")
	h.IP(t, "route", "add", "198.18.128.0/17", "dev", "eth0", "proto", "87")
	if err := Cleanup(context.Background(), h.Handle, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	out := strings.TrimSpace(h.IP(t, "route", "show", "proto", "87"))
	want := "198.18.7.0/24 via 192.0.2.70 dev eth0 \n198.18.128.0/17 dev eth0 scope link"
	if strings.Join(strings.Fields(out), " ") != strings.Join(strings.Fields(want), " ") {
		t.Fatalf("after vxlan cleanup:\n%s\nwant\n%s", out, want)
	}
}

func waitFor(t *testing.T, what string, timeout time.Duration, ok func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !ok() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func startRun(t *testing.T, b *Backend) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return")
		}
	})
}

func TestRepairs(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	b := newBackend(t, h, "", subnet.LeaseAttrs{})
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var passes atomic.Int64
	b.cfg.OnReconcile = func(time.Duration, error) { passes.Add(1) }
	b.cfg.ResyncInterval = time.Hour // only events may trigger repairs
	b.loop = backend.NewLoop(b.cfg, b.v4.name, b.pass)
	startRun(t, b)
	b.SetDesired(ownLease(h, "198.18.1.0/24", attrs), subnet.Pointers([]subnet.Lease{
		vxLease("198.18.2.0/24", "192.0.2.20", macA),
		vxLease("198.18.3.0/24", "192.0.2.30", macB),
	}))
	waitFor(t, "first pass", 2*time.Second, func() bool { return b.Status().Ready() })
	time.Sleep(100 * time.Millisecond) // let the first pass's own events settle

	l, _ := h.NL.LinkByName("weft.1")
	route := fmt.Sprintf("198.18.2.0/24 via 198.18.2.0 dev %d onlink", l.Attrs().Index)
	steps := []struct {
		kind     string
		breakCmd []string
		back     func(ks kernelState) bool
	}{
		{"route", []string{"ip", "-n", h.Name, "route", "del", "198.18.2.0/24"},
			func(ks kernelState) bool { return contains(ks.routes, route) }},
		{"neigh", []string{"ip", "-n", h.Name, "neigh", "del", "198.18.2.0", "dev", "weft.1"},
			func(ks kernelState) bool { return contains(ks.neigh, "198.18.2.0 "+macA) }},
		{"fdb", []string{"bridge", "-n", h.Name, "fdb", "del", macA, "dev", "weft.1", "dst", "192.0.2.20", "self"},
			func(ks kernelState) bool { return contains(ks.fdb, macA+" 192.0.2.20") }},
		{"addr", []string{"ip", "-n", h.Name, "addr", "del", "198.18.1.0/32", "dev", "weft.1"},
			func(ks kernelState) bool { return contains(ks.addrs, "198.18.1.0/32") }},
	}
	for _, s := range steps {
		before := b.Status().Repairs[s.kind]
		nltest.Cmd(t, s.breakCmd[0], s.breakCmd[1:]...)
		took := waitFor(t, s.kind+" repaired", time.Second, func() bool { return s.back(dumpState(t, h, "weft.1")) })
		// With the resync timer at an hour, only the netlink event can
		// have brought it back within the waitFor bound.
		t.Logf("%s repaired %v after deletion", s.kind, took)
		waitFor(t, s.kind+" repair counted", time.Second, func() bool { return b.Status().Repairs[s.kind] == before+1 })
	}

	// Deleting the route's nexthop object removes the route without a
	// route event; the nexthop event must still bring it back promptly.
	if f := strings.Fields(h.IP(t, "route", "show", "198.18.2.0/24")); len(f) > 2 && f[1] == "nhid" {
		before := b.Status().Repairs["route"]
		h.IP(t, "nexthop", "del", "id", f[2])
		took := waitFor(t, "route via deleted nexthop repaired", time.Second, func() bool { return contains(dumpState(t, h, "weft.1").routes, route) })
		t.Logf("route repaired %v after its nexthop object was deleted", took)
		waitFor(t, "nexthop repair counted", time.Second, func() bool { return b.Status().Repairs["route"] == before+1 })
	} else {
		t.Logf("routes do not use nexthop objects here: %q", f)
	}

	// A downed device is brought back up.
	before := b.Status().Repairs["device"]
	h.IP(t, "link", "set", "weft.1", "down")
	waitFor(t, "device up again", time.Second, func() bool {
		l, err := h.NL.LinkByName("weft.1")
		return err == nil && l.Attrs().Flags&net.FlagUp != 0
	})
	waitFor(t, "device repair counted", time.Second, func() bool { return b.Status().Repairs["device"] == before+1 })

	// A deleted device is recreated, with the same MAC, and repopulated.
	h.IP(t, "link", "del", "weft.1")
	waitFor(t, "device recreated and repopulated", 2*time.Second, func() bool {
		l, err := h.NL.LinkByName("weft.1")
		if err != nil || l.Attrs().HardwareAddr.String() != b.v4.mac.String() {
			return false
		}
		ks := dumpState(t, h, "weft.1")
		return len(ks.routes) == 2 && len(ks.neigh) == 2 && len(ks.fdb) == 2 && len(ks.addrs) == 1
	})
	waitFor(t, "device repair counted", time.Second, func() bool { return b.Status().Repairs["device"] == before+2 })
	if st := b.Status(); st.PeersProgrammed != 2 {
		t.Fatalf("status after device repair: %+v", st)
	}
}

func TestMACStable(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	b1 := newBackend(t, h, "", subnet.LeaseAttrs{})
	attrs1, err := b1.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// A new instance (weftd restart) adopts the device and its MAC.
	b2 := newBackend(t, h, "", subnet.LeaseAttrs{})
	attrs2, err := b2.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if string(attrs1.BackendData) != string(attrs2.BackendData) {
		t.Fatalf("restart changed BackendData: %s -> %s", attrs1.BackendData, attrs2.BackendData)
	}
	// Without the device, the previous lease's MAC is reused.
	h.IP(t, "link", "del", "weft.1")
	prev := attrs1
	prev.PublicIP = h.Addr
	b3 := newBackend(t, h, "", prev)
	attrs3, err := b3.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if string(attrs1.BackendData) != string(attrs3.BackendData) {
		t.Fatalf("previous MAC not reused: %s -> %s", attrs1.BackendData, attrs3.BackendData)
	}
	// A device with the wrong attributes is recreated with the same MAC.
	_, mac, _ := subnet.ParseVXLANData(attrs1.BackendData)
	h.IP(t, "link", "del", "weft.1")
	h.IP(t, "link", "add", "weft.1", "address", mac.String(), "type", "vxlan", "id", "1", "dstport", "4789", "dev", "eth0", "local", "192.0.2.10", "learning")
	b4 := newBackend(t, h, "", subnet.LeaseAttrs{})
	attrs4, err := b4.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if string(attrs1.BackendData) != string(attrs4.BackendData) {
		t.Fatalf("recreated device changed MAC: %s -> %s", attrs1.BackendData, attrs4.BackendData)
	}
	l, _ := h.NL.LinkByName("weft.1")
	if vx := l.(*netlink.Vxlan); vx.Port != 8472 || vx.Learning {
		t.Fatalf("mismatched device not recreated: port %d learning %v", vx.Port, vx.Learning)
	}
	// No usable previous data: a fresh random MAC.
	h.IP(t, "link", "del", "weft.1")
	b5 := newBackend(t, h, "", subnet.LeaseAttrs{BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"junk"}`)})
	attrs5, err := b5.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, m5, err := subnet.ParseVXLANData(attrs5.BackendData); err != nil || m5.String() == mac.String() {
		t.Fatalf("want a fresh valid MAC, got %s (%v)", attrs5.BackendData, err)
	}
	// A previous lease (ours by PublicIP) with an all-zero MAC, as a
	// hostile key could carry: never adopted, the device still comes up.
	h.IP(t, "link", "del", "weft.1")
	b6 := newBackend(t, h, "", subnet.LeaseAttrs{PublicIP: h.Addr, BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}`)})
	attrs6, err := b6.Setup(context.Background())
	if err != nil {
		t.Fatalf("a previous lease with a zero VtepMAC broke Setup: %v", err)
	}
	if _, m6, err := subnet.ParseVXLANData(attrs6.BackendData); err != nil || m6.String() == "00:00:00:00:00:00" {
		t.Fatalf("want a fresh valid MAC, got %s (%v)", attrs6.BackendData, err)
	}
	// Another host's lease already carries the device's MAC (our old lease
	// from before a PublicIP change, say): peers keep the older lease, so
	// the device gets a fresh MAC instead of publishing a refused one.
	_, m6, _ := subnet.ParseVXLANData(attrs6.BackendData)
	b7, err := New(backend.Config{
		Network: netConfig(t), Options: json.RawMessage(`{"Type":"vxlan"}`),
		Ext:       backend.ExternalInterface{Name: h.ExtName, Index: h.ExtIndex, Addr: h.Addr, PublicIP: h.Addr, MTU: h.MTU},
		Netns:     h.Handle,
		PeerAttrs: []subnet.LeaseAttrs{vxLease("198.18.9.0/24", "192.0.2.99", m6.String()).Attrs},
		Logger:    testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b7.(*Backend).closeHandles() })
	attrs7, err := b7.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, m7, _ := subnet.ParseVXLANData(attrs7.BackendData)
	if m7.String() == m6.String() {
		t.Fatalf("adopted VtepMAC %s that another host's lease carries", m7)
	}
	if l, _ := h.NL.LinkByName("weft.1"); l.Attrs().HardwareAddr.String() != m7.String() {
		t.Fatalf("device MAC %s, published %s", l.Attrs().HardwareAddr, m7)
	}
}

func TestFlannelTakeoverAndCleanup(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	h.IP(t, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dstport", "8472", "dev", "eth0", "local", "192.0.2.10", "nolearning")
	h.IP(t, "link", "set", "flannel.1", "up")
	h.IP(t, "addr", "add", "198.18.1.0/32", "dev", "flannel.1")
	// flanneld's route to a peer, on another device so it survives the
	// flannel.1 deletion (as after a partial migration).
	h.IP(t, "link", "add", "old0", "type", "veth", "peer", "name", "old1")
	h.IP(t, "link", "set", "old0", "up")
	h.IP(t, "route", "add", "198.18.2.0/24", "dev", "old0")

	b := newBackend(t, h, "", subnet.LeaseAttrs{})
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatalf("setup with flannel.1 present: %v", err)
	}
	if _, err := h.NL.LinkByName("flannel.1"); err == nil {
		t.Fatal("flannel.1 still exists")
	}
	b.SetDesired(ownLease(h, "198.18.1.0/24", attrs), subnet.Pointers([]subnet.Lease{vxLease("198.18.2.0/24", "192.0.2.20", macA)}))
	b.loop.Reconcile()
	if st := b.Status(); st.LastError != "" || st.PeersProgrammed != 1 {
		t.Fatalf("status: %+v", st)
	}
	out := h.IP(t, "-j", "route", "show", "198.18.2.0/24")
	if strings.Contains(out, "old0") || !strings.Contains(out, "weft.1") {
		t.Fatalf("flanneld's route not taken over: %s", out)
	}

	// Cleanup removes everything, and succeeds when there is nothing.
	for i := 0; i < 2; i++ {
		if err := Cleanup(context.Background(), h.Handle, testLogger(t)); err != nil {
			t.Fatalf("cleanup %d: %v", i, err)
		}
	}
	if _, err := h.NL.LinkByName("weft.1"); err == nil {
		t.Fatal("weft.1 survived cleanup")
	}
	if out := h.IP(t, "route", "show", "proto", "87"); strings.TrimSpace(out) != "" {
		t.Fatalf("routes survived cleanup: %s", out)
	}
	if out := strings.TrimSpace(h.IP(t, "route", "show", "table", "all", "proto", "87")); out != "" {
		t.Fatalf("routes survived cleanup: %s", out)
	}
	if out := strings.TrimSpace(h.IP(t, "nexthop", "show", "protocol", "87")); out != "" {
		t.Fatalf("nexthop objects survived cleanup: %s", out)
	}
}

func TestRunLeavesNoGoroutines(t *testing.T) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	b := newBackend(t, h, "", subnet.LeaseAttrs{})
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- b.Run(ctx) }()
	b.SetDesired(ownLease(h, "198.18.1.0/24", attrs), subnet.Pointers([]subnet.Lease{vxLease("198.18.2.0/24", "192.0.2.20", macA)}))
	waitFor(t, "ready", 2*time.Second, func() bool { return b.Status().Ready() })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Kernel state stays in place.
	if ks := dumpState(t, h, "weft.1"); len(ks.routes) != 1 || len(ks.neigh) != 1 || len(ks.fdb) != 1 {
		t.Fatalf("state removed on Run return: %+v", ks)
	}
	// The netlink package's socket closers end right after cancel.
	waitFor(t, "goroutines gone", 2*time.Second, func() bool { return runtime.NumGoroutine() <= before })
}

func TestDataPath(t *testing.T) {
	lab := nltest.NewLab(t, 2)
	subnets := []string{"198.18.1.0/24", "198.18.2.0/24"}
	var bs []*Backend
	var leases []subnet.Lease
	var pods []*nltest.NS
	var podIPs []netip.Addr
	for i, h := range lab.Hosts {
		pod, ip := h.AddPod(t, netip.MustParsePrefix(subnets[i]))
		pods = append(pods, pod)
		podIPs = append(podIPs, ip)
		b := newBackend(t, h, "", subnet.LeaseAttrs{})
		attrs, err := b.Setup(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
		leases = append(leases, ownLease(h, subnets[i], attrs))
		startRun(t, b)
	}
	var wg sync.WaitGroup
	for i, b := range bs {
		b.SetDesired(leases[i], subnet.Pointers([]subnet.Lease{leases[1-i]}))
		wg.Add(1)
		go func() {
			defer wg.Done()
			waitFor(t, "ready", 2*time.Second, func() bool { return b.Status().Ready() })
		}()
	}
	wg.Wait()
	for i := range pods {
		if out, err := pods[i].Ping(podIPs[1-i]); err != nil {
			t.Fatalf("pod %d cannot reach %s across the overlay: %v\n%s", i, podIPs[1-i], err, out)
		}
	}
	// The traffic really went through VXLAN: the device counted packets.
	l, _ := lab.Hosts[0].NL.LinkByName("weft.1")
	if s := l.Attrs().Statistics; s == nil || s.TxPackets == 0 || s.RxPackets == 0 {
		t.Fatalf("weft.1 statistics show no traffic: %+v", s)
	}
}
