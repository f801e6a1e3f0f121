package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/weftnet/weft/internal/apitypes"
)

func cmdStatus(ctx context.Context, e *env, c *cmdFlags, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	addr := c.addr
	if addr == "" {
		addr = weftdAddr(e)
	}
	st, err := fetchStatus(ctx, addr, 5*time.Second)
	if err != nil {
		return err
	}
	if c.output == "json" {
		err = writeJSON(e.stdout, st)
	} else {
		err = writeStatus(e.stdout, st, e.timeNow())
	}
	if err != nil {
		return err
	}
	if !st.Ready {
		msg := "weftd is not ready"
		if st.NotReadyReason != "" {
			msg += ": " + st.NotReadyReason
		}
		return exitError{code: exitNotReady, msg: msg}
	}
	return nil
}

// weftdAddr is where weftd serves /status by its own settings:
// --healthz-ip (127.0.0.1 when unset or a wildcard) and --healthz-port,
// else defaultAddr.
// fetchStatus asks the weftd at addr for GET /status.
func fetchStatus(ctx context.Context, addr string, timeout time.Duration) (apitypes.Status, error) {
	var st apitypes.Status
	url := "http://" + addr + "/status"
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return st, usagef("--addr %q: %v", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, fmt.Errorf("ask weftd: %w (is weftd running with --healthz-port?)", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return st, fmt.Errorf("ask weftd: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("ask weftd: GET %s: %s: %s", url, resp.Status, text(strings.TrimSpace(string(body))))
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("ask weftd: GET %s: bad JSON: %w", url, err)
	}
	return st, nil
}

func weftdAddr(e *env) string {
	port := e.setting("HEALTHZ_PORT")
	if port == "" || port == "0" {
		return defaultAddr
	}
	host := "127.0.0.1"
	if ip, err := netip.ParseAddr(e.setting("HEALTHZ_IP")); err == nil && !ip.IsUnspecified() {
		host = ip.String()
	}
	return net.JoinHostPort(host, port)
}

// unknown stands for a value weftd did not report. weftd leaves out what
// it has not learnt yet, so a missing value is unknown, never "never" or 0.
const unknown = "unknown"

// since renders a past timestamp as "3s ago (2026-11-26T04:00:00Z)".
func since(t, now time.Time) string {
	if t.IsZero() {
		return unknown
	}
	return fmt.Sprintf("%s ago (%s)", shortDuration(now.Sub(t)), t.UTC().Format(time.RFC3339))
}

func writeStatus(w io.Writer, st apitypes.Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	// Every value comes from weftd, and several embed data from etcd (the
	// config error, refused peers' reasons): escape them all.
	line := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", text(k), text(v)) }
	orUnknown := func(s string) string {
		if s == "" {
			return unknown
		}
		return s
	}
	// A weftd still starting (connecting to etcd, waiting for the network
	// config, setting its backend up) reports no backend, and no peer
	// counts: zeros there mean "not counted yet".
	starting := st.Backend == ""

	lease := dash(st.Lease)
	switch {
	case st.Lease == "":
		lease = "none"
	case st.Reservation:
		lease += " (reservation, never expires)"
	case !st.LeaseExpires.IsZero():
		lease += fmt.Sprintf(" (expires in %s)", shortDuration(st.LeaseExpires.Sub(now)))
	}
	ready := "yes"
	if !st.Ready {
		ready = "no"
		if st.NotReadyReason != "" {
			ready += ": " + st.NotReadyReason
		}
	}
	line("Ready", ready)
	line("Lease", lease)
	line("Public IP", orUnknown(st.PublicIP))
	be := orUnknown(st.Backend)
	if st.Device != "" {
		be += " (device " + st.Device + ")"
	}
	line("Backend", be)
	line("External interface", orUnknown(st.ExternalInterface))
	mtu := unknown
	if st.MTU > 0 {
		mtu = fmt.Sprint(st.MTU)
	}
	line("MTU", mtu)
	if st.SubnetFile != "" {
		line("Subnet file", st.SubnetFile)
	}
	peers := fmt.Sprintf("%d known, %d programmed, %d refused", st.PeersKnown, st.PeersProgrammed, len(st.PeersRefused))
	if starting && st.PeersKnown == 0 && st.PeersProgrammed == 0 && len(st.PeersRefused) == 0 {
		peers = unknown
	}
	line("Peers", peers)
	refused := make([]string, 0, len(st.PeersRefused))
	for k := range st.PeersRefused {
		refused = append(refused, k)
	}
	sort.Strings(refused)
	for _, k := range refused {
		line("  refused "+k, st.PeersRefused[k])
	}
	if st.LeasesSkipped > 0 {
		line("Leases skipped", fmt.Sprint(st.LeasesSkipped))
	}
	if len(st.LeasesRefused) > 0 {
		line("Leases refused", fmt.Sprint(len(st.LeasesRefused)))
	}
	for _, r := range st.LeasesRefused {
		line("  "+field(r.Key), r.Reason+": "+r.Error)
	}
	line("Last reconcile", since(st.LastReconcile, now))
	line("Last etcd contact", since(st.LastEtcdContact, now))
	line("Restart needed", yesNo(st.RestartNeeded))
	if st.ConfigError != "" {
		line("Config error", st.ConfigError)
	}
	if st.LastError != "" {
		line("Last error", st.LastError)
	}
	if st.Version != "" {
		line("Version", st.Version)
	}
	return tw.Flush()
}
