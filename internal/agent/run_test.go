package agent

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/model"
)

// Run, with the local API served beside it (as cmd/vxnet does), joins the
// remembered members and reconciles until its context ends.
func TestRunServesTheAPI(t *testing.T) {
	b := newBus()
	h2 := newNode(t, b, "h2", 2, "")
	// Short socket path: unix sockets allow about 100 bytes.
	sockDir, err := os.MkdirTemp("", "vx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	h1 := newNode(t, b, "h1", 1, "", func(c *Config, _ *Deps) {
		c.Socket = filepath.Join(sockDir, "s")
		c.Join = []string{"198.18.0.2"}
		c.ResyncInterval = 20 * time.Millisecond
	})
	ln, err := api.Listen(h1.cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(h1)
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h1.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("run did not return")
		}
	}()
	c := api.NewClient(h1.cfg.Socket)
	var st api.Status
	eventually(t, "a status with a reconcile pass", func() bool {
		st, err = c.Status()
		return err == nil && st.Syncs > 0
	})
	if st.Node != "h1" || len(st.Members) != 2 {
		t.Errorf("status %+v", st)
	}
	// Its version is in the cluster state, on the other member too.
	if len(st.Nodes) != 1 || st.Nodes[0].Name != "h1" || st.Nodes[0].Version != st.Version || st.Nodes[0].Format != cluster.WireFormat {
		t.Errorf("nodes %+v, want h1 at %s", st.Nodes, st.Version)
	}
	if n := h2.state.Nodes(); len(n) != 1 || n[0].Name != "h1" {
		t.Errorf("h2 knows nodes %+v", n)
	}
	if _, err := c.CreateNetwork(api.NetworkCreate{Name: "web", Subnet: "10.20.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	// Errors keep their kind and message over the socket.
	_, err = c.CreateNetwork(api.NetworkCreate{Name: "db", Subnet: "10.20.1.0/24"})
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != 409 || !errors.Is(err, model.ErrConflict) || se.Msg != `subnet 10.20.1.0/24 overlaps subnet 10.20.0.0/16 of network "web"` {
		t.Errorf("overlap over the socket: %#v", err)
	}
	if _, err := c.Network("nope"); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("unknown network over the socket: %v", err)
	}
	ns := netns(t, "c1")
	att, err := c.Attach(api.AttachRequest{Network: "web", Netns: ns})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := h2.Agent.endpoint(att.ID); !ok {
		t.Error("the endpoint did not reach h2")
	}
	// The loop removes an endpoint whose namespace is gone.
	if err := os.Remove(ns); err != nil {
		t.Fatal(err)
	}
	h1.Resync()
	eventually(t, "the endpoint of a vanished namespace removed", func() bool {
		_, ok := h2.Agent.endpoint(att.ID)
		return !ok
	})
	if nets, err := c.Networks(); err != nil || len(nets) != 1 {
		t.Errorf("networks %v %v", nets, err)
	}
	if err := c.RemoveNetwork("web", false); err != nil {
		t.Fatal(err)
	}
	// The members were remembered for a restart without --join.
	eventually(t, "the members remembered", func() bool {
		m, _ := h1.store.members()
		return len(m) == 1 && m[0] == "198.18.0.2"
	})
}

func TestAdvertiseAddressLost(t *testing.T) {
	h1 := newNode(t, newBus(), "h1", 1, "")
	h1.checkAddr()
	if s := h1.Status(false); s.AddrError != "" {
		t.Fatalf("addr error with the address present: %q", s.AddrError)
	}
	h1.host.mu.Lock()
	h1.host.missing = true
	h1.host.mu.Unlock()
	h1.checkAddr()
	want := "advertise address 198.18.0.1 is no longer on any interface of this host: peers cannot reach it; restart the agent with its new address (--advertise-addr, or none to take the default route's)"
	if s := h1.Status(false); s.AddrError != want {
		t.Errorf("addr error %q", s.AddrError)
	}
	h1.host.mu.Lock()
	h1.host.missing = false
	h1.host.mu.Unlock()
	h1.checkAddr()
	if s := h1.Status(false); s.AddrError != "" {
		t.Errorf("addr error after the address came back: %q", s.AddrError)
	}
}

func TestStatusCounts(t *testing.T) {
	_, h1, h2 := joinedPair(t)
	mustCreate(t, h1, "web", "10.20.0.0/16")
	mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: netns(t, "a")})
	mustAttach(t, h2, api.AttachRequest{Network: "web", Netns: netns(t, "b")})
	mustAttach(t, h2, api.AttachRequest{Network: "web", Netns: netns(t, "c")})
	s := h1.Status(true)
	if len(s.Networks) != 1 || s.Networks[0].Local != 1 || s.Networks[0].Remote != 2 || len(s.Endpoints) != 3 {
		t.Errorf("status networks %+v, %d endpoints", s.Networks, len(s.Endpoints))
	}
	if s.Syncs == 0 || s.LastSync.IsZero() || s.SyncError != "" {
		t.Errorf("status of passes: %d %v %q", s.Syncs, s.LastSync, s.SyncError)
	}
	// An endpoint of a member that is gone is not counted as remote.
	h2.repl.Shutdown()
	if s := h1.Status(false); s.Networks[0].Remote != 0 || len(s.Endpoints) != 0 {
		t.Errorf("after h2 went: %+v", s.Networks)
	}
	info, err := h1.Network("web")
	if err != nil || info.Endpoints["h1"] != 1 || info.Endpoints["h2"] != 2 {
		t.Errorf("inspect: %+v %v", info, err)
	}
}

func TestKeyOps(t *testing.T) {
	k1, k2 := strings.Repeat("a", 32), strings.Repeat("b", 32)
	h1 := newNode(t, newBus(), "h1", 1, "", func(c *Config, _ *Deps) { c.Keys = [][]byte{[]byte(k1)} })
	enc := func(k string) string { return base64.StdEncoding.EncodeToString([]byte(k)) }
	if _, err := h1.KeyOp(api.KeyRequest{Op: "install", Key: "%%"}); err == nil || !errors.Is(err, model.ErrInvalid) ||
		err.Error() != "the key is not base64 (make one with 'vxnet key generate')" {
		t.Errorf("bad base64: %v", err)
	}
	for _, op := range []string{"install", "use"} {
		if _, err := h1.KeyOp(api.KeyRequest{Op: op, Key: enc(k2)}); err != nil {
			t.Fatalf("%s: %v", op, err)
		}
	}
	k, err := h1.KeyOp(api.KeyRequest{Op: "remove", Key: enc(k1)})
	if err != nil || len(k.Keys) != 1 || k.Primary != k.Keys[0] {
		t.Fatalf("keyring %+v %v", k, err)
	}
	_, err = h1.KeyOp(api.KeyRequest{Op: "remove", Key: enc(k2)})
	if !errors.Is(err, model.ErrInvalid) || !strings.HasPrefix(err.Error(), "key remove ") || !strings.HasSuffix(err.Error(), ": removing the primary key is not allowed") {
		t.Errorf("removing the primary: %v", err)
	}
	// The keyring is saved and used by the next start.
	h1.store.close()
	again := newNode(t, newBus(), "h1", 1, h1.dir, func(c *Config, _ *Deps) { c.Keys = [][]byte{[]byte(k1)} })
	if got := again.Keyring(); len(got.Keys) != 1 || got.Primary != k.Primary {
		t.Errorf("keyring after restart %+v, want %+v", got, k)
	}
}

// The metrics tell the state the agent knows: members, endpoints per
// network, passes and kernel writes, and count API requests.
func TestMetrics(t *testing.T) {
	_, h1, h2 := joinedPair(t)
	mustCreate(t, h1, "web", "10.20.0.0/16")
	mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: netns(t, "a")})
	mustAttach(t, h2, api.AttachRequest{Network: "web", Netns: netns(t, "b")})
	mustAttach(t, h2, api.AttachRequest{Network: "web", Netns: netns(t, "c")})
	if err := h1.sync(); err != nil {
		t.Fatal(err)
	}
	// Two API requests through the instrumented handler: one good, one 404.
	apiH := h1.metrics.Instrument("api", api.NewServer(h1).Handler)
	for _, path := range []string{"/v1/networks/web", "/v1/networks/nope"} {
		apiH.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, path, nil))
	}
	rec := httptest.NewRecorder()
	h1.metrics.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`vxnet_members{state="alive"} 2`,
		`vxnet_endpoints{network="web",where="local"} 1`,
		`vxnet_endpoints{network="web",where="remote"} 2`,
		fmt.Sprintf("vxnet_reconcile_passes_total %d", h1.stats.syncs.Load()),
		fmt.Sprintf("vxnet_kernel_writes_total %d", h1.stats.kernelOps.Load()),
		`vxnet_reconcile_failing 0`,
		fmt.Sprintf("vxnet_reconcile_pass_seconds_count %d", h1.stats.syncs.Load()),
		`vxnet_requests_total{code="200",door="api",path="GET /v1/networks/{name}"} 1`,
		`vxnet_requests_total{code="404",door="api",path="GET /v1/networks/{name}"} 1`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", body)
	}
}

// The sample Grafana dashboard asks only for metrics the agent has.
func TestDashboardMetrics(t *testing.T) {
	b, err := os.ReadFile("../../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Targets []struct{ Expr string } `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	// Two members probing each other, so the per-peer health series exist.
	b2 := newBus()
	paths := &fakePaths{carry: map[netip.Addr]string{}}
	h1 := newNode(t, b2, "h1", 1, "", withHealth(paths))
	h2 := newNode(t, b2, "h2", 2, "", withHealth(paths))
	if _, err := h2.repl.(Joiner).Join(nil); err != nil {
		t.Fatal(err)
	}
	var pingers []health.Pinger
	for _, n := range []*testNode{h1, h2} {
		n.prober = n.newProber(fakeHealthPort{t: t, paths: paths}, healthPublishGap)
		p, err := n.prober.Setup()
		if err != nil {
			t.Fatal(err)
		}
		pingers = append(pingers, p)
	}
	h1.prober.Round(pingers[0])
	mustCreate(t, h1, "web", "10.20.0.0/16")
	if err := h1.sync(); err != nil {
		t.Fatal(err)
	}
	h1.metrics.Instrument("api", api.NewServer(h1).Handler).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/v1/status", nil))
	families, err := h1.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range families {
		have[f.GetName()] = true
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			have[f.GetName()+suffix] = true
		}
	}
	re := regexp.MustCompile(`vxnet_[a-z_]+`)
	n := 0
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, m := range re.FindAllString(tg.Expr, -1) {
				n++
				if !have[m] {
					t.Errorf("the dashboard asks for %s, which the agent does not export", m)
				}
			}
		}
	}
	if n < 8 {
		t.Errorf("only %d metrics found in the dashboard", n)
	}
}
