package agent

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/trace"
)

// fakeTracer sees every probe on every tap it opens (request and reply),
// except on the interfaces listed in blind.
type fakeTracer struct {
	mu      sync.Mutex
	taps    []string
	sent    []trace.Probe
	blind   map[string]bool
	noReply bool // no tap sees a reply
}

type fakeTap struct{ seen []trace.Seen }

func (t fakeTap) Stop() []trace.Seen { return t.seen }

func (f *fakeTracer) Tap(_, iface string, p trace.Probe, _ uint16) (trace.Tap, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.taps = append(f.taps, iface)
	if f.blind[iface] {
		return fakeTap{}, nil
	}
	if f.noReply {
		return fakeTap{seen: []trace.Seen{{}}}, nil
	}
	return fakeTap{seen: []trace.Seen{{}, {Sighting: trace.Sighting{Reply: true}}}}, nil
}

func (f *fakeTracer) Send(_ string, p trace.Probe, _ int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, p)
	return nil
}

func TestTrace(t *testing.T) {
	_, h1, h2 := joinedPair(t)
	tr := &fakeTracer{blind: map[string]bool{}}
	for _, n := range []*testNode{h1, h2} {
		n.traces = trace.NewService(trace.Config{VXLANPort: 4789}, tr, (*traceAgent)(n.Agent))
	}
	mustCreate(t, h1, "web", "10.20.0.0/16")
	mustCreate(t, h1, "db", "10.30.0.0/16")
	a := mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: netns(t, "a"), Name: "a"})
	b := mustAttach(t, h2, api.AttachRequest{Network: "web", Netns: netns(t, "b"), Name: "b"})
	d := mustAttach(t, h2, api.AttachRequest{Network: "db", Netns: netns(t, "d"), Name: "d"})

	res, err := h1.Trace(api.TraceRequest{Src: "a", Dst: "b"})
	if err != nil || !res.Replied || len(res.Hops) != 12 || res.Src != a.ID || res.Dst != b.ID || res.Size != 56 {
		t.Fatalf("trace a -> b: %+v, %v", res, err)
	}
	if len(tr.sent) != 1 || tr.sent[0].Src.String()+"/16" != a.IP || tr.sent[0].Dst.String()+"/16" != b.IP {
		t.Fatalf("probes sent %+v", tr.sent)
	}
	// h2 tapped its side: its underlay, vxlan device and b's veth.
	if !slices.Contains(tr.taps, datapath.HostIfName(b.ID)) || !slices.Contains(tr.taps, datapath.VxlanName(res.VNI)) {
		t.Fatalf("taps %v", tr.taps)
	}
	// b's veth does not see it: the walk stops there, on h2.
	tr.blind[datapath.HostIfName(b.ID)], tr.noReply = true, true
	res, err = h1.Trace(api.TraceRequest{Src: "a", Dst: b.IP[:len(b.IP)-3], Size: 1422})
	if err != nil || res.Replied || res.Vanished != fmt.Sprintf("h2 destination veth (%s, request)", datapath.HostIfName(b.ID)) ||
		!strings.HasPrefix(res.Why, "h2's bridge did not forward it") {
		t.Fatalf("trace into a blind veth: %+v, %v", res, err)
	}
	for _, tc := range []struct {
		req  api.TraceRequest
		kind error
		msg  string
	}{
		{api.TraceRequest{Src: "nope", Dst: "b"}, model.ErrNotFound, `no endpoint is named "nope" or has that address or ID`},
		{api.TraceRequest{Src: "b", Dst: "a"}, model.ErrInvalid, fmt.Sprintf("%s runs on h2, not here: run vxnet trace on h2", b.ID)},
		{api.TraceRequest{Src: "a", Dst: "d"}, model.ErrInvalid, fmt.Sprintf("%s is on network web and %s on db: vxnet keeps networks apart, a trace follows one network", a.ID, d.ID)},
		{api.TraceRequest{Src: "a", Dst: "b", Size: 1423}, model.ErrInvalid, "invalid probe size 1423: want 8 to 1422 (the network's MTU 1450 less 28)"},
	} {
		_, err := h1.Trace(tc.req)
		wantErr(t, err, tc.kind, tc.msg)
	}
}
