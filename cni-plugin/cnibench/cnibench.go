// Package cnibench measures the ADD and DEL latency of a CNI network list
// as a container runtime sees it: through libcni, one plugin process per
// call, with the plugins running in a given host namespace (see
// cnitest.HostExec). Pod namespaces are created before and removed after
// the timed calls.
package cnibench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/weftnet/weft/cni-plugin/cnitest"
)

// Config says what to measure.
type Config struct {
	HostNS    string // path of the namespace the plugins run in, e.g. /var/run/netns/x
	PluginDir string // directory holding the plugin binaries
	ConfList  []byte // the network configuration list (JSON)
	Pods      int    // number of pods; default 100
	Parallel  int    // calls in flight at once; default 1 (sequential)
	NSPrefix  string // prefix of the pod namespace names; default "wcn-b"
}

// Result holds one latency per pod and command.
type Result struct {
	Add, Del []time.Duration
}

// Stats summarises latencies.
type Stats struct {
	N             int
	P50, P99, Max time.Duration
}

// Summarize computes the percentiles of ds (nearest rank).
func Summarize(ds []time.Duration) Stats {
	if len(ds) == 0 {
		return Stats{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.999999) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return Stats{N: len(s), P50: rank(0.50), P99: rank(0.99), Max: s[len(s)-1]}
}

func (s Stats) String() string {
	return fmt.Sprintf("n=%d p50=%v p99=%v max=%v", s.N, s.P50.Round(10*time.Microsecond), s.P99.Round(10*time.Microsecond), s.Max.Round(10*time.Microsecond))
}

// String renders both commands' statistics.
func (r Result) String() string {
	return fmt.Sprintf("ADD %v; DEL %v", Summarize(r.Add), Summarize(r.Del))
}

// Run creates cfg.Pods namespaces, adds every pod to the network, then
// deletes every attachment, cfg.Parallel calls at a time, and returns the
// latency of each call. Any failed call fails the run.
func Run(ctx context.Context, cfg Config) (res Result, err error) {
	if cfg.Pods <= 0 {
		cfg.Pods = 100
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 1
	}
	if cfg.NSPrefix == "" {
		cfg.NSPrefix = "wcn-b"
	}
	list, err := libcni.NetworkConfFromBytes(cfg.ConfList)
	if err != nil {
		return Result{}, fmt.Errorf("parse conflist: %w", err)
	}
	cache, err := os.MkdirTemp("", "wcn-bench-cache-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(cache)
	cni := cnitest.NewCNI(cfg.HostNS, cfg.PluginDir, cache)

	names := make([]string, 0, cfg.Pods)
	defer func() {
		for _, n := range names {
			if derr := cnitest.DeleteNS(n); derr != nil && err == nil {
				err = derr
			}
		}
	}()
	rts := make([]*libcni.RuntimeConf, cfg.Pods)
	for i := range rts {
		name := cnitest.RandName(cfg.NSPrefix, 8)
		path, err := cnitest.NewNS(name)
		if err != nil {
			return Result{}, err
		}
		names = append(names, name)
		rts[i] = &libcni.RuntimeConf{ContainerID: "bench-" + name, NetNS: path, IfName: "eth0"}
	}

	res.Add, err = timeAll(cfg.Parallel, rts, func(rt *libcni.RuntimeConf) error {
		_, err := cni.AddNetworkList(ctx, list, rt)
		return err
	})
	if err != nil {
		// Best effort: leave no attachments behind.
		for _, rt := range rts {
			cni.DelNetworkList(ctx, list, rt)
		}
		return res, fmt.Errorf("ADD: %w", err)
	}
	res.Del, err = timeAll(cfg.Parallel, rts, func(rt *libcni.RuntimeConf) error {
		return cni.DelNetworkList(ctx, list, rt)
	})
	if err != nil {
		return res, fmt.Errorf("DEL: %w", err)
	}
	return res, nil
}

func timeAll(parallel int, rts []*libcni.RuntimeConf, op func(*libcni.RuntimeConf) error) ([]time.Duration, error) {
	lat := make([]time.Duration, len(rts))
	errs := make([]error, len(rts))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, rt := range rts {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			start := time.Now()
			errs[i] = op(rt)
			lat[i] = time.Since(start)
		}()
	}
	wg.Wait()
	return lat, errors.Join(errs...)
}
