package reconcile_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/fake"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/reconcile"
)

var (
	web = model.Network{Name: "web", VNI: 4097, Subnet: netip.MustParsePrefix("198.19.1.0/24"), Gateway: netip.MustParseAddr("198.19.1.1")}
	db  = model.Network{Name: "db", VNI: 4098, Subnet: netip.MustParsePrefix("198.19.2.0/24"), Gateway: netip.MustParseAddr("198.19.2.1"), Flood: true}
	h1  = model.Node{Name: "h1", Addr: netip.MustParseAddr("198.18.0.1")}
	h2  = model.Node{Name: "h2", Addr: netip.MustParseAddr("198.18.0.2")}
	h3  = model.Node{Name: "h3", Addr: netip.MustParseAddr("198.18.0.3")}
)

func ep(id, net, node, mac, ip string) model.Endpoint {
	return model.Endpoint{ID: id, Network: net, Node: node, MAC: mac, IP: netip.MustParseAddr(ip)}
}

// ep6 is a dual-stack endpoint.
func ep6(id, net, node, mac, ip, ip6 string) model.Endpoint {
	e := ep(id, net, node, mac, ip)
	e.IP6 = netip.MustParseAddr(ip6)
	return e
}

// dualInput is input with web dual-stack (fd00:1::/64).
func dualInput(eps ...model.Endpoint) reconcile.Input {
	in := input(eps...)
	w := web
	w.Subnet6, w.Gateway6 = netip.MustParsePrefix("fd00:1::/64"), netip.MustParseAddr("fd00:1::1")
	in.Networks = []model.Network{w, db}
	return in
}

func input(eps ...model.Endpoint) reconcile.Input {
	return reconcile.Input{Node: "h1", Local: h1.Addr, Port: 4789, UnderlayMTU: 1500,
		Networks: []model.Network{web, db}, Nodes: []model.Node{h1, h2, h3}, Endpoints: eps}
}

func TestDesired(t *testing.T) {
	tests := []struct {
		name      string
		in        reconcile.Input
		fdb       []string
		neigh     []string
		ports     []string
		conflicts []string
	}{
		{
			name:  "remote endpoint becomes fdb and neighbour; local becomes a port",
			in:    input(ep("a", "web", "h1", "02:00:00:00:00:01", "198.19.1.2"), ep("b", "web", "h2", "02:00:00:00:00:02", "198.19.1.3")),
			fdb:   []string{"fdb vni 4097 02:00:00:00:00:02 -> 198.18.0.2", "fdb vni 4098 00:00:00:00:00:00 -> 198.18.0.2", "fdb vni 4098 00:00:00:00:00:00 -> 198.18.0.3"},
			neigh: []string{"neigh vni 4097 198.19.1.3 -> 02:00:00:00:00:02"},
			ports: []string{"a"},
		},
		{
			name: "endpoints of a node that is not live are withdrawn",
			in: func() reconcile.Input {
				in := input(ep("b", "web", "h2", "02:00:00:00:00:02", "198.19.1.3"))
				in.Nodes = []model.Node{h1, h3}
				return in
			}(),
			fdb: []string{"fdb vni 4098 00:00:00:00:00:00 -> 198.18.0.3"},
		},
		{
			name: "duplicate address: the lowest ID keeps it everywhere, the other is reported",
			in:   input(ep("z", "web", "h2", "02:00:00:00:00:09", "198.19.1.5"), ep("m", "web", "h3", "02:00:00:00:00:08", "198.19.1.5")),
			fdb: []string{"fdb vni 4097 02:00:00:00:00:08 -> 198.18.0.3",
				"fdb vni 4098 00:00:00:00:00:00 -> 198.18.0.2", "fdb vni 4098 00:00:00:00:00:00 -> 198.18.0.3"},
			neigh:     []string{"neigh vni 4097 198.19.1.5 -> 02:00:00:00:00:08"},
			conflicts: []string{"network web: duplicate-ip: address 198.19.1.5 is claimed by endpoints m and z; m keeps it"},
		},
		{
			name:  "dual stack: a remote endpoint's IPv6 address is a permanent neighbour too (no ND crosses the tunnel)",
			in:    dualInput(ep6("b", "web", "h2", "02:00:00:00:00:02", "198.19.1.3", "fd00:1::3")),
			fdb:   []string{"fdb vni 4097 02:00:00:00:00:02 -> 198.18.0.2", "fdb vni 4098 00:00:00:00:00:00 -> 198.18.0.2", "fdb vni 4098 00:00:00:00:00:00 -> 198.18.0.3"},
			neigh: []string{"neigh vni 4097 198.19.1.3 -> 02:00:00:00:00:02", "neigh vni 4097 fd00:1::3 -> 02:00:00:00:00:02"},
		},
		{
			name: "duplicate IPv6 address: the lowest ID keeps it, the other is reported",
			in: dualInput(ep6("z", "web", "h2", "02:00:00:00:00:09", "198.19.1.9", "fd00:1::5"),
				ep6("m", "web", "h3", "02:00:00:00:00:08", "198.19.1.8", "fd00:1::5")),
			fdb: []string{"fdb vni 4097 02:00:00:00:00:08 -> 198.18.0.3",
				"fdb vni 4098 00:00:00:00:00:00 -> 198.18.0.2", "fdb vni 4098 00:00:00:00:00:00 -> 198.18.0.3"},
			neigh:     []string{"neigh vni 4097 198.19.1.8 -> 02:00:00:00:00:08", "neigh vni 4097 fd00:1::5 -> 02:00:00:00:00:08"},
			conflicts: []string{"network web: duplicate-ip: address fd00:1::5 is claimed by endpoints m and z; m keeps it"},
		},
		{
			name:  "an IPv6 address outside the network's IPv6 subnet is not programmed",
			in:    input(ep6("b", "web", "h2", "02:00:00:00:00:02", "198.19.1.3", "fd00:1::3")),
			fdb:   []string{"fdb vni 4097 02:00:00:00:00:02 -> 198.18.0.2", "fdb vni 4098 00:00:00:00:00:00 -> 198.18.0.2", "fdb vni 4098 00:00:00:00:00:00 -> 198.18.0.3"},
			neigh: []string{"neigh vni 4097 198.19.1.3 -> 02:00:00:00:00:02"},
		},
		{
			name: "IPv6-only endpoints: neighbours of their IPv6 addresses, no clash between their absent IPv4 ones",
			in: func() reconcile.Input {
				in := input(ep6("b", "six", "h2", "02:00:00:00:00:02", "198.19.1.3", "fd00:6::2"), ep6("c", "six", "h3", "02:00:00:00:00:03", "198.19.1.3", "fd00:6::3"))
				in.Endpoints[0].IP, in.Endpoints[1].IP = netip.Addr{}, netip.Addr{}
				six := model.Network{Name: "six", VNI: 4099, Subnet6: netip.MustParsePrefix("fd00:6::/64")}
				six.Normalize()
				in.Networks = []model.Network{six}
				return in
			}(),
			fdb:   []string{"fdb vni 4099 02:00:00:00:00:02 -> 198.18.0.2", "fdb vni 4099 02:00:00:00:00:03 -> 198.18.0.3"},
			neigh: []string{"neigh vni 4099 fd00:6::2 -> 02:00:00:00:00:02", "neigh vni 4099 fd00:6::3 -> 02:00:00:00:00:03"},
		},
		{
			name: "a member of the other underlay family is reported and not programmed",
			in: func() reconcile.Input {
				in := input(ep("b", "web", "h2", "02:00:00:00:00:02", "198.19.1.3"))
				in.Nodes = []model.Node{h1, {Name: "h2", Addr: netip.MustParseAddr("2001:db8::2")}, h3}
				return in
			}(),
			fdb: []string{"fdb vni 4098 00:00:00:00:00:00 -> 198.18.0.3"},
			conflicts: []string{"network *: underlay-family: node h2 is reached at 2001:db8::2 and this host's underlay address is 198.18.0.1: " +
				"a cluster's members must share one underlay family (all IPv4 or all IPv6); its containers are not reachable from here"},
		},
		{
			name: "endpoint of an unknown network is ignored",
			in:   input(ep("q", "nope", "h2", "02:00:00:00:00:07", "198.19.9.5")),
			fdb:  []string{"fdb vni 4098 00:00:00:00:00:00 -> 198.18.0.2", "fdb vni 4098 00:00:00:00:00:00 -> 198.18.0.3"},
		},
		{
			name: "an MTU that does not fit the underlay drops the network and says why",
			in: func() reconcile.Input {
				in := input()
				in.Networks = []model.Network{{Name: "big", VNI: 9, Subnet: web.Subnet, Gateway: web.Gateway, MTU: 1500}}
				return in
			}(),
			conflicts: []string{"network big: mtu: MTU 1500 does not fit: underlay MTU 1500 minus 50 bytes of VXLAN overhead leaves at most 1450"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, conflicts := reconcile.Desired(tt.in)
			var fdb, neigh, ports, cs []string
			for _, f := range st.FDB {
				fdb = append(fdb, f.String())
			}
			for _, n := range st.Neigh {
				neigh = append(neigh, n.String())
			}
			for p := range st.Ports {
				ports = append(ports, p)
			}
			for _, c := range conflicts {
				cs = append(cs, c.String())
			}
			eqSet(t, "fdb", fdb, tt.fdb)
			eqSet(t, "neigh", neigh, tt.neigh)
			eqSet(t, "ports", ports, tt.ports)
			eqSet(t, "conflicts", cs, tt.conflicts)
		})
	}
}

func eqSet(t *testing.T, what string, got, want []string) {
	t.Helper()
	g := map[string]bool{}
	for _, s := range got {
		g[s] = true
	}
	if len(got) != len(want) {
		t.Errorf("%s = %q, want %q", what, got, want)
		return
	}
	for _, s := range want {
		if !g[s] {
			t.Errorf("%s = %q, want %q", what, got, want)
			return
		}
	}
}

func TestSpecDerived(t *testing.T) {
	st, _ := reconcile.Desired(input())
	s := st.Networks[4097]
	if s.MTU != 1450 || s.Gateway.String() != "198.19.1.1/24" || s.GatewayMAC != "02:76:78:00:10:01" || s.Port != 4789 {
		t.Fatalf("spec = %+v", s)
	}
	in := input()
	in.Local = netip.MustParseAddr("2001:db8::1")
	st, _ = reconcile.Desired(in)
	if got := st.Networks[4097].MTU; got != 1430 {
		t.Fatalf("IPv6 underlay MTU = %d, want 1430", got)
	}
}

func TestPlanOrderAndIdempotence(t *testing.T) {
	dp := fake.New()
	want, _ := reconcile.Desired(input(ep("a", "web", "h1", "02:00:00:00:00:01", "198.19.1.2"), ep("b", "web", "h2", "02:00:00:00:00:02", "198.19.1.3")))
	ops, err := reconcile.Sync(dp, want)
	if err != nil {
		t.Fatal(err)
	}
	last := reconcile.OpKind(-1)
	for _, op := range ops {
		if op.Kind < last {
			t.Fatalf("ops out of order: %v", ops)
		}
		last = op.Kind
	}
	if len(ops) < 3 || ops[0].Kind != reconcile.EnsureFirewall || ops[1].Kind != reconcile.EnsureHostFirewall || ops[2].Kind != reconcile.EnsureNetwork {
		t.Fatalf("first ops = %v, want ensure-firewall, ensure-host-firewall, ensure-network", ops)
	}
	before := dp.Changes
	ops, err = reconcile.Sync(dp, want)
	if err != nil || len(ops) != 0 || dp.Changes != before {
		t.Fatalf("second pass: ops %v err %v changes %d, want none", ops, err, dp.Changes-before)
	}
}

func TestPlanRemovesWhatIsNotWanted(t *testing.T) {
	dp := fake.New()
	want, _ := reconcile.Desired(input(ep("b", "web", "h2", "02:00:00:00:00:02", "198.19.1.3")))
	if _, err := reconcile.Sync(dp, want); err != nil {
		t.Fatal(err)
	}
	// Hand-made entries, a leftover network and an orphan port.
	stray := datapath.FDB{VNI: 4097, MAC: "02:aa:00:00:00:01", VTEP: netip.MustParseAddr("198.18.0.9")}
	strayN := datapath.Neigh{VNI: 4097, IP: netip.MustParseAddr("198.19.1.99"), MAC: stray.MAC}
	old := datapath.NetworkSpec{Name: "old", VNI: 99, Port: 4789, Local: h1.Addr, MTU: 1450, GatewayMAC: model.GatewayMAC(99).String()}
	for _, err := range []error{dp.SetFDB(stray), dp.SetNeigh(strayN), dp.EnsureNetwork(old)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dp.Attach(datapath.EndpointSpec{ID: "orphan", VNI: 4097, Netns: t.TempDir(), MAC: "02:00:00:00:00:55"}); err != nil {
		t.Fatal(err)
	}
	ops, err := reconcile.Sync(dp, want)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, op := range ops {
		kinds = append(kinds, op.String())
	}
	got := strings.Join(kinds, "; ")
	wantOps := "del-neigh neigh vni 4097 198.19.1.99 -> 02:aa:00:00:00:01; del-fdb fdb vni 4097 02:aa:00:00:00:01 -> 198.18.0.9; detach orphan; delete-network vni 99"
	if got != wantOps {
		t.Fatalf("ops = %s\nwant  %s", got, wantOps)
	}
	if ops, _ := reconcile.Sync(dp, want); len(ops) != 0 {
		t.Fatalf("not converged: %v", ops)
	}
}

func TestPlanReplacesMovedMAC(t *testing.T) {
	dp := fake.New()
	in := input(ep("b", "web", "h2", "02:00:00:00:00:02", "198.19.1.3"))
	want, _ := reconcile.Desired(in)
	if _, err := reconcile.Sync(dp, want); err != nil {
		t.Fatal(err)
	}
	in.Endpoints[0].Node = "h3" // moved to another host
	want, _ = reconcile.Desired(in)
	ops, err := reconcile.Sync(dp, want)
	if err != nil || len(ops) != 1 || ops[0].Kind != reconcile.SetFDB || ops[0].FDB.VTEP != h3.Addr {
		t.Fatalf("ops = %v, err %v; want one set-fdb to h3", ops, err)
	}
}

func TestFirewallFollowsNetworksAndMembers(t *testing.T) {
	dp := fake.New()
	want, _ := reconcile.Desired(input())
	if _, err := reconcile.Sync(dp, want); err != nil {
		t.Fatal(err)
	}
	want2 := datapath.Firewall{Isolate: []uint32{4097, 4098}, Port: 4789, VTEPs: []netip.Addr{h2.Addr, h3.Addr}}
	if obs, _ := dp.Observe(); obs.Firewall == nil || !obs.Firewall.Equal(want2) {
		t.Fatalf("firewall %+v, want %+v", obs.Firewall, want2)
	}
	// A member leaves: its VTEP leaves the allow-list (and its flood entry goes).
	in := input()
	in.Nodes = []model.Node{h1, h3}
	want, _ = reconcile.Desired(in)
	ops, err := reconcile.Sync(dp, want)
	if err != nil || len(ops) != 2 || ops[0].Kind != reconcile.EnsureFirewall || len(ops[0].Firewall.VTEPs) != 1 || ops[1].Kind != reconcile.DelFDB {
		t.Fatalf("ops after a member left: %v %v", ops, err)
	}
	in.Networks = nil
	want, _ = reconcile.Desired(in)
	ops, err = reconcile.Sync(dp, want)
	if err != nil {
		t.Fatal(err)
	}
	if last := ops[len(ops)-1]; last.Kind != reconcile.RemoveFirewall {
		t.Fatalf("ops = %v, want remove-firewall last", ops)
	}
	if obs, _ := dp.Observe(); obs.Firewall != nil || len(obs.Networks) != 0 {
		t.Fatalf("after removing every network: %+v", obs)
	}
}

// The host firewall: every programmed network forwards on its bridge and,
// unless internal, out of it; local endpoints' published ports become
// DNATs (remote endpoints' ports are their hosts' business); a host port
// published twice stays with the first endpoint and is reported.
func TestDesiredHostFirewall(t *testing.T) {
	internal := db
	internal.Internal = true
	a := ep("a", "web", "h1", "02:00:00:00:00:01", "198.19.1.2")
	a.Ports = []model.PortMap{{Proto: "tcp", HostPort: 8080, Port: 80}, {Proto: "udp", HostPort: 53, Port: 5353}}
	b := ep("b", "web", "h2", "02:00:00:00:00:02", "198.19.1.3")
	b.Ports = []model.PortMap{{Proto: "tcp", HostPort: 9090, Port: 90}}
	c := ep("c", "web", "h1", "02:00:00:00:00:03", "198.19.1.4")
	c.Ports = []model.PortMap{{Proto: "tcp", HostPort: 8080, Port: 81}}
	d := ep("d", "db", "h1", "02:00:00:00:00:04", "198.19.2.4")
	d.Ports = []model.PortMap{{Proto: "tcp", HostPort: 7070, Port: 70}}
	in := input(a, b, c, d)
	in.Networks = []model.Network{web, internal}
	in.DNSPort = 53535
	want, problems := reconcile.Desired(in)
	wantFW := datapath.HostFirewall{
		Networks: []datapath.HostNet{{VNI: web.VNI, Subnet: web.Subnet, Gateway: web.Gateway, Egress: true}, {VNI: db.VNI, Subnet: db.Subnet, Gateway: db.Gateway, Egress: false}},
		DNSPort:  53535,
		Ports: []datapath.PublishedPort{
			{VNI: web.VNI, Proto: "tcp", HostPort: 8080, IP: a.IP, Port: 80},
			{VNI: web.VNI, Proto: "udp", HostPort: 53, IP: a.IP, Port: 5353},
		},
	}
	if !want.HostFirewall.Equal(wantFW) {
		t.Errorf("host firewall\n %+v\nwant\n %+v", want.HostFirewall, wantFW)
	}
	if !slices.Equal(want.Firewall.Internal, []uint32{db.VNI}) {
		t.Errorf("internal %v, want [%d]", want.Firewall.Internal, db.VNI)
	}
	var got []string
	for _, p := range problems {
		got = append(got, p.String())
	}
	wantProblems := []string{
		"network web: duplicate-port: host port 8080/tcp is published by endpoints a and c; a keeps it",
		"network db: internal-port: endpoint d publishes 7070:70/tcp on an internal network; not published",
	}
	slices.Sort(got)
	slices.Sort(wantProblems)
	if !slices.Equal(got, wantProblems) {
		t.Errorf("problems\n %q\nwant\n %q", got, wantProblems)
	}
	// Rules flushed by someone come back on the next pass; with the
	// networks gone they go.
	dp := fake.New()
	if _, err := reconcile.Sync(dp, want); err != nil {
		t.Fatal(err)
	}
	dp.FlushHostFirewall()
	ops, err := reconcile.Sync(dp, want)
	if err != nil || len(ops) != 1 || ops[0].Kind != reconcile.EnsureHostFirewall {
		t.Fatalf("after a flush: ops %v, err %v; want one ensure-host-firewall", ops, err)
	}
	empty, _ := reconcile.Desired(reconcile.Input{Node: "h1", Local: h1.Addr, Port: 4789, UnderlayMTU: 1500})
	if _, err := reconcile.Sync(dp, empty); err != nil {
		t.Fatal(err)
	}
	if o, _ := dp.Observe(); o.HostFirewall != nil || o.Firewall != nil {
		t.Errorf("left after the last network: %+v %+v", o.HostFirewall, o.Firewall)
	}
}

// TestHealthNetwork: the health network's bridge gets no address (the
// health subnet stays out of the hosts' routing), its traffic may cross
// FORWARD but never leaves through NAT nor is redirected for names; alone,
// it asks for no resolver redirection.
func TestHealthNetwork(t *testing.T) {
	hn := model.Network{Name: model.HealthNetwork, VNI: model.HealthVNI, Subnet: netip.MustParsePrefix("100.127.0.0/16"), Internal: true}
	hn.Normalize()
	web := model.Network{Name: "web", VNI: 100, Subnet: netip.MustParsePrefix("10.1.0.0/16")}
	web.Normalize()
	in := reconcile.Input{Node: "h1", Local: netip.MustParseAddr("10.0.0.1"), Port: 4789, UnderlayMTU: 1500, DNSPort: 53533,
		Networks: []model.Network{hn}}
	st, _ := reconcile.Desired(in)
	spec := st.Networks[model.HealthVNI]
	if spec.Gateway.IsValid() || spec.Gateway6.IsValid() {
		t.Fatalf("health bridge gets address %s", spec.Gateway)
	}
	if len(st.HostFirewall.Networks) != 1 || st.HostFirewall.Networks[0].Gateway.IsValid() || st.HostFirewall.Networks[0].Egress || st.HostFirewall.DNSPort != 0 {
		t.Fatalf("host firewall for the health network alone: %+v", st.HostFirewall)
	}
	if len(st.Firewall.Internal) != 1 || st.Firewall.Internal[0] != model.HealthVNI {
		t.Fatalf("health network not isolated as internal: %+v", st.Firewall)
	}
	in.Networks = append(in.Networks, web)
	st, _ = reconcile.Desired(in)
	if st.HostFirewall.DNSPort != 53533 || !st.Networks[100].Gateway.IsValid() {
		t.Fatalf("a user network beside it: %+v", st.HostFirewall)
	}
	// An IPv6-only network has names too: at its IPv6 gateway.
	six := model.Network{Name: "six", VNI: 101, Subnet6: netip.MustParsePrefix("fd00:6::/64")}
	six.Normalize()
	in.Networks = []model.Network{hn, six}
	st, _ = reconcile.Desired(in)
	i := slices.IndexFunc(st.HostFirewall.Networks, func(n datapath.HostNet) bool { return n.VNI == 101 })
	if st.HostFirewall.DNSPort != 53533 || i < 0 || st.HostFirewall.Networks[i].Gateway6 != netip.MustParseAddr("fd00:6::1") {
		t.Fatalf("an IPv6-only network beside it: %+v", st.HostFirewall)
	}
}

// The openings exist while asked for, with or without networks (members
// gossip before any network exists), follow the members, come first in a
// plan, and go when no longer asked for.
func TestOpeningsFollowMembers(t *testing.T) {
	dp := fake.New()
	in := input()
	in.Networks, in.Open, in.GossipPort, in.DNSPort = nil, true, 7946, 53533
	want, _ := reconcile.Desired(in)
	ops, err := reconcile.Sync(dp, want)
	if err != nil || len(ops) != 1 || ops[0].Kind != reconcile.EnsureOpenings {
		t.Fatalf("ops with no network: %v %v", ops, err)
	}
	wantOpen := datapath.Openings{VXLANPort: 4789, VTEPs: []netip.Addr{h2.Addr, h3.Addr}, GossipPort: 7946, DNSPort: 53533}
	if obs, _ := dp.Observe(); obs.Openings == nil || !obs.Openings.Equal(wantOpen) {
		t.Fatalf("openings %+v, want %+v", obs.Openings, wantOpen)
	}
	in.Networks, in.Nodes = []model.Network{web}, []model.Node{h1, h3}
	want, _ = reconcile.Desired(in)
	if ops, err = reconcile.Sync(dp, want); err != nil || ops[0].Kind != reconcile.EnsureOpenings || len(ops[0].Openings.VTEPs) != 1 {
		t.Fatalf("ops after a member left: %v %v", ops, err)
	}
	in.Open = false
	want, _ = reconcile.Desired(in)
	if ops, err = reconcile.Sync(dp, want); err != nil || ops[len(ops)-1].Kind != reconcile.RemoveOpenings {
		t.Fatalf("ops once not asked for: %v %v", ops, err)
	}
	if obs, _ := dp.Observe(); obs.Openings != nil {
		t.Fatalf("openings left: %+v", obs.Openings)
	}
}

// TestDesiredSeveralAddresses: a member reached at several addresses gets
// its FDB entries at the address in use and is admitted from all of them.
func TestDesiredSeveralAddresses(t *testing.T) {
	in := input(ep("b", "web", "h2", "02:00:00:00:00:02", "198.19.1.3"))
	pub := netip.MustParseAddr("203.0.113.2")
	in.Nodes = []model.Node{h1, {Name: "h2", Addr: pub, Addrs: []netip.Addr{h2.Addr, pub}}, h3}
	st, _ := reconcile.Desired(in)
	var fdb []string
	for _, f := range st.FDB {
		if f.VNI == 4097 {
			fdb = append(fdb, f.String())
		}
	}
	eqSet(t, "fdb", fdb, []string{"fdb vni 4097 02:00:00:00:00:02 -> 203.0.113.2"})
	want := []netip.Addr{h2.Addr, h3.Addr, pub}
	if !slices.Equal(st.Firewall.VTEPs, want) {
		t.Errorf("allowed VTEPs %v, want %v", st.Firewall.VTEPs, want)
	}
	if spec := st.Networks[4097]; spec.Local != h1.Addr {
		t.Errorf("one address of its own: the vxlan device sends from %v, want %v", spec.Local, h1.Addr)
	}
	// Reached at several itself: the route to each peer picks the source.
	in.RouteSource, in.Underlay = true, "eth0"
	st, _ = reconcile.Desired(in)
	if spec := st.Networks[4097]; spec.Local.IsValid() || spec.Underlay != "" {
		t.Errorf("several addresses: the vxlan device has local %v and underlay %q, want neither", spec.Local, spec.Underlay)
	}
	// Over IPv6: "::", so the device stays one of IPv6.
	in.Local, in.Nodes = netip.MustParseAddr("2001:db8::1"), nil
	st, _ = reconcile.Desired(in)
	if spec := st.Networks[4097]; spec.Local != netip.IPv6Unspecified() || spec.Underlay != "" {
		t.Errorf("several IPv6 addresses: the vxlan device has local %v and underlay %q, want :: and none", spec.Local, spec.Underlay)
	}
}
