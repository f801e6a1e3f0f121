package bench

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sideBySide is weftd at 1000, 5000 and 10000 peers with flanneld at each.
func sideBySide() Results {
	ms := func(x float64) time.Duration { return time.Duration(x * float64(time.Millisecond)) }
	run := func(d string, n int, startup, join float64, rss int64) ControlRun {
		return ControlRun{N: n, Daemon: d, Startup: ms(startup), Ready: ms(startup), Join: ms(join), Leave: ms(100), RSS: rss}
	}
	return Results{Control: []ControlRun{
		run("weftd", 1000, 200, 150, 33<<20),
		run("flanneld", 1000, 1500, 1400, 43<<20),
		run("weftd", 5000, 600, 700, 29<<20+512<<10),
		run("flanneld", 5000, 6900, 6800, 48<<20),
		run("weftd", 10000, 900, 1200, 41<<20),
		run("flanneld", 10000, 16200, 22600, 52<<20),
	}}
}

func TestTableSideBySide(t *testing.T) {
	res := sideBySide()
	tab := res.Table()
	find := func(cs, metric string) Row {
		t.Helper()
		for _, r := range tab.Rows {
			if r.Case == cs && r.Metric == metric {
				return r
			}
		}
		t.Fatalf("no row %q / %q in\n%s", cs, metric, tab.Text())
		return Row{}
	}
	for _, tc := range []struct {
		cs, metric      string
		result, verdict string
	}{
		{"vxlan, 5000 peers", "weftd RSS afterwards", "29.5 MiB", "target ≤ 30.0 MiB: met"},
		{"vxlan, 10000 peers", "weftd RSS afterwards", "41.0 MiB", "target ≤ 40.0 MiB: MISSED"},
		{"vxlan, 1000 peers", "weftd RSS afterwards", "33.0 MiB", ""},
		{"vxlan, 10000 peers", "start-up: weftd start → all programmed", "900 ms", "target ≤ 1.00 s: met"},
		{"vxlan, 10000 peers", "join: 10000 more leases → programmed", "1.20 s", "target ≤ 1.00 s: MISSED"},
		{"vxlan, 10000 peers, flanneld", "start-up: flanneld start → all programmed", "16.20 s", "weftd 900 ms"},
		{"vxlan, 10000 peers, flanneld", "join: 10000 more leases → programmed", "22.60 s", "weftd 1.20 s"},
		{"vxlan, 5000 peers, flanneld", "flanneld RSS afterwards", "48.0 MiB", "weftd 29.5 MiB"},
		// (41 − 33) MiB over 9000 peers; (52 − 43) MiB over 9000.
		{"vxlan, 1000 → 10000 peers", "weftd RSS per additional peer", "932 B", "target ≤ 1024 B: met"},
		{"vxlan, 1000 → 10000 peers, flanneld", "flanneld RSS per additional peer", "1049 B", "weftd 932 B"},
	} {
		r := find(tc.cs, tc.metric)
		if r.Result != tc.result || r.Verdict != tc.verdict {
			t.Errorf("%s / %s: got %q, %q; want %q, %q", tc.cs, tc.metric, r.Result, r.Verdict, tc.result, tc.verdict)
		}
	}
	// Targets are weftd's: flanneld's figures never count as missed.
	want := []string{"join of 10000 peers: 1.20 s > 1.00 s", "RSS with 10000 peers: 41.0 MiB > 40.0 MiB"}
	if got := res.Missed(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Missed = %q, want %q", got, want)
	}
	res.Control[1].Err = io.ErrUnexpectedEOF
	if f := res.Failed(); len(f) != 1 || f[0] != "control plane 1000 peers, flanneld: unexpected EOF" {
		t.Errorf("Failed = %q", f)
	}
	if g, ok := res.RSSGrowth("flanneld"); !ok || g.From.N != 5000 {
		t.Errorf("growth skips failed runs: %+v %v", g, ok)
	}
}

func TestTableWithoutFlanneld(t *testing.T) {
	var res Results
	for _, c := range sideBySide().Control {
		if c.Daemon == "weftd" {
			c.Daemon = "" // as an older caller leaves it
			res.Control = append(res.Control, c)
		}
	}
	for _, r := range res.Table().Rows {
		if strings.Contains(r.Case+r.Metric+r.Verdict, "flanneld") {
			t.Errorf("flanneld row without flanneld: %+v", r)
		}
	}
	if _, ok := res.RSSGrowth("flanneld"); ok {
		t.Error("growth of a daemon that never ran")
	}
	notes := strings.Join(Notes(res), "\n")
	if !strings.Contains(notes, "github.com/flannel-io/flannel") || !strings.Contains(notes, "`go build -o flanneld .`") {
		t.Errorf("notes do not say how to build flanneld:\n%s", notes)
	}
}

// TestControlSideBySide runs the control-plane case at 50 peers with weftd
// standing in for flanneld: the stand-in starts with weftd's lab flags,
// its peers are counted by what the kernel holds (its routes carry weft's
// protocol, but the counter does not look at it), and both daemons' rows
// appear.
func TestControlSideBySide(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two control-plane labs")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	binDir, err := filepath.Abs("../../bin")
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"weftd", "weft", "weft-lab"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			t.Skipf("%s missing (make build): %v", b, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{
		BinDir:       binDir,
		Name:         "wbs",
		Only:         []string{SectionControl},
		ControlPeers: []int{50},
		Flanneld:     filepath.Join(binDir, "weftd"),
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if f := res.Failed(); len(f) > 0 {
		t.Fatalf("failed: %q", f)
	}
	if len(res.Control) != 2 || res.Control[0].Daemon != "weftd" || res.Control[1].Daemon != "flanneld" {
		t.Fatalf("runs: %+v", res.Control)
	}
	for _, c := range res.Control {
		if c.Startup <= 0 || c.Join <= 0 || c.Leave <= 0 || c.RSS <= 0 {
			t.Errorf("%s: %+v", c.Daemon, c)
		}
	}
	tab := res.Table()
	var weft, flannel bool
	for _, r := range tab.Rows {
		switch {
		case r.Case == "vxlan, 50 peers" && r.Metric == "weftd RSS afterwards":
			weft = true
		case r.Case == "vxlan, 50 peers, flanneld" && r.Metric == "flanneld RSS afterwards":
			flannel = r.Verdict == "weftd "+fmtMiB(res.Control[0].RSS)
		}
	}
	if !weft || !flannel {
		t.Errorf("side-by-side rows missing:\n%s", tab.Text())
	}
}
