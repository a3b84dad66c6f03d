// Package metrics is the agent's Prometheus registry (its own, no
// globals): what the status already holds is read at scrape time from a
// Source; what happens between scrapes is counted as it happens (pass
// durations, requests of the front doors).
package metrics

import (
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/config"
	"github.com/vxnet/vxnet/internal/health"
)

// Source is what the metrics read at scrape time (the agent).
type Source interface {
	Status(withEndpoints bool) api.Status
	Traffic() cluster.Traffic
	HealthPeers() []health.Peer
}

// Metrics is one agent's registry.
type Metrics struct {
	reg      *prometheus.Registry
	pass     prometheus.Histogram
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// New returns the registry of the agent src.
func New(src Source) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		pass: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "vxnet_reconcile_pass_seconds",
			Help: "Duration of reconcile passes.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vxnet_requests_total",
			Help: "Requests served, by front door (api, docker), path and HTTP code."}, []string{"door", "path", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "vxnet_request_seconds",
			Help: "Request latency, by front door and path.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"door", "path"}),
	}
	m.reg.MustRegister(m.pass, m.requests, m.latency, statusCollector{src})
	return m
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	return mux
}

// Instrument counts and times the requests of a front door.
func (m *Metrics) Instrument(door string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &codeRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		path := r.URL.Path
		if r.Pattern != "" {
			path = r.Pattern // the route, not every network's name
		}
		m.requests.WithLabelValues(door, path, strconv.Itoa(rec.code)).Inc()
		m.latency.WithLabelValues(door, path).Observe(time.Since(start).Seconds())
	})
}

// ObservePass records the duration of a reconcile pass.
func (m *Metrics) ObservePass(d time.Duration) { m.pass.Observe(d.Seconds()) }

// Gather returns the metrics as a scrape would.
func (m *Metrics) Gather() ([]*dto.MetricFamily, error) { return m.reg.Gather() }

type codeRecorder struct {
	http.ResponseWriter
	code int
}

func (c *codeRecorder) WriteHeader(code int) {
	c.code = code
	c.ResponseWriter.WriteHeader(code)
}

// statusCollector reads the agent's status at scrape time.
type statusCollector struct{ src Source }

var (
	descMembers     = prometheus.NewDesc("vxnet_members", "Members of the cluster by state.", []string{"state"}, nil)
	descEndpoints   = prometheus.NewDesc("vxnet_endpoints", "Endpoints of a network, local to this host or remote (of live members).", []string{"network", "where"}, nil)
	descPasses      = prometheus.NewDesc("vxnet_reconcile_passes_total", "Reconcile passes run.", nil, nil)
	descErrors      = prometheus.NewDesc("vxnet_reconcile_failing", "1 while the last reconcile pass failed.", nil, nil)
	descWrites      = prometheus.NewDesc("vxnet_kernel_writes_total", "Kernel changes made by reconcile passes.", nil, nil)
	descMalformed   = prometheus.NewDesc("vxnet_gossip_malformed_messages_total", "Messages refused from the network.", nil, nil)
	descConflicts   = prometheus.NewDesc("vxnet_conflicts", "Conflicts in the cluster state (see vxnet status).", nil, nil)
	descRecords     = prometheus.NewDesc("vxnet_records", "Records in the replicated state, tombstones included.", nil, nil)
	descAddrLost    = prometheus.NewDesc("vxnet_advertise_address_lost", "1 while the advertise address is gone from the host.", nil, nil)
	descGossipMsgs  = prometheus.NewDesc("vxnet_gossip_messages_total", "vxnet's messages (records, state exchanges, calls) received (in) and sent (out); memberlist's probes not counted.", []string{"direction"}, nil)
	descGossipBytes = prometheus.NewDesc("vxnet_gossip_bytes_total", "Bytes of vxnet's messages received (in) and sent (out).", []string{"direction"}, nil)
	descPeerState   = prometheus.NewDesc("vxnet_peer_health", "1 for the current verdict on the overlay path to a peer (ok, degraded, mtu, unreachable, unknown), 0 for the others.", []string{"peer", "state"}, nil)
	descPeerRTT     = prometheus.NewDesc("vxnet_peer_rtt_seconds", "Moving average of the health probes' round-trip time to a peer, through the overlay.", []string{"peer"}, nil)
	descFastPath    = prometheus.NewDesc("vxnet_fastpath", "The BPF fast path: devices whose ingress runs its program (hooks) and MACs it carries straight on (entries); absent on the bridge datapath.", []string{"what"}, nil)
	descTunnelAge   = prometheus.NewDesc("vxnet_tunnel_handshake_age_seconds", "Time since the last WireGuard handshake with a peer (+Inf: none yet), as the last reconcile pass read the tunnel.", []string{"peer"}, nil)
	descPathAddr    = prometheus.NewDesc("vxnet_path_address", "Per peer reached at more than one address, each address: 1 when it answers the path probes, 0 when not; the label in_use says which one carries the pair's traffic.", []string{"peer", "addr", "in_use"}, nil)
	descTunnelBytes = prometheus.NewDesc("vxnet_tunnel_bytes_total", "Bytes received from (in) and sent to (out) a peer through the WireGuard tunnel, as the last reconcile pass read it.", []string{"peer", "direction"}, nil)
	descPeerLoss    = prometheus.NewDesc("vxnet_peer_probe_loss_ratio", "Share of health probes to a peer lost in the window, by probe size (small, full).", []string{"peer", "size"}, nil)
)

var healthStates = []health.Verdict{health.OK, health.Degraded, health.MTU, health.Unreachable, health.Unknown}

func (c statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMembers, descEndpoints, descPasses, descErrors, descWrites, descMalformed, descConflicts, descRecords, descAddrLost, descPeerState, descPeerRTT, descPeerLoss, descGossipMsgs, descGossipBytes, descFastPath, descTunnelAge, descTunnelBytes, descPathAddr} {
		ch <- d
	}
}

func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Status(false)
	states := map[string]float64{"alive": 0, "failed": 0}
	for _, m := range s.Members {
		states[m.State]++
	}
	for st, n := range states {
		ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, n, st)
	}
	for _, n := range s.Networks {
		ch <- prometheus.MustNewConstMetric(descEndpoints, prometheus.GaugeValue, float64(n.Local), n.Name, "local")
		ch <- prometheus.MustNewConstMetric(descEndpoints, prometheus.GaugeValue, float64(n.Remote), n.Name, "remote")
	}
	b := func(ok bool) float64 {
		if ok {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(descPasses, prometheus.CounterValue, float64(s.Syncs))
	ch <- prometheus.MustNewConstMetric(descErrors, prometheus.GaugeValue, b(s.SyncError != ""))
	ch <- prometheus.MustNewConstMetric(descWrites, prometheus.CounterValue, float64(s.KernelOps))
	if s.Datapath == config.DatapathBPF {
		ch <- prometheus.MustNewConstMetric(descFastPath, prometheus.GaugeValue, float64(s.FastHooks), "hooks")
		ch <- prometheus.MustNewConstMetric(descFastPath, prometheus.GaugeValue, float64(s.FastEntries), "entries")
	}
	ch <- prometheus.MustNewConstMetric(descMalformed, prometheus.CounterValue, float64(s.Malformed))
	ch <- prometheus.MustNewConstMetric(descConflicts, prometheus.GaugeValue, float64(len(s.Conflicts)))
	ch <- prometheus.MustNewConstMetric(descRecords, prometheus.GaugeValue, float64(s.Records))
	ch <- prometheus.MustNewConstMetric(descAddrLost, prometheus.GaugeValue, b(s.AddrError != ""))
	tr := c.src.Traffic()
	ch <- prometheus.MustNewConstMetric(descGossipMsgs, prometheus.CounterValue, float64(tr.InMessages), "in")
	ch <- prometheus.MustNewConstMetric(descGossipMsgs, prometheus.CounterValue, float64(tr.OutMessages), "out")
	ch <- prometheus.MustNewConstMetric(descGossipBytes, prometheus.CounterValue, float64(tr.InBytes), "in")
	ch <- prometheus.MustNewConstMetric(descGossipBytes, prometheus.CounterValue, float64(tr.OutBytes), "out")
	if t := s.Tunnel; t != nil {
		names := cluster.TunnelOwners(s.Nodes)
		for _, p := range t.Peers {
			name := names[p.Key]
			if name == "" {
				name = p.Key
			}
			age := math.Inf(1)
			if !p.LastHandshake.IsZero() {
				age = time.Since(p.LastHandshake).Seconds()
			}
			ch <- prometheus.MustNewConstMetric(descTunnelAge, prometheus.GaugeValue, age, name)
			ch <- prometheus.MustNewConstMetric(descTunnelBytes, prometheus.CounterValue, float64(p.RxBytes), name, "in")
			ch <- prometheus.MustNewConstMetric(descTunnelBytes, prometheus.CounterValue, float64(p.TxBytes), name, "out")
		}
	}
	for _, p := range s.Paths {
		if !p.Probed() {
			continue
		}
		for _, a := range p.Candidates {
			ch <- prometheus.MustNewConstMetric(descPathAddr, prometheus.GaugeValue, b(a.Up), p.Peer, a.Addr.String(), strconv.FormatBool(a.Addr == p.Addr))
		}
	}
	for _, p := range c.src.HealthPeers() {
		for _, st := range healthStates {
			ch <- prometheus.MustNewConstMetric(descPeerState, prometheus.GaugeValue, b(p.State == st), p.Node, string(st))
		}
		ch <- prometheus.MustNewConstMetric(descPeerRTT, prometheus.GaugeValue, p.RTTms/1000, p.Node)
		ch <- prometheus.MustNewConstMetric(descPeerLoss, prometheus.GaugeValue, p.Loss, p.Node, "small")
		ch <- prometheus.MustNewConstMetric(descPeerLoss, prometheus.GaugeValue, p.BigLoss, p.Node, "full")
	}
}
