package lab

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestParsePing(t *testing.T) {
	for _, tc := range []struct {
		name    string
		out     string
		want    PingResult
		wantErr bool
	}{
		{
			name: "all answered",
			out: "PING 198.18.2.2 (198.18.2.2) 56(84) bytes of data.\n\n--- 198.18.2.2 ping statistics ---\n" +
				"3 packets transmitted, 3 received, 0% packet loss, time 101ms\nrtt min/avg/max/mdev = 0.047/0.062/0.079/0.013 ms\n",
			want: PingResult{Sent: 3, Received: 3, RTTs: RTTStats{Min: 47 * time.Microsecond, Avg: 62 * time.Microsecond, Max: 79 * time.Microsecond, Mdev: 13 * time.Microsecond}},
		},
		{
			name: "some lost",
			out:  "--- 198.18.2.2 ping statistics ---\n500 packets transmitted, 497 received, 0.6% packet loss, time 5012ms\nrtt min/avg/max/mdev = 0.100/0.200/1.500/0.050 ms, pipe 2\n",
			want: PingResult{Sent: 500, Received: 497, RTTs: RTTStats{Min: 100 * time.Microsecond, Avg: 200 * time.Microsecond, Max: 1500 * time.Microsecond, Mdev: 50 * time.Microsecond}},
		},
		{
			name: "none answered with errors",
			out:  "--- 198.18.9.9 ping statistics ---\n2 packets transmitted, 0 received, +2 errors, 100% packet loss, time 1001ms\n",
			want: PingResult{Sent: 2},
		},
		{
			name:    "no summary",
			out:     "ping: connect: Network is unreachable\n",
			wantErr: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePing([]byte(tc.out))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func FuzzParsePing(f *testing.F) {
	f.Add([]byte("3 packets transmitted, 3 received, 0% packet loss\nrtt min/avg/max/mdev = 0.047/0.062/0.079/0.013 ms\n"))
	f.Add([]byte("1 packets transmitted, 0 received"))
	f.Fuzz(func(t *testing.T, out []byte) {
		r, err := ParsePing(out)
		if err == nil && (r.Sent < 0 || r.Received < 0) {
			t.Errorf("negative counts: %+v", r)
		}
	})
}

func TestPingResultOK(t *testing.T) {
	for _, tc := range []struct {
		r    PingResult
		ok   bool
		lost int
	}{
		{PingResult{Sent: 3, Received: 3}, true, 0},
		{PingResult{Sent: 3, Received: 2}, false, 1},
		{PingResult{}, false, 0},
	} {
		if tc.r.OK() != tc.ok || tc.r.Lost() != tc.lost {
			t.Errorf("%+v: OK %v Lost %d, want %v %d", tc.r, tc.r.OK(), tc.r.Lost(), tc.ok, tc.lost)
		}
	}
}

func TestNetworkConfig(t *testing.T) {
	l := &Lab{opts: Options{
		Backend: "vxlan", Network: "198.18.0.0/16", SubnetLen: 26,
		ExtraConfig: map[string]any{"SubnetMin": "198.18.10.0", "Backend": map[string]any{"VNI": 7}},
	}}
	var got map[string]any
	if err := json.Unmarshal([]byte(l.NetworkConfig()), &got); err != nil {
		t.Fatal(err)
	}
	backend, _ := got["Backend"].(map[string]any)
	if got["Network"] != "198.18.0.0/16" || got["SubnetLen"] != float64(26) || got["SubnetMin"] != "198.18.10.0" ||
		backend["Type"] != "vxlan" || backend["VNI"] != float64(7) {
		t.Errorf("config = %s", l.NetworkConfig())
	}
}

func TestMatrixString(t *testing.T) {
	lab := &Lab{Name: "wl0000"}
	h := &Host{Name: "wl0000-h1", lab: lab}
	pods := []*Pod{
		{Name: "a", NSName: "wl0000-h1p1", IP: netip.MustParseAddr("198.18.1.2"), Host: h},
		{Name: "b", NSName: "wl0000-h1p2", IP: netip.MustParseAddr("198.18.1.3"), Host: h},
		{Name: "c", NSName: "wl0000-h1p3", IP: netip.MustParseAddr("198.18.1.4"), Host: h},
	}
	ok := PingResult{Sent: 3, Received: 3, RTTs: RTTStats{Avg: 123 * time.Microsecond}}
	m := Matrix{
		Pods: pods,
		Results: [][]PingResult{
			{{}, ok, {Sent: 3, Received: 1}},
			{ok, {}, ok},
			{ok, ok, {}},
		},
		Errors: [][]error{{nil, nil, nil}, {nil, nil, errors.New("boom")}, {nil, nil, nil}},
	}
	s := m.String()
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("want header and 3 rows, got:\n%s", s)
	}
	// Aligned: every cell of column 2 starts at the same rune offset.
	col := -1
	for _, line := range lines {
		i := strings.Index(line, "  ")
		for i < len(line) && line[i] == ' ' {
			i++
		}
		c := utf8.RuneCountInString(line[:i])
		if col >= 0 && c != col {
			t.Errorf("column 2 not aligned:\n%s", s)
		}
		col = c
	}
	for _, want := range []string{"h1p1 198.18.1.2", "✓ 0.123ms", "✗ 1/3", "✗ error"} {
		if !strings.Contains(s, want) {
			t.Errorf("matrix lacks %q:\n%s", want, s)
		}
	}
	if m.OK() {
		t.Error("matrix with failures reports OK")
	}
	if f := m.Failures(); len(f) != 2 {
		t.Errorf("failures = %q, want 2", f)
	}
}

func TestCheckTools(t *testing.T) {
	err := CheckTools("sh", "weft-no-such-tool-1", "ping-no-such")
	if err == nil || !strings.Contains(err.Error(), "apt-get install weft-no-such-tool-1 ping-no-such") {
		t.Errorf("err = %v", err)
	}
	if err := CheckTools("sh"); err != nil {
		t.Errorf("sh reported missing: %v", err)
	}
}

func TestHealthzFromArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--healthz-ip=127.0.0.1", "--healthz-port=8471"}, "127.0.0.1:8471"},
		{[]string{"--healthz-ip=127.0.0.1", "--healthz-port=8471", "--healthz-port=9000"}, "127.0.0.1:9000"},
		{[]string{"-healthz-port", "9001", "--healthz-ip", "192.0.2.11"}, "192.0.2.11:9001"},
		{[]string{"--healthz-ip=0.0.0.0"}, "127.0.0.1:8471"},
	} {
		if got := healthzFromArgs(tc.args); got != tc.want {
			t.Errorf("%q: got %s, want %s", tc.args, got, tc.want)
		}
	}
}
