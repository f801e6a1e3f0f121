// Command weft-lab runs weft's virtual multi-host lab (see package
// github.com/weftnet/weft/internal/lab).
//
//	weft-lab demo [--hosts N] [--backend vxlan|host-gw|udp] [--dual-stack] [--keep] [--bin-dir DIR]
//	weft-lab down [NAME...]
//	weft-lab bench [--quick] [--only SECTIONS] [--out FILE] [--bin-dir DIR]
//	weft-lab etcd --listen URL --data-dir DIR
//
// demo brings up a lab, runs weftd on every host, attaches two pods per host
// with the weft CNI plugin and prints the leases and a ping matrix. down
// removes labs kept with --keep. bench runs package internal/bench (data path,
// control plane and CNI figures). etcd is the etcd server process the lab runs inside
// its switch namespace; it is not meant to be run by hand.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=..." (see the
// Makefile).
var version = "dev"

// errUsage marks a command-line mistake: exit status 2.
var errUsage = errors.New("usage")

const usage = `usage:
  weft-lab demo [--hosts N] [--backend vxlan|host-gw|udp] [--dual-stack] [--keep] [--bin-dir DIR]
  weft-lab down [NAME...]        remove labs: the named ones, or every kept or orphaned one
  weft-lab bench [--quick] [--only SECTIONS] [--out FILE] [--bin-dir DIR]
  weft-lab etcd --listen URL --data-dir DIR   (run by the lab inside its switch namespace)
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "etcd":
		err = runEtcd(ctx, args[1:], stderr)
	case "demo":
		err = runDemo(ctx, args[1:], stdout, stderr)
	case "down":
		err = runDown(args[1:], stdout)
	case "bench":
		err = runBench(ctx, args[1:], stdout, stderr)
	case "probe":
		err = runProbe(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		err = fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "weft-lab: %v\n%s", err, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "weft-lab: %v\n", err)
		return 1
	}
}
