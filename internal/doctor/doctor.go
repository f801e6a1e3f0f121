// Package doctor compares what the kernel of one host holds with what the
// leases in etcd say it should hold, and explains each difference with a
// suggested fix. It is read-only: it never changes the kernel or etcd.
//
// It deliberately derives the expected state on its own, from the network
// config and the leases, rather than asking weftd: it is the second opinion
// an engineer wants when weftd itself may be what is broken.
package doctor

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/subnet"
)

// Input is everything the doctor looks at besides the kernel.
type Input struct {
	Config *subnet.Config
	Leases []subnet.Lease
	// Invalid are the lease keys whose name or value did not parse.
	Invalid []subnet.InvalidLease
	// Netns is the namespace to inspect; netns.None() for the current one.
	Netns netns.NsHandle
	// SubnetFile is weftd's --subnet-file.
	SubnetFile string
	// PublicIP identifies our lease; if invalid, the lease whose PublicIP
	// is an address of this host is ours.
	PublicIP netip.Addr
	// Forward says whether weftd runs with --iptables-forward-rules.
	Forward bool
	// IPTables, if set, is checked for weft's chains; nil skips the check.
	IPTables iptables.IPTables
}

// Problem is one difference, with what to do about it.
type Problem struct {
	Area string `json:"area"` // lease, subnet-file, device, route, neigh, fdb, iptables
	What string `json:"what"`
	Fix  string `json:"fix"`
}

// Report is the doctor's verdict for one host.
type Report struct {
	Lease     string    `json:"lease,omitempty"`
	PublicIP  string    `json:"publicIP,omitempty"`
	Backend   string    `json:"backend"`
	Interface string    `json:"interface,omitempty"`
	Peers     int       `json:"peers"`
	Checked   int       `json:"checked"`
	Problems  []Problem `json:"problems"`
	// Refused lists every lease weftd does not program, and why, judged
	// as weftd judges them. A conflict (two leases for one subnet or one
	// VtepMAC) is also a problem, because it can cut a live host off; a
	// broken lease harms nobody and is listed only.
	Refused []RefusedLease `json:"refused,omitempty"`
}

// RefusedLease is one lease that is not programmed as a peer.
type RefusedLease struct {
	Key    string `json:"key"`
	Reason string `json:"reason"`
	Error  string `json:"error"`
}

// OK reports whether nothing is wrong.
func (r Report) OK() bool { return len(r.Problems) == 0 }

type checker struct {
	in     Input
	k      kernel
	rep    Report
	own    subnet.Lease
	ext    *nl.Link // nil if not found
	extNet []netip.Prefix
}

// kernel is what the doctor reads: *nl.Conn (or a fake).
type kernel interface {
	LinkByName(name string) (nl.Link, error)
	LinkByIndex(index int) (nl.Link, error)
	AddrList(linkIndex int, family nl.Family) ([]nl.Addr, error)
	RouteList(family nl.Family, table uint32, keep func(*nl.Route) bool, out []nl.Route) ([]nl.Route, error)
	NeighList(linkIndex int, family nl.Family, out []nl.Neigh) ([]nl.Neigh, error)
}

var _ kernel = (*nl.Conn)(nil)

func (c *checker) problem(area, fix, format string, args ...any) {
	c.rep.Problems = append(c.rep.Problems, Problem{Area: area, What: fmt.Sprintf(format, args...), Fix: fix})
}

const fixWeftd = "weftd restores this within its reconcile interval; if it stays, check `weftctl status` and weftd's log (journalctl -u weftd)"

// Check inspects the host and returns its report. An error means the
// doctor itself could not look (for example no permission for netlink).
func Check(in Input) (Report, error) {
	k, err := nl.Open(in.Netns)
	if err != nil {
		return Report{}, err
	}
	defer k.Close()
	return check(in, k)
}

// check is Check on the kernel k.
func check(in Input, k kernel) (Report, error) {
	c := &checker{in: in, k: k, rep: Report{Backend: in.Config.BackendType, Problems: []Problem{}}}
	if err := c.findOwn(); err != nil {
		return c.rep, err
	}
	if !c.own.Subnet.IsValid() {
		return c.rep, nil
	}
	c.checkSubnetFile()
	peers := c.validPeers()
	c.rep.Peers = len(peers)
	var err2 error
	switch in.Config.BackendType {
	case "vxlan":
		err2 = c.checkVXLAN(peers)
	case "host-gw":
		err2 = c.checkHostGW(peers)
	case "udp":
		err2 = c.checkUDP()
	default:
		c.problem("config", "set Backend.Type to vxlan, host-gw or udp with `weftctl config set`", "unknown backend %q", in.Config.BackendType)
	}
	if err2 != nil {
		return c.rep, err2
	}
	if in.IPTables != nil {
		c.checkIPTables()
	}
	return c.rep, nil
}

// findOwn identifies our lease and the external interface.
func (c *checker) findOwn() error {
	addrs, err := c.k.AddrList(0, nl.FamilyV4)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	local := map[netip.Addr]int{}
	for _, a := range addrs {
		local[a.Prefix.Addr()] = a.LinkIndex
	}
	for _, l := range c.in.Leases {
		if c.in.PublicIP.IsValid() && l.Attrs.PublicIP == c.in.PublicIP {
			c.own = l
			break
		}
		if !c.in.PublicIP.IsValid() {
			if _, ok := local[l.Attrs.PublicIP]; ok {
				c.own = l
				break
			}
		}
	}
	if !c.own.Subnet.IsValid() {
		c.problem("lease", "start weftd on this host (systemctl start weftd), or pass --public-ip if this host is behind NAT",
			"no lease in etcd carries an address of this host")
		return nil
	}
	c.rep.Lease = c.own.Subnet.String()
	c.rep.PublicIP = c.own.Attrs.PublicIP.String()
	if idx, ok := local[c.own.Attrs.PublicIP]; ok {
		c.ext = c.link(idx)
	}
	if c.ext == nil {
		// Behind NAT: fall back to the interface of the default route.
		routes, _ := c.k.RouteList(nl.FamilyV4, unix.RT_TABLE_MAIN, func(r *nl.Route) bool {
			return r.Dst.Bits() == 0 && r.LinkIndex > 0
		}, nil)
		if len(routes) > 0 {
			c.ext = c.link(routes[0].LinkIndex)
		}
	}
	if c.ext != nil {
		c.rep.Interface = c.ext.Name
		var onExt []nl.Addr
		for _, a := range addrs {
			if a.LinkIndex == c.ext.Index {
				onExt = append(onExt, a)
			}
		}
		c.extNet = nl.OnLink(onExt)
	}
	return nil
}

// link looks a device up by index; nil if it is not there.
func (c *checker) link(index int) *nl.Link {
	l, err := c.k.LinkByIndex(index)
	if err != nil {
		return nil
	}
	return &l
}

func (c *checker) checkSubnetFile() {
	c.rep.Checked++
	env, err := subnet.ReadEnvFile(c.in.SubnetFile)
	if err != nil {
		c.problem("subnet-file", "weftd writes it once it holds a lease: check that weftd runs with the same --subnet-file", "%v", err)
		return
	}
	if env.Network != c.in.Config.Network {
		c.problem("subnet-file", "restart weftd so it rewrites the file", "%s has FLANNEL_NETWORK=%s, the network config says %s", c.in.SubnetFile, env.Network, c.in.Config.Network)
	}
	if env.LeaseSubnet() != c.own.Subnet {
		c.problem("subnet-file", "restart weftd so it rewrites the file; pods created since then have addresses of the wrong subnet",
			"%s has FLANNEL_SUBNET=%s, but our lease is %s", c.in.SubnetFile, env.Subnet, c.own.Subnet)
	}
}

// validPeers judges the leases exactly as weftd does (subnet.FilterPeers)
// and reports every refused lease: weftd programs nothing for it, and an
// operator should know why.
func (c *checker) validPeers() []subnet.Lease {
	peers, refused := subnet.FilterPeers(c.in.Config, c.own, c.in.Leases, c.in.Invalid)
	for _, r := range refused {
		c.rep.Refused = append(c.rep.Refused, RefusedLease{Key: r.Key, Reason: r.Reason, Error: r.Err.Error()})
		if subnet.Conflict(r.Reason) {
			c.problem("lease", "weftd keeps the older of two leases that claim one subnet or VtepMAC: if the refused lease belongs to a live host, delete the stale older key (etcdctl del <prefix>/subnets/<key>), else delete the refused one",
				"lease %s is refused (%s): %v", strconv.Quote(r.Key), r.Reason, r.Err)
		}
	}
	return peers
}

// backendOptions are the options the doctor needs to predict the kernel.
type backendOptions struct {
	VNI           int
	MTU           int
	DirectRouting bool
}

func (c *checker) options() backendOptions {
	o := backendOptions{VNI: 1}
	_ = json.Unmarshal(c.in.Config.Backend, &o)
	if o.VNI == 0 {
		o.VNI = 1
	}
	return o
}

func (c *checker) onLink(ip netip.Addr) bool {
	for _, p := range c.extNet {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// checkDevice verifies a device exists, is up, has the MTU and address.
func (c *checker) checkDevice(name string, mtu int, addr netip.Prefix) *nl.Link {
	c.rep.Checked++
	link, err := c.k.LinkByName(name)
	if err != nil {
		c.problem("device", fixWeftd+"; it is re-created with all its peers", "device %s is missing", name)
		return nil
	}
	if !link.Up {
		c.problem("device", fixWeftd+"; by hand: ip link set "+name+" up", "device %s is down", name)
	}
	if mtu > 0 && link.MTU != mtu {
		c.problem("device", fixWeftd+fmt.Sprintf("; by hand: ip link set %s mtu %d", name, mtu), "device %s has MTU %d, want %d", name, link.MTU, mtu)
	}
	if addr.IsValid() {
		addrs, _ := c.k.AddrList(link.Index, nl.FamilyV4)
		found := false
		for _, a := range addrs {
			if a.Prefix == addr {
				found = true
			}
		}
		if !found {
			c.problem("device", fixWeftd+fmt.Sprintf("; by hand: ip addr add %s dev %s", addr, name), "device %s lacks address %s", name, addr)
		}
	}
	return &link
}

func (c *checker) extMTU() int {
	if c.ext == nil {
		return 0
	}
	return c.ext.MTU
}

func (c *checker) checkVXLAN(peers []subnet.Lease) error {
	o := c.options()
	name := fmt.Sprintf("weft.%d", o.VNI)
	mtu := o.MTU
	if mtu == 0 && c.extMTU() > 0 {
		mtu = c.extMTU() - 50
	}
	link := c.checkDevice(name, mtu, netip.PrefixFrom(c.own.Subnet.Addr(), 32))
	if link == nil {
		return nil // one problem, not one per peer: everything hangs off the device
	}
	neighs, err := c.k.NeighList(link.Index, nl.FamilyV4, nil)
	if err != nil {
		return fmt.Errorf("list neighbours of %s: %w", name, err)
	}
	haveNeigh := map[netip.Addr]string{}
	for _, n := range neighs {
		if n.IP.Is4() && n.State&unix.NUD_PERMANENT != 0 {
			haveNeigh[n.IP] = n.HardwareAddr().String()
		}
	}
	fdbs, err := c.k.NeighList(link.Index, nl.FamilyBridge, nil)
	if err != nil {
		return fmt.Errorf("list fdb of %s: %w", name, err)
	}
	haveFDB := map[string]netip.Addr{}
	for _, f := range fdbs {
		if f.IP.Is4() {
			haveFDB[f.HardwareAddr().String()] = f.IP
		}
	}
	c.checkRoutes(peers, func(p subnet.Lease) (string, routeWant) {
		if o.DirectRouting && c.onLink(p.Attrs.PublicIP) && c.ext != nil {
			return "", routeWant{gw: p.Attrs.PublicIP, link: c.ext}
		}
		_, mac, _ := subnet.ParseVXLANData(p.Attrs.BackendData)
		na := p.Subnet.Addr()
		c.rep.Checked += 2
		if got, ok := haveNeigh[na]; !ok {
			c.problem("neigh", fixWeftd+fmt.Sprintf("; by hand: ip neigh replace %s lladdr %s dev %s nud permanent", na, mac, name),
				"neighbour entry %s -> %s on %s is missing (peer %s)", na, mac, name, p.Attrs.PublicIP)
		} else if got != mac.String() {
			c.problem("neigh", fixWeftd+fmt.Sprintf("; by hand: ip neigh replace %s lladdr %s dev %s nud permanent", na, mac, name),
				"neighbour entry %s on %s points to %s, the lease says %s (stale VTEP MAC)", na, name, got, mac)
		}
		if got, ok := haveFDB[mac.String()]; !ok {
			c.problem("fdb", fixWeftd+fmt.Sprintf("; by hand: bridge fdb replace %s dev %s dst %s self permanent", mac, name, p.Attrs.PublicIP),
				"FDB entry %s -> %s on %s is missing", mac, p.Attrs.PublicIP, name)
		} else if got != p.Attrs.PublicIP {
			c.problem("fdb", fixWeftd+fmt.Sprintf("; by hand: bridge fdb replace %s dev %s dst %s self permanent", mac, name, p.Attrs.PublicIP),
				"FDB entry %s on %s sends to %s, the lease says %s", mac, name, got, p.Attrs.PublicIP)
		}
		return "onlink", routeWant{gw: na, link: link, onlink: true}
	})
	return nil
}

func (c *checker) checkHostGW(peers []subnet.Lease) error {
	c.checkRoutes(peers, func(p subnet.Lease) (string, routeWant) {
		if !c.onLink(p.Attrs.PublicIP) {
			return "refused", routeWant{}
		}
		return "", routeWant{gw: p.Attrs.PublicIP, link: c.ext}
	})
	return nil
}

func (c *checker) checkUDP() error {
	o := c.options()
	mtu := o.MTU
	if mtu == 0 && c.extMTU() > 0 {
		mtu = c.extMTU() - 28
	}
	link := c.checkDevice("weft0", mtu, netip.Prefix{})
	if link == nil {
		return nil
	}
	c.rep.Checked++
	routes, err := c.k.RouteList(nl.FamilyV4, unix.RT_TABLE_MAIN, func(r *nl.Route) bool {
		return r.LinkIndex == link.Index && r.Dst == c.in.Config.Network
	}, nil)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	if len(routes) > 0 {
		return nil
	}
	c.problem("route", fixWeftd+fmt.Sprintf("; by hand: ip route replace %s dev weft0 proto %d", c.in.Config.Network, backend.RouteProtocol),
		"route %s dev weft0 is missing", c.in.Config.Network)
	return nil
}

type routeWant struct {
	gw     netip.Addr
	link   *nl.Link
	onlink bool
}

// checkRoutes compares weft's routes (protocol 87) with one route per peer
// as want describes it; a peer for which want returns "refused" must have
// no route. Routes to subnets that no peer holds any more are reported too.
func (c *checker) checkRoutes(peers []subnet.Lease, want func(subnet.Lease) (string, routeWant)) {
	all, err := c.k.RouteList(nl.FamilyV4, unix.RT_TABLE_MAIN, func(r *nl.Route) bool {
		return r.Protocol == backend.RouteProtocol
	}, nil)
	if err != nil {
		c.problem("route", "run weftctl doctor as root", "cannot list routes: %v", err)
		return
	}
	have := map[netip.Prefix]nl.Route{}
	for _, r := range all {
		have[r.Dst] = r
	}
	wanted := map[netip.Prefix]bool{}
	for _, p := range peers {
		kind, w := want(p)
		if kind == "refused" {
			continue
		}
		wanted[p.Subnet] = true
		c.rep.Checked++
		if w.link == nil {
			c.problem("route", fixWeftd, "route to %s (peer %s) cannot be checked: its device is missing", p.Subnet, p.Attrs.PublicIP)
			continue
		}
		desc := fmt.Sprintf("%s via %s dev %s", p.Subnet, w.gw, w.link.Name)
		if w.onlink {
			desc += " onlink"
		}
		fix := fixWeftd + fmt.Sprintf("; by hand: ip route replace %s proto %d", desc, backend.RouteProtocol)
		r, ok := have[p.Subnet]
		if !ok {
			c.problem("route", fix, "route %s is missing (peer %s)", desc, p.Attrs.PublicIP)
			continue
		}
		if r.Gw != w.gw || r.LinkIndex != w.link.Index {
			c.problem("route", fix, "route to %s goes via %s ifindex %d, want %s", p.Subnet, r.Gw, r.LinkIndex, desc)
		}
	}
	var stale []string
	for p := range have {
		if !wanted[p] && p != c.in.Config.Network {
			stale = append(stale, p.String())
		}
	}
	sort.Strings(stale)
	for _, s := range stale {
		c.problem("route", fixWeftd+fmt.Sprintf("; by hand: ip route del %s proto %d", s, backend.RouteProtocol),
			"route to %s has no valid lease behind it (stale)", s)
	}
}

func (c *checker) checkIPTables() {
	env, err := subnet.ReadEnvFile(c.in.SubnetFile)
	masq := err == nil && env.IPMasq
	c.rep.Checked++
	problems, err := iptables.Check(c.in.IPTables, c.in.Config.Network, c.own.Subnet, masq, c.in.Forward)
	if err != nil {
		c.problem("iptables", "run weftctl doctor as root with iptables installed", "cannot read iptables: %v", err)
		return
	}
	for _, p := range problems {
		c.problem("iptables", "weftd restores its rules every --iptables-resync seconds; if they stay missing, another tool is flushing them", "%s", p)
	}
}

// Format renders the report for a terminal: one line per problem with its
// fix indented below, or a single all-clear line.
func (r Report) Format() string {
	var b strings.Builder
	fmt.Fprintf(&b, "lease %s  public-ip %s  backend %s  interface %s  peers %d  checks %d\n",
		orDash(r.Lease), orDash(r.PublicIP), r.Backend, orDash(r.Interface), r.Peers, r.Checked)
	if len(r.Refused) > 0 {
		fmt.Fprintf(&b, "%d lease(s) not programmed:\n", len(r.Refused))
		for _, x := range r.Refused {
			fmt.Fprintf(&b, "  %s (%s): %s\n", strconv.Quote(x.Key), x.Reason, strconv.Quote(x.Error))
		}
	}
	if r.OK() {
		b.WriteString("OK: the kernel matches the leases in etcd\n")
		return b.String()
	}
	fmt.Fprintf(&b, "%d problem(s):\n", len(r.Problems))
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "  [%s] %s\n        fix: %s\n", p.Area, p.What, p.Fix)
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
