package vxlan

import (
	"fmt"
	"math/rand"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nlfake"
)

// flakyNeighs fails the writes of the entries whose IP or MAC is in
// failing, the same way for every sync that uses it, and counts the reads
// of entries in walks, if not nil.
type flakyNeighs struct {
	*nlfake.NS
	failing map[string]bool
	walks   *int
}

func (f flakyNeighs) NeighWalk(linkIndex int, family nl.Family, start func(), fn func(n *nl.Neigh)) error {
	if f.walks != nil {
		*f.walks++
	}
	return f.NS.NeighWalk(linkIndex, family, start, fn)
}

func (f flakyNeighs) fails(ip netip.Addr, mac net.HardwareAddr) bool {
	return f.failing[ip.String()] || f.failing[mac.String()]
}

func (f flakyNeighs) SetNeighs(specs []nl.NeighSpec) []error {
	return nlfake.WriteFailing(specs, func(s nl.NeighSpec) bool { return f.fails(s.IP, s.MAC) }, f.NS.SetNeighs)
}

func (f flakyNeighs) DelNeigh(n *nl.Neigh) error {
	if f.fails(n.IP, n.HardwareAddr()) {
		return unix.EBUSY
	}
	return f.NS.DelNeigh(n)
}

// TestEntriesMatchReference drives the neighbour and FDB sync and the
// reference one (the implementation before this one) through the same
// random passes, each on its own fake device with the same drift and the
// same failing writes, and checks that every pass reports the same (failed
// keys, repairs, errors) and leaves the same entries: duplicate keys in
// the wanted set, entries changed, added (permanent or not) and deleted
// behind the backend's back, foreign FDB remotes, more entries than one
// SetNeighs chunk. In its trusted variant every sync but those after drift
// (which the kernel would announce with an event, or which a full pass
// repairs) is a trusted one, which must not read the device once a sync
// succeeded.
func TestEntriesMatchReference(t *testing.T) {
	t.Run("full", func(t *testing.T) { entriesMatchReference(t, false) })
	t.Run("trusted", func(t *testing.T) { entriesMatchReference(t, true) })
}

func entriesMatchReference(t *testing.T, trustedPasses bool) {
	rng := rand.New(rand.NewSource(17))
	walks := 0
	failing := map[string]bool{}
	newSide := func(walks *int) (*vtep, *nlfake.NS, int) {
		f := nlfake.New()
		if err := f.AddLink(nl.Link{Name: "weft.1", VXLAN: &nl.VXLAN{VNI: 1}}); err != nil {
			t.Fatal(err)
		}
		l, _ := f.LinkByName("weft.1")
		return &vtep{b: &Backend{k: flakyNeighs{f, failing, walks}}, name: "weft.1"}, f, l.Index
	}
	va, fa, idxA := newSide(&walks)
	vb, fb, idxB := newSide(nil)
	if idxA != idxB {
		t.Fatal("the two fakes number devices differently")
	}
	idx := idxA
	type kind struct {
		name      string
		cur       *peerEntries
		refNeigh  *refPeerEntries[netip.Addr, string]
		refFDB    *refPeerEntries[string, netip.Addr]
		family    nl.Family
		neighbour bool
	}
	kinds := []kind{
		{name: "neighbour", cur: neighEntries(nl.FamilyV4), refNeigh: refNeighEntries(nl.FamilyV4), family: nl.FamilyV4, neighbour: true},
		{name: "FDB", cur: fdbEntries(), refFDB: refFdbEntries(), family: nl.FamilyBridge},
	}

	const peers = 600
	ipOf := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(i >> 4), byte(i << 4)}) }
	macOf := func(i int) mac { return mac{2, 0, 0, 0, byte(i >> 8), byte(i)} }
	hwOf := func(i int) net.HardwareAddr { m := macOf(i); return net.HardwareAddr(m[:]) }
	remoteOf := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}) }
	both := func(fn func(f *nlfake.NS)) { fn(fa); fn(fb) }
	set := func(s nl.NeighSpec) { both(func(f *nlfake.NS) { f.SetNeighs([]nl.NeighSpec{s}) }) }

	var want []entry // neighbour: ip -> mac; FDB: the same peers, mac -> remote
	remotes := map[int]int{}
	untouched := 0
	for step := range 1500 {
		trusted := trustedPasses
		switch rng.Intn(6) {
		case 0: // a whole new random set, sometimes more than a chunk
			want = want[:0]
			frac := 1 + rng.Intn(5)
			for i := range peers {
				if rng.Intn(frac) == 0 {
					want = append(want, entryOf(ipOf(i), macOf(i)))
					remotes[i] = rng.Intn(5)
				}
			}
		case 1: // drift
			trusted = false
			for range 6 {
				i := rng.Intn(peers)
				switch rng.Intn(7) {
				case 0: // a wrong MAC
					set(nl.NeighSpec{LinkIndex: idx, Family: nl.FamilyV4, State: unix.NUD_PERMANENT, Type: unix.RTN_UNICAST, IP: ipOf(i), MAC: hwOf(i + 1)})
				case 1: // learnt, not permanent
					set(nl.NeighSpec{LinkIndex: idx, Family: nl.FamilyV4, State: unix.NUD_REACHABLE, Type: unix.RTN_UNICAST, IP: ipOf(i), MAC: hwOf(i)})
				case 2: // deleted
					both(func(f *nlfake.NS) {
						n := nl.Neigh{LinkIndex: idx, Family: nl.FamilyV4, IP: ipOf(i)}
						_ = f.DelNeigh(&n)
					})
				case 3: // a wrong remote
					set(nl.NeighSpec{LinkIndex: idx, Family: nl.FamilyBridge, State: unix.NUD_PERMANENT, Flags: unix.NTF_SELF, IP: remoteOf(200), MAC: hwOf(i)})
				case 4: // a flooding entry
					both(func(f *nlfake.NS) { f.AppendFDB(idx, make(net.HardwareAddr, 6), remoteOf(i)) })
				case 5: // FDB entry deleted
					both(func(f *nlfake.NS) {
						n := nl.Neigh{LinkIndex: idx, Family: nl.FamilyBridge, IP: remoteOf(remotes[i])}
						n.SetHardwareAddr(hwOf(i))
						_ = f.DelNeigh(&n)
					})
				case 6: // a peer moves to another remote or MAC
					for k := range want {
						if rng.Intn(10) == 0 {
							remotes[int(want[k].mac[4])<<8|int(want[k].mac[5])] = rng.Intn(5)
						}
						if rng.Intn(20) == 0 {
							want[k].mac[3] ^= 1
						}
					}
				}
			}
		case 2: // duplicate keys: a later entry for the same key wins
			for k := range want {
				if rng.Intn(16) == 0 {
					d := want[k]
					d.mac[3] ^= 2
					want = append(want, d)
				}
			}
		case 3: // writes to some entries fail
			clear(failing)
			for range rng.Intn(4) {
				if i := rng.Intn(peers); rng.Intn(2) == 0 {
					failing[ipOf(i).String()] = true
				} else {
					failing[hwOf(i).String()] = true
				}
			}
		case 4, 5: // nothing
		}
		for _, k := range kinds {
			known := trusted && k.cur.knownLink == idx
			before := walks
			var cur []entry
			var got, ref string
			if k.neighbour {
				m := map[netip.Addr]string{}
				for _, w := range want {
					cur = append(cur, w)
					m[w.addr()] = string(w.mac[:])
				}
				failed, rep, err := k.cur.sync(va, idx, cur, trusted)
				got = describeSync(failed, rep, err)
				rf, rrep, rerr := k.refNeigh.sync(vb, idx, m)
				rfailed := map[entry]error{}
				for ip, err := range rf {
					rfailed[entryOf(ip, mac{})] = err
				}
				ref = describeSync(rfailed, rrep, rerr)
			} else {
				m := map[string]netip.Addr{}
				for _, w := range want {
					r := remoteOf(remotes[int(w.mac[4])<<8|int(w.mac[5])])
					cur = append(cur, entryOf(r, w.mac))
					m[string(w.mac[:])] = r
				}
				failed, rep, err := k.cur.sync(va, idx, cur, trusted)
				got = describeSync(failed, rep, err)
				rf, rrep, rerr := k.refFDB.sync(vb, idx, m)
				rfailed := map[entry]error{}
				for m, err := range rf {
					rfailed[entry{mac: mac([]byte(m))}] = err
				}
				ref = describeSync(rfailed, rrep, rerr)
			}
			if got != ref {
				t.Fatalf("step %d, %s: sync differs from the reference:\n got %s\nwant %s", step, k.name, got, ref)
			}
			if known {
				untouched++
				if walks != before {
					t.Fatalf("step %d, %s: a trusted sync after a clean one read the device", step, k.name)
				}
			}
			la, _ := fa.NeighList(idx, k.family, nil)
			lb, _ := fb.NeighList(idx, k.family, nil)
			if !slices.Equal(la, lb) {
				t.Fatalf("step %d, %s: entries differ from the reference's:\n got %v\nwant %v", step, k.name, la, lb)
			}
		}
	}
	if trustedPasses && untouched < 100 {
		t.Errorf("only %d trusted syncs without a read", untouched)
	}
}

// describeSync renders a sync's outcome in an order that does not depend
// on map iteration.
func describeSync(failed map[entry]error, repairs int, err error) string {
	lines := []string{fmt.Sprintf("repairs %d", repairs)}
	for k, err := range failed {
		lines = append(lines, fmt.Sprintf("failed %v %x: %v", k.addr(), k.mac, err))
	}
	if err != nil {
		for _, l := range strings.Split(err.Error(), "\n") {
			lines = append(lines, "error: "+l)
		}
	}
	slices.Sort(lines[1:])
	return strings.Join(lines, "\n")
}
