package plugin

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/cni-plugin/ipam"
)

// cmdDel undoes ADD. It needs neither the container's namespace (the host
// veth name is derived from the attachment, and deleting the host end
// deletes the container end) nor the subnet file, so it succeeds for unknown
// containers, gone namespaces and a stopped weftd alike.
func cmdDel(args *skel.CmdArgs) error {
	conf, log, closeLog, err := start(args)
	if err != nil {
		return err
	}
	defer closeLog()
	store, err := openStore(conf)
	if err != nil {
		return err
	}
	tm := newTimer()
	owner := ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}
	if err := deleteLinkByName(HostVethName(args.ContainerID, args.IfName)); err != nil {
		return wrap(types.ErrInternal, "delete host veth", err)
	}
	tm.mark("veth")
	if err := release(store, conf.Name, owner); err != nil {
		return wrap(types.ErrInternal, "release", err)
	}
	tm.mark("release")
	log.Info("deleted", "container", args.ContainerID, "ifname", args.IfName, "timing", tm)
	return nil
}

// release frees owner's addresses and, with the last address of the
// network, its masquerade rules.
func release(store *ipam.Store, network string, owner ipam.Owner) error {
	return store.Do(func(tx *ipam.Tx) error {
		_, remaining, err := tx.Release(owner)
		if err != nil {
			return err
		}
		return lastOut(store, network, remaining)
	})
}

// lastOut removes the masquerade rules once no address is reserved. The
// caller holds the store lock.
func lastOut(store *ipam.Store, network string, remaining int) error {
	if remaining > 0 {
		return nil
	}
	if _, ok := readMasqState(store); !ok {
		return nil
	}
	m, err := newMasq(network)
	if err != nil {
		return err
	}
	return m.remove(store)
}

// cmdGC releases every attachment not listed in cni.dev/valid-attachments,
// deleting the host veth ends that belong to them.
func cmdGC(args *skel.CmdArgs) error {
	conf, log, closeLog, err := start(args)
	if err != nil {
		return err
	}
	defer closeLog()
	store, err := openStore(conf)
	if err != nil {
		return err
	}
	valid := make(map[ipam.Owner]bool, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid[ipam.Owner{ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	var released []ipam.Reservation
	err = store.Do(func(tx *ipam.Tx) error {
		var remaining int
		var err error
		released, remaining, err = tx.ReleaseIf(func(r ipam.Reservation) bool { return !valid[r.Owner] })
		if err != nil {
			return err
		}
		return lastOut(store, conf.Name, remaining)
	})
	// Host ends go after the release: a reservation without a veth is
	// harmless, and a veth without a reservation is not looked for again.
	for _, r := range released {
		if r.ContainerID == "" {
			continue
		}
		if derr := deleteLinkByName(HostVethName(r.ContainerID, r.IfName)); derr != nil {
			log.Warn("gc: delete host veth", "container", r.ContainerID, "err", derr)
		}
	}
	if err != nil {
		return wrap(types.ErrInternal, "gc", err)
	}
	log.Info("gc", "released", fmt.Sprint(len(released)))
	return nil
}
