package doctor

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	dp "github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/paths"
)

func find(fs []Finding, check string) Finding {
	for _, f := range fs {
		if f.Check == check {
			return f
		}
	}
	return Finding{}
}

// twoSites is a status whose peer h2 is reached at a private and a public
// address, with which of them answer and how h2 sees this host.
func twoSites(privUp, pubUp bool, seenAs netip.Addr) *api.Status {
	priv, pub := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("203.0.113.2")
	if !seenAs.IsValid() {
		seenAs = netip.MustParseAddr("203.0.113.1")
	}
	p := paths.Path{Peer: "h2", Addr: priv, Reason: "its first address, answers", Candidates: []paths.Candidate{{Addr: priv, Up: privUp}, {Addr: pub, Up: pubUp, SeenAs: seenAs}}}
	if !privUp && pubUp {
		p.Addr, p.Reason = pub, "answers; 10.0.0.2 does not"
	}
	return &api.Status{Node: "h1", Addr: "10.0.0.1", Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("203.0.113.1")},
		Members: []cluster.Member{{Name: "h1", State: "alive"}, {Name: "h2", State: "alive"}}, Paths: []paths.Path{p}}
}

// viaOf is a health view in which peer reaches h1 at addr.
func viaOf(peer, addr string) *api.Health {
	return &api.Health{HealthReport: api.HealthReport{Enabled: true},
		All: []api.HealthReport{{Node: peer, Via: map[string]netip.Addr{"h1": netip.MustParseAddr(addr)}}}}
}

// unreachedOf is viaOf with the addresses of h1 that peer does not reach.
func unreachedOf(peer, via string, unreached ...string) *api.Health {
	h := viaOf(peer, via)
	for _, a := range unreached {
		if h.All[0].Unreached == nil {
			h.All[0].Unreached = map[string][]netip.Addr{}
		}
		h.All[0].Unreached["h1"] = append(h.All[0].Unreached["h1"], netip.MustParseAddr(a))
	}
	return h
}

func TestChecks(t *testing.T) {
	healthy := &api.Status{Node: "h1", Addr: "10.0.0.1", Version: "v1", Syncs: 3,
		Members:  []cluster.Member{{Name: "h1", State: "alive"}, {Name: "h2", State: "alive"}},
		Networks: []api.NetworkStatus{{Name: "web", Local: 1, Remote: 300}}}
	dual := &api.Status{Node: "h1", Addr: "10.0.0.1", Networks: []api.NetworkStatus{{Name: "web", Subnet: "10.1.0.0/24,fd00:1::/64"}, {Name: "v4", Subnet: "10.2.0.0/24"}}}
	tunneled := &api.Status{Node: "h1", Addr: "10.0.0.1", Version: "v1", Syncs: 3,
		Members: []cluster.Member{{Name: "h1", State: "alive"}, {Name: "h2", State: "alive", Addr: netip.MustParseAddr("10.0.0.2")}},
		Nodes:   []cluster.NodeInfo{{Name: "h2", Tunnel: &model.TunnelInfo{Key: "k2", Port: 51831}}},
		Tunnel:  &dp.Tunnel{Dev: "vxwg0", Port: 51830, MTU: 1440}}
	udp := []string{
		"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
		"   1: 00000000:12B5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 0 2 0000000000000000 0",
	}
	for _, tc := range []struct {
		name  string
		facts Facts
		check string
		level Level
		text  string
	}{
		{"one address each", Facts{Status: healthy}, "addresses", OK, "one address it advertises (this host: 10.0.0.1)"},
		{"sites", Facts{Status: twoSites(false, true, netip.Addr{})}, "addresses", OK, "h2 at 203.0.113.2 (answers; 10.0.0.2 does not)"},
		{"nothing answers", Facts{Status: twoSites(false, false, netip.Addr{})}, "addresses", Fail, "no address of h2 answers probes from here (10.0.0.2, 203.0.113.2)"},
		{"unknown NAT", Facts{Status: twoSites(false, true, netip.MustParseAddr("198.51.100.7"))}, "addresses", Warn, "h2 sees this host's probes come from 198.51.100.7"},
		{"VXLAN port rewritten", Facts{Status: twoSites(false, true, netip.Addr{}), VXLANPort: 4789, Health: &api.Health{HealthReport: api.HealthReport{Enabled: true,
			Peers: []health.Peer{{Node: "h2", State: health.Unreachable, Cause: "the last 3 probes went unanswered"}}}}},
			"addresses", Fail, "h2 answers at 203.0.113.2 on the gossip port, but VXLAN to it does not pass"},
		{"one way", Facts{Status: twoSites(false, false, netip.Addr{}), Health: viaOf("h2", "203.0.113.1")}, "addresses", Fail,
			"h2 reaches this host (at 203.0.113.1) but none of its addresses answers from here"},
		{"asymmetric", Facts{Status: twoSites(true, true, netip.Addr{}), Health: viaOf("h2", "203.0.113.1")}, "addresses", Warn,
			"asymmetric paths with h2: this host reaches it at 10.0.0.2, it reaches this host at 203.0.113.1"},
		{"symmetric", Facts{Status: twoSites(true, true, netip.Addr{}), Health: viaOf("h2", "10.0.0.1")}, "addresses", OK, "h2 at 10.0.0.2"},
		{"own address private to the site", Facts{Status: twoSites(false, true, netip.Addr{}), Health: unreachedOf("h2", "203.0.113.1", "10.0.0.1")}, "addresses", OK,
			"this host's 10.0.0.1 does not answer from h2 (expected where it is private to this site)"},
		{"no own address reached", Facts{Status: twoSites(false, true, netip.Addr{}), Health: unreachedOf("h2", "203.0.113.1", "10.0.0.1", "203.0.113.1")}, "addresses", Fail,
			"none of this host's addresses answers h2's probes: it cannot reach this host"},
		{"agent down", Facts{StatusErr: errors.New("connection refused")}, "agent", Fail, "the agent does not answer: connection refused"},
		{"agent up", Facts{Status: healthy}, "agent", OK, "2 of 2 members alive"},
		{"address gone", Facts{Status: &api.Status{AddrError: "advertise address 10.0.0.1 is no longer on any interface"}}, "advertise-address", Fail, "no longer on any interface"},
		{"pass failing", Facts{Status: &api.Status{SyncError: "ensure-network vni 7: address in use"}}, "reconcile", Fail, "the last pass failed: ensure-network vni 7: address in use"},
		{"kernel socket", Facts{Status: healthy, VXLANPort: 4789, UDPSockets: udp}, "vxlan-port", OK, "no program holds UDP 4789"},
		{"kernel socket with an inode", Facts{Status: healthy, VXLANPort: 4789, UDPSockets: append(udp[:1:1], strings.Replace(udp[1], " 0 2 0000", " 815313 2 0000", 1))},
			"vxlan-port", OK, "no program holds UDP 4789"},
		{"rogue socket", Facts{Status: healthy, VXLANPort: 4789, UDPSockets: append(udp[:1:1], strings.Replace(udp[1], " 0 2 0000", " 98765 2 0000", 1)),
			PortHolders: map[string]string{"98765": "pid 42 (nc)"}}, "vxlan-port", Fail, "UDP 4789 is held by pid 42 (nc)"},
		{"other overlay, same port", Facts{VXLANPort: 4789, ForeignVXLAN: map[string]int{"flannel.1": 4789}}, "other-vxlan", Fail, "flannel.1"},
		{"other overlay, other port", Facts{VXLANPort: 4789, ForeignVXLAN: map[string]int{"flannel.1": 8472}}, "other-vxlan", OK, "flannel.1 (port 8472)"},
		{"docker drop, no vxnet rules", Facts{Status: healthy, IPTables: "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -j DOCKER-USER\n"}, "forwarding", Fail, "vxnet's VXNET-FORWARD rules are missing"},
		{"docker drop, no vxnet rules, fast path", Facts{Status: &api.Status{Datapath: "bpf", Networks: healthy.Networks}, IPTables: "*filter\n:FORWARD DROP [0:0]\n"}, "forwarding", Fail, "unicast inside a network takes the fast path and still flows"},
		{"docker drop, vxnet rules", Facts{Status: healthy, IPTables: "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -j VXNET-FORWARD\n"}, "forwarding", OK, "let its networks through"},
		{"no IPv6 network", Facts{Status: healthy, IP6Tables: "*filter\n:FORWARD DROP [0:0]\n"}, "forwarding-ipv6", OK, "no network here carries IPv6"},
		{"ip6tables drop, no vxnet rules", Facts{Status: dual, IP6Tables: "*filter\n:FORWARD DROP [0:0]\n", IPv6Forwarding: 1}, "forwarding-ipv6", Fail,
			"the ip6tables FORWARD policy is DROP and vxnet's VXNET-FORWARD rules are missing there: IPv6 of web is dropped"},
		{"ip6tables drop, vxnet rules", Facts{Status: dual, IP6Tables: "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -j VXNET-FORWARD\n", IPv6Forwarding: 1}, "forwarding-ipv6", OK, "IPv6 of web is forwarded"},
		{"IPv6 forwarding off", Facts{Status: dual, IPv6Forwarding: 0}, "forwarding-ipv6", Warn, "IPv6 forwarding is off (net.ipv6.conf.all.forwarding=0): IPv6 of web does not leave the host"},
		{"small neighbour table", Facts{Status: healthy, GCThresh3: 512}, "neighbour-table", Warn, "300 remote endpoints against a neighbour table of 512"},
		{"paths ok", Facts{Status: healthy, Health: &api.Health{HealthReport: api.HealthReport{Enabled: true, BigSize: 1450,
			Peers: []health.Peer{{Node: "h2", State: health.OK}}}}}, "overlay-paths", OK, "1 of 1 peers answer small and full-size (1450 bytes, DF) probes"},
		{"probes off", Facts{Status: healthy, Health: &api.Health{}}, "overlay-paths", Warn, "health probes are off"},
		{"vxlan blocked, gossip fine", Facts{Status: healthy, VXLANPort: 4789, Health: &api.Health{HealthReport: api.HealthReport{Enabled: true, BigSize: 1450,
			Peers: []health.Peer{{Node: "h2", State: health.Unreachable, Cause: "the last 3 probes went unanswered"}}}}}, "overlay-paths", Fail,
			"the overlay path to h2 is unreachable (the last 3 probes went unanswered) while gossip reaches it: the hosts talk, their VXLAN does not"},
		{"mtu black hole", Facts{Status: healthy, Health: &api.Health{HealthReport: api.HealthReport{Enabled: true, BigSize: 1450,
			Peers: []health.Peer{{Node: "h2", State: health.MTU}}}}}, "overlay-paths", Fail,
			"full-size frames to h2 are lost: probes of 1450 bytes with DF (1500 on the wire with VXLAN's 50) go unanswered while small ones pass"},
		{"wireguard blocked, vxlan fine", Facts{Status: tunneled, VXLANPort: 4789, Health: &api.Health{HealthReport: api.HealthReport{Enabled: true, BigSize: 1450,
			Peers: []health.Peer{{Node: "h2", State: health.OK}}, TunnelPeers: []health.Peer{{Node: "h2", State: health.Unreachable, Path: health.PathWireGuard, Cause: "the last 3 probes through the WireGuard tunnel went unanswered"}}}}}, "overlay-paths", Fail,
			"the encrypted networks' path to h2 (10.0.0.2) is unreachable (the last 3 probes through the WireGuard tunnel went unanswered) while the overlay in clear (VXLAN) reaches it"},
		{"wireguard ok", Facts{Status: tunneled, Health: &api.Health{HealthReport: api.HealthReport{Enabled: true, BigSize: 1450,
			Peers: []health.Peer{{Node: "h2", State: health.OK}}, TunnelPeers: []health.Peer{{Node: "h2", State: health.OK, Path: health.PathWireGuard}}}}}, "overlay-paths", OK, "2 of 2 peers answer"},
		{"no vxlan in the kernel", Facts{}, "kernel-vxlan", Fail, "the kernel's vxlan support is not loaded"},
		{"fast path on", Facts{Status: &api.Status{Datapath: "bpf", DatapathReason: "auto: this kernel runs the BPF fast path"}}, "datapath", OK, "bpf: TC programs carry unicast"},
		{"fast path asked off", Facts{Status: &api.Status{Datapath: "bridge", DatapathReason: "--datapath bridge"}}, "datapath", OK, "bridge (--datapath bridge)"},
		{"fast path cannot load", Facts{Status: &api.Status{Datapath: "bridge", DatapathReason: "auto: the BPF fast path does not load here: query TCX programs (needs kernel 6.6 or later): not supported"}},
			"datapath", Warn, "needs kernel 6.6"},
		{"vxlan in the kernel", Facts{KernelVXLAN: true}, "kernel-vxlan", OK, "the kernel has vxlan"},
		{"conntrack full", Facts{ConntrackCount: 95, ConntrackMax: 100}, "conntrack", Warn, "95% full"},
		{"strict rp_filter", Facts{RPFilter: 1}, "rp-filter", Warn, "strict reverse-path filtering"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := find(Run(tc.facts), tc.check)
			if f.Level != tc.level || !strings.Contains(f.Evidence, tc.text) {
				t.Errorf("%s: %+v, want %s with %q", tc.check, f, tc.level, tc.text)
			}
			if f.Level != OK && f.Fix == "" {
				t.Errorf("%s: no fix given", tc.check)
			}
		})
	}
	if w := Worst([]Finding{{Level: OK}, {Level: Warn}}); w != Warn {
		t.Errorf("worst %s", w)
	}
}
