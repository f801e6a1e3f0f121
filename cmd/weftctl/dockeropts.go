package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/weftnet/weft/subnet"
)

const defaultSubnetFile = "/run/flannel/subnet.env"

// dockerOpts derives Docker's options from subnet.env, as flannel's
// mk-docker-opts.sh does: --bip is FLANNEL_SUBNET, --mtu is FLANNEL_MTU, and
// --ip-masq is the opposite of FLANNEL_IPMASQ, so only one of Docker and
// weftd masquerades.
func dockerOpts(env subnet.Env) [][2]string {
	return [][2]string{
		{"DOCKER_OPT_BIP", "--bip=" + env.Subnet.String()},
		{"DOCKER_OPT_IPMASQ", fmt.Sprintf("--ip-masq=%t", !env.IPMasq)},
		{"DOCKER_OPT_MTU", fmt.Sprintf("--mtu=%d", env.MTU)},
	}
}

// dockerDaemonJSON is `weftctl docker-opts -o json`: the same options under
// the keys of Docker's /etc/docker/daemon.json.
type dockerDaemonJSON struct {
	BIP    string `json:"bip"`
	IPMasq bool   `json:"ip-masq"`
	MTU    int    `json:"mtu"`
}

func cmdDockerOpts(ctx context.Context, e *env, c *cmdFlags, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	path := subnetFilePath(e, c)
	if c.format != "env" && c.format != "args" {
		return usagef("--format must be env or args, not %q", c.format)
	}
	if c.output == "json" && c.given["format"] {
		return usagef("--format and -o json exclude each other")
	}
	sf, err := subnet.ReadEnvFile(path)
	if err != nil {
		return err
	}
	if sf.MTU <= 0 {
		return fmt.Errorf("subnet file %s: FLANNEL_MTU is missing", path)
	}
	if c.output == "json" {
		return writeJSON(e.stdout, dockerDaemonJSON{BIP: sf.Subnet.String(), IPMasq: !sf.IPMasq, MTU: sf.MTU})
	}
	opts := dockerOpts(sf)
	all := make([]string, len(opts))
	for i, o := range opts {
		all[i] = o[1]
	}
	if c.format == "args" {
		_, err := fmt.Fprintln(e.stdout, strings.Join(all, " "))
		return err
	}
	for _, o := range opts {
		fmt.Fprintf(e.stdout, "%s=%q\n", o[0], o[1])
	}
	_, err = fmt.Fprintf(e.stdout, "DOCKER_OPTS=%q\n", strings.Join(all, " "))
	return err
}
