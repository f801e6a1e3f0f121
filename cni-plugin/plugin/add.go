package plugin

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

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

	// 1. Reserve the addresses, one per family, in one transaction
	// before touching any interface.
	fams := s.families()
	res := make([]ipam.Reservation, len(fams))
	existed := make([]bool, len(fams))
	err = store.Do(func(tx *ipam.Tx) error {
		for i, f := range fams {
			r, ex, err := tx.Allocate(f.subnet, f.gateway, owner)
			if err != nil {
				return fmt.Errorf("%s: %w", f.name, err)
			}
			res[i], existed[i] = r, ex
		}
		return nil
	})
	if err != nil {
		// Whatever this transaction reserved goes again.
		rollbackReservations(store, conf.Name, owner, res, existed, log)
	}
	if errors.Is(err, ipam.ErrExhausted) {
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	}
	if err != nil {
		return wrap(types.ErrIOFailure, "reserve address", err)
	}
	ips := make([]any, 0, len(res))
	existing := true
	for i, r := range res {
		ips = append(ips, r.IP.String())
		existing = existing && existed[i]
	}
	log = log.With("container", args.ContainerID, "ifname", args.IfName, "ip", ips)
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
		// The masquerade rules are shared by the subnet; the last DEL
		// removes them.
		rollbackReservations(store, conf.Name, owner, res, existed, log)
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
		gw := s.Gateway
		if p.Addr().Is6() {
			gw = s.Gateway6
		}
		log.Warn("removed a stale address from the bridge", "bridge", s.Bridge, "address", p, "gateway", gw)
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
	// 4. Container side: addresses, link up, routes.
	cLink, err := h.LinkByName(args.IfName)
	if err != nil {
		return wrap(types.ErrInternal, "look up container interface", err)
	}
	if s.DualStack() {
		if err := prepareIPv6(podNS, args.IfName); err != nil {
			return wrap(types.ErrInternal, "prepare "+args.IfName+" for IPv6", err)
		}
	}
	addrs := make([]netip.Prefix, len(fams))
	for i, f := range fams {
		addrs[i] = netip.PrefixFrom(res[i].IP, f.subnet.Bits())
		a := &netlink.Addr{IPNet: ipNet(addrs[i])}
		if f.gateway.Is6() {
			// The address is the pod's alone (reserved under the store
			// lock): skip duplicate address detection, so that the pod
			// can use it the moment ADD returns instead of after DAD's
			// second or more of "tentative".
			a.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(cLink, a); err != nil {
			return wrap(types.ErrInternal, fmt.Sprintf("add %s to %s", addrs[i], args.IfName), err)
		}
	}
	if err := h.LinkSetUp(cLink); err != nil {
		return wrap(types.ErrInternal, "set "+args.IfName+" up", err)
	}
	routes := podRoutes(s)
	for _, r := range routes {
		dst := r.Dst
		err := h.RouteAdd(&netlink.Route{LinkIndex: cLink.Attrs().Index, Dst: &dst, Gw: r.GW})
		if err != nil {
			return wrap(types.ErrInternal, fmt.Sprintf("add route %s via %s", dst.String(), r.GW), err)
		}
	}

	tm.mark("container")
	// 5. Masquerade and forwarding in the host namespace.
	if s.IPMasq {
		for _, fam := range fams {
			m, err := newMasq(conf.Name, fam.gateway.Is6())
			if err != nil {
				return wrap(types.ErrInternal, fam.name+" masquerade", err)
			}
			fixed, err := ensureMasq(store, m, fam.network, fam.subnet)
			if err != nil {
				return wrap(types.ErrInternal, fam.name+" masquerade", err)
			}
			for _, f := range fixed {
				if f.Restored {
					log.Warn("masquerade rules were not in place; restored: "+f.What, "network", conf.Name, "subnet", fam.subnet)
				} else {
					log.Info("masquerade: "+f.What, "network", conf.Name, "subnet", fam.subnet)
				}
			}
		}
	}
	if err := ensureForwarding(s.DualStack()); err != nil {
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
	}
	for i, f := range fams {
		result.IPs = append(result.IPs, &current.IPConfig{
			Interface: current.Int(2),
			Address:   *ipNet(addrs[i]),
			Gateway:   net.IP(f.gateway.AsSlice()),
		})
	}
	for _, r := range routes {
		result.Routes = append(result.Routes, &r)
	}
	success = true
	log.Info("added", "existing", existing, "timing", tm)
	return types.PrintResult(result, conf.CNIVersion)
}

// podRoutes are the routes the pod gets, each with its gateway: per family,
// the default route (or, without isDefaultGateway, the cluster network) via
// that family's gateway, then the extra routes of the config (IPv4; via the
// IPv4 gateway unless they name one).
func podRoutes(s *Settings) []types.Route {
	var out []types.Route
	for _, f := range s.families() {
		dst := f.network
		if s.DefaultGW {
			dst = f.defaultRoute()
		}
		out = append(out, types.Route{Dst: *ipNet(dst), GW: net.IP(f.gateway.AsSlice())})
	}
	for _, r := range s.Routes {
		if r.GW == nil {
			r.GW = net.IP(s.Gateway.AsSlice())
		}
		out = append(out, r)
	}
	return out
}

// prepareIPv6 sets the container interface up for a static IPv6 address:
// IPv6 on (a runtime may have turned it off by default in the pod's
// namespace, and the address could not be added), and router
// advertisements ignored, since the pod's routes are the plugin's alone.
// Sysctls have no netlink call, so this enters the pod's namespace for a
// moment.
func prepareIPv6(podNS ns.NetNS, ifName string) error {
	return podNS.Do(func(ns.NetNS) error {
		for _, kv := range [][2]string{{"disable_ipv6", "0"}, {"accept_ra", "0"}} {
			if err := writeSysctl("/proc/sys/net/ipv6/conf/"+ifName+"/"+kv[0], kv[1]); err != nil {
				return fmt.Errorf("set net.ipv6.conf.%s.%s=%s: %w", ifName, kv[0], kv[1], err)
			}
		}
		return nil
	})
}

// rollbackReservations releases what an ADD reserved that was not held
// before it: every reservation of owner when it held none, else only the
// new ones (a re-ADD after dual stack was turned on keeps its IPv4
// address). With the network's last address the masquerade rules go.
func rollbackReservations(store *ipam.Store, network string, owner ipam.Owner, res []ipam.Reservation, existed []bool, log *slog.Logger) {
	held := slices.Contains(existed, true)
	if !held {
		if err := release(store, network, owner); err != nil {
			log.Warn("rollback: release address", "err", err)
		}
		return
	}
	var fresh []netip.Addr
	for i, r := range res {
		if !existed[i] && r.IP.IsValid() {
			fresh = append(fresh, r.IP)
		}
	}
	if len(fresh) == 0 {
		return
	}
	err := store.Do(func(tx *ipam.Tx) error {
		_, remaining, err := tx.ReleaseIf(network, func(r ipam.Reservation) bool {
			return r.Owner == owner && slices.Contains(fresh, r.IP)
		})
		if err != nil {
			return err
		}
		return lastOut(store, network, remaining)
	})
	if err != nil {
		log.Warn("rollback: release address", "err", err)
	}
}
