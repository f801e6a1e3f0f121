package vxlan

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl/nltest"
	"github.com/weftnet/weft/subnet"
)

// syntheticPeers returns n peers in 198.18.0.0/15 with /28 subnets, each
// with its own VtepMAC, spread over 254 public addresses.
func syntheticPeers(n int) []subnet.Lease {
	out := make([]subnet.Lease, n)
	for i := range out {
		v := uint32(198)<<24 | uint32(18)<<16 | uint32(i+1)<<4
		sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 28)
		mac := fmt.Sprintf("02:%02x:%02x:%02x:00:01", byte(i>>16), byte(i>>8), byte(i))
		data, _ := json.Marshal(subnet.VXLANData{VNI: 1, VtepMAC: mac})
		out[i] = subnet.Lease{Subnet: sn, Attrs: subnet.LeaseAttrs{
			PublicIP:    netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + i%254)}),
			BackendType: Type, BackendData: data,
		}}
	}
	return out
}

// programPeers builds a fresh namespace, sets the backend up and times the
// first reconcile pass that programs n peers, then the idle pass after it.
func programPeers(t testing.TB, n int) (first, idle time.Duration) {
	lab := nltest.NewLab(t, 1)
	h := lab.Hosts[0]
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/15","SubnetLen":28,"Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	bb, err := New(backend.Config{
		Network: cfg, Options: json.RawMessage(`{"Type":"vxlan"}`),
		Ext:   backend.ExternalInterface{Name: h.ExtName, Index: h.ExtIndex, Addr: h.Addr, PublicIP: h.Addr, MTU: h.MTU},
		Netns: h.Handle, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	b := bb.(*Backend)
	defer func() {
		b.closeHandles()
	}()
	attrs, err := b.Setup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	peers := syntheticPeers(n)
	b.SetDesired(subnet.Lease{Subnet: netip.MustParsePrefix("198.18.0.0/28"), Attrs: attrs}, subnet.Pointers(peers))
	start := time.Now()
	b.loop.Reconcile()
	first = time.Since(start)
	start = time.Now()
	b.loop.Reconcile()
	idle = time.Since(start)
	if st := b.Status(); st.LastError != "" || st.PeersProgrammed != n {
		t.Fatalf("programmed %d of %d: %s", st.PeersProgrammed, n, st.LastError)
	}
	// Check the kernel really holds everything.
	idx := int(b.v4.linkIndex.Load())
	rs, _ := h.NL.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: backend.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	ns, _ := h.NL.NeighList(idx, netlink.FAMILY_V4)
	fs, _ := h.NL.NeighList(idx, unix.AF_BRIDGE)
	if len(rs) != n || len(ns) != n || len(fs) != n {
		t.Fatalf("kernel holds %d routes, %d neighbours, %d FDB entries; want %d each", len(rs), len(ns), len(fs), n)
	}
	return first, idle
}

// TestProgramPeers reports how long programming 1000 and 5000 peers into an
// empty namespace takes (run with -v to see the figures).
func TestProgramPeers(t *testing.T) {
	if testing.Short() {
		t.Skip("scale test skipped in -short mode")
	}
	nltest.RequireRoot(t)
	for _, n := range []int{1000, 5000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			first, idle := programPeers(t, n)
			t.Logf("programmed %d peers (%d routes + %d neighbours + %d FDB entries) in %v; idle re-check %v", n, n, n, n, first, idle)
			// Generous bound so a loaded CI box does not flake; the target is 1 s for 5000.
			if first > 10*time.Second {
				t.Errorf("programming %d peers took %v", n, first)
			}
		})
	}
}

// passBackend sets up a vxlan backend in a fresh namespace with n peers
// desired but not yet programmed.
func passBackend(b *testing.B, n int) *Backend {
	be, _ := passBackendOwn(b, n)
	return be
}

// passBackendOwn is passBackend that also returns the backend's own lease.
func passBackendOwn(b *testing.B, n int) (*Backend, subnet.Lease) {
	lab := nltest.NewLab(b, 1)
	h := lab.Hosts[0]
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/15","SubnetLen":28,"Backend":{"Type":"vxlan"}}`))
	if err != nil {
		b.Fatal(err)
	}
	bb, err := New(backend.Config{
		Network: cfg, Options: json.RawMessage(`{"Type":"vxlan"}`),
		Ext:   backend.ExternalInterface{Name: h.ExtName, Index: h.ExtIndex, Addr: h.Addr, PublicIP: h.Addr, MTU: h.MTU},
		Netns: h.Handle, Logger: testLogger(b),
	})
	if err != nil {
		b.Fatal(err)
	}
	be := bb.(*Backend)
	b.Cleanup(be.closeHandles)
	attrs, err := be.Setup(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	own := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.0.0/28"), Attrs: attrs}
	be.SetDesired(own, subnet.Pointers(syntheticPeers(n)))
	return be, own
}

func checkPass(b *testing.B, be *Backend, n int) {
	if st := be.Status(); st.LastError != "" || st.PeersProgrammed != n {
		b.Fatalf("programmed %d of %d: %s", st.PeersProgrammed, n, st.LastError)
	}
}

// BenchmarkIdlePass measures one reconcile pass over n peers that are all
// programmed already (the steady state): B/op is the garbage each periodic
// pass leaves for the GC.
func BenchmarkIdlePass(b *testing.B) {
	nltest.RequireRoot(b)
	for _, n := range []int{5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			be := passBackend(b, n)
			be.loop.Reconcile()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				be.loop.Reconcile()
			}
			b.StopTimer()
			checkPass(b, be, n)
		})
	}
}

// BenchmarkFullPass measures only the pass that programs n peers into an
// empty namespace (namespace set-up and checks are outside the timer and
// the allocation count, unlike BenchmarkProgramPeers).
func BenchmarkFullPass(b *testing.B) {
	nltest.RequireRoot(b)
	for _, n := range []int{5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				be := passBackend(b, n)
				b.StartTimer()
				be.loop.Reconcile()
				b.StopTimer()
				checkPass(b, be, n)
				b.StartTimer()
			}
		})
	}
}

func BenchmarkProgramPeers(b *testing.B) {
	nltest.RequireRoot(b)
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				first, _ := programPeers(b, n)
				total += first
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/program")
		})
	}
}

// BenchmarkJoinLeavePass measures the pass that adds n peers to n
// programmed ones, and the pass that removes them again: B/op is what a
// join or a leave allocates, most of which is live at its end, so it
// bounds how far a join or leave raises the heap.
func BenchmarkJoinLeavePass(b *testing.B) {
	nltest.RequireRoot(b)
	const n = 4000 // syntheticPeers has room for 8191
	for _, phase := range []string{"join", "leave"} {
		b.Run(phase, func(b *testing.B) {
			b.ReportAllocs()
			all := subnet.Pointers(syntheticPeers(2 * n))
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				be, own := passBackendOwn(b, n)
				be.loop.Reconcile()
				if phase == "leave" {
					be.SetDesired(own, all)
					be.loop.Reconcile()
					be.SetDesired(own, all[:n])
				} else {
					be.SetDesired(own, all)
				}
				b.StartTimer()
				be.loop.Reconcile()
				b.StopTimer()
				want := n
				if phase == "join" {
					want = 2 * n
				}
				checkPass(b, be, want)
				b.StartTimer()
			}
		})
	}
}
