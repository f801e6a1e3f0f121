// Package nftables keeps weft's masquerade and forward rules in an
// nftables table of its own, talking netlink directly (no nft or iptables
// binary is needed).
//
// Design note. weft owns `table ip weft` (and, once dual stack lands,
// `table ip6 weft`, built by the same Desired from IPv6 prefixes). The
// table holds two base chains:
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
// which chain will drop pod traffic.
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
	Logger   *slog.Logger
}

// Manager keeps weft's table in place for the current network and lease.
type Manager struct {
	k   Kernel
	cfg Config
	log *slog.Logger

	mu          sync.Mutex
	network     netip.Prefix
	lease       netip.Prefix
	repairs     uint64
	plainMasq   bool   // the kernel refused fully-random masquerade
	warnedDrops string // the foreign drop chains last warned about
	fallbackOn  bool
}

// NewManager returns a manager; nothing is installed until Set.
func NewManager(k Kernel, cfg Config) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{k: k, cfg: cfg, log: cfg.Logger}
}

// Set records the network and our lease and installs the rules now. A
// change of network or lease is not counted as a repair.
func (m *Manager) Set(network, lease netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.network, m.lease = network.Masked(), lease.Masked()
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

// Ensure makes the table match the wanted rules, replacing it in one
// transaction if anything differs, and returns how many repairs it made
// (the table, and iptables' fallback forward rules).
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

// Want returns the table the manager keeps for its current network, and
// false before Set.
func (m *Manager) Want() (Table, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.network.IsValid() {
		return Table{}, false
	}
	return m.want(), true
}

func (m *Manager) want() Table {
	return Desired(Policy{Network: m.network, Lease: m.lease, Masq: m.cfg.Masq, Forward: m.cfg.Forward, FullyRandom: !m.plainMasq && !m.cfg.PlainMasq})
}

func (m *Manager) ensure(count bool) (int, error) {
	if !m.network.IsValid() {
		return 0, nil
	}
	fixed := 0
	var errs []error
	changed, err := m.ensureTable()
	if err != nil {
		errs = append(errs, err)
	}
	if changed {
		fixed++
	}
	if m.cfg.Forward {
		changed, err := m.ensureFallback()
		if err != nil {
			errs = append(errs, err)
		}
		if changed {
			fixed++
		}
	}
	if count && fixed > 0 {
		m.repairs += uint64(fixed)
		m.log.Warn("nftables rules were missing or changed; restored them", "table", "ip "+TableName, "fixed", fixed)
	}
	return fixed, errors.Join(errs...)
}

// ensureTable replaces the table when it differs from the wanted one. A
// difference is confirmed by a second read, so that a dump that raced
// with another change is not taken for drift.
func (m *Manager) ensureTable() (bool, error) {
	want := m.want()
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
		if err2 := m.k.Replace(m.want()); err2 == nil {
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

// ensureFallback keeps iptables' forward accept rules exactly while
// iptables' FORWARD chain drops by policy. Without a fallback it warns,
// once per change, about forward chains of other tables that drop.
func (m *Manager) ensureFallback() (bool, error) {
	if m.cfg.Fallback == nil {
		drops, err := m.k.ForwardDrops(familyOf(m.network))
		if err != nil {
			return false, err
		}
		if s := strings.Join(drops, ", "); s != m.warnedDrops {
			m.warnedDrops = s
			if s != "" {
				m.log.Warn("forwarded pod traffic will be dropped: another table's forward chain drops by policy, and no accept in table ip weft can override it; add accept rules for the cluster network there (see Documentation/troubleshooting.md)",
					"chains", s, "network", m.network)
			}
		}
		return false, nil
	}
	drops, err := m.cfg.Fallback.ForwardDrops()
	if err != nil {
		return false, fmt.Errorf("read iptables FORWARD policy: %w", err)
	}
	if !drops {
		if m.fallbackOn {
			m.log.Info("iptables FORWARD no longer drops by policy; removed weft's iptables forward rules")
			m.fallbackOn = false
		}
		return false, m.cfg.Fallback.RemoveForward()
	}
	if !m.fallbackOn {
		m.log.Info("iptables FORWARD drops by policy; keeping weft's forward accept rules in iptables too (chain WEFT-FWD)")
	}
	changed, err := m.cfg.Fallback.EnsureForward(m.network)
	if err != nil {
		return false, fmt.Errorf("iptables forward rules: %w", err)
	}
	// The first installation is no repair.
	wasOn := m.fallbackOn
	m.fallbackOn = true
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
