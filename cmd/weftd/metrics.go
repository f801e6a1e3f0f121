package main

import (
	"context"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/subnet"
)

// metrics holds weftd's Prometheus metrics. Values that the backend and the
// lease holder already track are read at scrape time by statusCollector
// rather than copied on every change.
type metrics struct {
	reg             *prometheus.Registry
	leasesKnown     prometheus.Gauge
	leasesInvalid   prometheus.Gauge
	leasesSkipped   *prometheus.CounterVec
	reconcile       prometheus.Histogram
	reconcileErrors prometheus.Counter
	etcdErrors      prometheus.Counter
	configInvalid   prometheus.Gauge
	restartNeeded   prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		leasesKnown: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weft_leases_known", Help: "Subnet leases in etcd, ours and invalid ones included.",
		}),
		leasesInvalid: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weft_leases_invalid", Help: "Leases in etcd currently skipped because they are invalid.",
		}),
		leasesSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_leases_skipped_total", Help: "Leases skipped as invalid, counted once per distinct value, by reason.",
		}, []string{"reason"}),
		reconcile: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "weft_reconcile_duration_seconds", Help: "Duration of backend reconcile passes.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_reconcile_errors_total", Help: "Backend reconcile passes that ended in an error.",
		}),
		etcdErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_etcd_errors_total", Help: "etcd requests by weftd that failed.",
		}),
		configInvalid: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weft_config_invalid", Help: "1 while the network config in etcd is invalid.",
		}),
		restartNeeded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weft_restart_needed", Help: "1 when the network config in etcd changed since weftd started.",
		}),
	}
	m.leasesSkipped.WithLabelValues("unparsable")
	m.leasesSkipped.WithLabelValues("invalid")
	m.leasesSkipped.WithLabelValues("backend-data")
	m.reg.MustRegister(m.leasesKnown, m.leasesInvalid, m.leasesSkipped, m.reconcile, m.reconcileErrors,
		m.etcdErrors, m.configInvalid, m.restartNeeded,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// countEtcdErrors is a gRPC interceptor counting failed etcd requests;
// a request cancelled because weftd is stopping is not a failure.
func (m *metrics) countEtcdErrors(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if err != nil && ctx.Err() != context.Canceled {
		m.etcdErrors.Inc()
	}
	return err
}

// countEtcdStreamErrors counts watch and keep-alive streams that could not
// be opened.
func (m *metrics) countEtcdStreamErrors(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil && ctx.Err() != context.Canceled {
		m.etcdErrors.Inc()
	}
	return s, err
}

func (m *metrics) observeReconcile(d time.Duration, err error) {
	m.reconcile.Observe(d.Seconds())
	if err != nil {
		m.reconcileErrors.Inc()
	}
}

var (
	descPeersProgrammed = prometheus.NewDesc("weft_peers_programmed", "Peers fully programmed in the kernel.", nil, nil)
	descPeersWanted     = prometheus.NewDesc("weft_peers_wanted", "Peers handed to the backend.", nil, nil)
	descPeersRefused    = prometheus.NewDesc("weft_peers_refused", "Peers not programmed because they conflict with another lease (same subnet or VtepMAC) or the backend or kernel refuses them.", nil, nil)
	descRepairs         = prometheus.NewDesc("weft_repairs_total", "Kernel objects and rules restored after drift, by kind.", []string{"kind"}, nil)
	descLeaseExpiry     = prometheus.NewDesc("weft_lease_expiry_seconds", "Seconds until our subnet lease expires (+Inf for a reservation).", nil, nil)
	descReady           = prometheus.NewDesc("weft_ready", "1 when weftd is ready.", nil, nil)
	descPackets         = prometheus.NewDesc("weft_udp_packets_total", "Packets through the udp backend.", []string{"direction"}, nil)
	descBytes           = prometheus.NewDesc("weft_udp_bytes_total", "Bytes through the udp backend.", []string{"direction"}, nil)
	descDrops           = prometheus.NewDesc("weft_udp_drops_total", "Packets the udp backend dropped, by reason.", []string{"reason"}, nil)
	descEtcdContact     = prometheus.NewDesc("weft_etcd_last_contact_seconds", "Seconds since weftd last heard from etcd.", nil, nil)
)

// statusCollector reads the daemon's live state at scrape time.
type statusCollector struct{ d *daemon }

func (c statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPeersProgrammed, descPeersWanted, descPeersRefused, descRepairs,
		descLeaseExpiry, descReady, descPackets, descBytes, descDrops, descEtcdContact} {
		ch <- d
	}
}

func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	ready, _ := d.readiness()
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, b2f(ready))
	d.mu.Lock()
	be, ipt, reg, lease, have, holder := d.be, d.ipt, d.reg, d.lease, d.haveLease, d.holder
	conflicts := 0
	for _, r := range d.refused {
		if subnet.Conflict(r.Reason) {
			conflicts++
		}
	}
	d.mu.Unlock()
	if reg != nil && !reg.LastContact().IsZero() {
		ch <- prometheus.MustNewConstMetric(descEtcdContact, prometheus.GaugeValue, time.Since(reg.LastContact()).Seconds())
	}
	if have {
		v := math.Inf(1)
		if !lease.Reservation && !lease.Expiration.IsZero() {
			v = time.Until(lease.Expiration).Seconds()
		}
		if h := holder; h != nil {
			if l, ok := h.Lease(); ok && !l.Reservation && !l.Expiration.IsZero() {
				v = time.Until(l.Expiration).Seconds()
			}
		}
		ch <- prometheus.MustNewConstMetric(descLeaseExpiry, prometheus.GaugeValue, v)
	}
	repairs := map[string]uint64{"device": 0, "route": 0, "neigh": 0, "fdb": 0, "addr": 0, "iptables": 0}
	if be != nil {
		st := be.Status()
		ch <- prometheus.MustNewConstMetric(descPeersProgrammed, prometheus.GaugeValue, float64(st.PeersProgrammed))
		ch <- prometheus.MustNewConstMetric(descPeersWanted, prometheus.GaugeValue, float64(st.PeersWanted))
		ch <- prometheus.MustNewConstMetric(descPeersRefused, prometheus.GaugeValue, float64(len(st.Refused)+conflicts))
		for k, v := range st.Repairs {
			repairs[k] += v
		}
		collectDataPath(ch, st.DataPath)
	}
	if ipt != nil {
		repairs["iptables"] += ipt.Repairs()
	}
	for k, v := range repairs {
		ch <- prometheus.MustNewConstMetric(descRepairs, prometheus.CounterValue, float64(v), k)
	}
}

func collectDataPath(ch chan<- prometheus.Metric, dp *backend.DataPathStats) {
	if dp == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(dp.TxPackets), "tx")
	ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(dp.RxPackets), "rx")
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(dp.TxBytes), "tx")
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(dp.RxBytes), "rx")
	for reason, v := range dp.Drops {
		ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(v), reason)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
