package ipam

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	sub24 = netip.MustParsePrefix("198.18.5.0/24")
	gw24  = netip.MustParseAddr("198.18.5.1")
)

func openT(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func alloc(t *testing.T, s *Store, sub netip.Prefix, gw netip.Addr, o Owner) (Reservation, bool, error) {
	t.Helper()
	var r Reservation
	var existing bool
	err := s.Do(func(tx *Tx) error {
		var err error
		r, existing, err = tx.Allocate(sub, gw, o)
		return err
	})
	return r, existing, err
}

func TestAllocateSkipsReservedAndExhausts(t *testing.T) {
	s := openT(t)
	sub := netip.MustParsePrefix("198.18.9.0/29") // .0 net, .1 gw, .7 bcast
	gw := netip.MustParseAddr("198.18.9.1")
	got := map[netip.Addr]bool{}
	for i := 0; i < 5; i++ {
		r, existing, err := alloc(t, s, sub, gw, Owner{"weft", fmt.Sprint("c", i), "eth0"})
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if existing {
			t.Fatalf("allocation %d reported existing", i)
		}
		if r.IP == gw || r.IP == sub.Addr() || r.IP == netip.MustParseAddr("198.18.9.7") || !sub.Contains(r.IP) {
			t.Fatalf("allocation %d handed out %s", i, r.IP)
		}
		if got[r.IP] {
			t.Fatalf("duplicate %s", r.IP)
		}
		got[r.IP] = true
	}
	_, _, err := alloc(t, s, sub, gw, Owner{"weft", "c-extra", "eth0"})
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("sixth allocation: got %v, want ErrExhausted", err)
	}
	// Releasing one makes exactly that one available again.
	var freed netip.Addr
	if err := s.Do(func(tx *Tx) error {
		rel, remaining, err := tx.Release(Owner{"weft", "c2", "eth0"})
		if err != nil {
			return err
		}
		if len(rel) != 1 || remaining != 4 {
			return fmt.Errorf("release: got %v remaining %d", rel, remaining)
		}
		freed = rel[0].IP
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r, _, err := alloc(t, s, sub, gw, Owner{"weft", "c-extra", "eth0"})
	if err != nil || r.IP != freed {
		t.Fatalf("after release got %v %v, want %s", r.IP, err, freed)
	}
}

func TestGatewayNotFirstAddress(t *testing.T) {
	s := openT(t)
	sub := netip.MustParsePrefix("198.18.9.0/30") // usable .1 .2
	gw := netip.MustParseAddr("198.18.9.2")
	r, _, err := alloc(t, s, sub, gw, Owner{"weft", "a", "eth0"})
	if err != nil || r.IP != netip.MustParseAddr("198.18.9.1") {
		t.Fatalf("got %v %v", r.IP, err)
	}
	if _, _, err := alloc(t, s, sub, gw, Owner{"weft", "b", "eth0"}); !errors.Is(err, ErrExhausted) {
		t.Fatalf("got %v, want exhausted", err)
	}
}

func TestReAddReturnsSameAddress(t *testing.T) {
	s := openT(t)
	o := Owner{"weft", "ctr", "eth0"}
	r1, ex1, err := alloc(t, s, sub24, gw24, o)
	if err != nil || ex1 {
		t.Fatal(err, ex1)
	}
	alloc(t, s, sub24, gw24, Owner{"weft", "other", "eth0"})
	r2, ex2, err := alloc(t, s, sub24, gw24, o)
	if err != nil || !ex2 || r2.IP != r1.IP {
		t.Fatalf("re-add: %v existing=%v err=%v, want %s", r2.IP, ex2, err, r1.IP)
	}
	// A second interface of the same container is a different attachment.
	r3, ex3, err := alloc(t, s, sub24, gw24, Owner{"weft", "ctr", "net1"})
	if err != nil || ex3 || r3.IP == r1.IP {
		t.Fatalf("second ifname: %v %v %v", r3.IP, ex3, err)
	}
}

func TestRoundRobinDoesNotReuseAtOnce(t *testing.T) {
	s := openT(t)
	r1, _, _ := alloc(t, s, sub24, gw24, Owner{"weft", "a", "eth0"})
	s.Do(func(tx *Tx) error { _, _, err := tx.Release(Owner{"weft", "a", "eth0"}); return err })
	r2, _, _ := alloc(t, s, sub24, gw24, Owner{"weft", "b", "eth0"})
	if r1.IP == r2.IP {
		t.Fatalf("released address %s was reused immediately", r1.IP)
	}
}

func TestSubnetChange(t *testing.T) {
	s := openT(t)
	o := Owner{"weft", "ctr", "eth0"}
	old, _, err := alloc(t, s, sub24, gw24, o)
	if err != nil {
		t.Fatal(err)
	}
	newSub := netip.MustParsePrefix("198.18.6.0/24")
	newGW := netip.MustParseAddr("198.18.6.1")
	for i := 0; i < 20; i++ {
		r, _, err := alloc(t, s, newSub, newGW, Owner{"weft", fmt.Sprint("n", i), "eth0"})
		if err != nil || !newSub.Contains(r.IP) {
			t.Fatalf("new pod got %v %v", r.IP, err)
		}
	}
	// The same owner re-added after the change gets an address in the new subnet.
	r, existing, err := alloc(t, s, newSub, newGW, o)
	if err != nil || existing || !newSub.Contains(r.IP) {
		t.Fatalf("re-add after change: %v %v %v", r.IP, existing, err)
	}
	held, _ := s.Lookup(o)
	if len(held) != 2 {
		t.Fatalf("owner holds %v, want old and new", held)
	}
	// DEL releases both.
	s.Do(func(tx *Tx) error {
		rel, _, err := tx.Release(o)
		if len(rel) != 2 {
			t.Errorf("released %v", rel)
		}
		return err
	})
	if held, _ := s.Lookup(o); len(held) != 0 {
		t.Fatalf("still held: %v", held)
	}
	_ = old
}

func TestGCReleasesInvalid(t *testing.T) {
	s := openT(t)
	for i := 0; i < 10; i++ {
		if _, _, err := alloc(t, s, sub24, gw24, Owner{"weft", fmt.Sprint("c", i), "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
	valid := map[Owner]bool{{"weft", "c1", "eth0"}: true, {"weft", "c5", "eth0"}: true}
	var rel []Reservation
	var remaining int
	err := s.Do(func(tx *Tx) error {
		var err error
		rel, remaining, err = tx.ReleaseIf("weft", func(r Reservation) bool { return !valid[r.Owner] })
		return err
	})
	if err != nil || len(rel) != 8 || remaining != 2 {
		t.Fatalf("gc: released %d remaining %d err %v", len(rel), remaining, err)
	}
	all, _ := s.List()
	for _, r := range all {
		if !valid[r.Owner] {
			t.Errorf("leaked %v survived", r)
		}
	}
}

func TestCorruptFileKeepsAddressReserved(t *testing.T) {
	s := openT(t)
	sub := netip.MustParsePrefix("198.18.9.0/30")
	gw := netip.MustParseAddr("198.18.9.1")
	os.WriteFile(s.Dir()+"/198.18.9.2_0123456789abcdef", []byte("garbage"), 0o600)
	if _, _, err := alloc(t, s, sub, gw, Owner{"weft", "a", "eth0"}); !errors.Is(err, ErrExhausted) {
		t.Fatalf("got %v, want exhausted", err)
	}
}

func TestConcurrentGoroutines(t *testing.T) {
	s := openT(t)
	const n = 200
	ips := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each goroutine opens the store itself, like a separate process.
			st, err := Open(s.dataDir, nil)
			if err != nil {
				errs[i] = err
				return
			}
			errs[i] = st.Do(func(tx *Tx) error {
				r, _, err := tx.Allocate(sub24, gw24, Owner{"weft", fmt.Sprint("c", i), "eth0"})
				ips[i] = r.IP
				return err
			})
		}()
	}
	wg.Wait()
	checkDistinct(t, ips, errs)
}

func checkDistinct(t *testing.T, ips []netip.Addr, errs []error) {
	t.Helper()
	seen := map[netip.Addr]int{}
	for i, ip := range ips {
		if errs[i] != nil {
			t.Fatalf("allocation %d: %v", i, errs[i])
		}
		if j, dup := seen[ip]; dup {
			t.Fatalf("allocations %d and %d both got %s", j, i, ip)
		}
		seen[ip] = i
	}
}

// TestConcurrentProcesses runs allocations in separate processes (this test
// binary re-executed), the way concurrent CNI ADDs run, for two networks.
func TestConcurrentProcesses(t *testing.T) {
	if os.Getenv("WCN_IPAM_HELPER") != "" {
		return
	}
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dataDir := t.TempDir()
	const procs, each = 25, 4
	var wg sync.WaitGroup
	errs := make([]error, procs)
	for p := 0; p < procs; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAllocate$")
			// Half the processes allocate for a second network: one
			// store serves both.
			network := []string{"weft", "weft-second"}[p%2]
			cmd.Env = append(os.Environ(), "WCN_IPAM_HELPER="+dataDir, "WCN_IPAM_ID="+strconv.Itoa(p), "WCN_IPAM_N="+strconv.Itoa(each), "WCN_IPAM_NET="+network)
			out, err := cmd.CombinedOutput()
			if err != nil {
				errs[p] = fmt.Errorf("%v: %s", err, out)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	s, _ := Open(dataDir, nil)
	all, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != procs*each {
		t.Fatalf("%d reservations, want %d", len(all), procs*each)
	}
	owners := map[Owner]bool{}
	ips := map[netip.Addr]bool{}
	for _, r := range all {
		if owners[r.Owner] {
			t.Fatalf("owner %v twice", r.Owner)
		}
		if ips[r.IP] {
			t.Fatalf("address %s handed out twice", r.IP)
		}
		owners[r.Owner] = true
		ips[r.IP] = true
	}
}

func TestHelperAllocate(t *testing.T) {
	dir := os.Getenv("WCN_IPAM_HELPER")
	if dir == "" {
		t.Skip("helper for TestConcurrentProcesses")
	}
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(os.Getenv("WCN_IPAM_N"))
	for i := 0; i < n; i++ {
		err := s.Do(func(tx *Tx) error {
			_, _, err := tx.Allocate(sub24, gw24, Owner{os.Getenv("WCN_IPAM_NET"), os.Getenv("WCN_IPAM_ID") + "-" + strconv.Itoa(i), "eth0"})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkAllocateRelease measures one reservation and its release with
// 100 other addresses reserved, each in its own locked transaction.
func BenchmarkAllocateRelease(b *testing.B) {
	s, err := Open(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		s.Do(func(tx *Tx) error {
			_, _, err := tx.Allocate(sub24, gw24, Owner{"weft", fmt.Sprint("bg", i), "eth0"})
			return err
		})
	}
	o := Owner{"weft", "bench", "eth0"}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.Do(func(tx *Tx) error { _, _, err := tx.Allocate(sub24, gw24, o); return err }); err != nil {
			b.Fatal(err)
		}
		if err := s.Do(func(tx *Tx) error { _, _, err := tx.Release(o); return err }); err != nil {
			b.Fatal(err)
		}
	}
}

func TestHostLocalReservationsAvoided(t *testing.T) {
	root := t.TempDir()
	hl := root + "/networks"
	os.MkdirAll(hl+"/cbr0", 0o700)
	for _, ip := range []string{"198.18.9.2", "198.18.9.3", "198.18.9.4", "last_reserved_ip.0", "lock"} {
		os.WriteFile(hl+"/cbr0/"+ip, []byte("flannel-pod\neth0"), 0o600)
	}
	s, err := Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.HostLocalDir = hl
	sub := netip.MustParsePrefix("198.18.9.0/29") // usable .2-.6 with gateway .1
	gw := netip.MustParseAddr("198.18.9.1")
	var got []netip.Addr
	for i := 0; ; i++ {
		r, _, err := alloc(t, s, sub, gw, Owner{"weft", fmt.Sprint("c", i), "eth0"})
		if errors.Is(err, ErrExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r.IP)
	}
	if len(got) != 2 || got[0].String() != "198.18.9.5" || got[1].String() != "198.18.9.6" {
		t.Fatalf("got %v, want only .5 and .6", got)
	}
}

// TestNetworksShareOneStore: two networks (two configs on one node) that
// allocate from one subnet never get the same address, and releases, GC
// and the count of what is left stay within each network.
func TestNetworksShareOneStore(t *testing.T) {
	dataDir := t.TempDir()
	seen := map[netip.Addr]Owner{}
	for i := 0; i < 20; i++ {
		for _, network := range []string{"net-a", "net-b"} {
			// Each allocation opens the store afresh, like a plugin process.
			s, err := Open(dataDir, nil)
			if err != nil {
				t.Fatal(err)
			}
			o := Owner{network, fmt.Sprint("c", i), "eth0"}
			r, existing, err := alloc(t, s, sub24, gw24, o)
			if err != nil || existing {
				t.Fatalf("%v: %v existing=%v", o, err, existing)
			}
			if prev, dup := seen[r.IP]; dup {
				t.Fatalf("%v and %v both got %s", prev, o, r.IP)
			}
			seen[r.IP] = o
		}
	}
	s, _ := Open(dataDir, nil)
	// The same container ID and ifname in the other network is another
	// attachment.
	if held, _ := s.Lookup(Owner{"net-a", "c3", "eth0"}); len(held) != 1 || held[0].Network != "net-a" {
		t.Fatalf("lookup in net-a: %v", held)
	}
	s.Do(func(tx *Tx) error {
		rel, remaining, err := tx.Release(Owner{"net-a", "c3", "eth0"})
		if err != nil || len(rel) != 1 || remaining != 19 {
			t.Errorf("release in net-a: %v remaining %d err %v, want 1 released and 19 of net-a left", rel, remaining, err)
		}
		rel, remaining, err = tx.ReleaseIf("net-b", func(r Reservation) bool { return r.ContainerID != "c0" })
		if err != nil || len(rel) != 19 || remaining != 1 {
			t.Errorf("gc of net-b: released %d remaining %d err %v, want 19 and 1", len(rel), remaining, err)
		}
		for _, r := range rel {
			if r.Network != "net-b" {
				t.Errorf("gc of net-b released %v", r)
			}
		}
		return nil
	})
	if held, _ := s.Lookup(Owner{"net-b", "c3", "eth0"}); len(held) != 0 {
		t.Fatalf("net-b c3 survived its gc: %v", held)
	}
	if all, _ := s.List(); len(all) != 20 {
		t.Fatalf("%d reservations left, want 19 of net-a and 1 of net-b", len(all))
	}
}

// writeLegacy writes a reservation the way the per-network layout did:
// <dataDir>/<network>/<ip>_<hash of container ID and ifname>.
func writeLegacy(t *testing.T, dataDir, network, ip string, o Owner) {
	t.Helper()
	dir := filepath.Join(dataDir, network)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	data := fmt.Sprintf(`{"containerID":%q,"ifname":%q}`, o.ContainerID, o.IfName)
	if err := os.WriteFile(filepath.Join(dir, ip+"_"+legacyOwnerKey(o)), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, lockName), nil, 0o600)
}

// TestMigrateLegacyLayout: reservations of the per-network layout are
// moved into the shared store on upgrade, none is lost, none is handed out
// again, and two that held one address (the old bug) are both kept.
func TestMigrateLegacyLayout(t *testing.T) {
	dataDir := t.TempDir()
	sub := netip.MustParsePrefix("198.18.9.0/29") // .2-.6 usable with gateway .1
	gw := netip.MustParseAddr("198.18.9.1")
	writeLegacy(t, dataDir, "weft", "198.18.9.2", Owner{ContainerID: "c1", IfName: "eth0"})
	writeLegacy(t, dataDir, "weft", "198.18.9.3", Owner{ContainerID: "c2", IfName: "eth0"})
	writeLegacy(t, dataDir, "other", "198.18.9.3", Owner{ContainerID: "c3", IfName: "eth0"}) // the old bug
	writeLegacy(t, dataDir, "other", "198.18.9.4", Owner{ContainerID: "c4", IfName: "eth0"})
	os.WriteFile(filepath.Join(dataDir, "weft", lastName), []byte("198.18.9.3"), 0o600)
	os.WriteFile(filepath.Join(dataDir, "weft", legacyMasq), []byte(`{"network":"198.18.0.0/16","subnets":["198.18.9.0/24"]}`), 0o600)

	s, err := Open(dataDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Readers see the old reservations right after Open.
	for _, c := range []struct {
		o  Owner
		ip string
	}{{Owner{"weft", "c1", "eth0"}, "198.18.9.2"}, {Owner{"weft", "c2", "eth0"}, "198.18.9.3"}, {Owner{"other", "c3", "eth0"}, "198.18.9.3"}, {Owner{"other", "c4", "eth0"}, "198.18.9.4"}} {
		held, err := s.Lookup(c.o)
		if err != nil || len(held) != 1 || held[0].IP.String() != c.ip {
			t.Errorf("after migration %v holds %v (err %v), want %s", c.o, held, err, c.ip)
		}
	}
	for _, d := range []string{"weft", "other"} {
		if _, err := os.Stat(filepath.Join(dataDir, d)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("old directory %s left: %v", d, err)
		}
	}
	if b, err := os.ReadFile(s.MarkerPath("masq", "weft")); err != nil || !strings.Contains(string(b), "198.18.9.0/24") {
		t.Errorf("masquerade marker not moved: %q %v", b, err)
	}
	// Only .5 and .6 are free.
	var got []string
	for i := 0; ; i++ {
		r, _, err := alloc(t, s, sub, gw, Owner{"weft", fmt.Sprint("new", i), "eth0"})
		if errors.Is(err, ErrExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r.IP.String())
	}
	if !slices.Equal(got, []string{"198.18.9.5", "198.18.9.6"}) {
		t.Fatalf("after migration handed out %v, want only .5 and .6", got)
	}
	// DEL of a migrated attachment finds it; .3 stays taken while c3 holds it.
	s.Do(func(tx *Tx) error {
		rel, remaining, err := tx.Release(Owner{"weft", "c2", "eth0"})
		if err != nil || len(rel) != 1 || remaining != 3 {
			t.Errorf("release of migrated c2: %v remaining %d err %v", rel, remaining, err)
		}
		return nil
	})
	if _, _, err := alloc(t, s, sub, gw, Owner{"weft", "late", "eth0"}); !errors.Is(err, ErrExhausted) {
		t.Fatalf("198.18.9.3 was handed out while c3 of network other still holds it: %v", err)
	}
}

// TestMigrateResumesAfterCrash: a migration killed after writing the new
// file but before removing the old one leaves both; the next one keeps a
// single reservation.
func TestMigrateResumesAfterCrash(t *testing.T) {
	dataDir := t.TempDir()
	o := Owner{"weft", "c1", "eth0"}
	writeLegacy(t, dataDir, "weft", "198.18.9.2", o)
	s := &Store{dataDir: dataDir, dir: filepath.Join(dataDir, StoreDir), log: slog.New(slog.DiscardHandler)}
	os.MkdirAll(s.dir, 0o700)
	if err := s.writeReservation(Reservation{Owner: o, IP: netip.MustParseAddr("198.18.9.2")}); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dataDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	all, _ := s.List()
	if len(all) != 1 || all[0].Owner != o {
		t.Fatalf("after the resumed migration: %v, want one reservation of %v", all, o)
	}
}

// TestMigrateWaitsForOldPlugin: an older plugin that holds its network's
// lock (an ADD in flight during the upgrade) finishes first, and its
// reservation is migrated too.
func TestMigrateWaitsForOldPlugin(t *testing.T) {
	dataDir := t.TempDir()
	writeLegacy(t, dataDir, "weft", "198.18.9.2", Owner{ContainerID: "c1", IfName: "eth0"})
	unlock, err := flock(filepath.Join(dataDir, "weft", lockName), false)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *Store)
	go func() {
		s, err := Open(dataDir, nil)
		if err != nil {
			t.Error(err)
		}
		done <- s
	}()
	select {
	case <-done:
		t.Fatal("migration did not wait for the old plugin's lock")
	case <-time.After(100 * time.Millisecond):
	}
	writeLegacy(t, dataDir, "weft", "198.18.9.3", Owner{ContainerID: "c2", IfName: "eth0"}) // the old plugin's ADD
	unlock()
	s := <-done
	if s == nil {
		t.FailNow()
	}
	if all, _ := s.List(); len(all) != 2 {
		t.Fatalf("after migration: %v, want both reservations", all)
	}
}
