// Package doctor compares what the kernel of one host holds with what the
// leases in etcd say it should hold, and explains each difference with a
// suggested fix. It is read-only: it never changes the kernel or etcd.
//
// It deliberately derives the expected state on its own, from the network
// config and the leases, rather than asking weftd: it is the second opinion
// an engineer wants when weftd itself may be what is broken.
package doctor

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	nft "github.com/google/nftables"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/backends"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/nftables"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/subnet"
)

// Input is everything the doctor looks at besides the kernel.
type Input struct {
	Config *subnet.Config
	Leases []*subnet.Lease
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
	// PlainMasq says weftd runs with --ip-masq-fully-random-disable: its
	// masquerade rules have no fully random source ports.
	PlainMasq bool
	// Masq says whether weftd runs with --ip-masq; nil means: as the
	// subnet file's FLANNEL_IPMASQ says.
	Masq *bool
	// Rules is where weftd keeps its masquerade and forward rules:
	// "iptables" (the default) or "nftables" (table ip weft).
	Rules string
	// IPTables, if set, is checked for weft's chains in iptables mode; nil
	// skips the check.
	IPTables iptables.IPTables
	// IPTables6, if set, is checked for weft's IPv6 chains (ip6tables) in
	// iptables mode on a dual-stack network.
	IPTables6 iptables.IPTables
	// NFTables, if set, is read for table ip weft in nftables mode; nil
	// skips the check.
	NFTables nftables.Kernel
	// WeftdDown, when not "", says why weftd is not answering: fixes then
	// do not promise that weftd restores anything.
	WeftdDown string
	// StoreSkipped, when not "", says why the lease store could not be
	// read: the leases are then weftd's last known set, and the report
	// says the store's own checks were skipped.
	StoreSkipped string
	// WireGuardPeers reads the peers of a WireGuard device; nil means
	// wgctrl in Netns (the kernel's device over netlink, the userspace
	// one over its UAPI socket in /var/run/wireguard). Tests set a fake.
	WireGuardPeers func(dev string) ([]WireGuardPeer, error)
}

// WireGuardPeer is one peer a WireGuard device holds.
type WireGuardPeer struct {
	PublicKey  [32]byte
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
}

// Problem is one difference, with what to do about it.
type Problem struct {
	Area string `json:"area"` // lease, subnet-file, device, route, neigh, fdb, wireguard, iptables, nftables
	What string `json:"what"`
	Fix  string `json:"fix"`
}

// Report is the doctor's verdict for one host.
type Report struct {
	// Weftd says first when weftd is not answering (Input.WeftdDown).
	Weftd string `json:"weftd,omitempty"`
	// Store says when the lease store could not be read and weftd's last
	// known leases were checked instead (Input.StoreSkipped).
	Store     string    `json:"store,omitempty"`
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
	in Input
	// be describes the config's backend (internal/backends): the doctor
	// judges peers with its rules and compares the kernel with what it
	// says it keeps there.
	be     backend.Descriptor
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
	if c.in.WeftdDown != "" {
		// Nothing restores it while weftd does not run.
		for _, promise := range []string{fixWeftd, fixRules} {
			if rest, ok := strings.CutPrefix(fix, promise); ok {
				fix = fixWeftdDown + rest
			}
		}
	}
	c.rep.Problems = append(c.rep.Problems, Problem{Area: area, What: fmt.Sprintf(format, args...), Fix: fix})
}

// fixWeftdDown replaces the promises above when weftd does not answer.
const fixWeftdDown = "weftd is not answering, so nothing restores this: start or restart weftd (systemctl restart weftd), which re-creates it, and check its log (journalctl -u weftd)"

// fixRules is the fix for a rule weftd keeps.
const fixRules = "weftd restores its rules every --iptables-resync seconds; if they stay missing, another tool is flushing them"

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
	be, _ := backends.Lookup(in.Config.BackendType) // unknown: said below
	c := &checker{in: in, be: be, k: k, rep: Report{Backend: in.Config.BackendType, Problems: []Problem{}}}
	if in.StoreSkipped != "" {
		c.rep.Store = "the lease store is unreachable (" + in.StoreSkipped + "): checked the kernel against weftd's last known leases; the store's own checks were skipped"
	}
	if in.WeftdDown != "" {
		c.rep.Weftd = "weftd is not answering (" + in.WeftdDown + "): nothing restores what is wrong below until it runs again"
	}
	if err := c.findOwn(); err != nil {
		return c.rep, err
	}
	if !c.own.Subnet.IsValid() {
		return c.rep, nil
	}
	c.checkSubnetFile()
	peers := c.validPeers()
	c.rep.Peers = len(peers)
	if c.be.Expect == nil {
		c.problem("config", "set Backend.Type to a backend this weftctl knows with `weftctl config set`", "unknown backend %q", in.Config.BackendType)
		return c.rep, nil
	}
	ext := backend.ExternalInterface{}
	if c.ext != nil {
		ext = backend.ExternalInterface{Name: c.ext.Name, Index: c.ext.Index, MTU: c.ext.MTU}
	}
	exp, err := c.be.Expect(backend.ExpectInput{Network: in.Config, Options: in.Config.Backend,
		Own: c.own, Peers: peers, Ext: ext, OnLink: c.extNet})
	if err != nil {
		c.problem("config", "fix the Backend options with `weftctl config set`", "backend options: %v", err)
		return c.rep, nil
	}
	if err := c.compare(exp); err != nil {
		return c.rep, err
	}
	c.checkWireGuard(exp.WireGuardPeers, exp.Devices)
	c.checkIPTables()
	return c.rep, nil
}

// findOwn identifies our lease and the external interface.
func (c *checker) findOwn() error {
	addrs, err := c.k.AddrList(0, nl.FamilyAll)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	local := map[netip.Addr]int{}
	for _, a := range addrs {
		local[a.Prefix.Addr()] = a.LinkIndex
	}
	// Ours: a lease carrying our address; of several (a stale one, or a
	// key planted with our PublicIP), the one in weftd's subnet file.
	var fileSubnet netip.Prefix
	if env, err := subnet.ReadEnvFile(c.in.SubnetFile); err == nil {
		fileSubnet = env.LeaseSubnet()
	}
	for _, l := range c.in.Leases {
		mine := l.Attrs.PublicIP == c.in.PublicIP
		if !c.in.PublicIP.IsValid() {
			_, mine = local[l.Attrs.PublicIP]
		}
		if mine && (!c.own.Subnet.IsValid() || l.Subnet == fileSubnet) {
			c.own = *l
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
	if !c.in.Config.EnableIPv6 {
		return
	}
	if env.IPv6Network != c.in.Config.IPv6.Network {
		c.problem("subnet-file", "restart weftd so it rewrites the file", "%s has FLANNEL_IPV6_NETWORK=%s, the network config says %s",
			c.in.SubnetFile, prefixOrNone(env.IPv6Network), c.in.Config.IPv6.Network)
	}
	if env.LeaseSubnet6() != c.own.IPv6Subnet {
		c.problem("subnet-file", "restart weftd so it rewrites the file (and re-claims a dual-stack key); pods created since then lack IPv6 or have addresses of the wrong subnet",
			"%s has FLANNEL_IPV6_SUBNET=%s, but our lease's IPv6 subnet is %s", c.in.SubnetFile, prefixOrNone(env.IPv6Subnet), prefixOrNone(c.own.IPv6Subnet))
	}
}

// prefixOrNone renders a prefix, "(none)" when absent.
func prefixOrNone(p netip.Prefix) string {
	if !p.IsValid() {
		return "(none)"
	}
	return p.String()
}

// validPeers judges the leases exactly as weftd does (subnet.FilterPeers)
// and reports every refused lease: weftd programs nothing for it, and an
// operator should know why.
func (c *checker) validPeers() []*subnet.Lease {
	peers, refused := subnet.FilterPeers(c.in.Config, c.be.PeerRules(), c.own, c.in.Leases, c.in.Invalid)
	for _, r := range refused {
		c.rep.Refused = append(c.rep.Refused, RefusedLease{Key: r.Key, Reason: r.Reason, Error: r.Err.Error()})
		if subnet.Conflict(r.Reason) {
			c.problem("lease", "weftd keeps the older of two leases that claim one subnet or VtepMAC: if the refused lease belongs to a live host, delete the stale older key (etcdctl del <prefix>/subnets/<key>), else delete the refused one",
				"lease %s is refused (%s): %v", strconv.Quote(r.Key), r.Reason, r.Err)
		}
	}
	return peers
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
		addrs, _ := c.k.AddrList(link.Index, nl.FamilyOf(addr.Addr()))
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

// compare reports every difference between exp and the kernel: each
// device, neighbour entry, FDB entry and route the backend keeps, and our
// routes (protocol RouteProtocol) that no peer accounts for.
func (c *checker) compare(exp backend.Expectation) error {
	links := map[string]*nl.Link{}
	missing := false
	for _, d := range exp.Devices {
		links[d.Name] = c.checkDevice(d.Name, d.MTU, d.Addr)
		missing = missing || links[d.Name] == nil
	}
	if missing {
		return nil // one problem, not one per peer: everything hangs off the device
	}
	devOf := func(name string) (*nl.Link, bool) {
		if name == "" {
			return c.ext, c.ext != nil
		}
		l, ok := links[name]
		return l, ok && l != nil
	}

	// Neighbour and FDB entries, per device, read once each.
	neighs := map[string]map[netip.Addr]string{}
	fdbs := map[string]map[string]netip.Addr{}
	for _, n := range exp.Neighbours {
		l, ok := devOf(n.Dev)
		if !ok {
			continue // the device's own problem says it all
		}
		if neighs[n.Dev] == nil {
			list, err := c.k.NeighList(l.Index, nl.FamilyAll, nil)
			if err != nil {
				return fmt.Errorf("list neighbours of %s: %w", n.Dev, err)
			}
			have := map[netip.Addr]string{}
			for _, e := range list {
				if (e.Family == nl.FamilyV4 || e.Family == nl.FamilyV6) && e.IP.IsValid() && e.State&unix.NUD_PERMANENT != 0 {
					have[e.IP] = e.HardwareAddr().String()
				}
			}
			neighs[n.Dev] = have
		}
		c.rep.Checked++
		fix := fixWeftd + fmt.Sprintf("; by hand: ip neigh replace %s lladdr %s dev %s nud permanent", n.IP, n.MAC, n.Dev)
		if got, ok := neighs[n.Dev][n.IP]; !ok {
			c.problem("neigh", fix, "neighbour entry %s -> %s on %s is missing (peer %s)", n.IP, n.MAC, n.Dev, n.Peer)
		} else if got != n.MAC.String() {
			c.problem("neigh", fix, "neighbour entry %s on %s points to %s, the lease says %s (stale VTEP MAC)", n.IP, n.Dev, got, n.MAC)
		}
	}
	for _, f := range exp.FDB {
		l, ok := devOf(f.Dev)
		if !ok {
			continue
		}
		if fdbs[f.Dev] == nil {
			list, err := c.k.NeighList(l.Index, nl.FamilyBridge, nil)
			if err != nil {
				return fmt.Errorf("list fdb of %s: %w", f.Dev, err)
			}
			have := map[string]netip.Addr{}
			for _, e := range list {
				if e.IP.IsValid() {
					have[e.HardwareAddr().String()] = e.IP
				}
			}
			fdbs[f.Dev] = have
		}
		c.rep.Checked++
		fix := fixWeftd + fmt.Sprintf("; by hand: bridge fdb replace %s dev %s dst %s self permanent", f.MAC, f.Dev, f.Dst)
		if got, ok := fdbs[f.Dev][f.MAC.String()]; !ok {
			c.problem("fdb", fix, "FDB entry %s -> %s on %s is missing", f.MAC, f.Dst, f.Dev)
		} else if got != f.Dst {
			c.problem("fdb", fix, "FDB entry %s on %s sends to %s, the lease says %s", f.MAC, f.Dev, got, f.Dst)
		}
	}
	return c.checkRoutes(exp.Routes, devOf)
}

// checkWireGuard compares the peers of each WireGuard device with want:
// a peer missing, one with another endpoint or other allowed IPs, and a
// peer no lease accounts for (a stale or rotated key) are problems.
func (c *checker) checkWireGuard(want []backend.ExpectedWireGuardPeer, devs []backend.ExpectedDevice) {
	if c.be.Type != "wireguard" {
		return
	}
	read := c.in.WireGuardPeers
	if read == nil {
		read = func(dev string) ([]WireGuardPeer, error) { return wgctrlPeers(c.in.Netns, dev) }
	}
	byDev := map[string][]backend.ExpectedWireGuardPeer{}
	for _, w := range want {
		byDev[w.Dev] = append(byDev[w.Dev], w)
	}
	for _, d := range devs {
		if l, err := c.k.LinkByName(d.Name); err != nil || l.Index == 0 {
			continue // the device's own problem says it all
		}
		have, err := read(d.Name)
		if err != nil {
			c.problem("wireguard", "run weftctl doctor as root in weftd's namespaces; check `wg show "+d.Name+"`",
				"cannot read the peers of %s: %v", d.Name, err)
			continue
		}
		got := map[[32]byte]WireGuardPeer{}
		for _, p := range have {
			got[p.PublicKey] = p
		}
		wanted := map[[32]byte]bool{}
		for _, w := range byDev[d.Name] {
			c.rep.Checked++
			wanted[w.PublicKey] = true
			key := base64.StdEncoding.EncodeToString(w.PublicKey[:])
			p, ok := got[w.PublicKey]
			if !ok {
				c.problem("wireguard", fixWeftd, "peer %s (host %s) is missing from %s", key, w.Peer, d.Name)
				continue
			}
			if p.Endpoint != w.Endpoint {
				c.problem("wireguard", fixWeftd, "peer %s on %s has endpoint %s, the lease says %s", key, d.Name, p.Endpoint, w.Endpoint)
			}
			if !samePrefixes(p.AllowedIPs, w.AllowedIPs) {
				c.problem("wireguard", fixWeftd, "peer %s on %s allows %v, the lease says %v", key, d.Name, p.AllowedIPs, w.AllowedIPs)
			}
		}
		for _, p := range have {
			if !wanted[p.PublicKey] {
				key := base64.StdEncoding.EncodeToString(p.PublicKey[:])
				c.problem("wireguard", fixWeftd+fmt.Sprintf("; by hand: wg set %s peer %s remove", d.Name, key),
					"peer %s on %s belongs to no valid lease (stale or rotated key)", key, d.Name)
			}
		}
	}
}

func samePrefixes(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	set := map[netip.Prefix]bool{}
	for _, p := range a {
		set[p.Masked()] = true
	}
	for _, p := range b {
		if !set[p.Masked()] {
			return false
		}
	}
	return true
}

// wgctrlPeers reads a WireGuard device's peers with wgctrl inside ns.
func wgctrlPeers(ns netns.NsHandle, dev string) ([]WireGuardPeer, error) {
	var out []WireGuardPeer
	err := nl.Do(ns, func() error {
		cl, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer cl.Close()
		d, err := cl.Device(dev)
		if err != nil {
			return err
		}
		for _, p := range d.Peers {
			wp := WireGuardPeer{PublicKey: p.PublicKey}
			if p.Endpoint != nil {
				ap := p.Endpoint.AddrPort()
				wp.Endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			}
			for _, a := range p.AllowedIPs {
				ones, _ := a.Mask.Size()
				if ip, ok := netip.AddrFromSlice(a.IP); ok {
					wp.AllowedIPs = append(wp.AllowedIPs, netip.PrefixFrom(ip.Unmap(), ones))
				}
			}
			out = append(out, wp)
		}
		return nil
	})
	return out, err
}

// checkRoutes compares weft's routes (protocol RouteProtocol, and any
// route exp names) with exp; routes of ours that exp does not name are
// stale.
func (c *checker) checkRoutes(want []backend.ExpectedRoute, devOf func(string) (*nl.Link, bool)) error {
	wanted := map[netip.Prefix]bool{}
	for _, w := range want {
		wanted[w.Dst] = true
	}
	keep := func(r *nl.Route) bool { return r.Protocol == backend.RouteProtocol || wanted[r.Dst] }
	all, err := c.k.RouteList(nl.FamilyV4, unix.RT_TABLE_MAIN, keep, nil)
	if err == nil && c.in.Config.EnableIPv6 {
		var all6 []nl.Route
		all6, err = c.k.RouteList(nl.FamilyV6, unix.RT_TABLE_MAIN, keep, nil)
		all = append(all, all6...)
	}
	if err != nil {
		c.problem("route", "run weftctl doctor as root", "cannot list routes: %v", err)
		return nil
	}
	have := map[netip.Prefix]nl.Route{}
	for _, r := range all {
		if _, dup := have[r.Dst]; !dup || r.Protocol == backend.RouteProtocol {
			have[r.Dst] = r
		}
	}
	for _, w := range want {
		c.rep.Checked++
		l, ok := devOf(w.Dev)
		if !ok {
			c.problem("route", fixWeftd, "route to %s (peer %s) cannot be checked: its device is missing", w.Dst, w.Peer)
			continue
		}
		desc := w.Dst.String()
		if w.Gw.IsValid() {
			desc += " via " + w.Gw.String()
		}
		desc += " dev " + l.Name
		if w.OnLink {
			desc += " onlink"
		}
		fix := fixWeftd + fmt.Sprintf("; by hand: ip route replace %s proto %d", desc, backend.RouteProtocol)
		r, ok := have[w.Dst]
		if !ok {
			if w.Peer.IsValid() {
				c.problem("route", fix, "route %s is missing (peer %s)", desc, w.Peer)
			} else {
				c.problem("route", fix, "route %s is missing", desc)
			}
			continue
		}
		if r.Gw != w.Gw || r.LinkIndex != l.Index {
			c.problem("route", fix, "route to %s goes via %s ifindex %d, want %s", w.Dst, r.Gw, r.LinkIndex, desc)
		}
	}
	var stale []string
	for p, r := range have {
		if !wanted[p] && r.Protocol == backend.RouteProtocol {
			stale = append(stale, p.String())
		}
	}
	sort.Strings(stale)
	for _, s := range stale {
		c.problem("route", fixWeftd+fmt.Sprintf("; by hand: ip route del %s proto %d", s, backend.RouteProtocol),
			"route to %s has no valid lease behind it (stale)", s)
	}
	return nil
}

func (c *checker) checkIPTables() {
	masq := false
	if c.in.Masq != nil {
		masq = *c.in.Masq
	} else if env, err := subnet.ReadEnvFile(c.in.SubnetFile); err == nil {
		masq = env.IPMasq
	}
	if c.in.Rules == "nftables" {
		c.checkNFTables(masq, c.in.Config.Network, c.own.Subnet)
		if c.in.Config.HasIPv6(c.own) {
			c.checkNFTables(masq, c.in.Config.IPv6.Network, c.own.IPv6Subnet)
		}
		return
	}
	c.checkIPTablesOf(c.in.IPTables, "iptables", c.in.Config.Network, c.own.Subnet, masq)
	if c.in.Config.HasIPv6(c.own) {
		c.checkIPTablesOf(c.in.IPTables6, "ip6tables", c.in.Config.IPv6.Network, c.own.IPv6Subnet, masq)
	}
}

// checkIPTablesOf checks weft's chains in one family's tables (ipt may be
// nil: not checked).
func (c *checker) checkIPTablesOf(ipt iptables.IPTables, name string, network, own netip.Prefix, masq bool) {
	if ipt == nil {
		return
	}
	c.rep.Checked++
	problems, err := iptables.Check(ipt, network, own, masq, c.in.Forward, !c.in.PlainMasq)
	if err != nil {
		c.problem("iptables", "run weftctl doctor as root with "+name+" installed", "cannot read %s: %v", name, err)
		return
	}
	for _, p := range problems {
		c.problem("iptables", fixRules, "%s", p)
	}
}

// checkNFTables compares table ip weft with the table weftd keeps in
// nftables mode (nftables.Desired). Masquerade with or without fully random
// ports is right unless weftd was told which: a kernel may refuse it.
func (c *checker) checkNFTables(masq bool, network, own netip.Prefix) {
	if c.in.NFTables == nil || (!masq && !c.in.Forward) {
		return
	}
	c.rep.Checked++
	fam, famName := nft.TableFamilyIPv4, "ip"
	if network.Addr().Is6() {
		fam, famName = nft.TableFamilyIPv6, "ip6"
	}
	have, ok, err := c.in.NFTables.Read(fam, nftables.TableName)
	if err != nil {
		c.problem("nftables", "run weftctl doctor as root", "cannot read table %s %s: %v", famName, nftables.TableName, err)
		return
	}
	if !ok {
		c.problem("nftables", fixRules, "table %s %s is missing", famName, nftables.TableName)
		return
	}
	p := nftables.Policy{Network: network.Masked(), Lease: own.Masked(), Masq: masq, Forward: c.in.Forward, FullyRandom: !c.in.PlainMasq}
	want := nftables.Desired(p)
	if nftables.Equal(have, want) {
		return
	}
	if p.FullyRandom {
		p.FullyRandom = false
		if nftables.Equal(have, nftables.Desired(p)) {
			return
		}
	}
	c.problem("nftables", fixRules+"; compare `nft list table "+famName+" "+nftables.TableName+"` with configuration.md",
		"table %s %s does not hold the expected rules:\nhave:\n%s\nwant:\n%s", famName, nftables.TableName, indent(have.String()), indent(want.String()))
}

func indent(s string) string {
	return "          " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n          ")
}

// Format renders the report for a terminal: one line per problem with its
// fix indented below, or a single all-clear line.
func (r Report) Format() string {
	var b strings.Builder
	if r.Weftd != "" {
		fmt.Fprintf(&b, "%s\n", r.Weftd)
	}
	if r.Store != "" {
		fmt.Fprintf(&b, "%s\n", r.Store)
	}
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
