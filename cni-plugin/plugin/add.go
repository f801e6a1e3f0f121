package plugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/cni-plugin/ipam"
)

func cmdAdd(args *skel.CmdArgs) error {
	conf, log, closeLog, err := start(args)
	if err != nil {
		return err
	}
	defer closeLog()
	tm := newTimer()
	if err := validIfName(args.IfName); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_IFNAME: %v", err), "")
	}
	env, err := loadEnv(conf.SubnetFile)
	if err != nil {
		return err
	}
	s, err := conf.Resolve(env)
	if err != nil {
		return err
	}
	store, err := openStore(conf, log)
	if err != nil {
		return err
	}
	owner := ipam.Owner{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName}

	// 1. Reserve the address before touching any interface.
	var res ipam.Reservation
	var existing bool
	err = store.Do(func(tx *ipam.Tx) error {
		var err error
		res, existing, err = tx.Allocate(s.Subnet, s.Gateway, owner)
		return err
	})
	if errors.Is(err, ipam.ErrExhausted) {
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	}
	if err != nil {
		return wrap(types.ErrIOFailure, "reserve address", err)
	}
	log = log.With("container", args.ContainerID, "ifname", args.IfName, "ip", res.IP)
	tm.mark("reserve")

	hostName := HostVethName(args.ContainerID, args.IfName)
	success := false
	defer func() {
		if success {
			return
		}
		if err := deleteLinkByName(hostName); err != nil {
			log.Warn("rollback: delete host veth", "err", err)
		}
		if !existing {
			// The masquerade rules are shared by the subnet; the last DEL
			// removes them.
			if err := release(store, conf.Name, owner); err != nil {
				log.Warn("rollback: release address", "err", err)
			}
		}
	}()

	// 2. Host side: the bridge.
	br, removed, err := ensureBridge(s, store)
	var foreign *ForeignAddressError
	if errors.As(err, &foreign) {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	if err != nil {
		return wrap(types.ErrInternal, "ensure bridge", err)
	}
	for _, p := range removed {
		log.Warn("removed a stale address from the bridge", "bridge", s.Bridge, "address", p, "gateway", s.Gateway)
	}

	tm.mark("bridge")
	// 3. The veth pair, created with its peer directly in the container.
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("open netns %s: %v", args.Netns, err), "")
	}
	defer podNS.Close()
	h, err := netlink.NewHandleAt(netns.NsHandle(podNS.Fd()))
	if err != nil {
		return wrap(types.ErrInternal, "netlink handle in "+args.Netns, err)
	}
	defer h.Close()

	// A host end left by an earlier ADD of this attachment goes first;
	// deleting it also deletes its peer in the container.
	if err := deleteLinkByName(hostName); err != nil {
		return wrap(types.ErrInternal, "remove stale veth", err)
	}
	if _, err := h.LinkByName(args.IfName); err == nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("interface %s already exists in %s", args.IfName, args.Netns), "")
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = hostName
	attrs.MTU = s.MTU
	attrs.Flags = net.FlagUp
	attrs.MasterIndex = br.Index
	veth := &netlink.Veth{
		LinkAttrs:     attrs,
		PeerName:      args.IfName,
		PeerMTU:       uint32(s.MTU),
		PeerNamespace: netlink.NsFd(int(podNS.Fd())),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return wrap(types.ErrInternal, fmt.Sprintf("create veth %s/%s", hostName, args.IfName), err)
	}
	hostLink, err := netlink.LinkByName(hostName)
	if err != nil {
		return wrap(types.ErrInternal, "look up host veth", err)
	}
	if s.Hairpin {
		if err := netlink.LinkSetHairpin(hostLink, true); err != nil {
			return wrap(types.ErrInternal, "set hairpin on "+hostName, err)
		}
	}

	tm.mark("veth")
	// 4. Container side: address, link up, routes.
	cLink, err := h.LinkByName(args.IfName)
	if err != nil {
		return wrap(types.ErrInternal, "look up container interface", err)
	}
	addr := netip.PrefixFrom(res.IP, s.Subnet.Bits())
	if err := h.AddrAdd(cLink, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return wrap(types.ErrInternal, fmt.Sprintf("add %s to %s", addr, args.IfName), err)
	}
	if err := h.LinkSetUp(cLink); err != nil {
		return wrap(types.ErrInternal, "set "+args.IfName+" up", err)
	}
	routes := podRoutes(s)
	for _, r := range routes {
		gw := r.GW
		if gw == nil {
			gw = net.IP(s.Gateway.AsSlice())
		}
		dst := r.Dst
		err := h.RouteAdd(&netlink.Route{LinkIndex: cLink.Attrs().Index, Dst: &dst, Gw: gw})
		if err != nil {
			return wrap(types.ErrInternal, fmt.Sprintf("add route %s via %s", dst.String(), gw), err)
		}
	}

	tm.mark("container")
	// 5. Masquerade and forwarding in the host namespace.
	if s.IPMasq {
		m, err := newMasq(conf.Name)
		if err != nil {
			return wrap(types.ErrInternal, "masquerade", err)
		}
		fixed, err := ensureMasq(store, m, s.Network, s.Subnet)
		if err != nil {
			return wrap(types.ErrInternal, "masquerade", err)
		}
		for _, f := range fixed {
			if f.Restored {
				log.Warn("masquerade rules were not in place; restored: "+f.What, "network", conf.Name, "subnet", s.Subnet)
			} else {
				log.Info("masquerade: "+f.What, "network", conf.Name, "subnet", s.Subnet)
			}
		}
	}
	if err := ensureForwarding(); err != nil {
		return wrap(types.ErrInternal, "forwarding", err)
	}

	tm.mark("masq")
	// Port membership changes the bridge's MAC; report the current one.
	brMAC := br.HardwareAddr
	if l, err := netlink.LinkByIndex(br.Index); err == nil {
		brMAC = l.Attrs().HardwareAddr
	}
	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: s.Bridge, Mac: brMAC.String()},
			{Name: hostName, Mac: hostLink.Attrs().HardwareAddr.String()},
			{Name: args.IfName, Mac: cLink.Attrs().HardwareAddr.String(), Sandbox: args.Netns},
		},
		IPs: []*current.IPConfig{{
			Interface: current.Int(2),
			Address:   *ipNet(addr),
			Gateway:   net.IP(s.Gateway.AsSlice()),
		}},
	}
	for _, r := range routes {
		r := r
		if r.GW == nil {
			r.GW = net.IP(s.Gateway.AsSlice())
		}
		result.Routes = append(result.Routes, &r)
	}
	success = true
	log.Info("added", "existing", existing, "timing", tm)
	return types.PrintResult(result, conf.CNIVersion)
}

// podRoutes are the routes the pod gets: the default route (or, without
// isDefaultGateway, the cluster network) via the gateway, plus the extra
// routes of the config. A nil GW means the gateway.
func podRoutes(s *Settings) []types.Route {
	var out []types.Route
	if s.DefaultGW {
		out = append(out, types.Route{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}})
	} else {
		out = append(out, types.Route{Dst: *ipNet(s.Network)})
	}
	out = append(out, s.Routes...)
	return out
}
