package trace

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
)

// seeAll sees the probe both ways on every tap but those in blind (none
// when all is set); with requests set, only the request.
type seeAll struct {
	blind         map[string]bool
	all, requests bool
}

type tap struct{ seen []Seen }

func (t tap) Stop() []Seen { return t.seen }

func (s seeAll) Tap(_, iface string, _ Probe, _ uint16) (Tap, error) {
	if s.all || s.blind[iface] {
		return tap{}, nil
	}
	if s.requests {
		return tap{seen: []Seen{{}}}, nil
	}
	return tap{seen: []Seen{{}, {Sighting: Sighting{Reply: true}}}}, nil
}
func (s seeAll) Send(string, Probe, int) error { return nil }

// host is one agent as a trace sees it; peers route requests to the
// other host's service.
type host struct {
	name  string
	eps   []model.Endpoint
	local map[string]string // endpoint ID -> namespace
	peers map[string]*Service
	fdb   []datapath.FDB
}

func (h *host) Self() string                { return h.name }
func (h *host) Underlay() string            { return "eth0" }
func (h *host) Endpoints() []model.Endpoint { return h.eps }
func (h *host) Local(id string) (string, string, bool) {
	ns, ok := h.local[id]
	return ns, "eth0", ok
}
func (h *host) Network(name string) (model.Network, int, error) {
	if name != "web" {
		return model.Network{}, 0, model.Errorf(model.ErrNotFound, "unknown network %q", name)
	}
	return model.Network{Name: "web", VNI: 4097}, 1450, nil
}
func (h *host) Request(node, op string, body any, _ time.Duration) (json.RawMessage, error) {
	s, ok := h.peers[node]
	if !ok {
		return nil, fmt.Errorf("member %s is not reachable", node)
	}
	b, _ := json.Marshal(body)
	out, err := s.Call(op, b)
	if err != nil {
		return nil, err
	}
	return json.Marshal(out)
}
func (h *host) FDB(uint32) ([]datapath.FDB, error) { return h.fdb, nil }
func (h *host) Via(node string) string {
	if node == "h2" {
		return "203.0.113.2 (answers; 10.0.0.2 does not)"
	}
	return ""
}

// TestService: a trace between two hosts walks twelve hops, both ways,
// through the other host's taps; a point that sees nothing is where the
// probe vanished, with its reason; bad requests say what is wrong.
func TestService(t *testing.T) {
	eps := []model.Endpoint{
		{ID: "h1.web.1", Network: "web", Node: "h1", Name: "a", IP: netip.MustParseAddr("10.1.0.2"), MAC: "02:00:00:00:00:02"},
		{ID: "h2.web.1", Network: "web", Node: "h2", Name: "b", IP: netip.MustParseAddr("10.1.0.3"), MAC: "02:00:00:00:00:03"},
		{ID: "h2.db.1", Network: "db", Node: "h2", Name: "d", IP: netip.MustParseAddr("10.2.0.3")},
	}
	h1 := &host{name: "h1", eps: eps, local: map[string]string{"h1.web.1": "/run/netns/a"}, peers: map[string]*Service{}}
	h2 := &host{name: "h2", eps: eps, local: map[string]string{}, peers: map[string]*Service{}}
	s1 := NewService(Config{VXLANPort: 4789}, seeAll{}, h1)
	s2 := NewService(Config{VXLANPort: 4789}, seeAll{}, h2)
	h1.peers["h2"], h2.peers["h1"] = s2, s1
	res, err := s1.Trace(api.TraceRequest{Src: "a", Dst: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Hops) != 12 || !res.Replied || res.Vanished != "" || res.Hops[3].Host != "h2" || !strings.HasPrefix(res.Via, "203.0.113.2") {
		t.Fatalf("trace %+v", res)
	}
	// Nothing reaches h2: the probe vanished on the underlay.
	s1.tracer, s2.tracer = seeAll{requests: true}, seeAll{all: true}
	res, err = s1.Trace(api.TraceRequest{Src: "a", Dst: "10.1.0.3"})
	if err != nil || res.Replied || !strings.HasPrefix(res.Vanished, "h2 underlay") || !strings.Contains(res.Why, "lost on the underlay between h1 and h2") {
		t.Fatalf("vanished on h2's underlay: %+v %v", res, err)
	}
	// h1's vxlan device sees nothing and h1 has no FDB entry for b: said.
	s1.tracer = seeAll{requests: true, blind: map[string]bool{datapath.VxlanName(4097): true, "eth0": true}}
	res, err = s1.Trace(api.TraceRequest{Src: "a", Dst: "b"})
	if err != nil || !strings.Contains(res.Why, "no FDB entry for 02:00:00:00:00:03") {
		t.Fatalf("vanished at h1's vxlan device: %+v %v", res, err)
	}
	for _, tc := range []struct {
		req  api.TraceRequest
		kind error
		want string
	}{
		{api.TraceRequest{Src: "b", Dst: "a"}, model.ErrInvalid, "h2.web.1 runs on h2, not here"},
		{api.TraceRequest{Src: "a", Dst: "d"}, model.ErrInvalid, "vxnet keeps networks apart"},
		{api.TraceRequest{Src: "a", Dst: "nobody"}, model.ErrNotFound, `no endpoint is named "nobody"`},
		{api.TraceRequest{Src: "a", Dst: "b", Size: 1500}, model.ErrInvalid, "invalid probe size 1500: want 8 to 1422"},
	} {
		if _, err := s1.Trace(tc.req); !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.req, err, tc.want)
		}
	}
	if _, err := s1.Call("trace-bogus", nil); err == nil || !strings.Contains(err.Error(), "unknown operation") {
		t.Errorf("unknown call: %v", err)
	}
	if _, err := s1.Call(OpStop, json.RawMessage(`"none"`)); err == nil || !strings.Contains(err.Error(), `no trace session "none"`) {
		t.Errorf("stop of no session: %v", err)
	}
}

// TestFindEndpoint: by ID, name, alias, IPv4 or IPv6 address; an address
// no endpoint has, or none (an IPv6-only endpoint's absent IPv4), matches
// nothing.
func TestFindEndpoint(t *testing.T) {
	eps := []model.Endpoint{
		{ID: "h1.a", Network: "web", Name: "a", Aliases: []string{"www"}, IP: netip.MustParseAddr("10.0.0.2"), IP6: netip.MustParseAddr("fd00::2")},
		{ID: "h2.b", Network: "six", Name: "b", IP6: netip.MustParseAddr("fd00:6::3")},
	}
	for _, tc := range []struct{ what, want string }{
		{"h1.a", "h1.a"}, {"a", "h1.a"}, {"www", "h1.a"}, {"10.0.0.2", "h1.a"}, {"fd00::2", "h1.a"},
		{"fd00:6::3", "h2.b"}, {"b", "h2.b"},
		{"invalid IP", ""}, {"10.0.0.9", ""},
	} {
		e, err := findEndpoint(eps, tc.what, "")
		if (tc.want == "") != (err != nil) || e.ID != tc.want {
			t.Errorf("%q: %s %v, want %q", tc.what, e.ID, err, tc.want)
		}
	}
}
