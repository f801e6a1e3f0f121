package etcd

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/subnet"
)

const testSubnets = "/coreos.com/network/subnets/"

func TestParseLeaseKV(t *testing.T) {
	vx := `{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`
	for _, tc := range []struct {
		name, key, value string
		lease            int64
		wantErr          string
		wantSubnet       string
		wantV6           string
		wantReservation  bool
	}{
		{"vxlan lease", "198.18.7.0-24", vx, 0x42, "", "198.18.7.0/24", "", false},
		{"reservation", "198.18.7.0-24", `{"PublicIP":"192.0.2.11"}`, 0, "", "198.18.7.0/24", "", true},
		{"udp lease", "198.18.8.0-24", `{"PublicIP":"192.0.2.12","PublicIPv6":null}`, 7, "", "198.18.8.0/24", "", false},
		{"dual stack key", "198.18.9.0-24&fd00::-64", `{"PublicIP":"192.0.2.13"}`, 7, "", "198.18.9.0/24", "fd00::/64", false},
		{"dual stack, bad value", "198.18.9.0-24&fd00::-64", `{}`, 7, "lease 198.18.9.0-24&fd00::-64: parse lease value", "198.18.9.0/24", "fd00::/64", false},
		{"dual stack, v4 in v6 place", "198.18.9.0-24&198.18.9.0-24", vx, 7, "not an IPv6 address", "", "", false},
		{"dual stack, v6 host bits", "198.18.9.0-24&fd00::1-64", vx, 7, "host bits", "", "", false},
		{"dual stack, two &", "198.18.9.0-24&fd00::-64&fd01::-64", vx, 7, "more than one", "", "", false},
		{"dual stack, junk after", "198.18.9.0-24&fd00::-64junk", vx, 7, "prefix length", "", "", false},
		{"host bits", "198.18.7.1-24", vx, 1, "host bits", "", "", false},
		{"junk key", "hello", vx, 1, "want <a.b.c.d>-<len>", "", "", false},
		{"bad length", "198.18.7.0-33", vx, 1, "prefix length", "", "", false},
		{"not JSON", "198.18.7.0-24", `{"PublicIP":`, 1, "parse lease value", "198.18.7.0/24", "", false},
		{"no PublicIP", "198.18.7.0-24", `{}`, 1, "no PublicIP", "198.18.7.0/24", "", false},
		{"IPv6 PublicIP", "198.18.7.0-24", `{"PublicIP":"2001:db8::1"}`, 1, "not an IPv4", "198.18.7.0/24", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kv := &mvccpb.KeyValue{Key: []byte(testSubnets + tc.key), Value: []byte(tc.value), Lease: tc.lease, ModRevision: 9, CreateRevision: 4}
			l, err := parseLeaseKV(testSubnets, kv)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tc.key) {
					t.Fatalf("err = %v, want %q naming the key", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if tc.wantSubnet != "" && l.Subnet.String() != tc.wantSubnet {
				t.Fatalf("subnet %s, want %s", l.Subnet, tc.wantSubnet)
			}
			if got := l.IPv6Subnet; (tc.wantV6 == "") == got.IsValid() || (got.IsValid() && got.String() != tc.wantV6) {
				t.Fatalf("IPv6 subnet %s, want %q", got, tc.wantV6)
			}
			if err == nil && (l.Reservation != tc.wantReservation || l.EtcdLease != tc.lease || l.ModRevision != 9 || l.CreateRevision != 4) {
				t.Fatalf("lease %+v", l)
			}
			if err == nil && l.Key() != tc.key {
				t.Fatalf("Key() = %q, want %q", l.Key(), tc.key)
			}
		})
	}
	if _, err := parseLeaseKV(testSubnets, &mvccpb.KeyValue{Key: []byte("/other/198.18.7.0-24"), Value: []byte(vx), Lease: 1}); err == nil {
		t.Fatal("key outside the prefix accepted")
	}
}

func TestBuildSnapshotSortsAndSplits(t *testing.T) {
	kvs := []*mvccpb.KeyValue{
		{Key: []byte(testSubnets + "198.18.9.0-24"), Value: []byte(`{"PublicIP":"192.0.2.9"}`), Lease: 1},
		{Key: []byte(testSubnets + "zzz"), Value: []byte(`x`)},
		{Key: []byte(testSubnets + "198.18.10.0-24"), Value: []byte(`{"PublicIP":"192.0.2.10"}`)},
		{Key: []byte(testSubnets + "198.18.2.0-24"), Value: []byte(`{"PublicIP":"192.0.2.2"}`), Lease: 2},
		{Key: []byte(testSubnets + "198.18.3.0-24"), Value: []byte(`nope`), Lease: 3},
	}
	s := buildSnapshot(testSubnets, kvs, 77)
	var got []string
	for _, l := range s.Leases {
		got = append(got, l.Subnet.String())
	}
	if strings.Join(got, " ") != "198.18.2.0/24 198.18.9.0/24 198.18.10.0/24" || s.Revision != 77 {
		t.Fatalf("leases %v rev %d", got, s.Revision)
	}
	if len(s.Invalid) != 2 || s.Invalid[0].Key != testSubnets+"198.18.3.0-24" || s.Invalid[1].Err == nil {
		t.Fatalf("invalid %+v", s.Invalid)
	}
	if l := s.Leases[2]; l.Subnet != netip.MustParsePrefix("198.18.10.0/24") || !l.Reservation {
		t.Fatalf("198.18.10.0/24 = %+v, want a reservation", l)
	}
}

func TestEventFromEtcd(t *testing.T) {
	reg := NewRegistry(nil, "")
	key := []byte(testSubnets + "198.18.7.0-24")
	v1 := []byte(`{"PublicIP":"192.0.2.11","PublicIPv6":null}`)
	v2 := []byte(`{"PublicIP":"192.0.2.12","PublicIPv6":null}`)
	for _, tc := range []struct {
		name    string
		ev      *clientv3.Event
		typ     EventType
		renewal bool
		bad     bool
	}{
		{"create", &clientv3.Event{Type: clientv3.EventTypePut, Kv: &mvccpb.KeyValue{Key: key, Value: v1, CreateRevision: 5, ModRevision: 5, Version: 1}}, EventAdded, false, false},
		{"renewal", &clientv3.Event{Type: clientv3.EventTypePut, Kv: &mvccpb.KeyValue{Key: key, Value: v1, CreateRevision: 5, ModRevision: 6, Version: 2}, PrevKv: &mvccpb.KeyValue{Value: v1}}, EventUpdated, true, false},
		{"update", &clientv3.Event{Type: clientv3.EventTypePut, Kv: &mvccpb.KeyValue{Key: key, Value: v2, CreateRevision: 5, ModRevision: 7, Version: 3}, PrevKv: &mvccpb.KeyValue{Value: v1}}, EventUpdated, false, false},
		{"delete", &clientv3.Event{Type: clientv3.EventTypeDelete, Kv: &mvccpb.KeyValue{Key: key, ModRevision: 8}}, EventRemoved, false, false},
		{"bad value", &clientv3.Event{Type: clientv3.EventTypePut, Kv: &mvccpb.KeyValue{Key: key, Value: []byte("x"), CreateRevision: 9, ModRevision: 9, Version: 1}}, EventAdded, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := reg.toEvent(tc.ev, time.Time{})
			if e.Type != tc.typ || e.Renewal() != tc.renewal || (e.Err != nil) != tc.bad || e.Subnet.String() != "198.18.7.0/24" || e.Revision != tc.ev.Kv.ModRevision {
				t.Fatalf("event %+v", e)
			}
			if tc.typ == EventRemoved && (e.Lease.Subnet.IsValid() || e.Lease.Attrs.PublicIP.IsValid()) {
				t.Fatal("remove carries a lease")
			}
		})
	}
}

// FuzzBuildSnapshot feeds arbitrary keys and values from etcd through the
// parser: it must never panic, must put every kv in exactly one of Leases
// and Invalid, and every valid lease must round-trip through the key format.
func FuzzBuildSnapshot(f *testing.F) {
	f.Add("198.18.7.0-24", `{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`, int64(5))
	f.Add("198.18.7.0-24&fd00::-64", `{"PublicIP":"192.0.2.11","PublicIPv6":"fd00::1"}`, int64(0))
	f.Add("1.2.3.4-32", `{"publicip":"1.2.3.4","backendtype":"host-gw"}`, int64(1))
	f.Add("0.0.0.0-0", `{"PublicIP":""}`, int64(-1))
	f.Add("x", "", int64(0))
	f.Add("198.18.7.0-24&fd00::-64&", `{"PublicIP":"192.0.2.11"}`, int64(1))
	f.Add("198.18.7.0-24&198.18.7.0-24", `{"PublicIP":"192.0.2.11"}`, int64(1))
	f.Add("198.18.7.0-24&FD00::-64", `{"PublicIP":"192.0.2.11"}`, int64(1))
	f.Fuzz(func(t *testing.T, key, value string, lease int64) {
		kvs := []*mvccpb.KeyValue{{Key: []byte(testSubnets + key), Value: []byte(value), Lease: lease, ModRevision: 3, CreateRevision: 2}}
		s := buildSnapshot(testSubnets, kvs, 3)
		if len(s.Leases)+len(s.Invalid) != 1 {
			t.Fatalf("kv landed %d times", len(s.Leases)+len(s.Invalid))
		}
		if len(s.Invalid) == 1 {
			if s.Invalid[0].Err == nil || s.Invalid[0].Key != testSubnets+key {
				t.Fatalf("invalid entry %+v", s.Invalid[0])
			}
			return
		}
		l := s.Leases[0]
		if !l.Subnet.IsValid() || l.Subnet.Masked() != l.Subnet || !l.Attrs.PublicIP.Is4() {
			t.Fatalf("accepted lease %+v", l)
		}
		if l.Key() != key {
			t.Fatalf("key %q parsed as %s %s, which formats as %q", key, l.Subnet, l.IPv6Subnet, l.Key())
		}
		if strings.Contains(key, "&") != l.IPv6Subnet.IsValid() {
			t.Fatalf("key %q: IPv6 subnet %s", key, l.IPv6Subnet)
		}
		if l.Reservation != (lease == 0) || l.EtcdLease != lease || l.ModRevision != 3 || l.CreateRevision != 2 {
			t.Fatalf("lease id %d → %+v", lease, l)
		}
		// The value re-marshals and parses back to the same attributes.
		b, err := l.Attrs.MarshalJSON()
		if err != nil {
			t.Fatalf("re-marshal: %v", err)
		}
		back, err := subnet.ParseLeaseAttrs(b)
		if err != nil || back.PublicIP != l.Attrs.PublicIP || back.BackendType != l.Attrs.BackendType {
			t.Fatalf("round trip %q: %+v, %v", b, back, err)
		}
	})
}

func TestFindMine(t *testing.T) {
	nc, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","SubnetMin":"198.18.10.0","SubnetMax":"198.18.200.0"}`))
	if err != nil {
		t.Fatal(err)
	}
	ours := netip.MustParseAddr("192.0.2.11")
	lease := func(sn string, ip string, id, rev int64) subnet.Lease {
		return subnet.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: subnet.LeaseAttrs{PublicIP: netip.MustParseAddr(ip)},
			EtcdLease: id, Reservation: id == 0, ModRevision: rev}
	}
	dualLease := func(sn, sn6, ip string, id, rev int64) subnet.Lease {
		l := lease(sn, ip, id, rev)
		l.IPv6Subnet = netip.MustParsePrefix(sn6)
		return l
	}
	for _, tc := range []struct {
		name   string
		leases []subnet.Lease
		want   string // "" for none
	}{
		{"none", []subnet.Lease{lease("198.18.20.0/24", "192.0.2.12", 1, 1)}, ""},
		{"our lease", []subnet.Lease{lease("198.18.20.0/24", "192.0.2.12", 1, 1), lease("198.18.21.0/24", "192.0.2.11", 2, 2)}, "198.18.21.0/24"},
		{"newest of two", []subnet.Lease{lease("198.18.21.0/24", "192.0.2.11", 2, 9), lease("198.18.22.0/24", "192.0.2.11", 3, 5)}, "198.18.21.0/24"},
		{"reservation first", []subnet.Lease{lease("198.18.21.0/24", "192.0.2.11", 2, 9), lease("198.18.23.0/24", "192.0.2.11", 0, 1)}, "198.18.23.0/24"},
		{"out of range lease ignored", []subnet.Lease{lease("198.18.5.0/24", "192.0.2.11", 2, 9)}, ""},
		{"reservation below SubnetMin kept", []subnet.Lease{lease("198.18.5.0/24", "192.0.2.11", 0, 9)}, "198.18.5.0/24"},
		{"wrong length ignored", []subnet.Lease{lease("198.18.20.0/25", "192.0.2.11", 0, 9)}, ""},
		{"dual-stack key to rewrite", []subnet.Lease{dualLease("198.18.21.0/24", "2001:db8:21::/64", "192.0.2.11", 2, 9)}, "198.18.21.0/24!"},
		{"plain key preferred to a dual-stack one", []subnet.Lease{dualLease("198.18.21.0/24", "2001:db8:21::/64", "192.0.2.11", 0, 9),
			lease("198.18.22.0/24", "192.0.2.11", 3, 5)}, "198.18.22.0/24"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHolder(NewRegistry(nil, ""), HolderConfig{Network: nc, Attrs: subnet.LeaseAttrs{PublicIP: ours}})
			checkFindMine(t, h, tc.leases, tc.want)
		})
	}

	dc, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16","SubnetMin":"198.18.20.0","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		leases []subnet.Lease
		want   string // "" for none; a trailing "!" means "to rewrite"
	}{
		{"plain key to rewrite", []subnet.Lease{lease("198.18.21.0/24", "192.0.2.11", 2, 9)}, "198.18.21.0/24!"},
		{"dual-stack key", []subnet.Lease{dualLease("198.18.21.0/24", "2001:db8:100:5::/64", "192.0.2.11", 2, 9)}, "198.18.21.0/24"},
		{"dual-stack key outside the IPv6 pool", []subnet.Lease{dualLease("198.18.21.0/24", "2001:db8:200:5::/64", "192.0.2.11", 2, 9)}, "198.18.21.0/24!"},
		{"dual-stack key below IPv6SubnetMin", []subnet.Lease{dualLease("198.18.21.0/24", "2001:db8:100::/64", "192.0.2.11", 2, 9)}, "198.18.21.0/24!"},
		{"fitting key preferred to the previous subnet's", []subnet.Lease{lease("198.18.21.0/24", "192.0.2.11", 2, 9),
			dualLease("198.18.22.0/24", "2001:db8:100:5::/64", "192.0.2.11", 3, 5)}, "198.18.22.0/24"},
		{"reservation of any IPv6 subnet in the network", []subnet.Lease{dualLease("198.18.21.0/24", "2001:db8:100::/64", "192.0.2.11", 0, 9)}, "198.18.21.0/24"},
	} {
		t.Run("dual/"+tc.name, func(t *testing.T) {
			h := NewHolder(NewRegistry(nil, ""), HolderConfig{Network: dc, Attrs: subnet.LeaseAttrs{PublicIP: ours}})
			checkFindMine(t, h, tc.leases, tc.want)
		})
	}
}

// checkFindMine runs findMine with no previous subnet;
// want is the subnet expected, "" for none, with a trailing "!" when the
// key must be rewritten.
func checkFindMine(t *testing.T, h *Holder, leases []subnet.Lease, want string) {
	t.Helper()
	got, fits, ok := h.findMine(Snapshot{Leases: subnet.Pointers(leases)}, netip.Prefix{}, nil)
	wantSubnet, rewrite := strings.CutSuffix(want, "!")
	switch {
	case want == "" && ok:
		t.Fatalf("found %s, want none", got.Subnet)
	case want != "" && (!ok || got.Subnet.String() != wantSubnet || fits == rewrite):
		t.Fatalf("found %v (ok %v, fits %v), want %s", got.Key(), ok, fits, want)
	}
}

func TestHolderDefaults(t *testing.T) {
	for _, tc := range []struct {
		ttl, margin         time.Duration
		wantTTL, wantMargin time.Duration
	}{
		{0, 0, DefaultTTL, DefaultRenewMargin},
		{2 * time.Second, time.Second, 2 * time.Second, time.Second},
		{2 * time.Second, 0, 2 * time.Second, time.Second}, // 60m margin > TTL: renew at half-life
		{time.Hour, 2 * time.Hour, time.Hour, 30 * time.Minute},
	} {
		h := NewHolder(NewRegistry(nil, ""), HolderConfig{TTL: tc.ttl, RenewMargin: tc.margin})
		if h.cfg.TTL != tc.wantTTL || h.cfg.RenewMargin != tc.wantMargin {
			t.Errorf("TTL %s margin %s -> %s %s, want %s %s", tc.ttl, tc.margin, h.cfg.TTL, h.cfg.RenewMargin, tc.wantTTL, tc.wantMargin)
		}
	}
}

// FuzzLeaseKey feeds arbitrary key names (and prefixes) through every
// place that reads a lease key: the KV parser, watch events (a DELETE
// carries the key only) and the allocator's view of invalid keys. None may
// panic, and they must agree on the IPv4 subnet a key names.
func FuzzLeaseKey(f *testing.F) {
	for _, k := range []string{"198.18.7.0-24", "198.18.7.0-24&fd00::-64", "198.18.7.0-24&junk", "198.18.7.0-24&&",
		"198.18.7.1-24", "-24", "", "&", "198.18.7.0-24&fd00::-64&fd00::-64", "1.2.3.0-24&::ffff:0:0-96"} {
		f.Add(testSubnets, k, true)
	}
	f.Add("/other/", "198.18.7.0-24", false)
	f.Fuzz(func(t *testing.T, prefix, name string, put bool) {
		key := []byte(prefix + name)
		value := []byte(`{"PublicIP":"192.0.2.11"}`)
		l, err := parseLeaseKV(testSubnets, &mvccpb.KeyValue{Key: key, Value: value, Lease: 1, ModRevision: 2, CreateRevision: 1})
		v4, v6, kerr := subnet.ParseSubnetKey(strings.TrimPrefix(string(key), testSubnets))
		under := strings.HasPrefix(string(key), testSubnets)
		switch {
		case err == nil && (!under || kerr != nil):
			t.Fatalf("key %q accepted by parseLeaseKV only", key)
		case err == nil && (l.Subnet != v4 || l.IPv6Subnet != v6 || testSubnets+l.Key() != string(key)):
			t.Fatalf("key %q parsed as %s %s", key, l.Subnet, l.IPv6Subnet)
		case err != nil && under && kerr == nil:
			t.Fatalf("key %q refused: %v", key, err)
		case err != nil && !strings.Contains(err.Error(), strconv.Quote(string(key))):
			t.Fatalf("error %q does not name the key %q", err, key)
		}
		sn, serr := subnetFromKey(testSubnets, key)
		if (serr == nil) != (err == nil) || sn != l.Subnet {
			t.Fatalf("subnetFromKey(%q) = %s %v; parseLeaseKV %s %v", key, sn, serr, l.Subnet, err)
		}
		// claimedSubnet accepts every parsable key, with the same subnet.
		if c, cerr := claimedSubnet(testSubnets, string(key)); err == nil && (cerr != nil || c != l.Subnet) {
			t.Fatalf("claimedSubnet(%q) = %s %v, want %s", key, c, cerr, l.Subnet)
		} else if cerr == nil && (!c.Addr().Is4() || c.Masked() != c) {
			t.Fatalf("claimedSubnet(%q) = %s", key, c)
		}
		kv := &mvccpb.KeyValue{Key: key, ModRevision: 5, CreateRevision: 4, Version: 1, Value: value}
		typ := clientv3.EventTypeDelete
		if put {
			typ = clientv3.EventTypePut
		}
		e := NewRegistry(nil, "").toEvent(&clientv3.Event{Type: typ, Kv: kv}, time.Time{}) // its prefix is testSubnets
		if (e.Err == nil) != (err == nil) || e.Subnet != l.Subnet {
			t.Fatalf("event for %q: subnet %s err %v; parseLeaseKV %s %v", key, e.Subnet, e.Err, l.Subnet, err)
		}
	})
}
