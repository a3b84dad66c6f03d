package agent

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/web"
)

// fakePaths answers pings by destination: what the path to it carries.
type fakePaths struct {
	mu    sync.Mutex
	carry map[netip.Addr]string // "all" (default), "small" or "none"
	sizes []int
	neigh map[netip.Addr]net.HardwareAddr
}

func (f *fakePaths) set(a netip.Addr, what string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.carry[a] = what
}

type fakeHealthPort struct {
	t     *testing.T
	paths *fakePaths
}

func (p fakeHealthPort) Namespace(name string) (string, bool, error) {
	return netns(p.t, name), true, nil
}
func (p fakeHealthPort) Open(string) (health.Pinger, error) { return p.paths, nil }
func (p fakeHealthPort) OpenTunnel() (health.Pinger, error) { return p.paths, nil }
func (p fakeHealthPort) Neighbours(_, _ string, peers map[netip.Addr]net.HardwareAddr) error {
	p.paths.mu.Lock()
	defer p.paths.mu.Unlock()
	p.paths.neigh = peers
	return nil
}

func (f *fakePaths) Ping(dst netip.Addr, size int, timeout time.Duration) (time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sizes = append(f.sizes, size)
	switch f.carry[dst] {
	case "none":
		return 0, errors.New("no reply")
	case "small":
		if size > 100 {
			return 0, errors.New("no reply")
		}
	}
	return time.Millisecond, nil
}
func (f *fakePaths) Close() error { return nil }

func withHealth(paths *fakePaths) nodeOpt {
	return func(cfg *Config, deps *Deps) {
		cfg.HealthSubnet = netip.MustParsePrefix("100.127.0.0/16")
		cfg.HealthNetns = "health-" + cfg.Name
		deps.Health = fakeHealthPort{paths: paths}
	}
}

func TestHealthProbes(t *testing.T) {
	b := newBus()
	paths := &fakePaths{carry: map[netip.Addr]string{}}
	nodes := map[string]*testNode{}
	for i, name := range []string{"h1", "h2", "h3"} {
		n := newNode(t, b, name, i+1, "", withHealth(paths))
		n.prober = n.newProber(fakeHealthPort{t: t, paths: paths}, time.Nanosecond) // every changed view is published at once
		nodes[name] = n
		if i > 0 {
			if _, err := n.repl.(Joiner).Join(nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	pingers := map[string]health.Pinger{}
	for name, n := range nodes {
		p, err := n.prober.Setup()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		pingers[name] = p
	}
	h1 := nodes["h1"]
	// The health network is the reserved one, with every host's endpoint,
	// and stays out of the users' listings.
	n, ok := h1.state.Network(model.HealthNetwork)
	if !ok || n.VNI != model.HealthVNI || !n.Internal || n.Subnet.String() != "100.127.0.0/16" {
		t.Fatalf("health network %+v, %v", n, ok)
	}
	addrs := map[string]netip.Addr{}
	for _, e := range h1.state.Endpoints() {
		if e.Network == model.HealthNetwork {
			addrs[e.Node] = e.IP
		}
	}
	if len(addrs) != 3 {
		t.Fatalf("health endpoints %v, want one per host", addrs)
	}
	// The stale-endpoint sweep keeps it while its namespace is there.
	h1.gcLocal()
	if _, ok := h1.endpoint(h1.healthEndpointID()); !ok {
		t.Fatal("the sweep removed the health endpoint")
	}
	if len(h1.Networks()) != 0 || len(h1.Status(false).Networks) != 0 || len(h1.LocalEndpoints()) != 0 {
		t.Fatalf("the health network shows in the listings: %+v", h1.Networks())
	}
	_, err := h1.CreateNetwork(api.NetworkCreate{Name: model.HealthNetwork, Subnet: "10.9.0.0/16"})
	wantErr(t, err, model.ErrInvalid, "network vxnet-health is reserved for vxnet's health probes; pick another name")
	_, err = h1.CreateNetwork(api.NetworkCreate{Name: "web", Subnet: "100.127.5.0/24"})
	wantErr(t, err, model.ErrConflict, `subnet 100.127.5.0/24 overlaps subnet 100.127.0.0/16 of network "vxnet-health"`)
	_, err = h1.Attach(api.AttachRequest{Network: model.HealthNetwork, Netns: netns(t, "x")})
	wantErr(t, err, model.ErrInvalid, "network vxnet-health is reserved for vxnet's health probes; pick another name")
	wantErr(t, h1.RemoveNetwork(model.HealthNetwork, true), model.ErrInvalid, "network vxnet-health is reserved for vxnet's health probes; pick another name")

	rounds := func(k int) {
		for range k {
			for name, n := range nodes {
				n.prober.Round(pingers[name])
			}
		}
	}
	state := func(from, to string) health.Verdict {
		for _, p := range nodes[from].Health(false).Peers {
			if p.Node == to {
				return p.State
			}
		}
		return "missing"
	}
	rounds(3)
	for from := range nodes {
		for to := range nodes {
			if from != to && state(from, to) != health.OK {
				t.Fatalf("%s sees %s %s on a clean path", from, to, state(from, to))
			}
		}
	}
	// Probes are 56 bytes and the inner MTU less the IPv4 and ICMP headers;
	// the peers' health addresses have static neighbour entries.
	paths.mu.Lock()
	if len(paths.neigh) != 2 {
		t.Errorf("health neighbours %v, want the 2 peers of the last node probed", paths.neigh)
	}
	sizes := map[int]bool{}
	for _, s := range paths.sizes {
		sizes[s] = true
	}
	paths.mu.Unlock()
	if len(sizes) != 2 || !sizes[56] || !sizes[1450-28] {
		t.Fatalf("probe sizes %v, want 56 and 1422", sizes)
	}

	paths.set(addrs["h3"], "none")
	paths.set(addrs["h2"], "small")
	rounds(3)
	if state("h1", "h3") != health.Unreachable || state("h1", "h2") != health.MTU || state("h2", "h1") != health.OK {
		t.Fatalf("h1 sees h3 %s and h2 %s, h2 sees h1 %s; want unreachable, mtu, ok", state("h1", "h3"), state("h1", "h2"), state("h2", "h1"))
	}
	// Every change is an event with its cause; the cluster matrix is the
	// members' published views.
	hv := h1.Health(true)
	var causes []string
	for _, e := range hv.Events {
		causes = append(causes, e.Peer+":"+string(e.To)+":"+e.Cause)
	}
	joined := strings.Join(causes, "\n")
	if !strings.Contains(joined, "h3:unreachable:the last 3 probes through the overlay went unanswered") ||
		!strings.Contains(joined, "h2:mtu:small probes are answered but the last 3 full-size probes (1450 bytes, DF) were lost") {
		t.Fatalf("events:\n%s", joined)
	}
	if len(hv.All) != 3 {
		t.Fatalf("h1's cluster matrix has %d rows, want 3", len(hv.All))
	}
	for _, r := range hv.All {
		if r.Node == "h2" {
			for _, p := range r.Peers {
				if p.Node == "h3" && p.State != health.Unreachable {
					t.Fatalf("h2's published view of h3 is %s, want unreachable", p.State)
				}
			}
		}
	}
	if _, ok := h1.state.Get(cluster.HealthKey("h2")); !ok {
		t.Fatal("no health record of h2 on h1")
	}
	// The metrics say the same.
	rec := httptest.NewRecorder()
	h1.metrics.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, line := range []string{
		`vxnet_peer_health{peer="h3",state="unreachable"} 1`, `vxnet_peer_health{peer="h3",state="ok"} 0`,
		`vxnet_peer_health{peer="h2",state="mtu"} 1`, `vxnet_peer_probe_loss_ratio{peer="h2",size="full"} 0.5`,
		`vxnet_peer_probe_loss_ratio{peer="h2",size="small"} 0`, `vxnet_peer_rtt_seconds{peer="h2"} 0.001`,
	} {
		if !strings.Contains(rec.Body.String(), line+"\n") {
			t.Errorf("metrics lack %s", line)
		}
	}
	if m := regexp.MustCompile(`vxnet_gossip_messages_total\{direction="out"\} (\d+)`).FindStringSubmatch(rec.Body.String()); m == nil || m[1] == "0" {
		t.Errorf("no messages counted out of h1: %v", m)
	}
	// The live page and its data, on the same listener.
	mux := http.NewServeMux()
	web.Register(mux, h1)
	for path, want := range map[string]string{"/": "<title>vxnet</title>", "/app.js": "renderMatrix", "/api/overview": `"state":"unreachable"`} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != 200 || !strings.Contains(rec.Body.String(), want) {
			t.Errorf("GET %s: %d, body lacks %q", path, rec.Code, want)
		}
	}
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/api/overview", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST to the read-only page: %d", rec.Code)
	}
	// An unchanged view is not published again (until the refresh).
	before, _ := h1.state.Get(cluster.HealthKey("h1"))
	rounds(3)
	if after, _ := h1.state.Get(cluster.HealthKey("h1")); after.Version != before.Version {
		t.Fatalf("h1 republished an unchanged view (version %d -> %d)", before.Version, after.Version)
	}
	// A failed member is not probed: it drops out of the view.
	b.hold()
	nodes["h3"].repl.Shutdown()
	rounds(1)
	if state("h1", "h3") != "missing" {
		t.Fatalf("h1 still probes h3 after it left: %s", state("h1", "h3"))
	}
}

// TestHealthSubnetTaken: a cluster whose network already uses the health
// range (an upgrade) gets no health network: setup says why, and the
// report carries it for 'vxnet health' and the doctor.
func TestHealthSubnetTaken(t *testing.T) {
	paths := &fakePaths{carry: map[netip.Addr]string{}}
	h1 := newNode(t, newBus(), "h1", 1, "", withHealth(paths))
	h1.prober = h1.newProber(fakeHealthPort{t: t, paths: paths}, healthPublishGap)
	mustCreate(t, h1, "mine", "100.127.3.0/24")
	_, err := h1.prober.Setup()
	want := `health network vxnet-health (100.127.0.0/16): subnet 100.127.0.0/16 overlaps subnet 100.127.3.0/24 of network "mine"`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("setup with the range taken: %v, want %q", err, want)
	}
	h1.prober.SetError(err) // as Run records it
	if r := h1.Health(false); !r.Enabled || !strings.Contains(r.Error, want) {
		t.Fatalf("report %+v", r.HealthReport)
	}
}
