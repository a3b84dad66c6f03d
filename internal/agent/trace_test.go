package agent

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

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
		near, far string
		replied   bool
		vanished  string
		why       string
	}{
		{"healthy", "bbb", "bbb", true, "", ""},
		{"underlay drops", "rrr", "---", false, "h2 underlay (underlay0, request)", "lost on the underlay between h1 and h2: a firewall or the network drops UDP 4789 between the two hosts, or the path MTU is below 1556 bytes"},
		{"small probe, no MTU suspect", "rrr", "---", false, "h2 underlay (underlay0, request)", "lost on the underlay between h1 and h2: a firewall or the network drops UDP 4789 between the two hosts$"},
		{"FORWARD drop here", "r--", "---", false, "h1 vxlan (vxlan0, request)", "h1's bridge did not hand it to the vxlan device"},
		{"remote firewall", "rrr", "r--", false, "h2 vxlan (vxlan0, request)", "h2 received it and did not decapsulate it"},
		{"no answer", "rrr", "rrr", false, "h2 destination veth (destination veth0, reply)", "h2.web.2 did not answer"},
		{"remote bridge", "rrr", "rr-", false, "h2 destination veth (destination veth0, request)", "h2's bridge did not forward it to destination veth0"},
		{"reply lost on the underlay", "rrr", "bbb", false, "h1 underlay (underlay0, reply)", "lost on the underlay between h2 and h1"},
		{"never left", "---", "---", false, "h1 container veth (container veth0, request)", "the probe never left h1.web.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			near, far := mk(tc.near, tc.far)
			size := 1478
			if strings.HasPrefix(tc.name, "small") {
				size = 56
			}
			hops, replied, vanished, why := walk(near, far, src, dst, 4789, size)
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
