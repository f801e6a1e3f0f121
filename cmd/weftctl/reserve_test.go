package main

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/backends"
	"github.com/weftnet/weft/subnet"
)

// TestReservationNeverInvalid: what weftctl reserve writes is, to every
// weftd of the network, neither a peer to program nor a lease to refuse
// (weft_leases_invalid, which the docs say to alert on, stays 0), whatever
// the backend. In a udp network, whose leases carry no backend data, an
// untaken reservation looks like a taken one: the peer it names is routed
// to, and still nothing is refused.
func TestReservationNeverInvalid(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw", "udp"} {
		t.Run(backend, func(t *testing.T) {
			h, _, reg := withEtcd(t)
			ctx := context.Background()
			if err := reg.PutConfig(ctx, []byte(`{"Network":"198.18.0.0/16","Backend":{"Type":"`+backend+`"}}`)); err != nil {
				t.Fatal(err)
			}
			h.runOK("reserve", "198.18.42.0/24", "--public-ip", "192.0.2.42")
			cfg, err := reg.Config(ctx)
			if err != nil {
				t.Fatal(err)
			}
			snap, err := reg.Leases(ctx)
			if err != nil || len(snap.Leases) != 1 || !snap.Leases[0].Reservation || len(snap.Invalid) != 0 {
				t.Fatalf("leases after reserve: %+v, %v", snap, err)
			}
			// A running host of the network, as weftd sees the leases.
			own := subnet.Lease{Subnet: netip.MustParsePrefix("198.18.7.0/24"), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.11"),
				BackendType: mustBackend(t, backend).LeaseType}}
			peers, refused := subnet.FilterPeers(cfg, mustBackend(t, backend).PeerRules(), own, snap.Leases, nil)
			if len(refused) != 0 {
				t.Fatalf("weftd refuses the reservation: %+v", refused)
			}
			if wantPeers := map[bool]int{true: 1, false: 0}[backend == "udp"]; len(peers) != wantPeers {
				t.Fatalf("the reservation is %d peer(s), want %d: %+v", len(peers), wantPeers, peers)
			}
		})
	}
}

// TestReserveRefusals: the network's first subnet (never leased) and a
// prefix without a network config are refused, and nothing is written.
func TestReserveRefusals(t *testing.T) {
	h, _, reg := withEtcd(t)
	r := h.runFail(1, "reserve", "198.18.0.0/24", "--public-ip", "192.0.2.42")
	if !strings.Contains(r.stderr, "no network config") {
		t.Fatalf("reserve without a network config: %q", r.stderr)
	}
	if err := reg.PutConfig(context.Background(), []byte(netConfig)); err != nil {
		t.Fatal(err)
	}
	r = h.runFail(1, "reserve", "198.18.0.0/24", "--public-ip", "192.0.2.42")
	if !strings.Contains(r.stderr, "first subnet of network 198.18.0.0/16 is never leased") {
		t.Fatalf("reserve of the first subnet: %q", r.stderr)
	}
	r = h.runFail(1, "--etcd-prefix=/wrong", "reserve", "198.18.1.0/24", "--public-ip", "192.0.2.42")
	if !strings.Contains(r.stderr, "/wrong/config") {
		t.Fatalf("reserve under a prefix without config: %q", r.stderr)
	}
	if out := h.runOK("leases", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("a refused reservation was written: %s", out)
	}
	h.runOK("reserve", "198.18.1.0/24", "--public-ip", "192.0.2.42")
}

func mustBackend(t *testing.T, typ string) backends.Descriptor {
	t.Helper()
	d, ok := backends.Lookup(typ)
	if !ok {
		t.Fatalf("no backend %q", typ)
	}
	return d
}
