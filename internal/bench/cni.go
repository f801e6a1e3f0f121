package bench

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/weftnet/weft/cni-plugin/cnibench"
	"github.com/weftnet/weft/cni-plugin/cnitest"
	"github.com/weftnet/weft/internal/lab"
)

// MeasureCNI times ADD and DEL through libcni against host h (weftd must
// be running there): seq pods one at a time, then par pods parallel at a
// time. The plugin binary "weft" is taken from binDir. Pod namespaces are
// named nsPrefix plus random digits and removed afterwards.
func MeasureCNI(ctx context.Context, h *lab.Host, binDir, nsPrefix string, seq, par, parallel int) CNI {
	c := CNI{Parallel: parallel}
	conf := []byte(h.CNIConfig())
	var err error
	if c.Floor, err = pluginExecFloor(ctx, h.NS, binDir, 20); err != nil {
		c.Err = err
		return c
	}
	c.Seq, err = cnibench.Run(ctx, cnibench.Config{HostNS: h.NS, PluginDir: binDir, ConfList: conf, Pods: seq, Parallel: 1, NSPrefix: nsPrefix})
	if err != nil {
		c.Err = fmt.Errorf("sequential: %w", err)
		return c
	}
	c.Par, err = cnibench.Run(ctx, cnibench.Config{HostNS: h.NS, PluginDir: binDir, ConfList: conf, Pods: par, Parallel: parallel, NSPrefix: nsPrefix})
	if err != nil {
		c.Err = fmt.Errorf("parallel: %w", err)
	}
	return c
}

// pluginExecFloor is the median latency of n VERSION calls to the weft
// plugin through the same libcni exec path the ADD/DEL calls take.
func pluginExecFloor(ctx context.Context, hostNS, binDir string, n int) (time.Duration, error) {
	cache, err := os.MkdirTemp("", "weft-bench-cni-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(cache)
	cni := cnitest.NewCNI(hostNS, binDir, cache)
	ds := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		if _, err := cni.GetVersionInfo(ctx, "weft"); err != nil {
			return 0, fmt.Errorf("plugin VERSION: %w", err)
		}
		ds = append(ds, time.Since(t0))
	}
	return Median(ds), nil
}
