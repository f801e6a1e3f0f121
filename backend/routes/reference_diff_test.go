package routes

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/nl"
	"github.com/weftnet/weft/internal/nl/nlfake"
)

// flakyTable fails the writes to the destinations in failing, the same way
// for every reconciler that uses it.
type flakyTable struct {
	*nlfake.Table
	failing map[netip.Prefix]bool
}

func (t flakyTable) ReplaceAll(ws []nl.RouteSpec) []error {
	return nlfake.WriteFailing(ws, func(w nl.RouteSpec) bool { return t.failing[w.Dst] }, t.Table.ReplaceAll)
}

func (t flakyTable) Delete(r *nl.Route) error {
	if t.failing[r.Dst] {
		return unix.EBUSY
	}
	return t.Table.Delete(r)
}

// TestMatchesReference drives the reconciler and the reference one (the
// implementation before this one) through the same random passes, each on
// its own fake table with the same drift and the same failing writes, and
// checks that every pass reports the same and leaves the same table:
// duplicates in want, refusals (outside the network, over a connected
// network that comes and goes), routes of ours at other metrics or in
// another shape, foreign routes, failed installs and deletes, and joins of
// more routes than one ReplaceAll chunk.
func TestMatchesReference(t *testing.T) {
	w := newRandomWorld(17, stepMix{newSets: 1, allDrift: true}, pfx("198.18.40.0/24"), pfx("198.18.0.0/16"), pfx("10.1.0.0/24"), pfx("2001:db8::/64"))
	ta, tb := w.tables()
	rc, ref := New(ta, network), newRef(tb, network)
	for step := range 1500 {
		w.step()
		wa, wb := slices.Clone(w.want), slices.Clone(w.want)
		resA, errA := rc.Reconcile(wa)
		resB, errB := ref.Reconcile(wb)
		if msg := w.compare("the reference", resA, errA, resB, errB); msg != "" {
			t.Fatalf("step %d: %s", step, msg)
		}
	}
}

// describePass renders a pass's result and error in an order that does
// not depend on map iteration.
func describePass(res Result, err error) string {
	var b strings.Builder
	fmt.Fprintf(&b, "added %d updated %d repaired %d removed %d\n", res.Added, res.Updated, res.Repaired, res.Removed)
	var lines []string
	for dst, why := range res.Refused {
		lines = append(lines, fmt.Sprintf("refused %s: %s", dst, why))
	}
	for dst, err := range res.Failed {
		lines = append(lines, fmt.Sprintf("failed %s: %v", dst, err))
	}
	if err != nil {
		for _, l := range strings.Split(err.Error(), "\n") {
			lines = append(lines, "error: "+l)
		}
	}
	slices.Sort(lines)
	b.WriteString(strings.Join(lines, "\n"))
	return b.String()
}
