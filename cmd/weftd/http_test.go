package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// startTestHTTP runs weftd's HTTP endpoints on an ephemeral loopback port
// with the given limits.
func startTestHTTP(t *testing.T, lim httpLimits) string {
	t.Helper()
	d := newDaemon(&Config{HealthzIP: "127.0.0.1", HealthzPort: 0, httpLimits: lim}, nil, slog.New(slog.DiscardHandler))
	srv, err := d.startHTTP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv.Addr
}

// TestHTTPSlowHeadersDisconnected: a client that sends its headers a line
// at a time and never finishes them (slowloris) is cut off once the header
// timeout has passed, instead of holding a connection for ever.
func TestHTTPSlowHeadersDisconnected(t *testing.T) {
	const headerTimeout = 300 * time.Millisecond
	addr := startTestHTTP(t, httpLimits{ReadHeader: headerTimeout, Read: 2 * headerTimeout, Write: time.Second, Idle: time.Second})

	// A well-behaved client is served.
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
		t.Fatalf("GET /healthz: %s %q", resp.Status, body)
	}

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := fmt.Fprint(conn, "GET /healthz HTTP/1.1\r\nHost: weftd\r\n"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := fmt.Fprintf(conn, "X-Slow-%d: 1\r\n", i); err != nil {
				return // the server hung up
			}
		}
	}()
	defer func() { close(stop); <-trickled }()

	const patience = 5 * time.Second
	conn.SetReadDeadline(start.Add(patience))
	_, err = io.Copy(io.Discard, conn) // returns at EOF, reset or the deadline
	elapsed := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("a client that never finishes its headers is still connected after %s", patience)
	}
	if elapsed > headerTimeout+time.Second {
		t.Fatalf("slow client disconnected after %s, want about %s", elapsed, headerTimeout)
	}
	t.Logf("slow client disconnected after %s (err %v)", elapsed.Round(time.Millisecond), err)
}

// TestHTTPHeaderTooLarge: headers beyond MaxHeaderBytes are refused with
// 431 instead of being buffered.
func TestHTTPHeaderTooLarge(t *testing.T) {
	addr := startTestHTTP(t, httpLimits{MaxHeaderBytes: 1 << 10})
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/healthz", nil)
	// net/http allows 4 KiB of slack above MaxHeaderBytes.
	req.Header.Set("X-Big", strings.Repeat("a", 8<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("8 KiB header with a 1 KiB limit: %s, want 431", resp.Status)
	}
}

// TestHTTPDefaultLimits: weftd's real server (zero limits in Config) has
// every timeout and the header cap set, and leaves room for a default
// 30-second CPU profile.
func TestHTTPDefaultLimits(t *testing.T) {
	srv := newHTTPServer(http.NotFoundHandler(), httpLimits{})
	if srv.ReadHeaderTimeout <= 0 || srv.ReadTimeout <= 0 || srv.WriteTimeout <= 0 || srv.IdleTimeout <= 0 || srv.MaxHeaderBytes <= 0 {
		t.Fatalf("a limit is unset: %+v", srv)
	}
	if srv.WriteTimeout <= 30*time.Second {
		t.Fatalf("WriteTimeout %s: /debug/pprof/profile's default 30 s would be refused", srv.WriteTimeout)
	}
}

// TestStatusRuleSettings: /status reports the host rule settings weftd runs
// with, which weftctl doctor checks the host against, from the start.
func TestStatusRuleSettings(t *testing.T) {
	for _, tc := range []struct {
		args                  []string
		masq, random, forward bool
	}{
		{nil, false, true, true},
		{[]string{"--ip-masq", "--ip-masq-fully-random-disable", "--iptables-forward-rules=false"}, true, false, false},
	} {
		cfg, err := parseConfig(tc.args, env(nil), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		st := newDaemon(cfg, backendMap(), slog.New(slog.DiscardHandler)).status()
		if st.IPMasq != tc.masq || st.IPMasqFullyRandom != tc.random || st.ForwardRules != tc.forward || st.Rules != "" {
			t.Errorf("%v: ipMasq %v fully random %v forward %v rules %q", tc.args, st.IPMasq, st.IPMasqFullyRandom, st.ForwardRules, st.Rules)
		}
	}
}
