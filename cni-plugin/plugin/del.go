package plugin

import (
	"encoding/json"
	"errors"
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
	store, err := openStore(conf, log)
	if err != nil {
		return err
	}
	tm := newTimer()
	owner := ipam.Owner{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName}
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

// lastOut removes the masquerade rules of both families once no address
// is reserved. The caller holds the store lock.
func lastOut(store *ipam.Store, network string, remaining int) error {
	if remaining > 0 {
		return nil
	}
	var errs []error
	for _, v6 := range []bool{false, true} {
		if _, ok := readMasqState(store, network, v6); !ok {
			continue
		}
		m, err := newMasq(network, v6)
		if err == nil {
			err = m.remove(store)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cmdGC releases every attachment of the network that is not listed in
// cni.dev/valid-attachments, deleting the host veth ends that belong to
// them, and logs each one it releases. A request without the list is
// refused: it would make every attachment look stale.
func cmdGC(args *skel.CmdArgs) error {
	conf, log, closeLog, err := start(args)
	if err != nil {
		return err
	}
	defer closeLog()
	list, err := validAttachments(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("gc of network %q: %v", conf.Name, err), "")
	}
	store, err := openStore(conf, log)
	if err != nil {
		return err
	}
	valid := make(map[ipam.Owner]bool, len(list))
	for _, a := range list {
		valid[ipam.Owner{Network: conf.Name, ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	var released []ipam.Reservation
	err = store.Do(func(tx *ipam.Tx) error {
		var remaining int
		var err error
		released, remaining, err = tx.ReleaseIf(conf.Name, func(r ipam.Reservation) bool { return !valid[r.Owner] })
		if err != nil {
			return err
		}
		return lastOut(store, conf.Name, remaining)
	})
	// Host ends go after the release: a reservation without a veth is
	// harmless, and a veth without a reservation is not looked for again.
	for _, r := range released {
		attrs := []any{"network", conf.Name, "container", r.ContainerID, "ifname", r.IfName, "ip", r.IP}
		if r.ContainerID != "" {
			veth := HostVethName(r.ContainerID, r.IfName)
			attrs = append(attrs, "hostVeth", veth)
			if derr := deleteLinkByName(veth); derr != nil {
				log.Warn("gc: delete host veth", append(attrs, "err", derr)...)
			}
		}
		log.Warn("gc: released an attachment missing from cni.dev/valid-attachments", attrs...)
	}
	if err != nil {
		return wrap(types.ErrInternal, "gc", err)
	}
	log.Info("gc", "valid", len(list), "released", len(released))
	return nil
}

// errNoValidAttachments is why GC refuses a request without the list.
var errNoValidAttachments = errors.New(`the request has no "cni.dev/valid-attachments" list, so every attachment would look stale; ` +
	`refusing to release anything (send the list; an empty list releases every attachment)`)

// validAttachments returns the list of attachments a GC request says are in
// use. libcni sends it as "cni.dev/valid-attachments" and, for the name an
// earlier version of the spec used, as "cni.dev/attachments". A missing or
// null list is an error, never "nothing is valid": libcni sends null when
// its caller passed no list.
func validAttachments(stdin []byte) ([]types.GCAttachment, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, fmt.Errorf("decode network config: %w", err)
	}
	for _, key := range []string{"cni.dev/valid-attachments", "cni.dev/attachments"} {
		v, ok := raw[key]
		if !ok || isNull(v) {
			continue
		}
		var list []types.GCAttachment
		if err := json.Unmarshal(v, &list); err != nil {
			return nil, fmt.Errorf("decode %s: %w", key, err) // ParseConfig has checked it
		}
		return list, nil
	}
	return nil, errNoValidAttachments
}
