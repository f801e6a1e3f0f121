// Package nfttest is an in-memory nftables.Kernel for tests above package
// nftables, so that they need no root.
package nfttest

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	nft "github.com/google/nftables"

	"github.com/weftnet/weft/internal/nftables"
)

// Kernel holds tables in memory. Replace stores a copy, so a test that
// edits a stored table (drift) does not edit what its caller built.
type Kernel struct {
	Tables map[string]nftables.Table // by Key
	// Replaces counts successful Replace calls; Deletes Delete calls that
	// removed a table.
	Replaces, Deletes int
	// RefuseFullyRandom makes Replace fail for a table with fully-random
	// masquerade, as a kernel without it would.
	RefuseFullyRandom bool
	// Drops is what ForwardDrops returns.
	Drops []string
	// Err, if set, is returned by every method.
	Err error
}

var _ nftables.Kernel = (*Kernel)(nil)

// New returns an empty kernel.
func New() *Kernel { return &Kernel{Tables: map[string]nftables.Table{}} }

// Key is the map key of a table.
func Key(f nft.TableFamily, name string) string { return fmt.Sprint(f, "/", name) }

func (k *Kernel) Read(f nft.TableFamily, name string) (nftables.Table, bool, error) {
	if k.Err != nil {
		return nftables.Table{}, false, k.Err
	}
	t, ok := k.Tables[Key(f, name)]
	return Clone(t), ok, nil
}

func (k *Kernel) Replace(t nftables.Table) error {
	if k.Err != nil {
		return k.Err
	}
	if k.RefuseFullyRandom && strings.Contains(t.String(), "fully-random") {
		return errors.New("netlink receive: operation not supported")
	}
	k.Replaces++
	k.Tables[Key(t.Family, t.Name)] = Clone(t)
	return nil
}

func (k *Kernel) Delete(f nft.TableFamily, name string) error {
	if k.Err != nil {
		return k.Err
	}
	if _, ok := k.Tables[Key(f, name)]; ok {
		k.Deletes++
	}
	delete(k.Tables, Key(f, name))
	return nil
}

func (k *Kernel) ForwardDrops(nft.TableFamily) ([]string, error) { return k.Drops, k.Err }

// Clone copies a table deeply enough that editing its chains or rule lists
// leaves the original alone.
func Clone(t nftables.Table) nftables.Table {
	t.Chains = slices.Clone(t.Chains)
	for i := range t.Chains {
		t.Chains[i].Rules = slices.Clone(t.Chains[i].Rules)
	}
	return t
}
