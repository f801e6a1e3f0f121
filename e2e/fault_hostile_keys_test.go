package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/doctor"
	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/subnet"
)

// TestFaultHostileKeys covers the hostile-data classes together on three
// vxlan hosts while every pod pings every other:
//   - no local user can take the overlay's port or weftd's HTTP port;
//   - hostile keys (an all-zero VtepMAC, a zero MAC carrying a host's own
//     PublicIP, a dual-stack "&" key for a live host's subnet, a "&" key
//     carrying a host's PublicIP, a copy of a live host's VtepMAC, a key
//     full of terminal escapes) cut nobody off, keep every host ready, and
//     each refusal shows in /status, weft_peers_refused and weftctl doctor;
//   - of two leases with one VtepMAC the older wins, and the refused one
//     is programmed within one pass once the older goes;
//   - a host restarted without its device, with a zero-MAC key carrying
//     its PublicIP in etcd, comes back ready with a usable MAC;
//   - a network config that covers the underlay is refused by
//     `weftctl config set`, and when written straight into etcd every
//     weftd keeps its data path and says why on /readyz.
func TestFaultHostileKeys(t *testing.T) {
	t.Parallel()
	l := faultLab(t, lab.Options{Hosts: 3})
	ctx := testCtx(t, 4*time.Minute)
	startWeftds(t, ctx, l.Hosts, "--reconcile-interval=1s")
	pods := onePodPerHost(t, ctx, l)
	cli := etcdClient(t, ctx, l)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	owns := map[*lab.Host]netip.Prefix{}
	used := map[netip.Prefix]bool{}
	for _, h := range l.Hosts {
		owns[h] = ownSubnet(t, ctx, h)
		used[owns[h]] = true
	}
	mac2 := linkMAC(ctx, h2, vxlanDev)
	next := 210
	free := func() netip.Prefix {
		for {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(next), 0}), 24)
			next++
			if !used[p] {
				used[p] = true
				return p
			}
		}
	}

	t.Run("ports", func(t *testing.T) {
		for _, h := range l.Hosts {
			for _, spec := range []string{
				"udp:" + h.IP.String() + ":8472", "udp:0.0.0.0:8472",
				"tcp:" + h.HealthzAddr(), fmt.Sprintf("tcp:0.0.0.0:%d", lab.HealthzPort),
			} {
				code, out := bindAsNobody(t, ctx, h, spec)
				if code != probeInUse {
					t.Errorf("%s: uid 65534 binding %s: exit %d, want EADDRINUSE: %s", h.Name, spec, code, out)
				}
			}
		}
	})

	zero := "00:00:00:00:00:00"
	type hostile struct {
		name   string
		key    string
		value  string
		reason map[*lab.Host]string // the refusal each host must report
	}
	all := func(reason string) map[*lab.Host]string {
		return map[*lab.Host]string{h1: reason, h2: reason, h3: reason}
	}
	zeroOwnIP := subnet.SubnetKey(free())
	hs := []hostile{
		{"zero VtepMAC", subnet.SubnetKey(free()), vxlanLease("192.0.2.50", zero), all(subnet.RefusedBackendData)},
		{"zero VtepMAC with h1's PublicIP", zeroOwnIP, vxlanLease(h1.IP.String(), zero),
			map[*lab.Host]string{h1: subnet.RefusedInvalid, h2: subnet.RefusedBackendData, h3: subnet.RefusedBackendData}},
		{"dual-stack key for h2's subnet", subnet.SubnetKey(owns[h2]) + "&2001:db8:2::-64", vxlanLease("192.0.2.51", "02:00:c0:00:09:01"),
			map[*lab.Host]string{h1: subnet.RefusedDuplicateSubnet, h2: subnet.RefusedInvalid, h3: subnet.RefusedDuplicateSubnet}},
		// Only h3 knows the address is its own; to h1 and h2 it is a peer.
		{"dual-stack key with h3's PublicIP", subnet.SubnetKey(free()) + "&2001:db8:3::-64", vxlanLease(h3.IP.String(), "02:00:c0:00:09:02"),
			map[*lab.Host]string{h3: subnet.RefusedInvalid}},
		{"copy of h2's VtepMAC", subnet.SubnetKey(free()), vxlanLease("192.0.2.52", mac2),
			map[*lab.Host]string{h1: subnet.RefusedDuplicateMAC, h2: subnet.RefusedDuplicateMAC, h3: subnet.RefusedDuplicateMAC}},
		{"terminal escapes", "\x1b[2J\x1b[31mgotcha-24\n", `{"PublicIP":"192.0.2.53"}`, all(subnet.RefusedUnparsable)},
	}
	pgs := pingAll(t, pods, 75, 200*time.Millisecond) // 15 s
	time.Sleep(time.Second)
	for _, x := range hs {
		if _, err := cli.Put(ctx, leasePrefix+x.key, x.value); err != nil {
			t.Fatal(err)
		}
	}
	expectNoLoss(t, ctx, pgs)

	for _, h := range l.Hosts {
		if code, why, err := readyz(ctx, h); err != nil || code != 200 {
			t.Errorf("%s: not ready with hostile keys present: %d %s %v", h.Name, code, why, err)
		}
		if got := ownSubnet(t, ctx, h); got != owns[h] {
			t.Errorf("%s: moved from %s to %s", h.Name, owns[h], got)
		}
		st, err := status(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		refused := map[string]string{}
		for _, r := range st.LeasesRefused {
			refused[r.Key] = r.Reason
		}
		conflicts := 0
		for _, x := range hs {
			want, ok := x.reason[h]
			if !ok {
				continue
			}
			if refused[x.key] != want {
				t.Errorf("%s: /status refusal of %q (%s) is %q, want %q", h.Name, x.key, x.name, refused[x.key], want)
			}
			if subnet.Conflict(want) {
				conflicts++
			}
		}
		if got := metricSum(mustMetrics(t, ctx, h), "weft_peers_refused"); int(got) < conflicts {
			t.Errorf("%s: weft_peers_refused = %v, want at least %d", h.Name, got, conflicts)
		}
		rep, out := runDoctorJSON(t, ctx, h)
		listed := map[string]string{}
		for _, r := range rep.Refused {
			listed[r.Key] = r.Reason
		}
		for _, x := range hs {
			if want, ok := x.reason[h]; ok && listed[x.key] != want {
				t.Errorf("%s: doctor lists %q (%s) as %q, want %q\n%s", h.Name, x.key, x.name, listed[x.key], want, out)
			}
		}
		// A key full of escapes never reaches the log raw.
		for _, line := range logLines(h, "gotcha") {
			if strings.Contains(line, "\x1b") {
				t.Errorf("%s: raw escape sequence in the log: %q", h.Name, line)
			}
		}
		if !weftdRunning(h) {
			t.Errorf("%s: weftd exited", h.Name)
		}
	}

	t.Run("older VtepMAC wins, the newer comes back once it goes", func(t *testing.T) {
		older, newer := free(), free()
		mac := "02:00:c0:00:0a:01"
		if _, err := cli.Put(ctx, leaseKey(older), vxlanLease("192.0.2.60", mac)); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, leaseKey(newer), vxlanLease("192.0.2.61", mac)); err != nil {
			t.Fatal(err)
		}
		if _, err := waitFor(ctx, 10*time.Second, 100*time.Millisecond, func() (bool, string) {
			r, n, f, err := peerEntries(ctx, h1, older, mac, "192.0.2.60")
			return err == nil && r && n && f, fmt.Sprintf("older lease programmed: route %v neigh %v fdb %v (%v)", r, n, f, err)
		}); err != nil {
			t.Fatal(err)
		}
		if r, _, _, _ := peerEntries(ctx, h1, newer, mac, "192.0.2.61"); r {
			t.Errorf("the newer lease with a taken VtepMAC got a route")
		}
		if _, err := cli.Delete(ctx, leaseKey(older)); err != nil {
			t.Fatal(err)
		}
		took, err := waitFor(ctx, 5*time.Second, 20*time.Millisecond, func() (bool, string) {
			r, n, f, err := peerEntries(ctx, h1, newer, mac, "192.0.2.61")
			return err == nil && r && n && f, fmt.Sprintf("newer lease programmed: route %v neigh %v fdb %v (%v)", r, n, f, err)
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("the refused lease was programmed %v after the older one was deleted", took)
		// One pass is event-driven; the resync interval (1 s) bounds it.
		if took > 1500*time.Millisecond {
			t.Errorf("took %v, more than one reconcile pass", took)
		}
	})

	t.Run("restart without device next to a zero-MAC key with our PublicIP", func(t *testing.T) {
		if err := h1.StopWeftd(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if _, err := h1.Exec(ctx, "ip", "link", "del", vxlanDev); err != nil {
			t.Fatal(err)
		}
		if err := h1.StartWeftd("--reconcile-interval=1s"); err != nil {
			t.Fatal(err)
		}
		if err := h1.WaitReady(ctx); err != nil {
			t.Fatalf("h1 not ready after restart: %v", err)
		}
		if mac := linkMAC(ctx, h1, vxlanDev); mac == "" || mac == zero {
			t.Errorf("h1's device has MAC %q", mac)
		}
		if got := ownSubnet(t, ctx, h1); got != owns[h1] {
			t.Errorf("h1 moved from %s to %s", owns[h1], got)
		}
		if m := l.PingMatrix(ctx); !m.OK() {
			t.Errorf("ping matrix after h1's restart:\n%s", m)
		}
	})

	t.Run("network covering the underlay", func(t *testing.T) {
		good := l.NetworkConfig()
		for _, bad := range []string{
			`{"Network":"0.0.0.0/0","Backend":{"Type":"vxlan"}}`,
			`{"Network":"192.0.0.0/8","Backend":{"Type":"vxlan"}}`,
		} {
			file := filepath.Join(t.TempDir(), "bad.json")
			if err := os.WriteFile(file, []byte(bad), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := h1.Exec(ctx, filepath.Join(binDir, "weftctl"), "--etcd-endpoints="+lab.EtcdEndpoint, "config", "set", file)
			if err == nil || !strings.Contains(err.Error(), "Network") {
				t.Errorf("weftctl config set %s: %v %s, want a refusal naming Network", bad, err, out)
			}
		}
		// Written straight into etcd, behind weftctl's back.
		if _, err := cli.Put(ctx, "/coreos.com/network/config", `{"Network":"192.0.0.0/8","Backend":{"Type":"vxlan"}}`); err != nil {
			t.Fatal(err)
		}
		for _, h := range l.Hosts {
			if _, err := waitFor(ctx, 15*time.Second, 200*time.Millisecond, func() (bool, string) {
				code, why, err := readyz(ctx, h)
				return err == nil && code == 503 && strings.Contains(why, "invalid") && strings.Contains(why, "192.0.2."),
					fmt.Sprintf("%s /readyz: %d %q %v", h.Name, code, why, err)
			}); err != nil {
				t.Error(err)
			}
		}
		if m := l.PingMatrix(ctx); !m.OK() {
			t.Errorf("the data path did not survive a config covering the underlay:\n%s", m)
		}
		if _, err := cli.Put(ctx, "/coreos.com/network/config", good); err != nil {
			t.Fatal(err)
		}
		waitAllReady(t, ctx, l.Hosts, 15*time.Second)
	})
}

// runDoctorJSON runs weftctl doctor -o json inside h.
func runDoctorJSON(t *testing.T, ctx context.Context, h *lab.Host) (doctor.Report, string) {
	t.Helper()
	out, _ := h.Exec(ctx, filepath.Join(binDir, "weftctl"), "--etcd-endpoints="+lab.EtcdEndpoint, "doctor",
		"--subnet-file="+h.SubnetFile(), "-o", "json")
	var rep doctor.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("%s: doctor output is not JSON (%v): %s", h.Name, err, out)
	}
	return rep, string(out)
}
