// Package ipam is the weft CNI plugin's address allocator.
//
// State lives on disk under <dataDir>/<network>/: one file per reserved
// address, named "<address>_<hash of the owner>" and holding the owner
// (container ID and interface name) as JSON, plus a "last_reserved" hint so that addresses are
// handed out round-robin rather than reused at once. Every change happens in a
// transaction that holds an exclusive flock on <dataDir>/<network>/lock, so
// plugin processes running at the same time never hand out one address twice.
//
// A reservation file is written (temp file + rename, so it is either absent or
// complete) before the plugin creates any interface. A plugin killed halfway
// therefore leaves a reservation that DEL for the same container, or GC,
// reclaims.
package ipam

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
	lockName = "lock"
	lastName = "last_reserved"
)

// Owner identifies one attachment: a container's interface.
type Owner struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// Reservation is one reserved address and what it was reserved for.
type Reservation struct {
	Owner
	IP netip.Addr `json:"-"`
}

// Store is the on-disk allocator for one network.
type Store struct {
	dir string

	// HostLocalDir, when set, is a host-local IPAM data directory
	// (<dir>/<network>/<address> files, as flannel's plugin leaves them).
	// Addresses reserved there are never handed out, so pods that flannel's
	// plugin attached keep their addresses to themselves after a migration.
	HostLocalDir string
}

// Open returns the store for network under dataDir, creating its directory.
func Open(dataDir, network string) (*Store, error) {
	if network == "" || strings.ContainsAny(network, "/\x00") || network == "." || network == ".." {
		return nil, fmt.Errorf("open ipam store: invalid network name %q", network)
	}
	dir := filepath.Join(dataDir, network)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open ipam store: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Dir is the directory holding the network's state.
func (s *Store) Dir() string { return s.dir }

// Tx is a transaction on the store; it is valid only inside Do.
type Tx struct {
	s *Store
}

// Do runs fn while holding the store's exclusive lock.
func (s *Store) Do(fn func(tx *Tx) error) error {
	f, err := os.OpenFile(filepath.Join(s.dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open ipam lock: %w", err)
	}
	defer f.Close() // closing releases the lock
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("lock ipam store: %w", err)
	}
	return fn(&Tx{s: s})
}

// entry is a reservation file as seen in the directory listing: its name
// is "<ip>_<owner key>", so allocation and owner lookup need no file reads.
type entry struct {
	name string
	ip   netip.Addr
	key  string
}

// ownerKey is a short hash of the owner used in file names.
func ownerKey(o Owner) string {
	h := sha256.Sum256([]byte(o.ContainerID + "\x00" + o.IfName))
	return hex.EncodeToString(h[:8])
}

func fileName(ip netip.Addr, o Owner) string { return ip.String() + "_" + ownerKey(o) }

// entries lists the reservation files. Files appear and vanish atomically
// (rename, unlink), so even a reader without the lock sees complete files.
func (s *Store) entries() ([]entry, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list reservations: %w", err)
	}
	out := make([]entry, 0, len(ents))
	for _, e := range ents {
		ipStr, key, ok := strings.Cut(e.Name(), "_")
		if !ok {
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

// read loads a reservation file; ok is false when it vanished meanwhile.
func (s *Store) read(e entry) (r Reservation, ok bool, err error) {
	data, err := os.ReadFile(filepath.Join(s.dir, e.name))
	if errors.Is(err, os.ErrNotExist) {
		return Reservation{}, false, nil
	}
	if err != nil {
		return Reservation{}, false, fmt.Errorf("read reservation %s: %w", e.ip, err)
	}
	r = Reservation{IP: e.ip}
	if err := json.Unmarshal(data, &r); err != nil {
		// We never leave a partial file (rename), so this one is foreign
		// or corrupt: report it with no owner and keep the address taken.
		r.Owner = Owner{}
	}
	r.IP = e.ip
	return r, true, nil
}

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
// address, the broadcast address and gateway. If owner already holds an
// address inside subnet, that address is returned with existing=true.
// Reservations outside subnet (from a subnet weftd held before) are never
// handed out and stay until released.
func (tx *Tx) Allocate(subnet netip.Prefix, gateway netip.Addr, o Owner) (r Reservation, existing bool, err error) {
	subnet = subnet.Masked()
	if !subnet.Addr().Is4() || subnet.Bits() > 30 {
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
	last := lastAddr(subnet).Prev()
	start := first
	if b, err := os.ReadFile(filepath.Join(tx.s.dir, lastName)); err == nil {
		if prev, err := netip.ParseAddr(strings.TrimSpace(string(b))); err == nil && subnet.Contains(prev) && prev.Compare(last) < 0 && prev.Compare(first) >= 0 {
			start = prev.Next()
		}
	}
	ip := start
	for {
		if ip != gateway && !used[ip] {
			r = Reservation{Owner: o, IP: ip}
			if err := tx.write(r); err != nil {
				return Reservation{}, false, err
			}
			tx.writeHint(ip)
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

// Release removes every reservation owner holds and returns them, with the
// number of reservations left afterwards.
func (tx *Tx) Release(o Owner) (released []Reservation, remaining int, err error) {
	es, err := tx.s.entries()
	if err != nil {
		return nil, 0, err
	}
	key := ownerKey(o)
	for _, e := range es {
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

// ReleaseIf removes every reservation for which drop returns true. It reads
// every file, so it is meant for GC rather than the DEL path.
func (tx *Tx) ReleaseIf(drop func(Reservation) bool) (released []Reservation, remaining int, err error) {
	es, err := tx.s.entries()
	if err != nil {
		return nil, 0, err
	}
	for _, e := range es {
		r, ok, err := tx.s.read(e)
		if err != nil {
			return released, remaining, err
		}
		if !ok {
			continue
		}
		if !drop(r) {
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

// writeHint records the last address handed out. It overwrites in place,
// padded to a fixed width, rather than truncating: on ext4 a truncate of a
// written file forces a flush at close, which cost more than the rest of
// the allocation. The hint is advisory; an unreadable one is ignored.
func (tx *Tx) writeHint(ip netip.Addr) {
	f, err := os.OpenFile(filepath.Join(tx.s.dir, lastName), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	f.WriteAt([]byte(fmt.Sprintf("%-15s\n", ip)), 0)
	f.Close()
}

func (tx *Tx) remove(e entry) error {
	if err := os.Remove(filepath.Join(tx.s.dir, e.name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("release %s: %w", e.ip, err)
	}
	return nil
}

func (tx *Tx) write(r Reservation) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	final := filepath.Join(tx.s.dir, fileName(r.IP, r.Owner))
	tmp := filepath.Join(tx.s.dir, fmt.Sprintf(".tmp-%s-%d", r.IP, os.Getpid()))
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

// lastAddr is the broadcast address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n |= (1 << (32 - p.Bits())) - 1
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}
