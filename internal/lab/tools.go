package lab

import (
	"fmt"
	"os/exec"
	"strings"
)

// ToolPackages maps each external tool the lab runs to the Debian package
// that provides it.
var ToolPackages = map[string]string{
	"ip":       "iproute2",
	"bridge":   "iproute2",
	"iptables": "iptables",
	"ping":     "iputils-ping",
	"iperf3":   "iperf3",
	"sysctl":   "procps",
}

// CheckTools returns an error naming every missing tool and the
// `apt-get install` command that provides them.
func CheckTools(names ...string) error {
	var missing, pkgs []string
	seen := map[string]bool{}
	for _, n := range names {
		if _, err := exec.LookPath(n); err == nil {
			continue
		}
		missing = append(missing, n)
		p := ToolPackages[n]
		if p == "" {
			p = n
		}
		if !seen[p] {
			seen[p] = true
			pkgs = append(pkgs, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("missing tools: %s; install them with: apt-get install %s",
		strings.Join(missing, ", "), strings.Join(pkgs, " "))
}
