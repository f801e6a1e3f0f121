package plugin

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/cni-plugin/ipam"
	"github.com/weftnet/weft/internal/nl"
)

// cmdCheck verifies that the attachment is still as ADD left it: the
// reservations, the container interface with its addresses, MTU and
// routes, the gateways on the bridge and the host end on it, and the
// masquerade rules; each for IPv4 and, with dual stack, for IPv6. An error
// names the family and what is missing.
func cmdCheck(args *skel.CmdArgs) error {
	conf, log, closeLog, err := start(args)
	if err != nil {
		return err
	}
	defer closeLog()
	env, err := loadEnv(conf.SubnetFile)
	if err != nil {
		return err
	}
	s, err := conf.Resolve(env)
	if err != nil {
		return err
	}
	if err := check(args, conf, s, log); err != nil {
		return wrap(types.ErrInternal, "check", err)
	}
	return nil
}

func check(args *skel.CmdArgs, conf *NetConf, s *Settings, log *slog.Logger) error {
	store, err := openStore(conf, log)
	if err != nil {
		return err
	}
	owner := ipam.Owner{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName}
	held, err := store.Lookup(owner)
	if err != nil {
		return err
	}
	fams := s.families()
	addrs := make([]netip.Prefix, len(fams))
	for i, f := range fams {
		for _, r := range held {
			if f.subnet.Contains(r.IP) {
				addrs[i] = netip.PrefixFrom(r.IP, f.subnet.Bits())
			}
		}
		if !addrs[i].IsValid() {
			return fmt.Errorf("no %s address of %s is reserved for container %s interface %s", f.name, f.subnet, args.ContainerID, args.IfName)
		}
	}

	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.NetConf); err != nil {
			return fmt.Errorf("parse prevResult: %w", err)
		}
		prev, err := current.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return fmt.Errorf("convert prevResult: %w", err)
		}
		for i, addr := range addrs {
			found := false
			for _, ipc := range prev.IPs {
				if p, ok := prefixOf(&ipc.Address); ok && p == addr {
					found = true
				}
			}
			if !found {
				return fmt.Errorf("prevResult does not hold the reserved %s address %s", fams[i].name, addr)
			}
		}
	}

	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", args.Netns, err)
	}
	defer podNS.Close()
	h, err := netlink.NewHandleAt(netns.NsHandle(podNS.Fd()))
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", args.Netns, err)
	}
	defer h.Close()

	cLink, err := h.LinkByName(args.IfName)
	if err != nil {
		return fmt.Errorf("interface %s not found in %s: %w", args.IfName, args.Netns, err)
	}
	if _, ok := cLink.(*netlink.Veth); !ok {
		return fmt.Errorf("interface %s in %s is a %s, not a veth", args.IfName, args.Netns, cLink.Type())
	}
	if cLink.Attrs().MTU != s.MTU {
		return fmt.Errorf("interface %s has mtu %d, want %d", args.IfName, cLink.Attrs().MTU, s.MTU)
	}
	if cLink.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("interface %s is down", args.IfName)
	}
	for i, f := range fams {
		if err := checkAddr(h, cLink, args.IfName, f, addrs[i]); err != nil {
			return err
		}
	}
	if err := checkRoutes(h, cLink, s, args.Netns); err != nil {
		return err
	}

	br, err := bridgeByName(s.Bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", s.Bridge, err)
	}
	for _, f := range fams {
		have, err := bridgeAddrs(br, f.gateway.Is6())
		if err != nil {
			return fmt.Errorf("list addresses of %s: %w", s.Bridge, err)
		}
		if want := netip.PrefixFrom(f.gateway, f.subnet.Bits()); !slices.Contains(have, want) {
			return fmt.Errorf("bridge %s does not hold the %s gateway %s", s.Bridge, f.name, want)
		}
	}
	hostName := HostVethName(args.ContainerID, args.IfName)
	hostLink, err := netlink.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", hostName, err)
	}
	if hostLink.Attrs().MasterIndex != br.Index {
		return fmt.Errorf("host veth %s is not attached to bridge %s", hostName, s.Bridge)
	}
	if hostLink.Attrs().ParentIndex != cLink.Attrs().Index || cLink.Attrs().ParentIndex != hostLink.Attrs().Index {
		return fmt.Errorf("host veth %s is not the peer of %s in %s", hostName, args.IfName, args.Netns)
	}
	if hostLink.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host veth %s is down", hostName)
	}
	if s.IPMasq {
		for _, fam := range fams {
			m, err := newMasq(conf.Name, fam.gateway.Is6())
			if err != nil {
				return err
			}
			// The rules are shared by every pod of the subnet, and a
			// firewall reload removes them all: CHECK restores them
			// rather than failing every pod, and says so.
			fixed, err := ensureMasq(store, m, fam.network, fam.subnet)
			if err != nil {
				return fmt.Errorf("%s masquerade: %w", fam.name, err)
			}
			for _, f := range fixed {
				log.Warn("check: masquerade rules were not in place; restored: "+f.What, "network", conf.Name, "subnet", fam.subnet)
			}
		}
	}
	return nil
}

// checkAddr verifies that the container interface holds the family's
// reserved address, usable: for IPv6 neither tentative nor failed by
// duplicate address detection.
func checkAddr(h *netlink.Handle, link netlink.Link, ifName string, f family, want netip.Prefix) error {
	fam := netlink.FAMILY_V4
	if f.gateway.Is6() {
		fam = netlink.FAMILY_V6
	}
	addrs, err := nl.RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, fam) })
	if err != nil {
		return fmt.Errorf("list %s addresses of %s: %w", f.name, ifName, err)
	}
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); !ok || p != want {
			continue
		}
		switch {
		case a.Flags&unix.IFA_F_DADFAILED != 0:
			return fmt.Errorf("interface %s holds %s, but duplicate address detection failed: another host on the bridge uses it", ifName, want)
		case a.Flags&unix.IFA_F_TENTATIVE != 0:
			return fmt.Errorf("interface %s holds %s, but it is still tentative (duplicate address detection running)", ifName, want)
		}
		return nil
	}
	return fmt.Errorf("interface %s does not hold its %s address %s", ifName, f.name, want)
}

// checkRoutes verifies that the container interface has every route of
// podRoutes, each via its gateway.
func checkRoutes(h *netlink.Handle, link netlink.Link, s *Settings, netnsPath string) error {
	var rs []netlink.Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		if fam == netlink.FAMILY_V6 && !s.DualStack() {
			continue
		}
		got, err := nl.RetryDump(func() ([]netlink.Route, error) { return h.RouteList(link, fam) })
		if err != nil {
			return fmt.Errorf("list routes of %s: %w", link.Attrs().Name, err)
		}
		rs = append(rs, got...)
	}
	for _, want := range podRoutes(s) {
		wantDst, _ := prefixOf(&want.Dst)
		found := false
		for _, r := range rs {
			// A default route comes back without a destination.
			dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if r.Family == netlink.FAMILY_V6 {
				dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
			if r.Dst != nil {
				dst, _ = prefixOf(r.Dst)
			}
			if dst == wantDst && r.Gw.Equal(want.GW) {
				found = true
			}
		}
		if !found {
			family := "IPv4"
			if wantDst.Addr().Is6() {
				family = "IPv6"
			}
			return fmt.Errorf("%s route %s via %s missing in %s", family, wantDst, want.GW, netnsPath)
		}
	}
	return nil
}
