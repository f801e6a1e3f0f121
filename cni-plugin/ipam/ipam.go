// Package ipam is the weft CNI plugin's address allocator.
//
// One store holds every reservation of the node, whichever network config
// made it, so two configs that allocate from the same lease subnet never
// hand out one address twice. It lives in <dataDir>/_ipam/:
//
//	lock                         flocked by every change
//	last_reserved                the last IPv4 address handed out (a hint)
//	last_reserved_v6             the last IPv6 address handed out (a hint)
//	<ip>_<net key>-<owner key>   one file per reservation, holding
//	                             {"network", "containerID", "ifname"}
//	masq/<network>.json          the plugin's markers (MarkerPath): the
//	bridge/<bridge>.json         masquerade subnets of each network, the
//	                             gateways weft put on each bridge
//
// The keys in a reservation's name are short hashes of the network name and
// of the attachment (container ID and interface name), so allocation, DEL and
// counting a network's reservations need only a directory listing. Addresses
// are handed out round-robin (after the family's last_reserved hint) rather
// than reused at once. A dual-stack attachment holds two reservations, one
// per family, under the same owner key; <ip> is the address's canonical
// text (an IPv6 one with its colons), so Release and GC treat both alike. CNI network names cannot start with '_', so "_ipam" cannot be the
// directory of an older layout.
//
// A reservation file is written (temp file + rename, so it is either absent
// or complete) before the plugin creates any interface. A plugin killed
// halfway therefore leaves a reservation that DEL for the same attachment,
// or GC, reclaims.
//
// Older versions kept one store per network, <dataDir>/<network>/ with files
// named <ip>_<owner key>. The first store transaction after an upgrade moves
// their reservations (and masq.json) into _ipam, holding both locks, and then
// removes the old directory. Reservations of different networks that hold
// one address (the bug that led to the shared store) are both kept: the
// address stays taken until both are released.
package ipam

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrExhausted is returned by Allocate when every usable address of the
// subnet is reserved.
var ErrExhausted = errors.New("no free address")

const (
	// StoreDir is the store's directory under dataDir.
	StoreDir = "_ipam"
	lockName = "lock"
	lastName = "last_reserved"
	// lastName6 is the IPv6 hint: each family goes round its own subnet.
	lastName6 = "last_reserved_v6"
	// legacyMasq is the masquerade marker of the per-network layout.
	legacyMasq = "masq.json"
)

// Owner identifies one attachment: a container's interface in a network.
type Owner struct {
	Network     string `json:"network"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// Reservation is one reserved address and what it was reserved for.
type Reservation struct {
	Owner
	IP netip.Addr `json:"-"`
}

// Store is the node's on-disk allocator.
type Store struct {
	dataDir string
	dir     string
	log     *slog.Logger

	// HostLocalDir, when set, is a host-local IPAM data directory
	// (<dir>/<network>/<address> files, as flannel's plugin leaves them).
	// Addresses reserved there are never handed out, so pods that flannel's
	// plugin attached keep their addresses to themselves after a migration.
	HostLocalDir string
}

// Open returns the store under dataDir, creating its directory, and moves
// the reservations of the older per-network layout into it. log receives a
// line for each directory migrated; nil discards them.
func Open(dataDir string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir := filepath.Join(dataDir, StoreDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open ipam store: %w", err)
	}
	s := &Store{dataDir: dataDir, dir: dir, log: log}
	// Migrate now, so that the lock-free readers (List, Lookup) see the old
	// reservations too.
	if len(s.legacyDirs()) > 0 {
		if err := s.Do(func(*Tx) error { return nil }); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Dir is the directory holding the store.
func (s *Store) Dir() string { return s.dir }

// MarkerPath is where the plugin keeps a per-network marker of the given
// kind ("masq"): <store>/<kind>/<network>.json. Change it only inside Do.
func (s *Store) MarkerPath(kind, network string) string {
	return filepath.Join(s.dir, kind, network+".json")
}

// Tx is a transaction on the store; it is valid only inside Do.
type Tx struct {
	s *Store
}

// Do runs fn while holding the store's exclusive lock. It first moves any
// reservations left in the older per-network layout into the store.
func (s *Store) Do(fn func(tx *Tx) error) error {
	unlock, err := flock(filepath.Join(s.dir, lockName), true)
	if err != nil {
		return err
	}
	defer unlock()
	for _, d := range s.legacyDirs() {
		if err := s.migrate(d); err != nil {
			return err
		}
	}
	return fn(&Tx{s: s})
}

// flock takes an exclusive lock on path, creating the file if create is
// set; the returned function releases it.
func flock(path string, create bool) (func(), error) {
	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open ipam lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock ipam store: %w", err)
	}
	return func() { f.Close() }, nil // closing releases the lock
}

// entry is a reservation file as seen in the directory listing: its name
// is "<ip>_<key>", so allocation and owner lookup need no file reads.
type entry struct {
	name string
	ip   netip.Addr
	key  string
}

// netKey is a short hash of a network name.
func netKey(network string) string {
	h := sha256.Sum256([]byte(network))
	return hex.EncodeToString(h[:4])
}

// ownerKey identifies an attachment in file names: "<net key>-<hash of
// container ID and ifname>".
func ownerKey(o Owner) string {
	return netKey(o.Network) + "-" + legacyOwnerKey(o)
}

// legacyOwnerKey is the key of the per-network layout, which did not need
// the network.
func legacyOwnerKey(o Owner) string {
	h := sha256.Sum256([]byte(o.ContainerID + "\x00" + o.IfName))
	return hex.EncodeToString(h[:8])
}

func fileName(ip netip.Addr, o Owner) string { return ip.String() + "_" + ownerKey(o) }

// inNetwork reports whether the entry's name says it belongs to network.
func (e entry) inNetwork(network string) bool {
	return strings.HasPrefix(e.key, netKey(network)+"-")
}

// listEntries lists the reservation files of dir. Files appear and vanish
// atomically (rename, unlink), so even a reader without the lock sees
// complete files.
func listEntries(dir string) ([]entry, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list reservations: %w", err)
	}
	out := make([]entry, 0, len(ents))
	for _, e := range ents {
		ipStr, key, ok := strings.Cut(e.Name(), "_")
		if !ok || e.IsDir() {
			continue // lock, last_reserved, temp files, markers
		}
		ip, err := netip.ParseAddr(ipStr)
		if err != nil {
			continue
		}
		out = append(out, entry{name: e.Name(), ip: ip, key: key})
	}
	return out, nil
}

func (s *Store) entries() ([]entry, error) { return listEntries(s.dir) }

// readEntry loads a reservation file of dir; ok is false when it vanished
// meanwhile. A file that does not parse is reported with no owner, so its
// address stays taken.
func readEntry(dir string, e entry) (r Reservation, ok bool, err error) {
	data, err := os.ReadFile(filepath.Join(dir, e.name))
	if errors.Is(err, os.ErrNotExist) {
		return Reservation{}, false, nil
	}
	if err != nil {
		return Reservation{}, false, fmt.Errorf("read reservation %s: %w", e.ip, err)
	}
	if err := json.Unmarshal(data, &r); err != nil {
		// We never leave a partial file (rename), so this one is foreign
		// or corrupt: report it with no owner and keep the address taken.
		r.Owner = Owner{}
	}
	r.IP = e.ip
	return r, true, nil
}

func (s *Store) read(e entry) (Reservation, bool, error) { return readEntry(s.dir, e) }

// List returns every reservation. It takes no lock.
func (s *Store) List() ([]Reservation, error) {
	es, err := s.entries()
	if err != nil {
		return nil, err
	}
	var out []Reservation
	for _, e := range es {
		r, ok, err := s.read(e)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, r)
		}
	}
	return out, nil
}

// Lookup returns the reservations held by owner (more than one only when the
// subnet changed between two ADDs). It takes no lock.
func (s *Store) Lookup(o Owner) ([]Reservation, error) {
	es, err := s.entries()
	if err != nil {
		return nil, err
	}
	key := ownerKey(o)
	var out []Reservation
	for _, e := range es {
		if e.key != key {
			continue
		}
		r, ok, err := s.read(e)
		if err != nil {
			return nil, err
		}
		if ok && r.Owner == o {
			out = append(out, r)
		}
	}
	return out, nil
}

// List returns every reservation.
func (tx *Tx) List() ([]Reservation, error) { return tx.s.List() }

// Allocate reserves an address of subnet for owner, skipping the network
// address, the broadcast address (IPv4), gateway, the reserved subnet
// anycast addresses (IPv6, see reservedAnycast6) and every address reserved
// by any network. If owner already holds an address inside subnet, that
// address is returned with existing=true. Reservations outside subnet (from
// a subnet weftd held before) are never handed out and stay until released.
//
// subnet may be IPv4 (/30 or larger) or IPv6 (/126 or larger). Addresses
// are handed out in order after the family's last_reserved hint, wrapping
// around. The search is bounded by the number of reservations, not by the
// size of the subnet: every address it passes over is reserved, the
// gateway or one of at most 128 reserved anycast addresses, so an IPv6 /64
// never means walking 2^64 addresses. When it comes back to where it
// started, the subnet is exhausted.
func (tx *Tx) Allocate(subnet netip.Prefix, gateway netip.Addr, o Owner) (r Reservation, existing bool, err error) {
	subnet = subnet.Masked()
	v6 := subnet.Addr().Is6()
	switch {
	case !subnet.IsValid():
		return Reservation{}, false, fmt.Errorf("allocate: invalid subnet")
	case v6 && (subnet.Addr().Is4In6() || subnet.Bits() > 126):
		return Reservation{}, false, fmt.Errorf("allocate in %s: need an IPv6 subnet of /126 or larger", subnet)
	case !v6 && subnet.Bits() > 30:
		return Reservation{}, false, fmt.Errorf("allocate in %s: need an IPv4 subnet of /30 or larger", subnet)
	}
	es, err := tx.s.entries()
	if err != nil {
		return Reservation{}, false, err
	}
	key := ownerKey(o)
	used := tx.s.hostLocalUsed(subnet)
	for _, e := range es {
		used[e.ip] = true
		if e.key == key && subnet.Contains(e.ip) && e.ip != gateway {
			have, ok, err := tx.s.read(e)
			if err != nil {
				return Reservation{}, false, err
			}
			if ok && have.Owner == o {
				return have, true, nil
			}
		}
	}
	first := subnet.Addr().Next()
	last := lastAddr(subnet)
	hint := lastName
	if v6 {
		hint = lastName6
	} else {
		last = last.Prev() // the broadcast address
	}
	start := first
	if b, err := os.ReadFile(filepath.Join(tx.s.dir, hint)); err == nil {
		if prev, err := netip.ParseAddr(strings.TrimSpace(string(b))); err == nil && subnet.Contains(prev) && prev.Compare(last) < 0 && prev.Compare(first) >= 0 {
			start = prev.Next()
		}
	}
	ip := start
	for {
		if ip != gateway && !used[ip] && !(v6 && reservedAnycast6(subnet, ip)) {
			r = Reservation{Owner: o, IP: ip}
			if err := tx.write(r); err != nil {
				return Reservation{}, false, err
			}
			tx.writeHint(hint, ip)
			return r, false, nil
		}
		if ip == last {
			ip = first
		} else {
			ip = ip.Next()
		}
		if ip == start {
			return Reservation{}, false, fmt.Errorf("allocate in %s: %w", subnet, ErrExhausted)
		}
	}
}

// reservedAnycast6 reports whether ip is one of the reserved subnet anycast
// addresses of RFC 2526: in a subnet with 64-bit interface identifiers
// (/64 or shorter), the 128 highest identifiers with the universal/local
// bit clear, fdff:ffff:ffff:ff80 to fdff:ffff:ffff:ffff. Longer prefixes
// have no such range.
func reservedAnycast6(subnet netip.Prefix, ip netip.Addr) bool {
	if subnet.Bits() > 64 {
		return false
	}
	b := ip.As16()
	return binary.BigEndian.Uint64(b[8:])&^0x7f == 0xfdffffffffffff80
}

// Release removes every reservation owner holds and returns them, with the
// number of reservations of owner's network left afterwards.
func (tx *Tx) Release(o Owner) (released []Reservation, remaining int, err error) {
	es, err := tx.s.entries()
	if err != nil {
		return nil, 0, err
	}
	key := ownerKey(o)
	for _, e := range es {
		if !e.inNetwork(o.Network) {
			continue
		}
		if e.key != key {
			remaining++
			continue
		}
		r, ok, err := tx.s.read(e)
		if err != nil {
			return released, remaining, err
		}
		if !ok {
			continue
		}
		if r.Owner != o {
			remaining++
			continue
		}
		if err := tx.remove(e); err != nil {
			return released, remaining, err
		}
		released = append(released, r)
	}
	return released, remaining, nil
}

// ReleaseIf removes every reservation of network for which drop returns
// true, and returns them with the number of the network's reservations
// left. Reservations of other networks are not looked at. It reads every
// file of the network, so it is meant for GC rather than the DEL path.
func (tx *Tx) ReleaseIf(network string, drop func(Reservation) bool) (released []Reservation, remaining int, err error) {
	es, err := tx.s.entries()
	if err != nil {
		return nil, 0, err
	}
	for _, e := range es {
		if !e.inNetwork(network) {
			continue
		}
		r, ok, err := tx.s.read(e)
		if err != nil {
			return released, remaining, err
		}
		if !ok {
			continue
		}
		if r.Network != network || !drop(r) {
			remaining++
			continue
		}
		if err := tx.remove(e); err != nil {
			return released, remaining, err
		}
		released = append(released, r)
	}
	return released, remaining, nil
}

// hostLocalUsed returns the addresses of subnet that host-local reserved.
func (s *Store) hostLocalUsed(subnet netip.Prefix) map[netip.Addr]bool {
	used := map[netip.Addr]bool{}
	if s.HostLocalDir == "" {
		return used
	}
	nets, err := os.ReadDir(s.HostLocalDir)
	if err != nil {
		return used
	}
	for _, n := range nets {
		if !n.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(s.HostLocalDir, n.Name()))
		if err != nil {
			continue
		}
		for _, f := range files {
			if ip, err := netip.ParseAddr(f.Name()); err == nil && subnet.Contains(ip) {
				used[ip] = true
			}
		}
	}
	return used
}

// writeHint records the last address handed out in the hint file name. It
// overwrites in place, padded to a fixed width (the longest address of the
// family), rather than truncating: on ext4 a truncate of a
// written file forces a flush at close, which cost more than the rest of
// the allocation. The hint is advisory; an unreadable one is ignored.
func (tx *Tx) writeHint(name string, ip netip.Addr) {
	f, err := os.OpenFile(filepath.Join(tx.s.dir, name), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	width := 15 // 255.255.255.255
	if ip.Is6() {
		width = 39 // eight groups of four hex digits
	}
	f.WriteAt([]byte(fmt.Sprintf("%-*s\n", width, ip)), 0)
	f.Close()
}

func (tx *Tx) remove(e entry) error {
	if err := os.Remove(filepath.Join(tx.s.dir, e.name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("release %s: %w", e.ip, err)
	}
	return nil
}

func (tx *Tx) write(r Reservation) error { return tx.s.writeReservation(r) }

// writeReservation writes r's file: a temp file renamed into place.
func (s *Store) writeReservation(r Reservation) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	final := filepath.Join(s.dir, fileName(r.IP, r.Owner))
	tmp := filepath.Join(s.dir, fmt.Sprintf(".tmp-%s-%d", r.IP, os.Getpid()))
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("reserve %s: %w", r.IP, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("reserve %s: %w", r.IP, err)
	}
	return nil
}

// legacyDirs returns the directories of the per-network layout under
// dataDir: every directory but the store that holds a lock file, a marker
// or a reservation file named "<ip>_<16 hex digits>".
func (s *Store) legacyDirs() []string {
	ents, err := os.ReadDir(s.dataDir)
	if err != nil {
		return nil
	}
	var out []string
	for _, d := range ents {
		if !d.IsDir() || d.Name() == StoreDir {
			continue
		}
		dir := filepath.Join(s.dataDir, d.Name())
		files, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, f := range files {
			if f.Name() == lockName || f.Name() == legacyMasq || isLegacyReservation(f.Name()) {
				out = append(out, dir)
				break
			}
		}
	}
	return out
}

func isLegacyReservation(name string) bool {
	ipStr, key, ok := strings.Cut(name, "_")
	if !ok || len(key) != 16 {
		return false
	}
	if _, err := netip.ParseAddr(ipStr); err != nil {
		return false
	}
	_, err := hex.DecodeString(key)
	return err == nil
}

// migrate moves the reservations and masquerade marker of the per-network
// directory dir (network = its name) into the store, then removes dir. The
// caller holds the store lock; migrate also takes dir's own lock, so an
// older plugin still running cannot change dir meanwhile. A crash at any
// point leaves every reservation in dir, in the store or both; the next
// transaction finishes the job.
func (s *Store) migrate(dir string) error {
	network := filepath.Base(dir)
	lockPath := filepath.Join(dir, lockName)
	if _, err := os.Stat(lockPath); err == nil {
		unlock, err := flock(lockPath, false)
		if err != nil {
			return fmt.Errorf("migrate %s: %w", dir, err)
		}
		defer unlock()
	}
	held := map[netip.Addr][]Owner{}
	if es, err := s.entries(); err == nil {
		for _, e := range es {
			if r, ok, err := s.read(e); err == nil && ok {
				held[e.ip] = append(held[e.ip], r.Owner)
			}
		}
	}
	files, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", dir, err)
	}
	moved := 0
	for _, f := range files {
		if !isLegacyReservation(f.Name()) {
			continue
		}
		ipStr, key, _ := strings.Cut(f.Name(), "_")
		e := entry{name: f.Name(), ip: netip.MustParseAddr(ipStr), key: key}
		r, ok, err := readEntry(dir, e)
		if err != nil {
			return fmt.Errorf("migrate %s: %w", dir, err)
		}
		if !ok {
			continue
		}
		r.Network = network
		if _, err := os.Stat(filepath.Join(s.dir, fileName(r.IP, r.Owner))); err != nil {
			for _, other := range held[r.IP] {
				if other != r.Owner {
					s.log.Warn("ipam migration: two attachments hold one address; both keep it until released",
						"ip", r.IP, "network", network, "container", r.ContainerID, "ifname", r.IfName,
						"otherNetwork", other.Network, "otherContainer", other.ContainerID, "otherIfname", other.IfName)
				}
			}
			if err := s.writeReservation(r); err != nil {
				return fmt.Errorf("migrate %s: %w", dir, err)
			}
			held[r.IP] = append(held[r.IP], r.Owner)
		}
		if err := os.Remove(filepath.Join(dir, f.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("migrate %s: %w", dir, err)
		}
		moved++
	}
	if _, err := os.Stat(filepath.Join(dir, legacyMasq)); err == nil {
		dst := s.MarkerPath("masq", network)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return fmt.Errorf("migrate %s: %w", dir, err)
		}
		if _, err := os.Stat(dst); err == nil {
			os.Remove(filepath.Join(dir, legacyMasq)) // the store's marker is newer
		} else if err := os.Rename(filepath.Join(dir, legacyMasq), dst); err != nil {
			return fmt.Errorf("migrate %s: %w", dir, err)
		}
	}
	os.Remove(filepath.Join(dir, lastName))
	os.Remove(lockPath)
	if err := os.Remove(dir); err != nil {
		// Files we do not know stay, and so does the directory. Without a
		// lock, marker or reservation it is not taken for an old store
		// again.
		s.log.Warn("ipam migration: old directory not removed", "dir", dir, "err", err)
	}
	s.log.Info("ipam migration: moved reservations into the shared store", "network", network, "reservations", moved, "from", dir, "to", s.dir)
	return nil
}

// lastAddr is the last address of p: every host bit set (for IPv4, the
// broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
