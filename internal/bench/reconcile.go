package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
	"time"
)

// Reconciles summarises the vxlan backend's "reconciled" debug log lines
// (weftd --log-level=debug) that fall into one time window.
type Reconciles struct {
	Passes int
	Total  time.Duration            // sum of the passes' "took"
	Steps  map[string]time.Duration // sum per step ("routes", "neigh", "fdb", ...)
	Order  []string                 // steps in the order first seen
}

// String renders e.g. "3 passes, 410 ms (routes 120 ms, neigh 90 ms, fdb 200 ms)".
func (r Reconciles) String() string {
	if r.Passes == 0 {
		return "no reconcile passes logged"
	}
	s := fmt.Sprintf("%d pass(es), %s", r.Passes, fmtDur(r.Total))
	var parts []string
	for _, k := range r.Order {
		parts = append(parts, k+" "+fmtDur(r.Steps[k]))
	}
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, ", ") + ")"
	}
	return s
}

// ParseReconciles reads slog text lines with msg=reconciled from log and
// sums those whose time= lies in [from, to].
func ParseReconciles(log []byte, from, to time.Time) Reconciles {
	r := Reconciles{Steps: map[string]time.Duration{}}
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "msg=reconciled") {
			continue
		}
		var at time.Time
		var took time.Duration
		var steps [][2]string
		for _, f := range strings.Fields(line) {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				continue
			}
			switch k {
			case "time":
				at, _ = time.Parse(time.RFC3339Nano, v)
			case "took":
				took, _ = time.ParseDuration(v)
			case "level", "msg", "backend", "peers", "programmed":
			default:
				if _, err := time.ParseDuration(v); err == nil {
					steps = append(steps, [2]string{k, v})
				}
			}
		}
		if at.IsZero() || at.Before(from) || at.After(to) {
			continue
		}
		r.Passes++
		r.Total += took
		for _, s := range steps {
			d, _ := time.ParseDuration(s[1])
			if _, seen := r.Steps[s[0]]; !seen {
				r.Order = append(r.Order, s[0])
			}
			r.Steps[s[0]] += d
		}
	}
	return r
}
