package e2e_test

// Helpers shared by the fault suite (fault_*_test.go, issue #7): clusters of
// weftd on lab hosts, readiness and metrics over HTTP, kernel state read
// with ip/bridge JSON output, background pings with a fixed packet count and
// lease keys read and written with the etcd client.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/apitypes"
	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/subnet"
)

// faultPrefix names every namespace of the fault suite.
const faultPrefix = "wf"

// leasePrefix is where leases live with the default etcd prefix.
const leasePrefix = "/coreos.com/network/subnets/"

// vxlanDev is the vxlan device weftd creates for the default VNI 1.
const vxlanDev = "weft.1"

// faultLab builds a lab for a fault test; it needs every binary.
func faultLab(t *testing.T, opts lab.Options) *lab.Lab {
	t.Helper()
	needBins(t, "weft-lab", "weftd", "weft")
	opts.Name = faultPrefix
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	return newLab(t, opts)
}

// testCtx is a context bounded by d and ended with the test.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// startWeftds starts weftd on every host at once with args and waits until
// each is ready.
func startWeftds(t *testing.T, ctx context.Context, hosts []*lab.Host, args ...string) {
	t.Helper()
	for _, h := range hosts {
		if err := h.StartWeftd(args...); err != nil {
			t.Fatal(err)
		}
	}
	waitAllReady(t, ctx, hosts, 30*time.Second)
}

func waitAllReady(t *testing.T, ctx context.Context, hosts []*lab.Host, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(hosts))
	for i, h := range hosts {
		wg.Go(func() { errs[i] = h.WaitReady(ctx) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// onePodPerHost attaches one pod to each host and waits for full
// connectivity.
func onePodPerHost(t *testing.T, ctx context.Context, l *lab.Lab) []*lab.Pod {
	t.Helper()
	var pods []*lab.Pod
	for _, h := range l.Hosts {
		p, err := h.AddPod(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	if m, err := l.WaitConnectivity(ctx, 20*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, m)
	}
	return pods
}

// httpGet fetches path from weftd's HTTP endpoint on h.
func httpGet(ctx context.Context, h *lab.Host, path string) (int, string, error) {
	client := lab.HTTPClient(h.NS, 2*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", lab.HealthzPort, path), nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(body), err
}

// readyz returns /readyz's status code and trimmed body.
func readyz(ctx context.Context, h *lab.Host) (int, string, error) {
	code, body, err := httpGet(ctx, h, "/readyz")
	return code, strings.TrimSpace(body), err
}

// status returns weftd's /status.
func status(ctx context.Context, h *lab.Host) (apitypes.Status, error) {
	var s apitypes.Status
	code, body, err := httpGet(ctx, h, "/status")
	if err != nil {
		return s, err
	}
	if code != http.StatusOK {
		return s, fmt.Errorf("%s /status: %d %s", h.Name, code, body)
	}
	return s, json.Unmarshal([]byte(body), &s)
}

// metrics scrapes /metrics into "name{labels}" -> value.
func metrics(ctx context.Context, h *lab.Host) (map[string]float64, error) {
	code, body, err := httpGet(ctx, h, "/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("%s /metrics: %d", h.Name, code)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, nil
}

// metricSum adds every series whose name is name.
func metricSum(m map[string]float64, name string) float64 {
	var s float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

func mustMetrics(t *testing.T, ctx context.Context, h *lab.Host) map[string]float64 {
	t.Helper()
	m, err := metrics(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// ownSubnet returns the subnet h's weftd holds, from /status.
func ownSubnet(t *testing.T, ctx context.Context, h *lab.Host) netip.Prefix {
	t.Helper()
	s, err := status(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	p, err := netip.ParsePrefix(s.Lease)
	if err != nil {
		t.Fatalf("%s: /status lease %q: %v", h.Name, s.Lease, err)
	}
	return p
}

// leaseKey is the etcd key of subnet sn.
func leaseKey(sn netip.Prefix) string { return leasePrefix + subnet.SubnetKey(sn) }

// etcdClient returns a client for the lab's etcd, closed with the test.
func etcdClient(t *testing.T, ctx context.Context, l *lab.Lab) *clientv3.Client {
	t.Helper()
	cli, err := l.Etcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// getLease reads the key of sn; nil when absent.
func getLease(ctx context.Context, cli *clientv3.Client, sn netip.Prefix) (*subnet.LeaseAttrs, int64, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cli.Get(cctx, leaseKey(sn))
	if err != nil {
		return nil, 0, err
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	a, err := subnet.ParseLeaseAttrs(resp.Kvs[0].Value)
	if err != nil {
		return nil, 0, err
	}
	return &a, resp.Kvs[0].Lease, nil
}

// vxlanLease renders a vxlan lease value.
func vxlanLease(publicIP, mac string) string {
	a := subnet.LeaseAttrs{
		PublicIP:    netip.MustParseAddr(publicIP),
		BackendType: "vxlan",
		BackendData: json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, mac)),
	}
	b, _ := a.MarshalJSON()
	return string(b)
}

// ipJSON runs an iproute2 command with -j inside h and decodes the output.
func ipJSON(ctx context.Context, h *lab.Host, argv ...string) ([]map[string]any, error) {
	out, err := h.Exec(ctx, append([]string{argv[0], "-j"}, argv[1:]...)...)
	if err != nil {
		return nil, err
	}
	out = bytes.TrimSpace(out)
	if len(out) == 0 {
		return nil, nil
	}
	var v []map[string]any
	if err := json.Unmarshal(out, &v); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, out)
	}
	return v, nil
}

func str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

// hostRoutes lists h's main-table IPv4 routes.
func hostRoutes(ctx context.Context, h *lab.Host) ([]map[string]any, error) {
	return ipJSON(ctx, h, "ip", "-4", "route", "show")
}

// routeTo returns the route whose dst is sn ("" dev when absent).
func routeTo(ctx context.Context, h *lab.Host, sn netip.Prefix) (map[string]any, error) {
	rs, err := hostRoutes(ctx, h)
	if err != nil {
		return nil, err
	}
	for _, r := range rs {
		if routeDst(r) == sn {
			return r, nil
		}
	}
	return nil, nil
}

// routeDst parses a route's dst ("default" and host routes included).
func routeDst(r map[string]any) netip.Prefix {
	d := str(r, "dst")
	if d == "default" {
		return netip.MustParsePrefix("0.0.0.0/0")
	}
	if p, err := netip.ParsePrefix(d); err == nil {
		return p
	}
	if a, err := netip.ParseAddr(d); err == nil {
		return netip.PrefixFrom(a, a.BitLen())
	}
	return netip.Prefix{}
}

// peerEntries reports which of the three vxlan objects for a peer exist on
// h: the route to sn, the neighbour sn.Addr() -> mac, the FDB entry mac ->
// publicIP.
func peerEntries(ctx context.Context, h *lab.Host, sn netip.Prefix, mac, publicIP string) (route, neigh, fdb bool, err error) {
	r, err := routeTo(ctx, h, sn)
	if err != nil {
		return
	}
	route = r != nil
	ns, err := ipJSON(ctx, h, "ip", "-4", "neigh", "show", "dev", vxlanDev)
	if err != nil {
		return
	}
	for _, n := range ns {
		if str(n, "dst") == sn.Addr().String() && strings.EqualFold(str(n, "lladdr"), mac) {
			neigh = true
		}
	}
	fs, err := ipJSON(ctx, h, "bridge", "fdb", "show", "dev", vxlanDev)
	if err != nil {
		return
	}
	for _, f := range fs {
		if strings.EqualFold(str(f, "mac"), mac) && str(f, "dst") == publicIP {
			fdb = true
		}
	}
	return
}

// linkMAC returns the MAC of dev on h ("" when the device is missing).
func linkMAC(ctx context.Context, h *lab.Host, dev string) string {
	ls, err := ipJSON(ctx, h, "ip", "link", "show", "dev", dev)
	if err != nil || len(ls) == 0 {
		return ""
	}
	return str(ls[0], "address")
}

// waitFor polls cond every interval until it returns true or timeout
// passes; it returns how long it took, or an error with cond's last words.
func waitFor(ctx context.Context, timeout, interval time.Duration, cond func() (bool, string)) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return time.Since(start), fmt.Errorf("not within %s: %s", timeout, why)
		}
		select {
		case <-ctx.Done():
			return time.Since(start), fmt.Errorf("%w: %s", ctx.Err(), why)
		case <-time.After(interval):
		}
	}
}

// pinger is a ping with a fixed packet count running in the background, so
// that a disruption can happen while it runs and every lost packet counts.
type pinger struct {
	desc string
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan struct{}
	err  error
}

// startPinger sends count pings from p to dst, interval apart.
func startPinger(t *testing.T, p *lab.Pod, dst netip.Addr, count int, interval time.Duration) *pinger {
	t.Helper()
	pg := &pinger{desc: fmt.Sprintf("%s → %s", p.Name, dst), done: make(chan struct{})}
	pg.cmd = exec.Command("ip", "netns", "exec", p.NSName, "ping", "-n", "-q",
		"-c", strconv.Itoa(count), "-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64), "-W", "2", dst.String())
	pg.cmd.Stdout = &pg.out
	pg.cmd.Stderr = &pg.out
	if err := pg.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		pg.err = pg.cmd.Wait()
		close(pg.done)
	}()
	t.Cleanup(func() {
		select {
		case <-pg.done:
		default:
			pg.cmd.Process.Kill()
			<-pg.done
		}
	})
	return pg
}

// wait waits for the pinger to finish and returns its summary.
func (pg *pinger) wait(ctx context.Context) (lab.PingResult, error) {
	select {
	case <-pg.done:
	case <-ctx.Done():
		return lab.PingResult{}, fmt.Errorf("ping %s: %w", pg.desc, ctx.Err())
	}
	r, err := lab.ParsePing(pg.out.Bytes())
	if err != nil {
		return r, fmt.Errorf("ping %s: %w (%v)", pg.desc, err, pg.err)
	}
	return r, nil
}

// pingAll starts a pinger between every ordered pair of pods.
func pingAll(t *testing.T, pods []*lab.Pod, count int, interval time.Duration) []*pinger {
	var out []*pinger
	for _, a := range pods {
		for _, b := range pods {
			if a != b {
				out = append(out, startPinger(t, a, b.IP, count, interval))
			}
		}
	}
	return out
}

// expectNoLoss waits for every pinger and fails the test for each lost
// packet.
func expectNoLoss(t *testing.T, ctx context.Context, pgs []*pinger) {
	t.Helper()
	for _, pg := range pgs {
		r, err := pg.wait(ctx)
		if err != nil {
			t.Error(err)
			continue
		}
		t.Logf("ping %s: %d sent, %d received", pg.desc, r.Sent, r.Received)
		if r.Sent == 0 || r.Lost() != 0 {
			t.Errorf("ping %s lost %d of %d packets", pg.desc, r.Lost(), r.Sent)
		}
	}
}

// logLines returns the lines of h's weftd log that contain every one of
// subs.
func logLines(h *lab.Host, subs ...string) []string {
	data, err := os.ReadFile(h.WeftdLog())
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		ok := true
		for _, s := range subs {
			if !strings.Contains(line, s) {
				ok = false
				break
			}
		}
		if ok && line != "" {
			out = append(out, line)
		}
	}
	return out
}

// weftdRunning reports whether h's weftd process is alive.
func weftdRunning(h *lab.Host) bool { return h.WeftdPID() != 0 }
