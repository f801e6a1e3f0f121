package plugin

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/cni-plugin/ipam"
)

// cmdCheck verifies that the attachment is still as ADD left it: the
// reservation, the container interface with its address, MTU and routes,
// the host end on the bridge, and the masquerade rule.
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
	var res ipam.Reservation
	for _, r := range held {
		if s.Subnet.Contains(r.IP) {
			res = r
		}
	}
	if !res.IP.IsValid() {
		return fmt.Errorf("no address of %s is reserved for container %s interface %s", s.Subnet, args.ContainerID, args.IfName)
	}
	addr := netip.PrefixFrom(res.IP, s.Subnet.Bits())

	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.NetConf); err != nil {
			return fmt.Errorf("parse prevResult: %w", err)
		}
		prev, err := current.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return fmt.Errorf("convert prevResult: %w", err)
		}
		found := false
		for _, ipc := range prev.IPs {
			if p, ok := prefixOf(&ipc.Address); ok && p == addr {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("prevResult does not hold the reserved address %s", addr)
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
	addrs, err := h.AddrList(cLink, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", args.IfName, err)
	}
	haveAddr := false
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && p == addr {
			haveAddr = true
		}
	}
	if !haveAddr {
		return fmt.Errorf("interface %s does not hold %s", args.IfName, addr)
	}
	rs, err := h.RouteList(cLink, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list routes of %s: %w", args.IfName, err)
	}
	for _, want := range podRoutes(s) {
		gw := want.GW
		if gw == nil {
			gw = net.IP(s.Gateway.AsSlice())
		}
		wantDst, _ := prefixOf(&want.Dst)
		found := false
		for _, r := range rs {
			dst := netip.MustParsePrefix("0.0.0.0/0")
			if r.Dst != nil {
				dst, _ = prefixOf(r.Dst)
			}
			if dst == wantDst && r.Gw.Equal(gw) {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("route %s via %s missing in %s", wantDst, gw, args.Netns)
		}
	}

	br, err := bridgeByName(s.Bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", s.Bridge, err)
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
		m, err := newMasq(conf.Name)
		if err != nil {
			return err
		}
		// The rules are shared by every pod of the subnet, and a firewall
		// reload removes them all: CHECK restores them rather than
		// failing every pod, and says so.
		fixed, err := ensureMasq(store, m, s.Network, s.Subnet)
		if err != nil {
			return fmt.Errorf("masquerade: %w", err)
		}
		for _, f := range fixed {
			log.Warn("check: masquerade rules were not in place; restored: "+f.What, "network", conf.Name, "subnet", s.Subnet)
		}
	}
	return nil
}
