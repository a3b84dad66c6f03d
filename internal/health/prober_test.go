package health

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// paths answers pings by destination: "all", "small" (full-size probes
// lost) or "none".
type paths struct {
	mu    sync.Mutex
	carry map[netip.Addr]string
	neigh []map[netip.Addr]net.HardwareAddr // every Neighbours call
}

func (p *paths) Ping(dst netip.Addr, size int, _ time.Duration) (time.Duration, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.carry[dst] {
	case "none":
		return 0, errors.New("no reply")
	case "small":
		if size > 100 {
			return 0, errors.New("no reply")
		}
	}
	return time.Millisecond, nil
}
func (p *paths) Close() error { return nil }

type port struct {
	p      *paths
	onHost bool
}

func (pt port) Namespace(name string) (string, bool, error) {
	return "/run/netns/" + name, pt.onHost, nil
}
func (pt port) Open(string) (Pinger, error) { return pt.p, nil }
func (pt port) OpenTunnel() (Pinger, error) { return pt.p, nil }
func (pt port) Neighbours(_, _ string, peers map[netip.Addr]net.HardwareAddr) error {
	pt.p.mu.Lock()
	defer pt.p.mu.Unlock()
	pt.p.neigh = append(pt.p.neigh, peers)
	return nil
}

type agent struct {
	mu        sync.Mutex
	targets   []Target
	tunnel    []Target
	published []Record
	endpoint  bool
}

func (a *agent) Endpoint(string) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.endpoint = true
	return 1450, nil
}
func (a *agent) HasEndpoint() bool                                     { a.mu.Lock(); defer a.mu.Unlock(); return a.endpoint }
func (a *agent) Targets() []Target                                     { return a.targets }
func (a *agent) Via() (map[string]netip.Addr, map[string][]netip.Addr) { return nil, nil }

func (a *agent) TunnelTargets() ([]Target, int) {
	if len(a.tunnel) == 0 {
		return nil, 0
	}
	return a.tunnel, 1440
}
func (a *agent) Publish(r Record) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.published = append(a.published, r)
}

// TestProber: three rounds give each peer its verdict (ok, mtu when only
// small probes pass, unreachable when none do); full-size probes are the
// endpoint's MTU; the view is published when it changes; the neighbour
// entries are made once for the same peers; a namespace the host cannot
// see is a warning in the view.
func TestProber(t *testing.T) {
	h2, h3, h4 := netip.MustParseAddr("100.127.0.2"), netip.MustParseAddr("100.127.0.3"), netip.MustParseAddr("100.127.0.4")
	pt := &paths{carry: map[netip.Addr]string{h3: "small", h4: "none"}}
	ag := &agent{targets: []Target{{"h2", h2, "02:00:00:00:00:02"}, {"h3", h3, "02:00:00:00:00:03"}, {"h4", h4, "02:00:00:00:00:04"}}}
	p := NewProber(ProberConfig{Netns: "vxnet-health", Node: "h1", Interval: 10 * time.Millisecond, PublishGap: time.Nanosecond}, port{p: pt}, ag)
	if v := p.View(); !v.At.IsZero() || len(v.Peers) != 0 {
		t.Fatalf("a view before any round: %+v", v)
	}
	pinger, err := p.Setup()
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		p.Round(pinger)
	}
	v := p.View()
	got := map[string]Verdict{}
	for _, peer := range v.Peers {
		got[peer.Node] = peer.State
	}
	if got["h2"] != OK || got["h3"] != MTU || got["h4"] != Unreachable {
		t.Fatalf("verdicts %v", got)
	}
	if v.BigSize != 1450 || v.Namespace != "/run/netns/vxnet-health" || v.At.IsZero() {
		t.Fatalf("view %+v", v)
	}
	if !strings.Contains(v.Warning, "exists only in the agent's mount namespace") {
		t.Fatalf("warning %q", v.Warning)
	}
	if len(v.Events) == 0 {
		t.Fatal("no verdict changes recorded")
	}
	last := ag.published[len(ag.published)-1]
	if last.Node != "h1" || last.Probed != 3 || last.Bad["h3"] != MTU || last.Bad["h4"] != Unreachable || len(last.Bad) != 2 {
		t.Fatalf("published %+v", last)
	}
	if len(pt.neigh) != 1 || len(pt.neigh[0]) != 3 {
		t.Fatalf("neighbour entries made %d times (%v), want once for the 3 peers", len(pt.neigh), pt.neigh)
	}
	// A peer that leaves is forgotten, and the entries follow.
	ag.targets = ag.targets[:1]
	p.Round(pinger)
	if v := p.View(); len(v.Peers) != 1 || v.Peers[0].Node != "h2" {
		t.Fatalf("after two peers left: %+v", v.Peers)
	}
	if len(pt.neigh) != 2 || len(pt.neigh[1]) != 1 {
		t.Fatalf("neighbour entries after two peers left: %v", pt.neigh)
	}
	onHost := NewProber(ProberConfig{Netns: "n", Node: "h1"}, port{p: pt, onHost: true}, ag)
	if _, err := onHost.Setup(); err != nil || onHost.View().Warning != "" {
		t.Fatalf("a namespace on the host: %v, warning %q", err, onHost.View().Warning)
	}
	onHost.SetError(errors.New("health network: subnet taken"))
	if v := onHost.View(); v.Err == nil || v.Err.Error() != "health network: subnet taken" {
		t.Fatalf("error %v", v.Err)
	}
}

// TestProberTunnel: the encrypted networks' path is probed beside the
// overlay, judged on its own (an overlay path that is ok says nothing of
// the tunnel), published apart, and forgotten when there is no tunnel.
func TestProberTunnel(t *testing.T) {
	h2, h3 := netip.MustParseAddr("100.127.0.2"), netip.MustParseAddr("100.127.0.3")
	t2, t3 := netip.MustParseAddr("fd76:786e:6574:7775::2"), netip.MustParseAddr("fd76:786e:6574:7775::3")
	pt := &paths{carry: map[netip.Addr]string{t3: "none"}}
	ag := &agent{targets: []Target{{"h2", h2, "02:00:00:00:00:02"}, {"h3", h3, "02:00:00:00:00:03"}},
		tunnel: []Target{{Node: "h2", Addr: t2}, {Node: "h3", Addr: t3}}}
	p := NewProber(ProberConfig{Netns: "vxnet-health", Node: "h1", Interval: 10 * time.Millisecond, PublishGap: time.Nanosecond}, port{p: pt}, ag)
	pinger, err := p.Setup()
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		p.Round(pinger)
	}
	got := map[string]Verdict{}
	v := p.View()
	for _, peer := range append(v.Peers, v.TunnelPeers...) {
		got[peer.Node+"/"+peer.Path] = peer.State
	}
	want := map[string]Verdict{"h2/": OK, "h3/": OK, "h2/wireguard": OK, "h3/wireguard": Unreachable}
	if len(got) != len(want) {
		t.Fatalf("verdicts %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("verdicts %v, want %v", got, want)
		}
	}
	last := ag.published[len(ag.published)-1]
	if len(last.Bad) != 0 || len(last.Tunnel) != 2 || last.TunnelBad["h3"] != Unreachable || len(last.TunnelBad) != 1 {
		t.Fatalf("published %+v: want the overlay all ok, the tunnel to h3 unreachable", last)
	}
	var cause string
	for _, peer := range p.View().TunnelPeers {
		if peer.Path == PathWireGuard && peer.Node == "h3" {
			cause = peer.Cause
		}
	}
	if !strings.Contains(cause, "through the WireGuard tunnel") {
		t.Fatalf("cause %q: want it to name the tunnel", cause)
	}
	ag.tunnel = nil
	p.Round(pinger)
	if v := p.View(); len(v.TunnelPeers) != 0 || len(v.Peers) != 2 {
		t.Fatalf("after the tunnel went: %+v, %+v", v.Peers, v.TunnelPeers)
	}
}
