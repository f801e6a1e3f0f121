package subnet

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// Why a lease is not programmed as a peer. Each refusal carries one of these
// classes; the log, /status, the metrics and weftctl doctor all use them.
const (
	// RefusedUnparsable: the key or the value does not parse.
	RefusedUnparsable = "unparsable"
	// RefusedInvalid: the lease parses but can never be a peer here (outside
	// the network, wrong length, overlapping our subnet, unusable PublicIP).
	RefusedInvalid = "invalid"
	// RefusedBackendData: the lease was written by another backend type, or
	// its backend data is malformed.
	RefusedBackendData = "backend-data"
	// RefusedDuplicateSubnet: an older key names the same subnet (a plain
	// key and a dual-stack "&" key).
	RefusedDuplicateSubnet = "duplicate-subnet"
	// RefusedDuplicateMAC: an older lease carries the same VtepMAC, or the
	// MAC is our own.
	RefusedDuplicateMAC = "duplicate-mac"
)

// Conflict reports whether a refusal class is a conflict between leases
// that each look valid on their own, as opposed to a broken lease.
func Conflict(reason string) bool {
	return reason == RefusedDuplicateSubnet || reason == RefusedDuplicateMAC
}

// InvalidLease is a key under <prefix>/subnets/ whose name or value does not
// parse. It is reported, never programmed.
type InvalidLease struct {
	Key   string
	Value []byte
	Err   error
}

// Refusal is one lease that will not be programmed, and why.
type Refusal struct {
	// Key is the lease's key suffix as stored. It comes from etcd: quote it
	// before printing it to a terminal.
	Key string
	// Subnet is the lease's IPv4 subnet; invalid when the key did not parse.
	Subnet netip.Prefix
	// Reason is one of the Refused* classes.
	Reason string
	// Err says what is wrong, naming the lease or the lease it lost to.
	Err error
}

// FilterPeers is the one place where peer leases are judged. From the
// network config, our own lease (with the PublicIP we publish) and the
// current set of leases, it returns the peers a backend may program, sorted
// by subnet, and a refusal for every other lease, sorted by key. It is pure:
// the same input always gives the same output, whatever order it came in.
//
// The rules, in order:
//   - our own key is neither a peer nor a refusal;
//   - a lease that does not parse, lies outside the network, overlaps our
//     subnet, has an unusable or our own PublicIP, or carries another
//     backend's or malformed backend data is refused;
//   - a reservation nobody has taken up yet (no backend data of ours) is
//     neither a peer nor a refusal: it is somebody's future lease;
//   - of two keys for one subnet, the older lease (lower CreateRevision,
//     then the smaller key) wins and the other is refused;
//   - on vxlan, of two leases with one VtepMAC the older wins and the other
//     is refused, and a peer with our own VtepMAC is refused, because the
//     kernel's FDB holds one remote per MAC.
//
// The older lease wins so that a peer that is already working is never
// displaced by a key written after it, whoever wrote it. Renewals keep a
// lease's CreateRevision, so a live host stays the older. The honest way
// to meet a conflict, a host whose PublicIP changed while its old lease
// lives on with the same VtepMAC, is resolved on that host: weftd never
// publishes a VtepMAC that another host's lease already carries (see
// backend.Config.PeerAttrs).
//
// Its cost is linear in the number of leases.
func FilterPeers(c *Config, own Lease, leases []Lease, invalid []InvalidLease) (peers []Lease, refused []Refusal) {
	for _, inv := range invalid {
		refused = append(refused, Refusal{Key: inv.Key, Reason: RefusedUnparsable, Err: inv.Err})
	}

	// Per-lease checks.
	type cand struct {
		l   *Lease
		mac [6]byte
	}
	vxlan := c.BackendType == "vxlan"
	wantType := LeaseBackendType(c.BackendType)
	cands := make([]cand, 0, len(leases))
	for i := range leases {
		l := &leases[i]
		if l.Subnet == own.Subnet && l.IPv6Subnet == own.IPv6Subnet {
			continue // our own key
		}
		if err := c.ValidatePeer(*l, own.Subnet, own.Attrs.PublicIP); err != nil {
			refused = append(refused, Refusal{Key: l.Key(), Subnet: l.Subnet, Reason: RefusedInvalid, Err: err})
			continue
		}
		if l.Attrs.BackendType != wantType {
			if l.Reservation {
				continue // reserved for a host that has not started yet
			}
			refused = append(refused, Refusal{Key: l.Key(), Subnet: l.Subnet, Reason: RefusedBackendData, Err: c.ValidatePeerBackend(*l)})
			continue
		}
		cd := cand{l: l}
		if vxlan {
			mac, err := vtepMAC(l.Attrs.BackendData)
			if err != nil {
				refused = append(refused, Refusal{Key: l.Key(), Subnet: l.Subnet, Reason: RefusedBackendData, Err: err})
				continue
			}
			cd.mac = mac
		}
		cands = append(cands, cd)
	}

	// older orders the winner of a conflict first.
	older := func(a, b *Lease) int {
		if c := cmp.Compare(a.CreateRevision, b.CreateRevision); c != 0 {
			return c
		}
		return cmp.Compare(a.Key(), b.Key())
	}

	// One lease per subnet.
	bySubnet := make(map[netip.Prefix]int, len(cands)) // subnet -> index of the winner in cands
	lost := make([]bool, len(cands))
	for i, cd := range cands {
		j, seen := bySubnet[cd.l.Subnet]
		if !seen {
			bySubnet[cd.l.Subnet] = i
			continue
		}
		win, lose := j, i
		if older(cd.l, cands[j].l) < 0 {
			win, lose = i, j
		}
		bySubnet[cd.l.Subnet] = win
		lost[lose] = true
		refused = append(refused, Refusal{Key: cands[lose].l.Key(), Subnet: cd.l.Subnet, Reason: RefusedDuplicateSubnet,
			Err: fmt.Errorf("subnet %s is also claimed by the older key %s", cd.l.Subnet, cands[win].l.Key())})
	}

	// One lease per VTEP MAC.
	if vxlan {
		var ownMAC [6]byte
		haveOwnMAC := false
		if m, err := vtepMAC(own.Attrs.BackendData); err == nil {
			ownMAC, haveOwnMAC = m, true
		}
		byMAC := make(map[[6]byte]int, len(cands))
		for i, cd := range cands {
			if lost[i] {
				continue
			}
			if haveOwnMAC && cd.mac == ownMAC {
				lost[i] = true
				refused = append(refused, Refusal{Key: cd.l.Key(), Subnet: cd.l.Subnet, Reason: RefusedDuplicateMAC,
					Err: fmt.Errorf("VtepMAC %s is our own device's", macString(cd.mac))})
				continue
			}
			j, seen := byMAC[cd.mac]
			if !seen {
				byMAC[cd.mac] = i
				continue
			}
			win, lose := j, i
			if older(cd.l, cands[j].l) < 0 {
				win, lose = i, j
			}
			byMAC[cd.mac] = win
			lost[lose] = true
			refused = append(refused, Refusal{Key: cands[lose].l.Key(), Subnet: cands[lose].l.Subnet, Reason: RefusedDuplicateMAC,
				Err: fmt.Errorf("VtepMAC %s is also used by the older lease %s", macString(cd.mac), cands[win].l.Key())})
		}
	}

	peers = make([]Lease, 0, len(cands))
	for i, cd := range cands {
		if !lost[i] {
			peers = append(peers, *cd.l)
		}
	}
	slices.SortFunc(peers, func(a, b Lease) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	slices.SortFunc(refused, func(a, b Refusal) int {
		return cmp.Or(cmp.Compare(a.Key, b.Key), cmp.Compare(a.Reason, b.Reason))
	})
	return peers, refused
}

func macString(m [6]byte) string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// vtepMAC returns the VtepMAC of vxlan BackendData. flannel and weft write
// it in one canonical form, {"VNI":<n>,"VtepMAC":"<mac>"}, which is read
// here without encoding/json (a pass over 5000 leases would otherwise spend
// most of its time there); anything else goes through ParseVXLANData.
func vtepMAC(raw []byte) ([6]byte, error) {
	var mac [6]byte
	if m, ok := canonicalVTEPMAC(raw); ok && usableMAC(m) {
		return m, nil
	}
	_, hw, err := ParseVXLANData(raw)
	if err != nil {
		return mac, err
	}
	copy(mac[:], hw)
	if !usableMAC(mac) {
		return mac, fmt.Errorf("vxlan BackendData: VtepMAC %s is not a usable unicast address", hw)
	}
	return mac, nil
}

// usableMAC reports whether m can be a VTEP's address: not all zeros, not
// multicast or broadcast.
func usableMAC(m [6]byte) bool {
	return m != [6]byte{} && m[0]&1 == 0
}

func canonicalVTEPMAC(s []byte) (mac [6]byte, ok bool) {
	const pre, mid = `{"VNI":`, `,"VtepMAC":"`
	if len(s) < len(pre) || string(s[:len(pre)]) != pre {
		return mac, false
	}
	s = s[len(pre):]
	n := 0
	for n < len(s) && n < 9 && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	if n == 0 || len(s) != n+len(mid)+17+2 || string(s[n:n+len(mid)]) != mid || string(s[len(s)-2:]) != `"}` {
		return mac, false
	}
	h := s[n+len(mid) : len(s)-2]
	for i := range 6 {
		if i > 0 && h[3*i-1] != ':' {
			return mac, false
		}
		hi, ok1 := unhex(h[3*i])
		lo, ok2 := unhex(h[3*i+1])
		if !ok1 || !ok2 {
			return mac, false
		}
		mac[i] = hi<<4 | lo
	}
	return mac, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
