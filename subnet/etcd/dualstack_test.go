package etcd

import (
	"bytes"
	"errors"
	"net/netip"
	"strconv"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/subnet"
	"github.com/weftnet/weft/subnet/etcd/etcdtest"
)

const dualNet = `{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48"}`

func dualAttrs(ip, ip6 string) subnet.LeaseAttrs {
	a := attrs(ip)
	a.PublicIPv6 = netip.MustParseAddr(ip6)
	a.BackendV6Data = []byte(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}`)
	return a
}

// getKey reads one key by its suffix under the subnets prefix.
func getKey(t *testing.T, cli *clientv3.Client, reg *Registry, name string) (value []byte, lease int64, ok bool) {
	t.Helper()
	resp, err := cli.Get(testCtx(t), reg.subnetsPrefix+name)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, false
	}
	return resp.Kvs[0].Value, resp.Kvs[0].Lease, true
}

// On a dual-stack network a host claims one key carrying both subnets, a
// restart keeps both, and hosts never share an IPv6 subnet.
func TestHolderDualStackClaim(t *testing.T) {
	cli, reg, nc := setup(t, dualNet)
	ctx := testCtx(t)
	ours := dualAttrs("192.0.2.11", "2001:db8:1::11")
	h := NewHolder(reg, HolderConfig{Network: nc, Attrs: ours})
	l, err := h.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !nc.InRange(l.Subnet) || !nc.IPv6.InRange(l.IPv6Subnet) {
		t.Fatalf("claimed %s: not in both pools", l.Key())
	}
	v, id, ok := getKey(t, cli, reg, l.Key())
	want, _ := ours.MarshalJSON()
	if !ok || !bytes.Equal(v, want) || id != l.EtcdLease {
		t.Fatalf("key %s: ok %v value %s lease %x", l.Key(), ok, v, id)
	}
	if _, _, ok := getKey(t, cli, reg, subnet.SubnetKey(l.Subnet)); ok {
		t.Fatalf("a plain key for %s exists beside the dual-stack one", l.Subnet)
	}

	// A restart (a new holder, same public IP) reuses the same key.
	again, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: ours}).Acquire(ctx)
	if err != nil || again.Key() != l.Key() || again.EtcdLease != l.EtcdLease {
		t.Fatalf("after restart: %s lease %x (%v), want %s lease %x", again.Key(), again.EtcdLease, err, l.Key(), l.EtcdLease)
	}

	// Other hosts get other subnets in both families.
	seen4, seen6 := map[netip.Prefix]bool{l.Subnet: true}, map[netip.Prefix]bool{l.IPv6Subnet: true}
	for i := 12; i < 20; i++ {
		o, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: dualAttrs("192.0.2."+strconv.Itoa(i), "2001:db8:1::"+strconv.Itoa(i))}).Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if seen4[o.Subnet] || seen6[o.IPv6Subnet] || !o.IPv6Subnet.IsValid() {
			t.Fatalf("host %d got %s: a subnet is shared or missing", i, o.Key())
		}
		seen4[o.Subnet], seen6[o.IPv6Subnet] = true, true
	}
}

// A small IPv6 pool runs out before the IPv4 one: the holder says so and
// claims nothing.
func TestHolderDualStackIPv6Exhausted(t *testing.T) {
	_, reg, nc := setup(t, `{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/124"}`)
	ctx := testCtx(t)
	for i := 11; i < 14; i++ { // a /124 holds three /126 after the first
		if _, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: dualAttrs("192.0.2."+strconv.Itoa(i), "2001:db8:1::"+strconv.Itoa(i))}).Acquire(ctx); err != nil {
			t.Fatalf("host %d: %v", i, err)
		}
	}
	_, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: dualAttrs("192.0.2.20", "2001:db8:1::20")}).Acquire(ctx)
	if !errors.Is(err, subnet.ErrOutOfSubnets) {
		t.Fatalf("fourth host: got %v, want ErrOutOfSubnets", err)
	}
}

// When the network config gains IPv6, a host's plain key is rewritten into
// a dual-stack key for the same IPv4 subnet, on the same etcd lease, with
// the IPv6 subnet of its old subnet file when that one is free; when the
// config drops IPv6 again, the dual-stack key becomes plain again.
func TestHolderDualStackUpgradeAndDowngrade(t *testing.T) {
	cli, reg, v4 := setup(t, `{"Network":"198.18.0.0/16"}`)
	ctx := testCtx(t)
	plainAttrs := attrs("192.0.2.11")
	l, err := NewHolder(reg, HolderConfig{Network: v4, Attrs: plainAttrs}).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if l.IPv6Subnet.IsValid() {
		t.Fatalf("IPv4-only network gave %s", l.Key())
	}

	nc, err := subnet.ParseConfig([]byte(dualNet))
	if err != nil {
		t.Fatal(err)
	}
	prev6 := netip.MustParsePrefix("2001:db8:100:77::/64")
	ours := dualAttrs("192.0.2.11", "2001:db8:1::11")
	up, err := NewHolder(reg, HolderConfig{Network: nc, Attrs: ours, PreviousSubnet6: prev6}).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if up.Subnet != l.Subnet || up.IPv6Subnet != prev6 || up.EtcdLease != l.EtcdLease {
		t.Fatalf("upgraded to %s lease %x, want %s&%s lease %x", up.Key(), up.EtcdLease, subnet.SubnetKey(l.Subnet), subnet.SubnetKey(prev6), l.EtcdLease)
	}
	if _, _, ok := getKey(t, cli, reg, l.Key()); ok {
		t.Fatalf("the plain key %s is still there", l.Key())
	}
	v, id, ok := getKey(t, cli, reg, up.Key())
	want, _ := ours.MarshalJSON()
	if !ok || !bytes.Equal(v, want) || id != l.EtcdLease {
		t.Fatalf("dual-stack key: ok %v value %s lease %x", ok, v, id)
	}

	down, err := NewHolder(reg, HolderConfig{Network: v4, Attrs: plainAttrs}).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if down.Key() != l.Key() || down.EtcdLease != l.EtcdLease {
		t.Fatalf("downgraded to %s lease %x, want %s lease %x", down.Key(), down.EtcdLease, l.Key(), l.EtcdLease)
	}
	if _, _, ok := getKey(t, cli, reg, up.Key()); ok {
		t.Fatalf("the dual-stack key %s is still there", up.Key())
	}
}

// A plain key of ours cannot become dual-stack while every IPv6 subnet is
// taken: the holder says the network is out of subnets, leaves the key as it
// is, and asks etcd only a few times.
func TestHolderDualStackRewriteNoIPv6Subnet(t *testing.T) {
	cli, srv := etcdtest.Start(t)
	ctx := testCtx(t)
	if err := NewRegistry(cli, "").PutConfig(ctx, []byte(`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/124"}`)); err != nil {
		t.Fatal(err)
	}
	reg, rc := countingRegistry(t, srv)
	nc, err := reg.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := attrs("192.0.2.11").MarshalJSON()
	put, err := cli.Put(ctx, reg.subnetsPrefix+"198.18.5.0-24", string(plain))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := attrs("192.0.2.99").MarshalJSON()
	for _, k := range []string{"198.18.6.0-24&2001:db8:100::4-126", "198.18.7.0-24&2001:db8:100::8-126", "198.18.8.0-24&2001:db8:100::c-126"} {
		if _, err := cli.Put(ctx, reg.subnetsPrefix+k, string(other)); err != nil {
			t.Fatal(err)
		}
	}
	before := rc.n.Load()
	_, err = NewHolder(reg, HolderConfig{Network: nc, Attrs: dualAttrs("192.0.2.11", "2001:db8:1::11")}).Acquire(ctx)
	if !errors.Is(err, subnet.ErrOutOfSubnets) {
		t.Fatalf("got %v, want ErrOutOfSubnets (no IPv6 subnet is free)", err)
	}
	if n := rc.n.Load() - before; n > 5 {
		t.Fatalf("%d etcd requests for one acquire", n)
	}
	resp, err := cli.Get(ctx, reg.subnetsPrefix+"198.18.5.0-24")
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].ModRevision != put.Header.Revision {
		t.Fatalf("our plain key was touched: %+v %v", resp, err)
	}
}
