// Package nftables keeps weft's masquerade and forward rules in an
// nftables table of its own, talking netlink directly (no nft or iptables
// binary is needed).
//
// Design note. weft owns `table ip weft` and, with dual stack, `table ip6
// weft`, built by the same Desired from the IPv6 network and our IPv6 lease
// (with ff00::/8 as the multicast range). A Manager keeps both: Set gives
// it the IPv4 network and lease, Set6 the IPv6 ones. Each table holds two
// base chains:
//
//   - postrouting: type nat, hook postrouting, priority srcnat (100), the
//     same priority as iptables' nat POSTROUTING. It expresses the policy of
//     iptables' WEFT-POSTRTG (see Desired).
//   - forward: type filter, hook forward, priority filter (0), policy
//     accept, accepting traffic from and to the cluster network, like
//     WEFT-FWD.
//
// Owning a whole table means it can be compared with what is wanted and, when
// anything differs, replaced in one netlink batch (add table, delete table,
// add table, chains and rules), which nf_tables applies as one transaction:
// packets see the old rules or the new ones, never a half-built table.
// Nobody else's tables are touched.
//
// What an accept in our table cannot do. Every base chain registered at a
// hook sees the packet, in priority order, and a drop in any of them is
// final; an accept only ends the chain it is in. So when another table has
// a forward chain whose policy is drop (Docker sets `iptables -P FORWARD
// DROP`, which iptables-nft keeps as `table ip filter` chain FORWARD), our
// forward accept does not let pod traffic through, whatever our priority.
// Only a rule in that chain can. Manager therefore asks a ForwardFallback,
// when it has one, whether iptables' FORWARD chain drops by policy, and if
// so keeps iptables' WEFT-FWD accept rules there too; without one it logs
// which chain will drop pod traffic. The same holds for IPv6 with
// ip6tables' FORWARD chain (Config.Fallback6).
//
// Repair state machine, per resync:
//
//	read table --equal--> nothing to do
//	    |
//	    +--missing or different--> read again --still different--> replace (one batch), count a repair
package nftables

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	nft "github.com/google/nftables"
)

// ForwardFallback keeps accept rules for the cluster network in iptables'
// own FORWARD chain, where a drop policy would otherwise drop forwarded
// pod traffic whatever our table says. internal/iptables implements it.
type ForwardFallback interface {
	// ForwardDrops reports whether iptables' filter FORWARD chain has a
	// DROP policy.
	ForwardDrops() (bool, error)
	// EnsureForward installs the accept rules for network if they are not
	// there, and reports whether it changed anything.
	EnsureForward(network netip.Prefix) (bool, error)
	// RemoveForward removes them; nothing to remove is no error.
	RemoveForward() error
}

// Config configures a Manager.
type Config struct {
	// Masq and Forward select the two rule sets (--ip-masq and
	// --iptables-forward-rules).
	Masq, Forward bool
	// PlainMasq masquerades without fully random source ports
	// (--ip-masq-fully-random-disable); by default they are fully random
	// where the kernel supports it.
	PlainMasq bool
	// Fallback, if set, is used while iptables' FORWARD policy drops.
	Fallback ForwardFallback
	// Fallback6 is the same for the IPv6 rules and ip6tables' FORWARD
	// chain (internal/iptables.NewForwardFallback over ip6tables).
	Fallback6 ForwardFallback
	Logger    *slog.Logger
}

// Manager keeps weft's tables in place for the current networks and
// leases: table ip weft, and table ip6 weft with dual stack.
type Manager struct {
	k   Kernel
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	v4, v6    family
	repairs   uint64
	plainMasq bool // the kernel refused fully-random masquerade
}

// family is what the manager keeps for one address family.
type family struct {
	network     netip.Prefix // invalid: no rules for the family
	lease       netip.Prefix
	fallback    ForwardFallback
	warnedDrops string // the foreign drop chains last warned about
	fallbackOn  bool
}

// NewManager returns a manager; nothing is installed until Set.
func NewManager(k Kernel, cfg Config) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{k: k, cfg: cfg, log: cfg.Logger}
	m.v4.fallback, m.v6.fallback = cfg.Fallback, cfg.Fallback6
	return m
}

// Set records the network and our lease and installs the rules now. A
// change of network or lease is not counted as a repair.
func (m *Manager) Set(network, lease netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.v4.network, m.v4.lease = network.Masked(), lease.Masked()
	_, err := m.ensure(false)
	return err
}

// Set6 records the IPv6 network and our IPv6 lease and installs table ip6
// weft now. Invalid prefixes (dual stack turned off) delete that table and
// ip6tables' fallback forward rules. A change is not counted as a repair.
func (m *Manager) Set6(network, lease netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !network.IsValid() {
		m.v6.network, m.v6.lease = netip.Prefix{}, netip.Prefix{}
		errs := []error{m.k.Delete(nft.TableFamilyIPv6, TableName)}
		if m.v6.fallback != nil && m.v6.fallbackOn {
			errs = append(errs, m.v6.fallback.RemoveForward())
		}
		m.v6.fallbackOn = false
		return errors.Join(errs...)
	}
	if !network.Addr().Is6() || !lease.Addr().Is6() || network.Addr().Is4In6() {
		return fmt.Errorf("table ip6 %s: %s and %s are not both IPv6", TableName, network, lease)
	}
	m.v6.network, m.v6.lease = network.Masked(), lease.Masked()
	_, err := m.ensure(false)
	return err
}

// Repairs is the number of times the rules had to be restored after Set
// had installed them.
func (m *Manager) Repairs() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.repairs
}

// Ensure makes the tables match the wanted rules, replacing one in one
// transaction if anything differs, and returns how many repairs it made
// (each table, and iptables' or ip6tables' fallback forward rules).
func (m *Manager) Ensure() (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ensure(true)
}

// Run re-checks the rules every interval until ctx is done.
func (m *Manager) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if _, err := m.Ensure(); err != nil {
				m.log.Error("check nftables rules", "err", err)
			}
		}
	}
}

// Want returns the table the manager keeps for its current IPv4 network,
// and false before Set.
func (m *Manager) Want() (Table, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.v4.network.IsValid() {
		return Table{}, false
	}
	return m.want(&m.v4), true
}

// Want6 returns table ip6 weft as the manager keeps it for its current
// IPv6 network, and false without one.
func (m *Manager) Want6() (Table, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.v6.network.IsValid() {
		return Table{}, false
	}
	return m.want(&m.v6), true
}

func (m *Manager) want(f *family) Table {
	return Desired(Policy{Network: f.network, Lease: f.lease, Masq: m.cfg.Masq, Forward: m.cfg.Forward, FullyRandom: !m.plainMasq && !m.cfg.PlainMasq})
}

func (m *Manager) ensure(count bool) (int, error) {
	if !m.v4.network.IsValid() && !m.v6.network.IsValid() {
		return 0, nil
	}
	fixed := 0
	var errs []error
	for _, f := range []*family{&m.v4, &m.v6} {
		if !f.network.IsValid() {
			continue
		}
		n := 0
		changed, err := m.ensureTable(f)
		if err != nil {
			errs = append(errs, err)
		}
		if changed {
			n++
		}
		if m.cfg.Forward {
			changed, err := m.ensureFallback(f)
			if err != nil {
				errs = append(errs, err)
			}
			if changed {
				n++
			}
		}
		if count && n > 0 {
			m.repairs += uint64(n)
			m.log.Warn("nftables rules were missing or changed; restored them", "table", familyName(familyOf(f.network))+" "+TableName, "fixed", n)
		}
		fixed += n
	}
	return fixed, errors.Join(errs...)
}

// ensureTable replaces the family's table when it differs from the wanted
// one. A difference is confirmed by a second read, so that a dump that
// raced with another change is not taken for drift.
func (m *Manager) ensureTable(f *family) (bool, error) {
	want := m.want(f)
	for range 2 {
		have, ok, err := m.k.Read(want.Family, want.Name)
		if err != nil {
			return false, err
		}
		if ok && Equal(have, want) {
			return false, nil
		}
	}
	err := m.k.Replace(want)
	if err != nil && !m.plainMasq && !m.cfg.PlainMasq && m.cfg.Masq {
		// Kernels without fully-random masquerade refuse the rule;
		// flannel's semantics ask for it only where supported.
		m.plainMasq = true
		if err2 := m.k.Replace(m.want(f)); err2 == nil {
			m.log.Warn("the kernel refused fully-random masquerade; masquerading without it", "err", err)
			return true, nil
		}
		m.plainMasq = false
	}
	if err != nil {
		return false, err
	}
	return true, nil
}

// ensureFallback keeps iptables' (for IPv6 ip6tables') forward accept
// rules exactly while that FORWARD chain drops by policy. Without a
// fallback it warns, once per change, about forward chains of other tables
// that drop.
func (m *Manager) ensureFallback(f *family) (bool, error) {
	fam := familyOf(f.network)
	cmd := "iptables"
	if fam == nft.TableFamilyIPv6 {
		cmd = "ip6tables"
	}
	if f.fallback == nil {
		drops, err := m.k.ForwardDrops(fam)
		if err != nil {
			return false, err
		}
		if s := strings.Join(drops, ", "); s != f.warnedDrops {
			f.warnedDrops = s
			if s != "" {
				m.log.Warn("forwarded pod traffic will be dropped: another table's forward chain drops by policy, and no accept in table "+familyName(fam)+" weft can override it; add accept rules for the cluster network there (see Documentation/troubleshooting.md)",
					"chains", s, "network", f.network)
			}
		}
		return false, nil
	}
	drops, err := f.fallback.ForwardDrops()
	if err != nil {
		return false, fmt.Errorf("read %s FORWARD policy: %w", cmd, err)
	}
	if !drops {
		if f.fallbackOn {
			m.log.Info(cmd + " FORWARD no longer drops by policy; removed weft's " + cmd + " forward rules")
			f.fallbackOn = false
		}
		return false, f.fallback.RemoveForward()
	}
	if !f.fallbackOn {
		m.log.Info(cmd + " FORWARD drops by policy; keeping weft's forward accept rules in " + cmd + " too (chain WEFT-FWD)")
	}
	changed, err := f.fallback.EnsureForward(f.network)
	if err != nil {
		return false, fmt.Errorf("%s forward rules: %w", cmd, err)
	}
	// The first installation is no repair.
	wasOn := f.fallbackOn
	f.fallbackOn = true
	return changed && wasOn, nil
}

// Remove deletes weft's tables (ip and ip6 weft) and everything in them.
func Remove(k Kernel) error {
	var errs []error
	for _, fam := range families {
		errs = append(errs, k.Delete(fam, TableName))
	}
	return errors.Join(errs...)
}

// Present reports whether any of weft's tables exists: a sign that weftd
// runs in nftables mode on this host.
func Present(k Kernel) (bool, error) {
	for _, fam := range families {
		_, ok, err := k.Read(fam, TableName)
		if err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

// families are the families weft keeps a table in.
var families = []nft.TableFamily{nft.TableFamilyIPv4, nft.TableFamilyIPv6}
