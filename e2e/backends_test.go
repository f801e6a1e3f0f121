package e2e_test

import (
	"context"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
)

// TestBackendsMesh brings up a small lab on each non-vxlan backend and
// expects every pod to reach every other pod (vxlan is covered at length by
// TestVXLAN).
func TestBackendsMesh(t *testing.T) {
	needBins(t, "weft-lab", "weftd", "weft")
	for _, tc := range []struct {
		backend string
		mtu     int
	}{
		{"host-gw", lab.UnderlayMTU},
		{"udp", lab.UnderlayMTU - 28},
	} {
		t.Run(tc.backend, func(t *testing.T) {
			l := newLab(t, lab.Options{Hosts: 2, Backend: tc.backend, Logger: testLogger(t)})
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			startAll(ctx, t, l)
			for _, h := range l.Hosts {
				if env := mustEnv(t, h); env.MTU != tc.mtu {
					t.Errorf("%s: FLANNEL_MTU=%d, want %d", h.Name, env.MTU, tc.mtu)
				}
				if _, err := h.AddPod(ctx, ""); err != nil {
					t.Fatal(err)
				}
			}
			m, err := l.WaitConnectivity(ctx, 20*time.Second)
			t.Logf("ping matrix:\n%s", m)
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
