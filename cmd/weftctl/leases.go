package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"text/tabwriter"
	"time"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/backend/wireguard"
	"github.com/weftnet/weft/internal/backends"
	"github.com/weftnet/weft/subnet"
	"github.com/weftnet/weft/subnet/etcd"
)

// leaseJSON is one element of `weftctl leases -o json`.
type leaseJSON struct {
	Subnet           string          `json:"subnet,omitempty"`
	IPv6Subnet       string          `json:"ipv6Subnet,omitempty"`
	PublicIP         string          `json:"publicIP,omitempty"`
	PublicIPv6       string          `json:"publicIPv6,omitempty"`
	Backend          string          `json:"backend,omitempty"`
	VtepMAC          string          `json:"vtepMAC,omitempty"`
	VtepMACv6        string          `json:"vtepMACv6,omitempty"`
	PublicKey        string          `json:"publicKey,omitempty"`
	Expires          *time.Time      `json:"expires,omitempty"`
	ExpiresInSeconds *int64          `json:"expiresInSeconds,omitempty"`
	Reserved         bool            `json:"reserved"`
	EtcdLease        string          `json:"etcdLease,omitempty"`
	ModRevision      int64           `json:"modRevision,omitempty"`
	Value            json.RawMessage `json:"value,omitempty"`
}

// invalidJSON is an element of `weftctl leases -o json` for a key whose
// name or value does not parse.
type invalidJSON struct {
	Invalid bool   `json:"invalid"`
	Key     string `json:"key"`
	Value   string `json:"value"`
	Error   string `json:"error"`
}

func cmdLeases(ctx context.Context, e *env, c *cmdFlags, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	if c.kube.enabled {
		snap, err := kubeLeases(ctx, c)
		if err != nil {
			return err
		}
		if c.output == "json" {
			return writeLeasesJSON(e.stdout, snap, e.timeNow())
		}
		return writeLeasesTable(e.stdout, snap, e.timeNow())
	}
	reg, err := e.registry()
	if err != nil {
		return err
	}
	snap, err := reg.Leases(ctx)
	if err != nil {
		return err
	}
	// Without a network config, no weftd uses this prefix: an empty
	// listing would look like an empty network. Print what is there, if
	// anything, and fail.
	_, _, cfgErr := reg.ConfigRaw(ctx)
	if cfgErr != nil && !errors.Is(cfgErr, etcd.ErrNoConfig) {
		return cfgErr
	}
	if cfgErr == nil || len(snap.Leases)+len(snap.Invalid) > 0 {
		if c.output == "json" {
			err = writeLeasesJSON(e.stdout, snap, e.timeNow())
		} else {
			err = writeLeasesTable(e.stdout, snap, e.timeNow())
		}
		if err != nil {
			return err
		}
	}
	if cfgErr != nil {
		return fmt.Errorf("%w under prefix %s (%s is absent)", etcd.ErrNoConfig, reg.Prefix(), reg.ConfigKey())
	}
	return nil
}

// backendOf finds the backend whose leases carry a's BackendType (udp's
// carry none, as flannel's), from the one registry.
func backendOf(a subnet.LeaseAttrs) (backend.Descriptor, bool) {
	for _, d := range backends.All() {
		if d.LeaseType == a.BackendType {
			return d, true
		}
	}
	return backend.Descriptor{}, false
}

// backendName names the backend of a lease: its registered type, or the
// BackendType as written when no backend claims it.
func backendName(a subnet.LeaseAttrs) string {
	if d, ok := backendOf(a); ok {
		return d.Type
	}
	return a.BackendType
}

// vtepMAC returns the identity a lease's backend derives from its data
// when it is a MAC address (vxlan's VTEP MAC), "" otherwise.
func vtepMAC(a subnet.LeaseAttrs) string {
	d, ok := backendOf(a)
	if !ok || d.PeerData == nil {
		return ""
	}
	id, err := d.PeerData(a)
	if err != nil || len(id) != 6 {
		return ""
	}
	return net.HardwareAddr(id).String()
}

// vtepMAC6 is vtepMAC for the IPv6 data of a dual-stack lease.
func vtepMAC6(a subnet.LeaseAttrs) string {
	d, ok := backendOf(a)
	if !ok || d.PeerData6 == nil || len(a.BackendV6Data) == 0 {
		return ""
	}
	id, err := d.PeerData6(a)
	if err != nil || len(id) != 6 {
		return ""
	}
	return net.HardwareAddr(id).String()
}

// publicKey returns a wireguard lease's public key, base64 as wg(8)
// prints it, "" for other leases and unusable data.
func publicKey(a subnet.LeaseAttrs) string {
	if a.BackendType != wireguard.Type {
		return ""
	}
	d, err := wireguard.ParseLeaseData(a.BackendData)
	if err != nil {
		return ""
	}
	return d.PublicKey.String()
}

// addrOrDash renders an address, "-" when absent.
func addrOrDash(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

// prefixOrDash renders a prefix, "-" when absent.
func prefixOrDash(p netip.Prefix) string {
	if !p.IsValid() {
		return "-"
	}
	return p.String()
}

// expiresIn renders the time left: "23h59m", "42s", "never" for a
// reservation, "expired" when it has run out or is unknown.
func expiresIn(l *subnet.Lease, now time.Time) string {
	if l.Reservation {
		return "never"
	}
	if l.EtcdLease == 0 {
		return "-" // a Node's lease (--kube-subnet-mgr) has no expiry
	}
	if l.Expiration.IsZero() || !l.Expiration.After(now) {
		return "expired"
	}
	return shortDuration(l.Expiration.Sub(now))
}

// shortDuration renders d as "1d2h", "23h59m", "5m3s" or "42s", truncated.
func shortDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + shortDuration(-d)
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		return fmt.Sprintf("%dd%dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeLeasesTable(w io.Writer, snap etcd.Snapshot, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	// The IPv6 columns appear when some lease is dual-stack, the PUBLIC
	// KEY column (wireguard) when some lease has one.
	dual, keys := false, false
	for _, l := range snap.Leases {
		dual = dual || l.IPv6Subnet.IsValid() || l.Attrs.PublicIPv6.IsValid()
		keys = keys || publicKey(l.Attrs) != ""
	}
	head := "SUBNET\tPUBLIC IP\tBACKEND\tVTEP MAC\tEXPIRES IN\tRESERVED"
	if dual {
		head = "SUBNET\tIPV6 SUBNET\tPUBLIC IP\tPUBLIC IPV6\tBACKEND\tVTEP MAC\tEXPIRES IN\tRESERVED"
	}
	if keys {
		head += "\tPUBLIC KEY"
	}
	fmt.Fprintln(tw, head)
	for _, l := range snap.Leases {
		if dual {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", l.Subnet, prefixOrDash(l.IPv6Subnet), l.Attrs.PublicIP,
				addrOrDash(l.Attrs.PublicIPv6), field(backendName(l.Attrs)), dash(vtepMAC(l.Attrs)), expiresIn(l, now), yesNo(l.Reservation))
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s", l.Subnet, l.Attrs.PublicIP, field(backendName(l.Attrs)),
				dash(vtepMAC(l.Attrs)), expiresIn(l, now), yesNo(l.Reservation))
		}
		if keys {
			fmt.Fprintf(tw, "\t%s", dash(publicKey(l.Attrs)))
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(snap.Invalid) > 0 {
		fmt.Fprintf(w, "\n%d invalid key(s), ignored by weftd:\n", len(snap.Invalid))
		for _, inv := range snap.Invalid {
			fmt.Fprintf(w, "  %s: %s\n", field(inv.Key), text(inv.Err.Error()))
		}
	}
	return nil
}

func writeLeasesJSON(w io.Writer, snap etcd.Snapshot, now time.Time) error {
	out := make([]any, 0, len(snap.Leases)+len(snap.Invalid))
	for _, l := range snap.Leases {
		value, err := l.Attrs.MarshalJSON()
		if err != nil || !json.Valid(value) {
			// subnet.LeaseAttrs.MarshalJSON writes BackendType with Go's
			// quoting, which is not JSON when it holds a control
			// character. One such lease must not make the whole listing
			// fail: carry that value as a JSON string instead.
			value, _ = json.Marshal(string(value))
		}
		j := leaseJSON{
			Subnet:      l.Subnet.String(),
			PublicIP:    l.Attrs.PublicIP.String(),
			Backend:     backendName(l.Attrs),
			VtepMAC:     vtepMAC(l.Attrs),
			PublicKey:   publicKey(l.Attrs),
			VtepMACv6:   vtepMAC6(l.Attrs),
			Reserved:    l.Reservation,
			ModRevision: l.ModRevision,
			Value:       value,
		}
		if !l.Reservation && l.EtcdLease != 0 {
			j.EtcdLease = fmt.Sprintf("%x", l.EtcdLease)
			if !l.Expiration.IsZero() {
				exp := l.Expiration.UTC().Truncate(time.Second)
				secs := int64(max(0, l.Expiration.Sub(now)) / time.Second)
				j.Expires, j.ExpiresInSeconds = &exp, &secs
			}
		}
		if l.IPv6Subnet.IsValid() {
			j.IPv6Subnet = l.IPv6Subnet.String()
		}
		if l.Attrs.PublicIPv6.IsValid() {
			j.PublicIPv6 = l.Attrs.PublicIPv6.String()
		}
		out = append(out, j)
	}
	for _, inv := range snap.Invalid {
		out = append(out, invalidJSON{Invalid: true, Key: inv.Key, Value: string(inv.Value), Error: inv.Err.Error()})
	}
	return writeJSON(w, out)
}

// writeJSON writes v indented, with every non-printing rune escaped (see
// safeJSON).
func writeJSON(w io.Writer, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := w.Write(safeJSON(buf.Bytes()))
	return err
}

// parseSubnetArg parses a SUBNET argument, accepting flannel's key form too
// ("198.18.7.0-24").
func parseSubnetArg(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		if p2, _, err2 := subnet.ParseSubnetKey(s); err2 == nil {
			return p2, nil
		}
		return netip.Prefix{}, usagef("%q is not a subnet such as 198.18.7.0/24", s)
	}
	if !p.Addr().Is4() || p.Masked() != p {
		return netip.Prefix{}, usagef("%s is not a masked IPv4 subnet (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}
