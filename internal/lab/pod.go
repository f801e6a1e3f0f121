package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// Pod is a network namespace attached to a host by the weft CNI plugin.
type Pod struct {
	Name   string     // display name given to AddPod
	NSName string     // namespace name, <host>p<k>
	NS     string     // /var/run/netns/<NSName>
	IP     netip.Addr // address the plugin assigned to eth0
	IP6    netip.Addr // IPv6 address the plugin assigned, on a dual-stack network
	Host   *Host

	confList *libcni.NetworkConfigList
	rt       *libcni.RuntimeConf
}

// CNIConfig returns the network config list the lab hands to libcni for
// this host's pods.
func (h *Host) CNIConfig() string {
	plugin := map[string]any{
		"type":             "weft",
		"subnetFile":       h.SubnetFile(),
		"dataDir":          filepath.Join(h.Dir, "cni-data"),
		"isDefaultGateway": true,
		"logFile":          h.CNILog(),
	}
	list := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "weft",
		"plugins":    []any{plugin},
	}
	out, _ := json.Marshal(list)
	return string(out)
}

// CNILog is where the weft plugin writes its log for this host's pods.
func (h *Host) CNILog() string { return filepath.Join(h.Dir, "cni.log") }

func (h *Host) cni() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{h.cniBinDir()}, filepath.Join(h.Dir, "cni-cache"), nil)
}

// AddPod creates a pod namespace <host>p<k> and attaches it with the weft
// CNI plugin (ADD, interface eth0). weftd must have written the subnet file
// first. An empty name defaults to the namespace name.
func (h *Host) AddPod(ctx context.Context, name string) (_ *Pod, err error) {
	h.mu.Lock()
	h.podSeq++
	nsName := fmt.Sprintf("%sp%d", h.Name, h.podSeq)
	h.mu.Unlock()
	if name == "" {
		name = nsName
	}
	l := h.lab
	if err := l.addNS(ctx, nsName); err != nil {
		return nil, fmt.Errorf("add pod %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			_ = destroyNamespaces([]string{nsName})
		}
	}()
	if err := run(ctx, "ip", "-n", nsName, "link", "set", "lo", "up"); err != nil {
		return nil, fmt.Errorf("add pod %s: %w", name, err)
	}
	confList, err := libcni.NetworkConfFromBytes([]byte(h.CNIConfig()))
	if err != nil {
		return nil, fmt.Errorf("add pod %s: cni config: %w", name, err)
	}
	p := &Pod{
		Name:     name,
		NSName:   nsName,
		NS:       nsPath(nsName),
		Host:     h,
		confList: confList,
		rt: &libcni.RuntimeConf{
			ContainerID: nsName,
			NetNS:       nsPath(nsName),
			IfName:      "eth0",
		},
	}
	res, err := h.cni().AddNetworkList(ctx, confList, p.rt)
	if err != nil {
		return nil, fmt.Errorf("add pod %s: cni add: %w", name, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("add pod %s: cni result: %w", name, err)
	}
	for _, ipc := range r.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		switch {
		case !ok:
		case a.Unmap().Is4() && !p.IP.IsValid():
			p.IP = a.Unmap()
		case a.Is6() && !a.Is4In6() && !p.IP6.IsValid():
			p.IP6 = a
		}
	}
	if !p.IP.IsValid() {
		_ = h.cni().DelNetworkList(ctx, confList, p.rt)
		return nil, fmt.Errorf("add pod %s: cni result has no IPv4 address: %v", name, r)
	}
	l.mu.Lock()
	l.pods = append(l.pods, p)
	l.mu.Unlock()
	if env, err := h.SubnetEnv(); err == nil && env.IPv6Subnet.IsValid() && !p.IP6.IsValid() {
		_ = h.cni().DelNetworkList(ctx, confList, p.rt)
		return nil, fmt.Errorf("add pod %s: cni result has no IPv6 address on a dual-stack network: %v", name, r)
	}
	l.log.Debug("pod added", "pod", name, "host", h.Name, "ip", p.IP, "ip6", p.IP6)
	return p, nil
}

// DelPod detaches a pod with the CNI plugin (DEL) and deletes its
// namespace. The namespace is deleted even when DEL fails.
func (h *Host) DelPod(ctx context.Context, p *Pod) error {
	delErr := h.cni().DelNetworkList(ctx, p.confList, p.rt)
	nsErr := destroyNamespaces([]string{p.NSName})
	l := h.lab
	l.mu.Lock()
	for i, q := range l.pods {
		if q == p {
			l.pods = append(l.pods[:i], l.pods[i+1:]...)
			break
		}
	}
	l.mu.Unlock()
	if delErr != nil {
		delErr = fmt.Errorf("del pod %s: cni del: %w", p.Name, delErr)
	}
	return errors.Join(delErr, nsErr)
}

// Exec runs argv inside the pod namespace.
func (p *Pod) Exec(ctx context.Context, argv ...string) ([]byte, error) {
	return nsExec(ctx, p.NSName, argv...)
}

// PingResult is the summary of one ping run.
type PingResult struct {
	Sent     int
	Received int
	RTTs     RTTStats // zero when nothing was received
}

// RTTStats is ping's round-trip summary line.
type RTTStats struct {
	Min, Avg, Max, Mdev time.Duration
}

// Lost is the number of packets without a reply.
func (r PingResult) Lost() int { return r.Sent - r.Received }

// OK reports whether at least one packet was sent and every one answered.
func (r PingResult) OK() bool { return r.Sent > 0 && r.Received == r.Sent }

// Ping runs `ping -n -q -c count -i interval dst` inside the pod and parses
// its summary. Lost packets are not an error; failing to run ping is.
// Intervals below 200 ms need root, which the lab has.
func (p *Pod) Ping(ctx context.Context, dst netip.Addr, count int, interval time.Duration) (PingResult, error) {
	if count < 1 {
		count = 1
	}
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	argv := []string{"ip", "netns", "exec", p.NSName, "ping", "-n", "-q",
		"-c", strconv.Itoa(count),
		"-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64),
		"-W", "1",
		dst.String()}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, err := cmd.CombinedOutput()
	res, perr := ParsePing(out)
	if perr != nil {
		if err != nil {
			return res, fmt.Errorf("ping %s from %s: %w: %s", dst, p.Name, err, strings.TrimSpace(string(out)))
		}
		return res, fmt.Errorf("ping %s from %s: %w", dst, p.Name, perr)
	}
	// Exit status 1 means some replies were missing: reported in res.
	return res, nil
}

var (
	pingCountRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)
	pingRTTRE   = regexp.MustCompile(`= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms`)
)

// ParsePing parses the summary of iputils ping output.
func ParsePing(out []byte) (PingResult, error) {
	var r PingResult
	m := pingCountRE.FindSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no summary in ping output: %q", strings.TrimSpace(string(out)))
	}
	r.Sent, _ = strconv.Atoi(string(m[1]))
	r.Received, _ = strconv.Atoi(string(m[2]))
	if m := pingRTTRE.FindSubmatch(out); m != nil {
		d := func(b []byte) time.Duration {
			f, _ := strconv.ParseFloat(string(b), 64)
			return time.Duration(f * float64(time.Millisecond))
		}
		r.RTTs = RTTStats{Min: d(m[1]), Avg: d(m[2]), Max: d(m[3]), Mdev: d(m[4])}
	}
	return r, nil
}
