package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/trace"
)

func TestWalk(t *testing.T) {
	src := model.Endpoint{ID: "h1.web.1", Node: "h1"}
	dst := model.Endpoint{ID: "h2.web.2", Node: "h2"}
	req := trace.Seen{}
	rep := trace.Seen{Sighting: trace.Sighting{Reply: true}}
	encReq := trace.Seen{Sighting: trace.Sighting{Encap: true, VNI: 100, OuterSrc: netip.MustParseAddr("10.0.0.1"), OuterDst: netip.MustParseAddr("10.0.0.2"), Len: 148}}
	points := func(host string, pts ...string) []traceSeen {
		var out []traceSeen
		for _, p := range pts {
			out = append(out, traceSeen{Host: host, Point: p, Iface: p + "0"})
		}
		return out
	}
	// seen marks which hops saw what: r = request, p = reply.
	mk := func(near, far string) ([]traceSeen, []traceSeen) {
		n := points("h1", "container veth", "vxlan", "underlay")
		f := points("h2", "underlay", "vxlan", "destination veth")
		for i, c := range near {
			if c == 'r' || c == 'b' {
				n[i].Seen = append(n[i].Seen, req)
				if n[i].Point == "underlay" {
					n[i].Seen[len(n[i].Seen)-1] = encReq
				}
			}
			if c == 'p' || c == 'b' {
				n[i].Seen = append(n[i].Seen, rep)
			}
		}
		for i, c := range far {
			if c == 'r' || c == 'b' {
				f[i].Seen = append(f[i].Seen, req)
			}
			if c == 'p' || c == 'b' {
				f[i].Seen = append(f[i].Seen, rep)
			}
		}
		return n, f
	}
	for _, tc := range []struct {
		name      string
		fast      bool
		near, far string
		replied   bool
		vanished  string
		why       string
	}{
		{"healthy", false, "bbb", "bbb", true, "", ""},
		{"underlay drops", false, "rrr", "---", false, "h2 underlay (underlay0, request)", "lost on the underlay between h1 and h2: a firewall or the network drops UDP 4789 between the two hosts, or the path MTU is below 1556 bytes"},
		{"small probe, no MTU suspect", false, "rrr", "---", false, "h2 underlay (underlay0, request)", "lost on the underlay between h1 and h2: a firewall or the network drops UDP 4789 between the two hosts$"},
		{"FORWARD drop here", false, "r--", "---", false, "h1 vxlan (vxlan0, request)", "h1's bridge did not hand it to the vxlan device"},
		{"remote firewall", false, "rrr", "r--", false, "h2 vxlan (vxlan0, request)", "h2 received it and did not decapsulate it"},
		{"no answer", false, "rrr", "rrr", false, "h2 destination veth (destination veth0, reply)", "h2.web.2 did not answer"},
		{"remote bridge", false, "rrr", "rr-", false, "h2 destination veth (destination veth0, request)", "h2's bridge did not forward it to destination veth0"},
		{"reply lost on the underlay", false, "rrr", "bbb", false, "h1 underlay (underlay0, reply)", "lost on the underlay between h2 and h1"},
		{"fast path, no entry here", true, "r--", "---", false, "h1 vxlan (vxlan0, request)", "h1 did not hand it to the vxlan device: no fast-path or FDB entry for the destination"},
		{"fast path, not delivered there", true, "rrr", "rr-", false, "h2 destination veth (destination veth0, request)", "h2 did not deliver it to destination veth0: no fast-path or neighbour entry"},
		{"never left", false, "---", "---", false, "h1 container veth (container veth0, request)", "the probe never left h1.web.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			near, far := mk(tc.near, tc.far)
			size := 1478
			if strings.HasPrefix(tc.name, "small") {
				size = 56
			}
			hops, replied, vanished, why := walk(near, far, src, dst, 4789, size, tc.fast)
			if len(hops) != 12 || replied != tc.replied || vanished != tc.vanished || !strings.HasPrefix(why+"$", tc.why) {
				t.Fatalf("%d hops, replied %v, vanished %q, why %q", len(hops), replied, vanished, why)
			}
			if tc.near[2] != '-' && hops[2].Detail != fmt.Sprintf("VXLAN VNI 100, 10.0.0.1 -> 10.0.0.2, 148 bytes") {
				t.Fatalf("underlay hop %+v", hops[3])
			}
			if hops[6].Point != "destination veth" || hops[6].Dir != "reply" || hops[11].Point != "container veth" || hops[11].Dir != "reply" {
				t.Fatalf("reply path out of order: %+v / %+v", hops[6], hops[11])
			}
		})
	}
}

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

func (f *fakeTracer) Tap(_, iface string, p trace.Probe, _ uint16) (Tap, error) {
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
	h1.tracer, h2.tracer = tr, tr
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
