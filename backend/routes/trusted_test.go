package routes

import (
	"slices"
	"testing"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nlfake"
)

// walkCounter counts the reads of a table.
type walkCounter struct {
	flakyTable
	walks *int
}

func (t walkCounter) Walk(start func(), fn func(r *nl.Route)) error {
	*t.walks++
	return t.flakyTable.Walk(start, fn)
}

// TestTrustedMatchesFull drives one reconciler with trusted passes, except
// after drift (which the kernel would announce with an event), and another
// with full passes through the same random steps, each on its own fake
// table with the same failing writes: every pass must report the same and
// leave the same table, and a trusted pass after a clean one must not read
// the table.
func TestTrustedMatchesFull(t *testing.T) {
	w := newRandomWorld(23, stepMix{newSets: 2, pruneOnDrift: true}, pfx("198.18.40.0/24"), pfx("10.1.0.0/24"))
	ta, tb := w.tables()
	walks := 0
	trusted := New(walkCounter{ta, &walks}, network)
	full := New(tb, network)
	untouched, readAnyway := 0, 0
	for step := range 1500 {
		drift := w.step()
		wa, wb := slices.Clone(w.want), slices.Clone(w.want)
		known := trusted.known
		before := walks
		var resA Result
		var errA error
		if drift {
			resA, errA = trusted.Reconcile(wa)
		} else {
			resA, errA = trusted.ReconcileTrustedFunc(len(wa), func(i int) nl.RouteSpec { return wa[i] })
			if known && walks != before {
				t.Fatalf("step %d: a trusted pass after a clean one read the table", step)
			}
			if known {
				untouched++
			} else {
				readAnyway++
			}
		}
		resB, errB := full.Reconcile(wb)
		if msg := w.compare("a full one", resA, errA, resB, errB); msg != "" {
			t.Fatalf("step %d: trusted %s", step, msg)
		}
	}
	if untouched < 100 || readAnyway < 20 {
		t.Errorf("%d trusted passes without a read and %d after a failed pass: the steps do not cover both", untouched, readAnyway)
	}
}

// TestTrustedAfterSetTable: a new table (a new connection) is read before
// it is trusted.
func TestTrustedAfterSetTable(t *testing.T) {
	f := nlfake.New()
	f.AddDevice("eth0", 1500, pfx("192.0.2.11/24"))
	walks := 0
	table := walkCounter{flakyTable{f.RouteTable(network, backend.RouteProtocol), nil}, &walks}
	rc := New(table, network)
	want := []Want{{Dst: pfx("198.18.1.0/24"), Gw: addr("192.0.2.1"), LinkIndex: 1}}
	trusted := func() { rc.ReconcileTrustedFunc(len(want), func(i int) nl.RouteSpec { return want[i] }) }
	trusted()
	if walks != 1 {
		t.Fatalf("first pass read the table %d times, want once", walks)
	}
	trusted()
	if walks != 1 {
		t.Fatal("a trusted pass after a clean one read the table")
	}
	rc.SetTable(table)
	trusted()
	if walks != 2 {
		t.Fatal("a trusted pass on a new table did not read it")
	}
}
