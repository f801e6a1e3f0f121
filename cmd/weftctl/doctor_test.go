package main

import (
	"context"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/apitypes"
)

// TestDoctorUsesWeftdSettings: doctor takes the subnet file and the public
// IP from weftd's /status; a flag overrides them; when weftd does not
// answer, doctor says so first and promises no repair by weftd. It reads
// this host's kernel (read-only), so only what the settings decide is
// asserted.
func TestDoctorUsesWeftdSettings(t *testing.T) {
	h, cli, reg := withEtcd(t)
	ctx := context.Background()
	if err := reg.PutConfig(ctx, []byte(netConfig)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, reg.LeaseKey(netip.MustParsePrefix("198.18.7.0/24")),
		`{"PublicIP":"192.0.2.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:07"}}`); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "weftd-writes-here.env")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(apitypes.Status{Lease: "198.18.7.0/24", PublicIP: "192.0.2.77", Backend: "vxlan", SubnetFile: file,
			ForwardRules: false, IPMasq: false, IPMasqFullyRandom: true, Rules: "iptables"})
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	r := h.run(ctx, "doctor", "--addr", addr)
	if !strings.Contains(r.stdout, "lease 198.18.7.0/24  public-ip 192.0.2.77") || !strings.Contains(r.stdout, file) {
		t.Errorf("doctor with weftd's settings: want our lease found by weftd's public IP and weftd's subnet file %s named:\n%s\n%s", file, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout, "WEFT-FWD") || strings.Contains(r.stdout, "weftd is not answering") {
		t.Errorf("weftd runs without forward rules and answers:\n%s", r.stdout)
	}
	other := filepath.Join(t.TempDir(), "flag.env")
	if r := h.run(ctx, "doctor", "--addr", addr, "--subnet-file", other); !strings.Contains(r.stdout, other) || strings.Contains(r.stdout, file) {
		t.Errorf("--subnet-file must override /status:\n%s", r.stdout)
	}

	// weftd not answering: said first, on stderr and atop the report.
	srv.Close()
	r = h.run(ctx, "doctor", "--addr", addr, "--public-ip", "192.0.2.77")
	if !strings.HasPrefix(r.stdout, "weftd is not answering") || !strings.Contains(r.stderr, "weftd is not answering") {
		t.Errorf("weftd down: stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout, "weftd restores") {
		t.Errorf("weftd down, yet a fix promises weftd restores it:\n%s", r.stdout)
	}
	if r.code != 1 {
		t.Errorf("exit %d, want 1", r.code)
	}
}

// TestHelpCommand: weftctl help COMMAND prints that command's help, and
// each command's usage line names every one of its flags.
func TestHelpCommand(t *testing.T) {
	h := &harness{t: t, env: map[string]string{}}
	out := h.runOK("help", "doctor")
	if !strings.HasPrefix(out, "Usage: weftctl doctor ") || !strings.Contains(out, "-rules") {
		t.Errorf("weftctl help doctor:\n%s", out)
	}
	h.runFail(2, "help", "nosuch")
	for _, c := range commands {
		if c.flags == nil {
			continue
		}
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		c.flags(fs, &cmdFlags{})
		fs.VisitAll(func(f *flag.Flag) {
			if !strings.Contains(c.args, "--"+f.Name) {
				t.Errorf("usage of %s (%q) does not list --%s", c.name, c.args, f.Name)
			}
		})
	}
}

// TestDoctorEtcdOutage: with etcd unreachable and weftd answering, doctor
// checks the kernel against the leases weftd last read (GET /leases) and
// says that the store's checks were skipped, instead of failing outright.
func TestDoctorEtcdOutage(t *testing.T) {
	h := &harness{t: t, env: map[string]string{}}
	ctx := context.Background()
	value := `{"PublicIP":"192.0.2.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:07"}}`
	peer := `{"PublicIP":"192.0.2.78","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:08"}}`
	file := filepath.Join(t.TempDir(), "subnet.env")
	mux := http.NewServeMux()
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(apitypes.Status{Lease: "198.18.7.0/24", PublicIP: "192.0.2.77", Backend: "vxlan", SubnetFile: file, Rules: "iptables"})
	})
	leases := true
	mux.HandleFunc("/leases", func(w http.ResponseWriter, r *http.Request) {
		if !leases {
			http.Error(w, "no lease set read yet", http.StatusServiceUnavailable)
			return
		}
		json.NewEncoder(w).Encode(apitypes.Leases{Config: []byte(netConfig), Leases: []apitypes.LeaseEntry{
			{Key: "198.18.7.0-24", Value: []byte(value)}, {Key: "198.18.8.0-24", Value: []byte(peer)}}})
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	// Nothing listens there: etcd is down.
	dead := "--etcd-endpoints=http://127.0.0.1:1"
	r := h.run(ctx, dead, "doctor", "--addr", addr, "-o", "json")
	var rep struct {
		Store, Lease string
		Peers        int
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("doctor during an etcd outage: %v\nstdout:\n%s\nstderr:\n%s", err, r.stdout, r.stderr)
	}
	if !strings.Contains(rep.Store, "skipped") || rep.Lease != "198.18.7.0/24" || rep.Peers != 1 {
		t.Errorf("doctor during an etcd outage: %+v\nstderr:\n%s", rep, r.stderr)
	}
	if !strings.Contains(r.stderr, "last known leases") {
		t.Errorf("stderr does not say the store is unreachable:\n%s", r.stderr)
	}
	// Without weftd's leases, the outage is the error.
	leases = false
	if r := h.run(ctx, dead, "doctor", "--addr", addr); r.code != 1 || !strings.Contains(r.stderr, "last known leases") {
		t.Errorf("no leases from weftd either: exit %d\n%s", r.code, r.stderr)
	}
}
