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
	leasesSkipped   *prometheus.CounterVec
	reconcile       prometheus.Histogram
	reconcileErrors prometheus.Counter
	etcdErrors      prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
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
	}
	for _, r := range []string{subnet.RefusedUnparsable, subnet.RefusedInvalid, subnet.RefusedBackendData,
		subnet.RefusedDuplicateSubnet, subnet.RefusedDuplicateMAC} {
		m.leasesSkipped.WithLabelValues(r)
	}
	m.reg.MustRegister(m.leasesSkipped, m.reconcile, m.reconcileErrors, m.etcdErrors,
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
	descLeasesKnown     = prometheus.NewDesc("weft_leases_known", "Subnet leases in etcd, ours and invalid ones included.", nil, nil)
	descLeasesInvalid   = prometheus.NewDesc("weft_leases_invalid", "Leases in etcd currently skipped because they are broken (conflicts count in weft_peers_refused).", nil, nil)
	descConfigInvalid   = prometheus.NewDesc("weft_config_invalid", "1 while the network config in etcd is invalid.", nil, nil)
	descRestartNeeded   = prometheus.NewDesc("weft_restart_needed", "1 when the network config in etcd changed since weftd started.", nil, nil)
	descLeaseSubnet     = prometheus.NewDesc("weft_lease_subnet_info", "Our leased subnet, 1 per address family.", []string{"family", "subnet"}, nil)
	descPeerSubnets     = prometheus.NewDesc("weft_peer_subnets", "Peer subnets handed to the backend, by address family.", []string{"family"}, nil)
	descEtcdContact     = prometheus.NewDesc("weft_etcd_last_contact_seconds", "Seconds since weftd last heard from etcd.", nil, nil)
)

// statusCollector reads the daemon's live state at scrape time.
type statusCollector struct{ d *daemon }

func (c statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPeersProgrammed, descPeersWanted, descPeersRefused, descRepairs,
		descLeaseExpiry, descReady, descPackets, descBytes, descDrops, descEtcdContact, descLeaseSubnet, descPeerSubnets,
		descLeasesKnown, descLeasesInvalid, descConfigInvalid, descRestartNeeded} {
		ch <- d
	}
}

func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	ready, _ := d.readiness()
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, b2f(ready))
	repairs := map[string]uint64{"device": 0, "route": 0, "neigh": 0, "fdb": 0, "addr": 0, "iptables": 0}
	defer func() {
		for k, v := range repairs {
			ch <- prometheus.MustNewConstMetric(descRepairs, prometheus.CounterValue, float64(v), k)
		}
	}()
	w := d.wired.Load()
	if w == nil {
		ch <- prometheus.MustNewConstMetric(descConfigInvalid, prometheus.GaugeValue, b2f(*d.configError.Load() != ""))
		ch <- prometheus.MustNewConstMetric(descRestartNeeded, prometheus.GaugeValue, 0)
		ch <- prometheus.MustNewConstMetric(descLeasesKnown, prometheus.GaugeValue, 0)
		ch <- prometheus.MustNewConstMetric(descLeasesInvalid, prometheus.GaugeValue, 0)
		return
	}
	st := w.core.State()
	ch <- prometheus.MustNewConstMetric(descConfigInvalid, prometheus.GaugeValue, b2f(st.ConfigError != ""))
	ch <- prometheus.MustNewConstMetric(descRestartNeeded, prometheus.GaugeValue, b2f(len(st.RestartNeeded) > 0))
	ch <- prometheus.MustNewConstMetric(descLeasesKnown, prometheus.GaugeValue, float64(st.LeasesKnown))
	conflicts, broken := 0, 0
	for _, r := range st.Refused {
		if subnet.Conflict(r.Reason) {
			conflicts++
		} else {
			broken++
		}
	}
	ch <- prometheus.MustNewConstMetric(descLeasesInvalid, prometheus.GaugeValue, float64(broken))
	if !w.store.LastContact().IsZero() {
		ch <- prometheus.MustNewConstMetric(descEtcdContact, prometheus.GaugeValue, time.Since(w.store.LastContact()).Seconds())
	}
	if st.HaveLease {
		lease := st.Lease
		if l, ok := w.store.Lease(); ok && l.Subnet == lease.Subnet {
			lease = l
		}
		v := math.Inf(1)
		if !lease.Reservation && !lease.Expiration.IsZero() {
			v = time.Until(lease.Expiration).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(descLeaseExpiry, prometheus.GaugeValue, v)
		ch <- prometheus.MustNewConstMetric(descLeaseSubnet, prometheus.GaugeValue, 1, subnet.IPv4.String(), st.Lease.Subnet.String())
		if w.netcfg.HasIPv6(st.Lease) {
			ch <- prometheus.MustNewConstMetric(descLeaseSubnet, prometheus.GaugeValue, 1, subnet.IPv6.String(), st.Lease.IPv6Subnet.String())
		}
	}
	ch <- prometheus.MustNewConstMetric(descPeerSubnets, prometheus.GaugeValue, float64(st.Peers), subnet.IPv4.String())
	if w.netcfg.EnableIPv6 {
		ch <- prometheus.MustNewConstMetric(descPeerSubnets, prometheus.GaugeValue, float64(st.Peers6), subnet.IPv6.String())
	}
	bs := w.be.Status()
	ch <- prometheus.MustNewConstMetric(descPeersProgrammed, prometheus.GaugeValue, float64(bs.PeersProgrammed))
	ch <- prometheus.MustNewConstMetric(descPeersWanted, prometheus.GaugeValue, float64(bs.PeersWanted))
	ch <- prometheus.MustNewConstMetric(descPeersRefused, prometheus.GaugeValue, float64(len(bs.Refused)+conflicts))
	for k, v := range bs.Repairs {
		repairs[k] += v
	}
	collectDataPath(ch, bs.DataPath)
	if w.ipt != nil {
		repairs["iptables"] += w.ipt.Repairs()
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
