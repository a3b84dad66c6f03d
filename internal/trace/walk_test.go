package trace

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/model"
)

func TestWalk(t *testing.T) {
	src := model.Endpoint{ID: "h1.web.1", Node: "h1"}
	dst := model.Endpoint{ID: "h2.web.2", Node: "h2"}
	req := Seen{}
	rep := Seen{Sighting: Sighting{Reply: true}}
	encReq := Seen{Sighting: Sighting{Encap: true, VNI: 100, OuterSrc: netip.MustParseAddr("10.0.0.1"), OuterDst: netip.MustParseAddr("10.0.0.2"), Len: 148}}
	points := func(host string, pts ...string) []Sighted {
		var out []Sighted
		for _, p := range pts {
			out = append(out, Sighted{Host: host, Point: p, Iface: p + "0"})
		}
		return out
	}
	// seen marks which hops saw what: r = request, p = reply.
	mk := func(near, far string) ([]Sighted, []Sighted) {
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
		// The fast path wraps frames itself: the sending host's vxlan
		// device sees nothing, and that is no loss.
		{"fast path wraps, underlay drops", true, "r-r", "---", false, "h2 underlay (underlay0, request)", "lost on the underlay between h1 and h2"},
		{"fast path wraps both ways, no answer", true, "r-r", "rrr", false, "h2 destination veth (destination veth0, reply)", "h2.web.2 did not answer"},
		{"fast path wraps both ways, reply lost", true, "rpr", "bbb", false, "h1 underlay (underlay0, reply)", "lost on the underlay between h2 and h1"},
		{"fast path unwraps, no answer", true, "r-r", "r-r", false, "h2 destination veth (destination veth0, reply)", "h2.web.2 did not answer"},
		{"fast path, not unwrapped nor delivered", true, "r-r", "r--", false, "h2 vxlan (vxlan0, request)", "h2 received it and did not decapsulate it"},
		{"without the fast path a silent vxlan device is the loss", false, "r-r", "---", false, "h1 vxlan (vxlan0, request)", "h1's bridge did not hand it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			near, far := mk(tc.near, tc.far)
			packet := 1478 + 28 // the probe's IPv4 packet
			if strings.HasPrefix(tc.name, "small") {
				packet = 56 + 28
			}
			hops, replied, vanished, why := Walk(near, far, src, dst, 4789, packet, tc.fast)
			if len(hops) != 12 || replied != tc.replied || vanished != tc.vanished || !strings.HasPrefix(why+"$", tc.why) {
				t.Fatalf("%d hops, replied %v, vanished %q, why %q", len(hops), replied, vanished, why)
			}
			if tc.near[2] != '-' && hops[2].Detail != fmt.Sprintf("VXLAN VNI 100, 10.0.0.1 -> 10.0.0.2, 148 bytes") {
				t.Fatalf("underlay hop %+v", hops[3])
			}
			if hops[6].Point != "destination veth" || hops[6].Dir != "reply" || hops[11].Point != "container veth" || hops[11].Dir != "reply" {
				t.Fatalf("reply path out of order: %+v / %+v", hops[6], hops[11])
			}
			sawReq := func(c byte) bool { return c == 'r' || c == 'b' }
			sawRep := func(c byte) bool { return c == 'p' || c == 'b' }
			if want := tc.fast && !sawReq(tc.near[1]) && sawReq(tc.near[2]); hops[1].Bypassed != want {
				t.Fatalf("the sending vxlan device's hop: bypassed %v, want %v", hops[1].Bypassed, want)
			}
			if wantFar := tc.fast && !sawRep(tc.far[1]) && sawRep(tc.far[0]); hops[7].Bypassed != wantFar {
				t.Fatalf("the replying vxlan device's hop: bypassed %v, want %v (%+v)", hops[7].Bypassed, wantFar, hops[7])
			}
			if wantRecv := tc.fast && !sawReq(tc.far[1]) && sawReq(tc.far[0]) && sawReq(tc.far[2]); hops[4].Bypassed != wantRecv {
				t.Fatalf("the receiving vxlan device's hop: bypassed %v, want %v (%+v)", hops[4].Bypassed, wantRecv, hops[4])
			}
		})
	}
}

// TestWalkTunnel: an encrypted network's probe is seen on the WireGuard
// devices of both hosts (the underlay shows only ciphertext); where it
// vanishes says what to look at.
func TestWalkTunnel(t *testing.T) {
	src := model.Endpoint{ID: "h1.secret.1", Node: "h1"}
	dst := model.Endpoint{ID: "h2.secret.2", Node: "h2", IP: netip.MustParseAddr("10.9.0.2")}
	both := []Seen{{}, {Sighting: Sighting{Reply: true}}}
	sighted := func(host string, seen map[string][]Seen, pts ...string) []Sighted {
		var out []Sighted
		for _, p := range pts {
			out = append(out, Sighted{Host: host, Point: p, Iface: p + "0", Seen: seen[p]})
		}
		return out
	}
	for _, tc := range []struct {
		name      string
		near, far map[string][]Seen
		replied   bool
		why       string
	}{
		{"healthy", map[string][]Seen{"container veth": both, "tunnel": both}, map[string][]Seen{"tunnel": both, "destination veth": both}, true, ""},
		{"blocked between the hosts", map[string][]Seen{"container veth": both[:1], "tunnel": both[:1]}, nil, false, "lost between h1's and h2's WireGuard devices"},
		{"not routed into the tunnel", map[string][]Seen{"container veth": both[:1]}, nil, false, "h1 did not route it into its WireGuard device: no route for 10.9.0.2"},
		{"not forwarded after it", map[string][]Seen{"container veth": both[:1], "tunnel": both[:1]}, map[string][]Seen{"tunnel": both[:1]}, false, "h2 decrypted it and did not forward it to destination veth0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			near := sighted("h1", tc.near, "container veth", "tunnel")
			far := sighted("h2", tc.far, "tunnel", "destination veth")
			hops, replied, _, why := Walk(near, far, src, dst, 4789, 56+28, false)
			if len(hops) != 8 || replied != tc.replied || !strings.HasPrefix(why, tc.why) {
				t.Fatalf("%d hops, replied %v, why %q; want replied %v, why %q", len(hops), replied, why, tc.replied, tc.why)
			}
		})
	}
}

// TestVXLANOverhead: the underlay's overhead follows the outer addresses
// the taps saw (an IPv6 underlay's VXLAN is 20 bytes more).
func TestVXLANOverhead(t *testing.T) {
	seen := func(outer string) []Sighted {
		return []Sighted{{Point: "underlay", Seen: []Seen{{Sighting: Sighting{Encap: true, OuterSrc: netip.MustParseAddr(outer)}}}}}
	}
	for _, tc := range []struct {
		near []Sighted
		want int
	}{{nil, 50}, {seen("10.0.0.1"), 50}, {seen("2001:2::1"), 70}} {
		if got := vxlanOverhead(tc.near, nil); got != tc.want {
			t.Errorf("%+v: %d, want %d", tc.near, got, tc.want)
		}
	}
}
