package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weftnet/weft/internal/apitypes"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/nftables"
	"github.com/weftnet/weft/subnet"
)

// httpLimits bound what one client of the HTTP endpoints may take, so that
// a slow or hostile client (slowloris: headers sent a byte at a time, or a
// response read never) cannot hold connections open for ever.
type httpLimits struct {
	// ReadHeader is the time allowed to send the request line and headers.
	ReadHeader time.Duration
	// Read is the time allowed to send the whole request.
	Read time.Duration
	// Write is the time allowed from the end of the headers to the end of
	// the response. It must exceed the longest profile /debug/pprof/profile
	// is asked for (30 s by default), or pprof refuses the request.
	Write time.Duration
	// Idle is how long a keep-alive connection may wait for its next request.
	Idle time.Duration
	// MaxHeaderBytes caps the request line and headers.
	MaxHeaderBytes int
}

// defaultHTTPLimits are generous for Prometheus, kubelet probes and
// weftctl status, which send a few hundred bytes at once.
var defaultHTTPLimits = httpLimits{
	ReadHeader:     5 * time.Second,
	Read:           10 * time.Second,
	Write:          60 * time.Second,
	Idle:           60 * time.Second,
	MaxHeaderBytes: 16 << 10,
}

// newHTTPServer applies lim (zero fields: the defaults) to a server for h.
func newHTTPServer(h http.Handler, lim httpLimits) *http.Server {
	def := defaultHTTPLimits
	pick := func(v, d time.Duration) time.Duration {
		if v > 0 {
			return v
		}
		return d
	}
	if lim.MaxHeaderBytes <= 0 {
		lim.MaxHeaderBytes = def.MaxHeaderBytes
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: pick(lim.ReadHeader, def.ReadHeader),
		ReadTimeout:       pick(lim.Read, def.Read),
		WriteTimeout:      pick(lim.Write, def.Write),
		IdleTimeout:       pick(lim.Idle, def.Idle),
		MaxHeaderBytes:    lim.MaxHeaderBytes,
	}
}

// startHTTP serves /healthz, /readyz, /metrics and /status on
// --healthz-ip:--healthz-port. It binds before returning so that a port
// clash is a start-up error. The server's Addr is the bound address.
func (d *daemon) startHTTP() (*http.Server, error) {
	d.metrics.reg.MustRegister(statusCollector{d})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, reason := d.readiness()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, reason)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	if d.cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /leases", func(w http.ResponseWriter, r *http.Request) {
		body, ok := d.leases()
		if !ok {
			http.Error(w, "no lease set read yet", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(body)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(d.status())
	})
	addr := net.JoinHostPort(d.cfg.HealthzIP, strconv.Itoa(d.cfg.HealthzPort))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on --healthz-ip/--healthz-port %s: %w", addr, err)
	}
	srv := newHTTPServer(mux, d.cfg.httpLimits)
	srv.Addr = ln.Addr().String()
	go srv.Serve(ln)
	return srv, nil
}

// status assembles what GET /status and weftctl status show.
func (d *daemon) status() apitypes.Status {
	ready, reason := d.readiness()
	s := apitypes.Status{
		SubnetFile:     d.cfg.SubnetFile,
		Ready:          ready,
		NotReadyReason: reason,
		ConfigError:    *d.configError.Load(),
		Version:        version,
		LeasesRefused:  []apitypes.LeaseRefusal{},

		IPMasq:            d.cfg.IPMasq,
		IPMasqFullyRandom: !d.cfg.IPMasqPlain,
		ForwardRules:      d.cfg.IPTablesForward,
	}
	w := d.wired.Load()
	if w == nil {
		return s
	}
	switch w.ipt.(type) {
	case *iptables.Manager:
		s.Rules = "iptables"
	case *nftables.Manager:
		s.Rules = "nftables"
	}
	st := w.core.State()
	s.ExternalInterface = w.ext.Name
	if w.ext.PublicIP.IsValid() {
		s.PublicIP = w.ext.PublicIP.String()
	}
	s.Backend = w.netcfg.BackendType
	s.PeersKnown = st.Peers
	s.RestartNeeded = len(st.RestartNeeded) > 0
	s.ConfigError = st.ConfigError
	for _, r := range st.Refused {
		s.LeasesRefused = append(s.LeasesRefused, apitypes.LeaseRefusal{Key: r.Key, Reason: r.Reason, Error: r.Err.Error()})
		if !subnet.Conflict(r.Reason) {
			s.LeasesSkipped++
		}
	}
	if st.HaveLease {
		s.Lease = st.Lease.Subnet.String()
		if w.netcfg.HasIPv6(st.Lease) {
			s.LeaseIPv6 = st.Lease.IPv6Subnet.String()
		}
		if a := st.Lease.Attrs.PublicIPv6; a.IsValid() && w.netcfg.EnableIPv6 {
			s.PublicIPv6 = a.String()
		}
		s.Reservation = st.Lease.Reservation
		s.LeaseExpires = st.Lease.Expiration
		if l, ok := w.store.Lease(); ok && l.Subnet == st.Lease.Subnet {
			s.LeaseExpires = l.Expiration
			s.Reservation = l.Reservation
		}
	}
	s.LastEtcdContact = w.store.LastContact()
	bs := w.be.Status()
	s.MTU = w.be.MTU()
	s.Device = bs.Device
	s.PeersProgrammed = bs.PeersProgrammed
	s.LastReconcile = bs.LastReconcile
	s.LastError = bs.LastError
	if len(bs.Refused) > 0 {
		s.PeersRefused = map[string]string{}
		for p, why := range bs.Refused {
			s.PeersRefused[p.String()] = why
		}
	}
	return s
}

// leases assembles GET /leases: the config weftd runs and the last lease
// set it read, false before there is one.
func (d *daemon) leases() (apitypes.Leases, bool) {
	w := d.wired.Load()
	if w == nil {
		return apitypes.Leases{}, false
	}
	st := w.core.State()
	if !st.HaveLeases {
		return apitypes.Leases{}, false
	}
	out := apitypes.Leases{Config: w.netcfg.Raw, Leases: make([]apitypes.LeaseEntry, 0, len(st.Leases.Leases))}
	for _, l := range st.Leases.Leases {
		v, err := l.Attrs.MarshalJSON()
		if err != nil {
			continue
		}
		out.Leases = append(out.Leases, apitypes.LeaseEntry{Key: l.Key(), Value: v, CreateRevision: l.CreateRevision, Reservation: l.Reservation})
	}
	for _, inv := range st.Leases.Invalid {
		out.Invalid = append(out.Invalid, inv.Key)
	}
	return out, true
}
