package main

import (
	"context"
	"fmt"
	"net/netip"
)

func cmdReserve(ctx context.Context, e *env, c *cmdFlags, args []string) error {
	if len(args) != 1 {
		return usagef("want exactly one SUBNET")
	}
	sn, err := parseSubnetArg(args[0])
	if err != nil {
		return err
	}
	if c.publicIP == "" {
		return usagef("--public-ip is required")
	}
	ip, err := netip.ParseAddr(c.publicIP)
	if err != nil || !ip.Is4() {
		return usagef("--public-ip %q is not an IPv4 address", c.publicIP)
	}
	reg, err := e.registry()
	if err != nil {
		return err
	}
	// Registry.Reserve checks the subnet against the network config when
	// there is one. Without one (a wrong --etcd-prefix, say), nothing
	// could be checked, and the key would land where no weftd looks.
	if _, err := reg.Config(ctx); err != nil {
		return fmt.Errorf("reserve %s: %w", sn, err)
	}
	if err := reg.Reserve(ctx, sn, ip); err != nil {
		return err
	}
	if c.output == "json" {
		return writeJSON(e.stdout, reservationJSON{Subnet: sn.String(), PublicIP: ip.String(), Reserved: true})
	}
	_, err = fmt.Fprintf(e.stdout, "reserved %s for %s\n", sn, ip)
	return err
}

// reservationJSON is `weftctl reserve -o json` and `weftctl release -o json`.
type reservationJSON struct {
	Subnet   string `json:"subnet"`
	PublicIP string `json:"publicIP,omitempty"`
	Reserved bool   `json:"reserved"`
}

func cmdRelease(ctx context.Context, e *env, c *cmdFlags, args []string) error {
	if len(args) != 1 {
		return usagef("want exactly one SUBNET")
	}
	sn, err := parseSubnetArg(args[0])
	if err != nil {
		return err
	}
	reg, err := e.registry()
	if err != nil {
		return err
	}
	if err := reg.Release(ctx, sn); err != nil {
		return err
	}
	if c.output == "json" {
		return writeJSON(e.stdout, reservationJSON{Subnet: sn.String(), Reserved: false})
	}
	_, err = fmt.Fprintf(e.stdout, "released %s\n", sn)
	return err
}
