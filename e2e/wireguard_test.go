package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/backend/wireguard"
	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/internal/nl"
)

// TestWireGuard runs 3 hosts on the wireguard backend with the in-process
// driver (this machine has no wireguard kernel module) and checks, in
// order: pods ping across all pairs; each device holds the other two hosts
// as peers, under the public keys of their leases, with handshakes, and
// wg(8) reads it over the UAPI socket; a capture on every port of the
// underlay switch shows only WireGuard's UDP between the hosts and no pod
// address or payload in clear; a restart of one host's weftd keeps the
// pods' traffic flowing (the gap is measured with 10 ms pings); rotating
// one host's key (delete the key file, restart) re-keys its peers within
// 2 s; and a weftd forced to the kernel driver fails, naming the module.
func TestWireGuard(t *testing.T) {
	// The hosts lease below 198.18.250.0: the hostile leases below are
	// written at 198.18.250.0-253.0 and must not land on a host's subnet.
	l := faultLab(t, lab.Options{Hosts: 3, Backend: "wireguard", ExtraConfig: map[string]any{"SubnetMax": "198.18.249.0"}})
	ctx := testCtx(t, 4*time.Minute)
	startWeftds(t, ctx, l.Hosts)
	for _, h := range l.Hosts {
		if env := mustEnv(t, h); env.MTU != lab.UnderlayMTU-80 {
			t.Errorf("%s: FLANNEL_MTU=%d, want %d", h.Name, env.MTU, lab.UnderlayMTU-80)
		}
		if len(logLines(h, "wireguard driver", "driver=userspace")) == 0 {
			t.Errorf("%s: weftd did not log that it runs the userspace driver", h.Name)
		}
	}
	pods := onePodPerHost(t, ctx, l)
	cli := etcdClient(t, ctx, l)

	// Peers and handshakes, as the devices report them over UAPI.
	pubOf := func(h *lab.Host) wgtypes.Key {
		t.Helper()
		a, _, err := getLease(ctx, cli, ownSubnet(t, ctx, h))
		if err != nil {
			t.Fatal(err)
		}
		d, err := wireguard.ParseLeaseData(a.BackendData)
		if err != nil || a.BackendType != "wireguard" || d.Port != wireguard.DefaultListenPort {
			t.Fatalf("%s lease %+v: %v", h.Name, a, err)
		}
		return d.PublicKey
	}
	for _, h := range l.Hosts {
		st, err := os.Stat(h.WireGuardKeyFile())
		if err != nil || st.Mode().Perm() != 0o400 {
			t.Fatalf("%s key file: %v %v", h.Name, st, err)
		}
		peers := uapiPeers(t, h)
		for _, o := range l.Hosts {
			if o == h {
				continue
			}
			p, ok := peers[pubOf(o)]
			if !ok {
				t.Errorf("%s: no peer for %s's public key; device peers %v", h.Name, o.Name, peers)
				continue
			}
			if p.endpoint != netip.AddrPortFrom(o.IP, wireguard.DefaultListenPort) || !p.handshake {
				t.Errorf("%s: peer %s: %+v, want endpoint %s:%d and a handshake", h.Name, o.Name, p, o.IP, wireguard.DefaultListenPort)
			}
		}
		if len(peers) != len(l.Hosts)-1 {
			t.Errorf("%s: device has %d peers, want %d", h.Name, len(peers), len(l.Hosts)-1)
		}
	}
	if _, err := exec.LookPath("wg"); err != nil {
		t.Log("wg not installed (Debian package wireguard-tools): skipping wg show")
	} else {
		h := l.Hosts[0]
		out, err := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(h.WeftdPID()), "-m", "-n", "wg", "show", "weft-wg").CombinedOutput()
		if err != nil || strings.Count(string(out), "peer: ") != 2 || !strings.Contains(string(out), "latest handshake") {
			t.Errorf("wg show weft-wg on %s: %v\n%s", h.Name, err, out)
		}
		if strings.Contains(string(out), "private key: ") && !strings.Contains(string(out), "(hidden)") {
			t.Errorf("wg show prints the private key:\n%s", out)
		}
	}

	t.Run("private key stays private", func(t *testing.T) {
		// The key file's base64 text appears neither in weftd's log nor
		// in /status (nor in /leases, which carries the config and the
		// leases).
		for _, h := range l.Hosts {
			key, err := os.ReadFile(h.WireGuardKeyFile())
			if err != nil || len(strings.TrimSpace(string(key))) < 40 {
				t.Fatalf("%s key file: %q %v", h.Name, key, err)
			}
			secret := strings.TrimSpace(string(key))
			logText, err := os.ReadFile(h.WeftdLog())
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(logText), secret) {
				t.Errorf("%s: weftd's log holds the private key", h.Name)
			}
			for _, path := range []string{"/status", "/leases"} {
				_, body, err := httpGet(ctx, h, path)
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(body, secret) {
					t.Errorf("%s: %s holds the private key", h.Name, path)
				}
			}
		}
	})

	t.Run("capture", func(t *testing.T) { wgCapture(t, ctx, l, pods) })

	t.Run("hostile leases", func(t *testing.T) {
		// Unusable wireguard lease data in etcd: refused, with a reason,
		// and nobody else is cut off.
		h1key := pubOf(l.Hosts[0])
		pg := pingAll(t, pods, 60, 50*time.Millisecond)
		bad := map[string]string{
			"198.18.250.0-24": `{"PublicIP":"192.0.2.99","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"!!not base64!!","Port":51820}}`,
			"198.18.251.0-24": `{"PublicIP":"192.0.2.98","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"c2hvcnQ=","Port":51820}}`,
			"198.18.252.0-24": `{"PublicIP":"192.0.2.97","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"` + h1key.String() + `","Port":70000}}`,
			"198.18.253.0-24": `{"PublicIP":"192.0.2.96","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"` + h1key.String() + `","Port":51820}}`,
		}
		for k, v := range bad {
			if _, err := cli.Put(ctx, leasePrefix+k, v); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Second)
		for _, h := range l.Hosts {
			st, err := status(ctx, h)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(uapiPeers(t, h)); got != len(l.Hosts)-1 {
				t.Errorf("%s: device has %d peers with hostile leases in etcd, want %d", h.Name, got, len(l.Hosts)-1)
			}
			refused := map[string]bool{}
			for _, r := range st.LeasesRefused {
				refused[r.Key] = true
			}
			for k := range bad {
				if !refused[k] {
					t.Errorf("%s: /status does not list %s as refused: %+v", h.Name, k, st.LeasesRefused)
				}
			}
			if !st.Ready {
				t.Errorf("%s: not ready with hostile leases in etcd: %s", h.Name, st.NotReadyReason)
			}
		}
		if lines := logLines(l.Hosts[1], "not a usable WireGuard public key"); len(lines) == 0 {
			t.Errorf("%s did not log why it refused the lease with a bad key", l.Hosts[1].Name)
		}
		expectNoLoss(t, ctx, pg)
		for k := range bad {
			if _, err := cli.Delete(ctx, leasePrefix+k); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("restart", func(t *testing.T) {
		h := l.Hosts[1]
		pg := startPinger(t, pods[0], pods[1].IP, 400, 10*time.Millisecond)
		time.Sleep(500 * time.Millisecond)
		if err := h.StopWeftd(unix.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := h.StartWeftd(); err != nil {
			t.Fatal(err)
		}
		r, err := pg.wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		gap := time.Duration(r.Lost()) * 10 * time.Millisecond
		t.Logf("weftd restart on %s: %d of %d pings (10 ms apart) lost: a gap of about %s", h.Name, r.Lost(), r.Sent, gap)
		// The figure to watch is the one logged above and in make bench's
		// restart section (target: under 1 s; 50-170 ms here when the
		// machine is not shared). The test fails only where WireGuard's
		// own recovery would have been needed: without the restarted
		// host's immediate handshakes the peer keeps sending on its old
		// session for 15 s, and every ping after the restart is lost.
		if gap >= 2500*time.Millisecond {
			t.Errorf("restart gap %s: the restarted host did not restore its sessions at once", gap)
		}
		if err := h.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("key rotation", func(t *testing.T) {
		h := l.Hosts[2]
		old := pubOf(h)
		sn := ownSubnet(t, ctx, h)
		if err := h.StopWeftd(unix.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(h.WireGuardKeyFile()); err != nil {
			t.Fatal(err)
		}
		if err := h.StartWeftd(); err != nil {
			t.Fatal(err)
		}
		var fresh wgtypes.Key
		took, err := waitFor(ctx, 10*time.Second, 20*time.Millisecond, func() (bool, string) {
			a, _, err := getLease(ctx, cli, sn)
			if err != nil || a == nil {
				return false, fmt.Sprintf("lease: %v", err)
			}
			d, err := wireguard.ParseLeaseData(a.BackendData)
			if err != nil || d.PublicKey == old {
				return false, "lease still carries the old key"
			}
			fresh = d.PublicKey
			for _, o := range l.Hosts[:2] {
				ps := uapiPeers(t, o)
				if _, ok := ps[old]; ok {
					return false, o.Name + " still has the old key"
				}
				if p, ok := ps[fresh]; !ok || !p.handshake {
					return false, o.Name + " has no handshake with the new key yet"
				}
			}
			return true, ""
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("key rotation on %s: the peers hold the new key %s, with a handshake, %s after weftd was started", h.Name, fresh, took)
		if took > 2*time.Second {
			t.Errorf("re-keying took %s, want at most 2s", took)
		}
		if r, err := pods[0].Ping(ctx, pods[2].IP, 3, 100*time.Millisecond); err != nil || r.Received == 0 {
			t.Errorf("pods do not reach the re-keyed host: %+v %v", r, err)
		}
	})

	t.Run("forced kernel driver", func(t *testing.T) {
		if _, err := os.Stat("/sys/module/wireguard"); err == nil {
			t.Skip("this kernel has the wireguard module")
		}
		h := l.Hosts[2]
		if err := h.StopWeftd(unix.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := h.StartWeftd("--wireguard-driver=kernel"); err != nil {
			t.Fatal(err)
		}
		if _, err := waitFor(ctx, 20*time.Second, 50*time.Millisecond, func() (bool, string) {
			return !weftdRunning(h), "weftd still running"
		}); err != nil {
			t.Fatal(err)
		}
		lines := logLines(h, "wireguard kernel module is not available")
		if len(lines) == 0 || !strings.Contains(lines[len(lines)-1], "--wireguard-driver=userspace") {
			t.Fatalf("weftd with --wireguard-driver=kernel: no clear error in its log:\n%s", lines)
		}
		t.Logf("weftd --wireguard-driver=kernel: %s", lines[len(lines)-1])
	})
}

type uapiPeer struct {
	endpoint  netip.AddrPort
	handshake bool
}

// uapiPeers reads h's device over its UAPI socket, as wg(8) does.
func uapiPeers(t *testing.T, h *lab.Host) map[wgtypes.Key]uapiPeer {
	t.Helper()
	c, err := net.DialTimeout("unix", h.WireGuardSocket(), time.Second)
	if err != nil {
		t.Fatalf("%s: UAPI socket: %v", h.Name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("get=1\n\n")); err != nil {
		t.Fatal(err)
	}
	out := map[wgtypes.Key]uapiPeer{}
	var cur wgtypes.Key
	sc := bufio.NewScanner(c)
	for sc.Scan() && sc.Text() != "" {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "public_key":
			b, _ := hex.DecodeString(v)
			copy(cur[:], b)
			out[cur] = uapiPeer{}
		case "endpoint":
			p := out[cur]
			ap, _ := netip.ParseAddrPort(v)
			p.endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			out[cur] = p
		case "last_handshake_time_sec":
			p := out[cur]
			p.handshake = v != "0"
			out[cur] = p
		}
	}
	return out
}

// wgCapture captures every frame on every port of the underlay switch
// while the pods ping each other with a recognisable payload, and checks
// that between hosts there is only UDP from and to the listen port, with
// no pod address or payload in clear.
func wgCapture(t *testing.T, ctx context.Context, l *lab.Lab, pods []*lab.Pod) {
	sw, err := netns.GetFromPath(l.SwitchNS)
	if err != nil {
		t.Fatal(err)
	}
	defer sw.Close()
	var fd int
	if err := nl.Do(sw, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		return err
	}); err != nil {
		t.Fatalf("capture socket in the switch namespace: %v", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)

	var mu sync.Mutex
	var frames [][]byte
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n <= 0 {
				continue
			}
			mu.Lock()
			frames = append(frames, append([]byte(nil), buf[:n]...))
			mu.Unlock()
		}
	}()
	const pattern = "77656674706c61696e2d" // "weftplain-"
	marker, _ := hex.DecodeString(pattern)
	for _, a := range pods {
		for _, b := range pods {
			if a == b {
				continue
			}
			out, err := a.Exec(ctx, "ping", "-n", "-q", "-c", "5", "-i", "0.05", "-s", "200", "-p", pattern, b.IP.String())
			if err != nil {
				t.Fatalf("ping %s -> %s: %v\n%s", a.Name, b.IP, err, out)
			}
		}
	}
	close(stop)
	<-done

	hosts := map[netip.Addr]bool{}
	for _, h := range l.Hosts {
		hosts[h.IP] = true
	}
	var tunnel, other int
	for _, f := range frames {
		if bytes.Contains(f, marker) {
			t.Fatalf("a frame on the underlay carries the pods' payload in clear: %x", f)
		}
		if len(f) < 14+20 || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_IP {
			continue
		}
		ip := f[14:]
		ihl := int(ip[0]&0xf) * 4
		src, dst := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		if podNet := netip.MustParsePrefix(l.Options().Network); podNet.Contains(src) || podNet.Contains(dst) {
			t.Fatalf("a pod address in an outer header on the underlay: %s -> %s", src, dst)
		}
		if !hosts[src] || !hosts[dst] {
			other++ // to or from the switch: etcd
			continue
		}
		if ip[9] != unix.IPPROTO_UDP || len(ip) < ihl+8 {
			t.Fatalf("host-to-host packet %s -> %s of protocol %d, want only UDP", src, dst, ip[9])
		}
		sp, dp := binary.BigEndian.Uint16(ip[ihl:]), binary.BigEndian.Uint16(ip[ihl+2:])
		if sp != wireguard.DefaultListenPort || dp != wireguard.DefaultListenPort {
			t.Fatalf("host-to-host UDP %s:%d -> %s:%d, want port %d both ways", src, sp, dst, dp, wireguard.DefaultListenPort)
		}
		for _, p := range pods {
			a := p.IP.As4()
			if bytes.Contains(ip[ihl+8:], a[:]) {
				t.Fatalf("pod address %s in clear in a WireGuard datagram", p.IP)
			}
		}
		tunnel++
	}
	t.Logf("captured %d frames on the switch: %d WireGuard datagrams between hosts, %d to or from the switch (etcd)", len(frames), tunnel, other)
	if tunnel < 30 {
		t.Fatalf("only %d WireGuard datagrams captured for 30 pings each way", tunnel)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
