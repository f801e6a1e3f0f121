package udp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/subnet"
)

// pass is the backend.PassFunc. In order:
//
//  1. the forwarding table: built from own and peers and swapped in for
//     the data path, which from then on sends to and accepts from exactly
//     these peers (swapTable);
//  2. the data path: TUN and socket open and, inside Run, both loops
//     running; a loop that ended, or weft0 gone, means attaching again,
//     which re-creates the device (ensureDataPath, reattach);
//  3. the kernel: weft0 up with our MTU, our address on it, and the route
//     for the network into it unless that would cover the underlay
//     (apply).
//
// A peer counts as programmed once it is in the table and the network
// route is in place.
func (b *udpBackend) pass(own subnet.Lease, peers []*subnet.Lease) backend.Pass {
	b.kmu.Lock()
	defer b.kmu.Unlock()
	p := backend.Pass{Repairs: map[string]uint64{}}
	var inTable int
	inTable, p.Refused = b.swapTable(own.Subnet, peers)
	routed, err := b.apply(own.Subnet, &p)
	if routed {
		p.Programmed = inTable
	}
	p.Err = err
	return p
}

// tableState is what the current forwarding table was built from.
type tableState struct {
	built   bool
	own     netip.Prefix
	peers   []*subnet.Lease // the slice SetDesired handed over
	size    int             // peers in the table
	refused map[netip.Prefix]string
}

// swapTable hands the data path the forwarding table for own and peers
// and returns how many peers it holds and which it refused, and why. A
// table built from this very desired state is kept: SetDesired hands over
// a new slice with every change and nobody modifies it afterwards, so a
// resync pass builds nothing. Caller holds kmu.
func (b *udpBackend) swapTable(own netip.Prefix, peers []*subnet.Lease) (int, map[netip.Prefix]string) {
	t := &b.table
	if !t.built || t.own != own || !backend.SamePeers(t.peers, peers) {
		st, refused := buildTable(b.cfg.Network, own, peers)
		b.fwd.Store(st)
		*t = tableState{built: true, own: own, peers: peers, size: len(st.peers), refused: refused}
	}
	return t.size, maps.Clone(t.refused)
}

func prefixU32(p netip.Prefix) (addr, mask uint32) {
	a := p.Masked().Addr().As4()
	mask = ^uint32(0) << (32 - p.Bits())
	if p.Bits() == 0 {
		mask = 0
	}
	return binary.BigEndian.Uint32(a[:]), mask
}

// buildTable validates the peers and builds the forwarding table for our
// subnet own (invalid: none yet) in the network nw.
func buildTable(nw *subnet.Config, own netip.Prefix, peers []*subnet.Lease) (*fwdState, map[netip.Prefix]string) {
	st := &fwdState{peers: make(map[uint32]uint32, len(peers)), publics: make(map[uint32]struct{}, len(peers))}
	st.netAddr, st.netMask = prefixU32(nw.Network)
	st.ownAddr, st.ownMask = prefixU32(own)
	_, st.subMask = prefixU32(netip.PrefixFrom(netip.IPv4Unspecified(), nw.SubnetLen))
	refused := map[netip.Prefix]string{}
	for _, p := range peers {
		ip := p.Attrs.PublicIP
		switch {
		case !p.Subnet.Addr().Is4() || p.Subnet.Bits() != nw.SubnetLen || !nw.Network.Contains(p.Subnet.Addr()):
			refused[p.Subnet] = fmt.Sprintf("not a /%d inside %s", nw.SubnetLen, nw.Network)
			continue
		case !ip.Is4():
			refused[p.Subnet] = "PublicIP is not IPv4"
			continue
		case own.IsValid() && p.Subnet.Overlaps(own):
			refused[p.Subnet] = "overlaps our own subnet"
			continue
		}
		sn, _ := prefixU32(p.Subnet)
		a := ip.As4()
		pub := binary.BigEndian.Uint32(a[:])
		st.peers[sn] = pub
		st.publics[pub] = struct{}{}
	}
	if !own.IsValid() {
		st.ownAddr, st.ownMask = 0xffffffff, 0xffffffff // nothing is ours yet
	}
	return st, refused
}

// ensureDataPath makes sure the TUN and the socket are open and, inside
// Run, that both loops run on them. A loop that ended by itself means the
// device is gone or broken: the data path is re-attached. Caller holds
// kmu.
func (b *udpBackend) ensureDataPath(p *backend.Pass) (reattached bool, err error) {
	if r := b.loops; r != nil {
		select {
		case err := <-r.errc:
			b.logger.Warn("data path stopped; re-opening the device", "device", DeviceName, "err", err)
			return true, b.reattach(p)
		default:
		}
	}
	if err := b.attach(); err != nil {
		return false, err
	}
	if b.live && b.loops == nil {
		b.startLoops()
	}
	return false, nil
}

// reattach stops the data path, closes the TUN and attaches again, which
// creates weft0 if it is gone, then restarts the data path. The socket
// stays open and bound throughout. It counts as a device repair. Caller
// holds kmu.
func (b *udpBackend) reattach(p *backend.Pass) error {
	b.stopDataPath(false)
	if err := b.attach(); err != nil {
		return fmt.Errorf("re-open data path: %w", err)
	}
	p.Repairs["device"]++
	if b.live {
		b.startLoops()
	}
	return nil
}

// ensureLink brings weft0 up with our MTU and returns its index and
// whether it had to change anything. Caller holds kmu.
func (b *udpBackend) ensureLink() (index int, changed bool, err error) {
	l, err := b.k.LinkByName(DeviceName)
	if err != nil {
		return 0, false, fmt.Errorf("find %s: %w", DeviceName, err)
	}
	if mtu := b.MTU(); l.MTU != mtu {
		if err := b.k.SetLinkMTU(l.Index, mtu); err != nil {
			return 0, false, fmt.Errorf("set %s MTU %d: %w", DeviceName, mtu, err)
		}
		changed = true
	}
	if !l.Up {
		if err := b.k.SetLinkUp(l.Index); err != nil {
			return 0, false, fmt.Errorf("set %s up: %w", DeviceName, err)
		}
		changed = true
	}
	return l.Index, changed, nil
}

// apply keeps the data path running on weft0 and makes device, address
// and route match our subnet own. It reports whether the network is
// routed into the device. Caller holds kmu.
func (b *udpBackend) apply(own netip.Prefix, p *backend.Pass) (routed bool, err error) {
	if err := b.connect(); err != nil {
		return false, err
	}
	reattached, err := b.ensureDataPath(p)
	if err != nil {
		return false, err
	}
	idx, changed, err := b.ensureLink()
	if errors.Is(err, nl.ErrLinkNotFound) && !reattached {
		b.logger.Info("device disappeared; re-creating it", "device", DeviceName)
		if err := b.reattach(p); err != nil {
			return false, err
		}
		reattached = true
		idx, changed, err = b.ensureLink()
	}
	if err != nil {
		return false, err
	}
	if changed && !reattached {
		p.Repairs["device"]++ // set down, or its MTU changed, behind our back
	}
	if !own.IsValid() {
		return false, nil
	}

	// Address and route: the lease's network address /32, and the whole
	// cluster network into weft0, unless that would take the host's own
	// traffic off its underlay (underlay.go).
	if err := b.dev.Ensure(b.k, idx, b.cfg.Network.Network, own, p.Repairs); err != nil {
		return false, err
	}
	return true, nil
}
