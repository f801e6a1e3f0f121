package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

var (
	sub64 = netip.MustParsePrefix("2001:db8:100:59::/64")
	gw64  = netip.MustParseAddr("2001:db8:100:59::1")
)

// TestAllocate6SkipsReservedAndExhausts: a small IPv6 subnet hands out
// every address but the subnet's own (the subnet-router anycast) and the
// gateway, then reports exhaustion; a release frees exactly that address.
func TestAllocate6SkipsReservedAndExhausts(t *testing.T) {
	s := openT(t)
	sub := netip.MustParsePrefix("2001:db8:100:59::/124") // ::0 anycast, ::1 gateway, ::2-::f usable
	gw := netip.MustParseAddr("2001:db8:100:59::1")
	got := map[netip.Addr]bool{}
	for i := 0; i < 14; i++ {
		r, existing, err := alloc(t, s, sub, gw, Owner{"weft", fmt.Sprint("c", i), "eth0"})
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if existing || r.IP == gw || r.IP == sub.Addr() || !sub.Contains(r.IP) || got[r.IP] {
			t.Fatalf("allocation %d handed out %s (existing=%v)", i, r.IP, existing)
		}
		got[r.IP] = true
	}
	if !got[netip.MustParseAddr("2001:db8:100:59::f")] {
		t.Fatalf("the all-ones address of a /124 is an ordinary IPv6 address and should be handed out: %v", got)
	}
	_, _, err := alloc(t, s, sub, gw, Owner{"weft", "extra", "eth0"})
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("15th allocation: got %v, want ErrExhausted", err)
	}
	var freed netip.Addr
	s.Do(func(tx *Tx) error {
		rel, _, err := tx.Release(Owner{"weft", "c7", "eth0"})
		if err != nil || len(rel) != 1 {
			t.Fatalf("release: %v %v", rel, err)
		}
		freed = rel[0].IP
		return nil
	})
	r, _, err := alloc(t, s, sub, gw, Owner{"weft", "extra", "eth0"})
	if err != nil || r.IP != freed {
		t.Fatalf("after release got %v %v, want %s", r.IP, err, freed)
	}
}

// TestAllocate6Sequential: a /64 hands out addresses in order from the
// subnet's start, and the IPv6 hint does not disturb the IPv4 one.
func TestAllocate6Sequential(t *testing.T) {
	s := openT(t)
	for i, want := range []string{"2001:db8:100:59::2", "2001:db8:100:59::3", "2001:db8:100:59::4"} {
		r, _, err := alloc(t, s, sub64, gw64, Owner{"weft", fmt.Sprint("c", i), "eth0"})
		if err != nil || r.IP.String() != want {
			t.Fatalf("allocation %d: got %v %v, want %s", i, r.IP, err, want)
		}
		r4, _, err := alloc(t, s, sub24, gw24, Owner{"weft", fmt.Sprint("c", i), "eth0"})
		if want4 := fmt.Sprint("198.18.5.", i+2); err != nil || r4.IP.String() != want4 {
			t.Fatalf("IPv4 allocation %d: got %v %v, want %s", i, r4.IP, err, want4)
		}
	}
}

// TestAllocate6WrapsPastReservedAnycast: the allocator skips the RFC 2526
// reserved anycast addresses, and at the end of a /64 wraps to the start,
// past the subnet-router anycast and the gateway, without walking the 2^64
// addresses in between.
func TestAllocate6WrapsPastReservedAnycast(t *testing.T) {
	s := openT(t)
	start := time.Now()
	var got []string
	for i, hint := range []string{"2001:db8:100:59:fdff:ffff:ffff:ff7e", "", "2001:db8:100:59:ffff:ffff:ffff:fffe", ""} {
		if hint != "" {
			if err := os.WriteFile(filepath.Join(s.Dir(), lastName6), []byte(hint), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		r, _, err := alloc(t, s, sub64, gw64, Owner{"weft", fmt.Sprint("c", i), "eth0"})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r.IP.String())
	}
	want := []string{
		"2001:db8:100:59:fdff:ffff:ffff:ff7f", // the last before the reserved range
		"2001:db8:100:59:fe00::",              // the first after it
		"2001:db8:100:59:ffff:ffff:ffff:ffff", // the end of the subnet
		"2001:db8:100:59::2",                  // wrapped around
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for _, c := range []struct {
		ip       string
		reserved bool
	}{
		{"2001:db8:100:59:fdff:ffff:ffff:ff7f", false},
		{"2001:db8:100:59:fdff:ffff:ffff:ff80", true},
		{"2001:db8:100:59:fdff:ffff:ffff:ffff", true},
		{"2001:db8:100:59:ffff:ffff:ffff:ffff", false},
	} {
		if got := reservedAnycast6(sub64, netip.MustParseAddr(c.ip)); got != c.reserved {
			t.Errorf("reservedAnycast6(%s) = %v, want %v", c.ip, got, c.reserved)
		}
	}
	if reservedAnycast6(netip.MustParsePrefix("2001:db8::/120"), netip.MustParseAddr("2001:db8::ff")) {
		t.Error("a /120 has no 64-bit interface identifiers, so no reserved anycast range")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("two allocations took %v: the search is not bounded", d)
	}
}

// TestAllocate6BoundedByReservations: with many addresses reserved the
// search costs one step per reservation, and a full small subnet is
// reported as exhausted after one round.
func TestAllocate6BoundedByReservations(t *testing.T) {
	s := openT(t)
	// 500 addresses reserved from ::2 on, written directly.
	ip := gw64.Next()
	for i := 0; i < 500; i++ {
		if err := s.writeReservation(Reservation{Owner: Owner{"weft", fmt.Sprint("pre", i), "eth0"}, IP: ip}); err != nil {
			t.Fatal(err)
		}
		ip = ip.Next()
	}
	r, _, err := alloc(t, s, sub64, gw64, Owner{"weft", "new", "eth0"})
	if err != nil || r.IP != ip {
		t.Fatalf("got %v %v, want %s, the first address after the reserved run", r.IP, err, ip)
	}
}

// TestDualStackOwner: one attachment holds an address of each family;
// re-adding returns both, and DEL releases both.
func TestDualStackOwner(t *testing.T) {
	s := openT(t)
	o := Owner{"weft", "ctr", "eth0"}
	var r4, r6 Reservation
	err := s.Do(func(tx *Tx) error {
		var err error
		if r4, _, err = tx.Allocate(sub24, gw24, o); err != nil {
			return err
		}
		r6, _, err = tx.Allocate(sub64, gw64, o)
		return err
	})
	if err != nil || !r4.IP.Is4() || !r6.IP.Is6() {
		t.Fatalf("dual allocation: %v %v %v", r4.IP, r6.IP, err)
	}
	again, existing, err := alloc(t, s, sub64, gw64, o)
	if err != nil || !existing || again.IP != r6.IP {
		t.Fatalf("re-add: %v existing=%v %v, want %s", again.IP, existing, err, r6.IP)
	}
	held, err := s.Lookup(o)
	if err != nil || len(held) != 2 {
		t.Fatalf("lookup: %v %v, want both families", held, err)
	}
	s.Do(func(tx *Tx) error {
		rel, remaining, err := tx.Release(o)
		if err != nil || len(rel) != 2 || remaining != 0 {
			t.Errorf("release: %v remaining %d %v, want both released", rel, remaining, err)
		}
		return nil
	})
	if all, _ := s.List(); len(all) != 0 {
		t.Fatalf("left after release: %v", all)
	}
}

// TestAllocate6RejectsBadSubnets: subnets too small to hold a gateway and
// a pod, and IPv4-mapped ones, are refused with a message naming them.
func TestAllocate6RejectsBadSubnets(t *testing.T) {
	s := openT(t)
	for _, sub := range []string{"2001:db8::/127", "2001:db8::/128", "::ffff:198.18.5.0/120"} {
		p := netip.MustParsePrefix(sub)
		_, _, err := alloc(t, s, p, p.Addr().Next(), Owner{"weft", "c", "eth0"})
		if err == nil || errors.Is(err, ErrExhausted) {
			t.Errorf("%s: got %v, want a refusal", sub, err)
		}
	}
}

// TestConcurrentDualStack: concurrent transactions, each opening the store
// like a separate plugin process, reserve one address per family without
// handing one out twice.
func TestConcurrentDualStack(t *testing.T) {
	s := openT(t)
	const n = 100
	ips4 := make([]netip.Addr, n)
	ips6 := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := Open(s.dataDir, nil)
			if err != nil {
				errs[i] = err
				return
			}
			o := Owner{"weft", fmt.Sprint("c", i), "eth0"}
			errs[i] = st.Do(func(tx *Tx) error {
				r4, _, err := tx.Allocate(sub24, gw24, o)
				if err != nil {
					return err
				}
				r6, _, err := tx.Allocate(sub64, gw64, o)
				ips4[i], ips6[i] = r4.IP, r6.IP
				return err
			})
		}()
	}
	wg.Wait()
	checkDistinct(t, ips4, errs)
	checkDistinct(t, ips6, errs)
	for i, ip := range ips6 {
		if !sub64.Contains(ip) || ip == gw64 || ip == sub64.Addr() {
			t.Fatalf("pod %d got %s", i, ip)
		}
	}
	if all, _ := s.List(); len(all) != 2*n {
		t.Fatalf("%d reservations, want %d", len(all), 2*n)
	}
}

// TestConcurrentExhaustion6: more concurrent claims than a /124 holds give
// every address exactly once and ErrExhausted to the rest.
func TestConcurrentExhaustion6(t *testing.T) {
	s := openT(t)
	sub := netip.MustParsePrefix("2001:db8:100:59::/124")
	gw := netip.MustParseAddr("2001:db8:100:59::1")
	const n = 30
	ips := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := Open(s.dataDir, nil)
			if err != nil {
				errs[i] = err
				return
			}
			errs[i] = st.Do(func(tx *Tx) error {
				r, _, err := tx.Allocate(sub, gw, Owner{"weft", fmt.Sprint("c", i), "eth0"})
				ips[i] = r.IP
				return err
			})
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	exhausted := 0
	for i := range ips {
		switch {
		case errors.Is(errs[i], ErrExhausted):
			exhausted++
		case errs[i] != nil:
			t.Fatalf("claim %d: %v", i, errs[i])
		case seen[ips[i]]:
			t.Fatalf("%s handed out twice", ips[i])
		default:
			seen[ips[i]] = true
		}
	}
	if len(seen) != 14 || exhausted != n-14 {
		t.Fatalf("%d addresses handed out and %d exhausted, want 14 and %d", len(seen), exhausted, n-14)
	}
}
