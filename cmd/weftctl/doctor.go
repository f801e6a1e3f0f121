package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/internal/apitypes"
	"github.com/weftnet/weft/internal/doctor"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/nftables"
	"github.com/weftnet/weft/subnet"
)

// errProblemsFound makes weftctl exit 1 after the doctor printed its
// report; the report itself is the message.
var errProblemsFound = errors.New("problems found")

// cmdDoctor compares this host's kernel state with the leases in etcd.
func cmdDoctor(ctx context.Context, e *env, c *cmdFlags, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	switch c.rules {
	case "", "iptables", "nftables":
	default:
		return usagef("--rules %q is not iptables or nftables", c.rules)
	}
	// weftd's own settings, from /status, unless weftd does not answer;
	// the flags given override them.
	addr := c.addr
	if addr == "" {
		addr = weftdAddr(e)
	}
	st, stErr := fetchStatus(ctx, addr, 3*time.Second)
	weftdDown := ""
	if stErr != nil {
		var ue usageError
		if errors.As(stErr, &ue) {
			return stErr
		}
		weftdDown = fmt.Sprintf("%s: %s", addr, stErr)
		fmt.Fprintf(e.stderr, "weftctl doctor: weftd is not answering at %s (%s); checking against the flags, the environment and etcd alone\n", addr, text(stErr.Error()))
	}
	up := stErr == nil

	var publicIP netip.Addr
	switch {
	case c.publicIP != "":
		a, err := netip.ParseAddr(c.publicIP)
		if err != nil || !a.Is4() {
			return usagef("--public-ip %q is not an IPv4 address", c.publicIP)
		}
		publicIP = a
	case up && st.PublicIP != "":
		publicIP, _ = netip.ParseAddr(st.PublicIP)
	default:
		if v := firstEnv(e, "PUBLIC_IP"); v != "" {
			publicIP, _ = netip.ParseAddr(v)
		}
	}
	subnetFile := subnetFilePath(e, c)
	if !c.given["subnet-file"] && up && st.SubnetFile != "" {
		subnetFile = st.SubnetFile
	}
	forward := c.forward
	if !c.given["iptables-forward-rules"] && up {
		forward = st.ForwardRules
	}
	var masq *bool
	plain := false
	if c.given["ip-masq"] {
		masq = &c.ipMasq
	} else if up {
		masq = &st.IPMasq
		plain = !st.IPMasqFullyRandom
	}
	rules := c.rules
	if !c.given["rules"] && up && st.Rules != "" {
		rules = st.Rules
	}
	nftKernel := nftables.NewKernel(0)
	if rules == "" {
		// weftd did not say: the table it keeps in nftables mode tells.
		rules = "iptables"
		if ok, err := nftables.Present(nftKernel); err == nil && ok {
			rules = "nftables"
		}
	}

	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	read := etcdDoctorInput
	if c.kube.enabled {
		read = kubeDoctorInput // kube.go
	}
	cfg, leases, invalid, err := read(cctx, e, c)
	storeSkipped := ""
	if err != nil {
		// The store is unreachable: check the kernel against the leases
		// weftd last read, if it answers, and say so.
		var lerr error
		if !up {
			return err
		}
		if cfg, leases, invalid, lerr = weftdLeases(ctx, addr); lerr != nil {
			return fmt.Errorf("%w (and weftd's last known leases: %v)", err, lerr)
		}
		storeSkipped = err.Error()
		fmt.Fprintf(e.stderr, "weftctl doctor: the lease store is unreachable (%s); checking the kernel against weftd's last known leases\n", text(err.Error()))
	}
	if up && st.Backend != "" && st.Backend != cfg.BackendType {
		fmt.Fprintf(e.stderr, "weftctl doctor: warning: weftd runs backend %s, the network config says %s (weftd needs a restart)\n", text(st.Backend), cfg.BackendType)
	}
	in := doctor.Input{
		Config:       cfg,
		Leases:       leases,
		Invalid:      invalid,
		Netns:        netns.None(),
		SubnetFile:   subnetFile,
		PublicIP:     publicIP,
		Forward:      forward,
		Masq:         masq,
		PlainMasq:    plain,
		Rules:        rules,
		WeftdDown:    weftdDown,
		StoreSkipped: storeSkipped,
	}
	switch rules {
	case "nftables":
		in.NFTables = nftKernel
	case "iptables":
		if ipt, err := iptables.New(); err == nil {
			in.IPTables = ipt
		} else {
			fmt.Fprintf(e.stderr, "weftctl doctor: skipping the iptables checks: %v\n", err)
		}
		if ipt6, err := iptables.New6(); err == nil {
			in.IPTables6 = ipt6
		}
	}
	rep, err := doctor.Check(in)
	if err != nil {
		return err
	}
	if c.output == "json" {
		if err := writeJSON(e.stdout, rep); err != nil {
			return err
		}
	} else {
		fmt.Fprint(e.stdout, textLines(rep.Format()))
	}
	if !rep.OK() {
		return errProblemsFound
	}
	return nil
}

// etcdDoctorInput is what doctor compares the kernel with: the network
// config and the leases in etcd.
func etcdDoctorInput(ctx context.Context, e *env, c *cmdFlags) (*subnet.Config, []*subnet.Lease, []subnet.InvalidLease, error) {
	reg, err := e.registry()
	if err != nil {
		return nil, nil, nil, err
	}
	cfg, err := reg.Config(ctx)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read the network config: %w", err)
	}
	snap, err := reg.Leases(ctx)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("list leases: %w", err)
	}
	invalid := make([]subnet.InvalidLease, len(snap.Invalid))
	for i, inv := range snap.Invalid {
		invalid[i] = subnet.InvalidLease{Key: strings.TrimPrefix(inv.Key, reg.Prefix()+"/subnets/"), Value: inv.Value, Err: inv.Err}
	}
	return cfg, snap.Leases, invalid, nil
}

// subnetFilePath is --subnet-file, else $WEFTD_SUBNET_FILE, else
// $FLANNELD_SUBNET_FILE, else flannel's default path.
func subnetFilePath(e *env, c *cmdFlags) string {
	if c.subnetFile != "" {
		return c.subnetFile
	}
	if v := firstEnv(e, "SUBNET_FILE"); v != "" {
		return v
	}
	return defaultSubnetFile
}

// firstEnv reads WEFTD_<name>, then FLANNELD_<name>, from the environment,
// then from weftd's environment file (env.setting).
func firstEnv(e *env, name string) string { return e.setting(name) }

// weftdLeases reads the network config weftd runs and the leases it last
// read from GET /leases.
func weftdLeases(ctx context.Context, addr string) (*subnet.Config, []*subnet.Lease, []subnet.InvalidLease, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/leases", nil)
	if err != nil {
		return nil, nil, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, nil, fmt.Errorf("GET /leases: %s", resp.Status)
	}
	var body apitypes.Leases
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&body); err != nil {
		return nil, nil, nil, fmt.Errorf("GET /leases: %w", err)
	}
	cfg, err := subnet.ParseConfig(body.Config)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("weftd's config: %w", err)
	}
	var leases []*subnet.Lease
	var invalid []subnet.InvalidLease
	for _, en := range body.Leases {
		v4, v6, kerr := subnet.ParseSubnetKey(en.Key)
		attrs, verr := subnet.ParseLeaseAttrs(en.Value)
		if err := errors.Join(kerr, verr); err != nil {
			invalid = append(invalid, subnet.InvalidLease{Key: en.Key, Value: en.Value, Err: err})
			continue
		}
		leases = append(leases, &subnet.Lease{Subnet: v4, IPv6Subnet: v6, Attrs: attrs, CreateRevision: en.CreateRevision, Reservation: en.Reservation})
	}
	for _, k := range body.Invalid {
		invalid = append(invalid, subnet.InvalidLease{Key: k, Err: errors.New("weftd could not parse it")})
	}
	return cfg, leases, invalid, nil
}
