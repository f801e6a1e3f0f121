package nftables

import (
	"errors"
	"fmt"
	"slices"

	nft "github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Kernel reads and replaces whole nftables tables. NewKernel talks netlink
// to the kernel; tests above this package use a fake.
type Kernel interface {
	// Read returns the named table as the kernel holds it; ok is false
	// when there is no such table.
	Read(family nft.TableFamily, name string) (t Table, ok bool, err error)
	// Replace makes the table exactly t in one transaction: packets see
	// either the old table or the new one, never a table in between.
	Replace(t Table) error
	// Delete removes the table and everything in it; a missing table is
	// no error.
	Delete(family nft.TableFamily, name string) error
	// ForwardDrops lists the base chains of other tables of the family
	// that hook forward with a drop policy, as "table ip filter chain
	// FORWARD". No rule of ours can override them (see the package doc).
	ForwardDrops(family nft.TableFamily) ([]string, error)
}

// netlinkKernel is the Kernel of one network namespace.
type netlinkKernel struct {
	netns int // fd of the namespace; 0 means the caller's
}

var _ Kernel = (*netlinkKernel)(nil)

// NewKernel returns the Kernel of the network namespace netnsFd refers
// to, or of the namespace weftd runs in when netnsFd is 0. Each call opens
// its own netlink socket in that namespace, so the Kernel may be used from
// any goroutine and never changes a thread's namespace.
func NewKernel(netnsFd int) Kernel { return &netlinkKernel{netns: netnsFd} }

func (k *netlinkKernel) conn() (*nft.Conn, error) {
	c, err := nft.New(nft.WithNetNSFd(k.netns))
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// dumpRetries bounds the re-reads of a table that changed while it was
// being dumped (the kernel then returns an inconsistent or failed dump).
const dumpRetries = 3

func (k *netlinkKernel) Read(family nft.TableFamily, name string) (Table, bool, error) {
	var err error
	for range dumpRetries {
		var t Table
		var ok bool
		t, ok, err = k.read(family, name)
		if err == nil {
			return t, ok, nil
		}
	}
	return Table{}, false, fmt.Errorf("read table %s %s: %w", familyName(family), name, err)
}

func (k *netlinkKernel) read(family nft.TableFamily, name string) (Table, bool, error) {
	c, err := k.conn()
	if err != nil {
		return Table{}, false, err
	}
	tables, err := c.ListTablesOfFamily(family)
	if err != nil {
		return Table{}, false, err
	}
	if !slices.ContainsFunc(tables, func(t *nft.Table) bool { return t.Name == name }) {
		return Table{}, false, nil
	}
	chains, err := c.ListChainsOfTableFamily(family)
	if err != nil {
		return Table{}, false, err
	}
	t := Table{Family: family, Name: name}
	nt := &nft.Table{Family: family, Name: name}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != name {
			continue
		}
		rules, err := c.GetRules(nt, ch)
		if err != nil {
			return Table{}, false, err
		}
		out := Chain{Name: ch.Name, Type: ch.Type, Hook: ch.Hooknum, Priority: ch.Priority, Policy: ch.Policy}
		for _, r := range rules {
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			out.Rules = append(out.Rules, Rule{Comment: comment, Exprs: r.Exprs})
		}
		t.Chains = append(t.Chains, out)
	}
	return t, true, nil
}

// Replace sends one batch: add the table (a no-op when it exists), delete
// it with everything in it, then add it again with its chains and rules.
// nf_tables applies a batch as one transaction, so the old rules stay in
// force until the new ones are.
func (k *netlinkKernel) Replace(t Table) error {
	c, err := k.conn()
	if err != nil {
		return err
	}
	nt := &nft.Table{Family: t.Family, Name: t.Name}
	c.AddTable(nt)
	c.DelTable(nt)
	c.AddTable(nt)
	// Every chain before any rule, so that every jump target exists
	// when the rules are added.
	made := map[string]*nft.Chain{}
	for _, ch := range t.Chains {
		made[ch.Name] = c.AddChain(&nft.Chain{Name: ch.Name, Table: nt, Type: ch.Type, Hooknum: ch.Hook, Priority: ch.Priority, Policy: ch.Policy})
	}
	for _, ch := range t.Chains {
		for _, r := range ch.Rules {
			var ud []byte
			if r.Comment != "" {
				ud = userdata.AppendString(nil, userdata.TypeComment, r.Comment)
			}
			c.AddRule(&nft.Rule{Table: nt, Chain: made[ch.Name], Exprs: r.Exprs, UserData: ud})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("replace table %s %s: %w", familyName(t.Family), t.Name, err)
	}
	return nil
}

func (k *netlinkKernel) Delete(family nft.TableFamily, name string) error {
	c, err := k.conn()
	if err != nil {
		return err
	}
	tables, err := c.ListTablesOfFamily(family)
	if err != nil {
		return fmt.Errorf("list %s tables: %w", familyName(family), err)
	}
	if !slices.ContainsFunc(tables, func(t *nft.Table) bool { return t.Name == name }) {
		return nil
	}
	c.DelTable(&nft.Table{Family: family, Name: name})
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete table %s %s: %w", familyName(family), name, err)
	}
	return nil
}

func (k *netlinkKernel) ForwardDrops(family nft.TableFamily) ([]string, error) {
	c, err := k.conn()
	if err != nil {
		return nil, err
	}
	chains, err := c.ListChainsOfTableFamily(family)
	if err != nil {
		return nil, fmt.Errorf("list %s chains: %w", familyName(family), err)
	}
	var out []string
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name == TableName || ch.Hooknum == nil || *ch.Hooknum != *nft.ChainHookForward ||
			ch.Policy == nil || *ch.Policy != nft.ChainPolicyDrop {
			continue
		}
		out = append(out, fmt.Sprintf("table %s %s chain %s", familyName(family), ch.Table.Name, ch.Name))
	}
	return out, nil
}
