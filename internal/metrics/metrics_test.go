package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/paths"
)

type source struct{}

func (source) Status(bool) api.Status {
	return api.Status{Members: []cluster.Member{{Name: "h1", State: "alive"}, {Name: "h2", State: "failed"}},
		Networks: []api.NetworkStatus{{Name: "web", Local: 2, Remote: 3}}, Syncs: 7, KernelOps: 11, SyncError: "boom",
		Datapath: "bpf", FastHooks: 4, FastEntries: 5,
		Nodes:  []cluster.NodeInfo{{Name: "h2", Tunnel: &model.TunnelInfo{Key: "k2", Port: 51830}}},
		Tunnel: &datapath.Tunnel{Dev: "vxwg0", Peers: []datapath.TunnelPeer{{Key: "k2", RxBytes: 1000, TxBytes: 2000}, {Key: "k9"}}},
		Paths: []paths.Path{{Peer: "h2", Addr: netip.MustParseAddr("203.0.113.2"), Candidates: []paths.Candidate{
			{Addr: netip.MustParseAddr("10.0.0.2")}, {Addr: netip.MustParseAddr("203.0.113.2"), Up: true}}}}}
}
func (source) Traffic() cluster.Traffic {
	return cluster.Traffic{InMessages: 1, OutMessages: 2, InBytes: 3, OutBytes: 4}
}
func (source) HealthPeers() []health.Peer {
	return []health.Peer{{Node: "h2", State: health.MTU, RTTms: 2, Loss: 0.1, BigLoss: 1}}
}

// TestMetrics: a scrape shows what the source says, and the requests of a
// front door are counted by route and code.
func TestMetrics(t *testing.T) {
	m := New(source{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/networks/{name}", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNotFound) })
	h := m.Instrument("api", mux)
	for range 2 {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/v1/networks/web", nil))
	}
	m.ObservePass(3e6)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	body := string(b)
	for _, want := range []string{
		`vxnet_members{state="alive"} 1`, `vxnet_members{state="failed"} 1`,
		`vxnet_endpoints{network="web",where="local"} 2`, `vxnet_endpoints{network="web",where="remote"} 3`,
		`vxnet_reconcile_passes_total 7`, `vxnet_reconcile_failing 1`, `vxnet_kernel_writes_total 11`,
		`vxnet_fastpath{what="hooks"} 4`, `vxnet_fastpath{what="entries"} 5`,
		`vxnet_gossip_messages_total{direction="out"} 2`, `vxnet_gossip_bytes_total{direction="out"} 4`,
		`vxnet_peer_health{peer="h2",state="mtu"} 1`, `vxnet_peer_health{peer="h2",state="ok"} 0`,
		`vxnet_peer_probe_loss_ratio{peer="h2",size="full"} 1`,
		`vxnet_tunnel_bytes_total{direction="in",peer="h2"} 1000`, `vxnet_tunnel_bytes_total{direction="out",peer="h2"} 2000`,
		`vxnet_tunnel_handshake_age_seconds{peer="k9"} +Inf`,
		`vxnet_requests_total{code="404",door="api",path="GET /v1/networks/{name}"} 2`,
		`vxnet_reconcile_pass_seconds_count 1`,
		`vxnet_path_address{addr="10.0.0.2",in_use="false",peer="h2"} 0`, `vxnet_path_address{addr="203.0.113.2",in_use="true",peer="h2"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if fams, err := m.Gather(); err != nil || len(fams) == 0 {
		t.Fatalf("gather: %d %v", len(fams), err)
	}
}
