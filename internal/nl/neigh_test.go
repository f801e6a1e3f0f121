package nl

import (
	"bytes"
	"encoding/hex"
	"net"
	"net/netip"
	"reflect"
	"testing"

	"github.com/vishvananda/netlink"
	vnl "github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/nl/nltest"
)

// refNeighSet builds the request of netlink.Handle.NeighSet (create or
// replace) for n with vishvananda's types: the reference appendNeighSet
// must match byte for byte.
func refNeighSet(n *netlink.Neigh) []byte {
	req := vnl.NewNetlinkRequest(unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK)
	req.AddData(&netlink.Ndmsg{
		Family: uint8(n.Family), Index: uint32(n.LinkIndex), State: uint16(n.State),
		Type: uint8(n.Type), Flags: uint8(n.Flags),
	})
	ip := n.IP.To4()
	if ip == nil {
		ip = n.IP.To16()
	}
	req.AddData(vnl.NewRtAttr(unix.NDA_DST, ip))
	if n.HardwareAddr != nil {
		req.AddData(vnl.NewRtAttr(unix.NDA_LLADDR, []byte(n.HardwareAddr)))
	}
	req.Seq = 0
	return req.Serialize()
}

// TestAppendNeighSetMatches checks that the raw builder produces exactly
// the bytes vishvananda's types produce.
func TestAppendNeighSetMatches(t *testing.T) {
	mac, _ := net.ParseMAC("02:aa:bb:cc:dd:01")
	for _, n := range []netlink.Neigh{
		{LinkIndex: 5, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST, IP: net.IPv4(198, 18, 1, 0).To4(), HardwareAddr: mac},
		{LinkIndex: 1 << 20, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF, IP: net.IPv4(203, 0, 113, 7).To4(), HardwareAddr: mac},
		{LinkIndex: 2, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF, IP: net.IPv4(203, 0, 113, 8).To4()},
		{LinkIndex: 3, Family: unix.AF_INET6, State: netlink.NUD_PERMANENT, IP: net.ParseIP("2001:db8::7"), HardwareAddr: mac},
	} {
		want := refNeighSet(&n)
		ip, _ := netip.AddrFromSlice(n.IP)
		buf := []byte("x") // an odd offset must not matter
		buf, got := appendNeighSet(buf, &NeighSpec{LinkIndex: n.LinkIndex, Family: Family(n.Family), State: uint16(n.State),
			Type: uint8(n.Type), Flags: uint8(n.Flags), IP: ip, MAC: n.HardwareAddr})
		if !bytes.Equal(got, want) {
			t.Errorf("%+v:\n got %x\nwant %x", n, got, want)
		}
		if buf[0] != 'x' {
			t.Error("buffer prefix overwritten")
		}
	}
}

// neighView is what both parsers must agree on.
type neighView struct {
	LinkIndex, Family, State, Type, Flags int
	IP, LLIP                              string
	MAC                                   string
	FlagsExt, Vlan, VNI, Master           int
}

func viewOf(n *netlink.Neigh) neighView {
	v := neighView{
		LinkIndex: n.LinkIndex, Family: n.Family, State: n.State, Type: n.Type, Flags: n.Flags,
		MAC: n.HardwareAddr.String(), FlagsExt: n.FlagsExt, Vlan: n.Vlan, VNI: n.VNI, Master: n.MasterIndex,
	}
	if a, ok := netip.AddrFromSlice(n.IP); ok {
		v.IP = a.Unmap().String()
	}
	if a, ok := netip.AddrFromSlice(n.LLIPAddr); ok {
		v.LLIP = a.Unmap().String()
	}
	return v
}

// TestNeighListMatchesNetlink fills a vxlan device's neighbour table and
// FDB in a namespace and checks that Conn.NeighList reads them as
// netlink.Handle.NeighList does, and that DelNeigh deletes an entry as
// listed.
func TestNeighListMatchesNetlink(t *testing.T) {
	ns := nltest.NewNSPrefix(t, "wmm", "nb")
	ns.IP(t, "link", "add", "vx0", "type", "vxlan", "id", "1", "dstport", "8472", "nolearning")
	ns.IP(t, "link", "set", "vx0", "up")
	ns.IP(t, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ns.IP(t, "link", "set", "v0", "up")
	ns.IP(t, "addr", "add", "192.0.2.1/24", "dev", "v0")
	for _, args := range [][]string{
		{"neigh", "add", "198.18.1.0", "lladdr", "02:00:00:00:00:01", "dev", "vx0", "nud", "permanent"},
		{"neigh", "add", "198.18.2.0", "lladdr", "02:00:00:00:00:02", "dev", "vx0", "nud", "permanent"},
		{"neigh", "add", "198.18.3.0", "lladdr", "02:00:00:00:00:03", "dev", "vx0", "nud", "stale"},
		{"neigh", "add", "192.0.2.9", "lladdr", "02:00:00:00:00:09", "dev", "v0", "nud", "permanent"},
	} {
		ns.IP(t, args...)
	}
	for _, args := range [][]string{
		{"fdb", "append", "02:00:00:00:00:01", "dev", "vx0", "dst", "203.0.113.1", "self", "permanent"},
		{"fdb", "append", "02:00:00:00:00:01", "dev", "vx0", "dst", "203.0.113.2", "self", "permanent"},
		{"fdb", "append", "02:00:00:00:00:02", "dev", "vx0", "dst", "203.0.113.3", "vni", "5", "self", "permanent"},
		{"fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", "203.0.113.4", "self", "permanent"},
	} {
		if out, err := ns.Exec(append([]string{"bridge"}, args...)...); err != nil {
			t.Fatalf("bridge %v: %v: %s", args, err, out)
		}
	}
	c := open(t, ns)
	link, err := c.LinkByName("vx0")
	if err != nil {
		t.Fatal(err)
	}
	idx := link.Index
	var buf []Neigh
	for _, family := range []int{unix.AF_INET, unix.AF_BRIDGE} {
		want, err := ns.NL.NeighList(idx, family)
		if err != nil {
			t.Fatal(err)
		}
		buf, err = c.NeighList(idx, Family(family), buf)
		if err != nil {
			t.Fatal(err)
		}
		if len(buf) != len(want) || len(want) < 3 {
			t.Fatalf("family %d: %d entries, netlink lists %d", family, len(buf), len(want))
		}
		for i := range want {
			w := viewOf(&want[i])
			if g := viewOf(buf[i].netlink()); g != w {
				t.Errorf("family %d entry %d:\n got %+v\nwant %+v", family, i, g, w)
			}
			if !buf[i].HardwareAddrIs(want[i].HardwareAddr) || !reflect.DeepEqual(buf[i].HardwareAddr(), want[i].HardwareAddr) {
				t.Errorf("entry %d: MAC %v, want %v", i, buf[i].HardwareAddr(), want[i].HardwareAddr)
			}
		}
	}
	// Deleting by the listed entry works (the delete path of the vxlan
	// backend), also for an entry with its own VNI.
	for _, n := range buf {
		if n.IP == netip.MustParseAddr("203.0.113.3") {
			if err := c.DelNeigh(&n); err != nil {
				t.Fatalf("delete %+v: %v", n, err)
			}
		}
	}
	after, err := c.NeighList(idx, FamilyBridge, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(buf)-1 {
		t.Fatalf("FDB has %d entries after deleting one of %d", len(after), len(buf))
	}
}

// FuzzParseNeigh: no panic, and the hardware address stays in bounds.
func FuzzParseNeigh(f *testing.F) {
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	_, msg := appendNeighSet(nil, &NeighSpec{LinkIndex: 3, Family: FamilyBridge, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
		IP: netip.MustParseAddr("203.0.113.1"), MAC: mac})
	f.Add(msg[unix.SizeofNlMsghdr:])
	b, _ := hex.DecodeString("0200000003000000800000010800010000c612010a000200020000000001000008000300")
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		n, ok := parseNeigh(b)
		if !ok {
			return
		}
		if len(n.HardwareAddr()) > 16 {
			t.Fatalf("hardware address of %d bytes", len(n.HardwareAddr()))
		}
		_ = n.netlink()
	})
}
