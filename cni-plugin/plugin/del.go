package plugin

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/cni-plugin/ipam"
)

// cmdDel undoes ADD. It needs neither the container's namespace (the host
// veth name is derived from the attachment, and deleting the host end
// deletes the container end) nor the subnet file, so it succeeds for unknown
// containers, gone namespaces and a stopped weftd alike.
func cmdDel(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	log, closeLog := newLogger(conf)
	defer closeLog()
	store, err := openStore(conf)
	if err != nil {
		return err
	}
	owner := ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}
	if err := deleteLinkByName(HostVethName(args.ContainerID, args.IfName)); err != nil {
		return wrap(types.ErrInternal, "delete host veth", err)
	}
	err = releaseWhere(store, conf.Name, log, func(r ipam.Reservation) bool { return r.Owner == owner })
	if err != nil {
		return wrap(types.ErrInternal, "release", err)
	}
	log.Info("deleted", "container", args.ContainerID, "ifname", args.IfName)
	return nil
}

// cmdGC releases every attachment not listed in cni.dev/valid-attachments.
func cmdGC(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	log, closeLog := newLogger(conf)
	defer closeLog()
	store, err := openStore(conf)
	if err != nil {
		return err
	}
	valid := make(map[ipam.Owner]bool, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid[ipam.Owner{ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	err = releaseWhere(store, conf.Name, log, func(r ipam.Reservation) bool { return !valid[r.Owner] })
	if err != nil {
		return wrap(types.ErrInternal, "gc", err)
	}
	return nil
}

// releaseWhere tears down and releases every reservation matching drop. The
// masquerade rules go before the addresses are released, so that the
// caller which sees no address left can delete the shared chain: no other
// rule references it any more.
func releaseWhere(store *ipam.Store, network string, log *slog.Logger, drop func(ipam.Reservation) bool) error {
	var m *masq
	var errs []error
	teardown := func(r ipam.Reservation) {
		if r.ContainerID != "" {
			if err := deleteLinkByName(HostVethName(r.ContainerID, r.IfName)); err != nil {
				errs = append(errs, err)
			}
		}
		if !r.Masq {
			return
		}
		if m == nil {
			mq, err := newMasq(network)
			if err != nil {
				errs = append(errs, err)
				return
			}
			m = mq
		}
		if err := m.delPod(r.IP, r.ContainerID); err != nil {
			errs = append(errs, err)
		}
	}
	all, err := store.List()
	if err != nil {
		return err
	}
	done := map[ipam.Reservation]bool{}
	for _, r := range all {
		if drop(r) {
			teardown(r)
			done[r] = true
		}
	}
	if len(errs) > 0 {
		// Keep the reservations so that a retried DEL/GC finds them.
		return errors.Join(errs...)
	}
	return store.Do(func(tx *ipam.Tx) error {
		released, remaining, err := tx.ReleaseIf(drop)
		if err != nil {
			return err
		}
		for _, r := range released {
			if !done[r] { // appeared after the listing
				teardown(r)
			}
		}
		if remaining == 0 {
			if _, err := os.Stat(filepath.Join(store.Dir(), masqMarker)); err == nil {
				if m == nil {
					if m, err = newMasq(network); err != nil {
						errs = append(errs, err)
					}
				}
				if m != nil {
					if err := m.removeChain(store); err != nil {
						log.Warn("remove masquerade chain", "err", err)
					}
				}
			}
		}
		return errors.Join(errs...)
	})
}
