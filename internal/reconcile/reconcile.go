// Package reconcile computes the kernel state one host should have from the
// cluster state (Desired), the operations that take the observed state there
// (Plan), and applies them through a datapath.Dataplane (Apply). Desired and
// Plan are pure.
package reconcile

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
)

// Input is everything Desired needs for one host.
type Input struct {
	Node        string
	Local       netip.Addr // this host's VTEP address
	Port        int        // VXLAN UDP port
	Underlay    string     // underlay device name (optional)
	UnderlayMTU int
	Networks    []model.Network
	// Nodes are the live members; endpoints of other nodes are programmed
	// only while their node is listed here.
	Nodes     []model.Node
	Endpoints []model.Endpoint
	// DNSPort is the local port of the agent's resolver (0: none).
	DNSPort uint16
	// FastPath asks for the BPF fast path (hooks and MAC entries); with
	// Unwrap its program runs at the Underlay device too.
	FastPath bool
	Unwrap   bool
	// Foreign are this host's VXLAN devices vxnet did not make: a network
	// with one's VNI on Port cannot have a device here (the kernel refuses
	// it), so it is left out, and said.
	Foreign []model.ForeignVXLAN
	// Open asks for the openings in the host's own filters (Target.Openings),
	// with GossipPort (0: none) opened to any address; without it vxnet
	// writes nothing into chains it did not make.
	Open       bool
	GossipPort int
	// Notrack takes members' VXLAN out of connection tracking.
	Notrack bool
	// Tunnel is this host's WireGuard device and what it publishes of it;
	// it is wanted while an encrypted network is programmed here. Nil: this
	// host has none, and its encrypted networks are left out, and said.
	Tunnel *TunnelInput
	// RouteSource: VXLAN leaves from the address of the route to each peer,
	// not from Local (a host reached at several addresses, which may sit on
	// several interfaces). Over IPv6 the devices' local address is "::" (a
	// device with none at all is one of IPv4).
	RouteSource bool
	// NoInbound: this host accepts no inbound traffic (behind a
	// masquerading NAT); its clear networks are left out, and said.
	NoInbound bool
	// Tunnels are the members' published tunnels, by node name.
	Tunnels map[string]model.TunnelInfo
	// PSK derives a pair's pre-shared key from their public keys (nil:
	// none).
	PSK func(a, b string) [32]byte
}

// TunnelInput is this host's tunnel as Desired needs it.
type TunnelInput struct {
	Dev  string
	Info model.TunnelInfo
}

// Target is the kernel state a pass aims at on one host.
type Target struct {
	Networks map[uint32]datapath.NetworkSpec
	FDB      map[datapath.FDBKey]datapath.FDB
	Neigh    map[datapath.NeighKey]datapath.Neigh
	// Ports are the IDs of local endpoints that may exist.
	Ports map[string]bool
	// Firewall isolates the networks and admits VXLAN only from members.
	Firewall datapath.Firewall
	// HostFirewall lets the networks' traffic through the host's iptables,
	// out (NATed) and in through published ports.
	HostFirewall datapath.HostFirewall
	// Openings are vxnet's accepts in the host's own filters (nil: vxnet
	// keeps out of them).
	Openings *datapath.Openings
	// Tunnel is the WireGuard device (nil: none wanted); Routes send the
	// other hosts' containers of encrypted networks into it.
	Tunnel *datapath.Tunnel
	Routes map[netip.Addr]datapath.Route
	// peerIPs are, by node, the addresses its tunnel peer is allowed.
	peerIPs map[string][]netip.Addr
	// FastHooks (by device) and FastEntries are the BPF fast path's; a
	// port's hook and entry are wanted once its port exists.
	FastHooks   map[string]datapath.FastHook
	FastEntries map[datapath.FastKey]datapath.FastEntry
	// fastPort names the port (endpoint ID) a hook or entry needs.
	fastPort map[string]string
}

// Problem is a clash in the cluster state that Desired resolved
// deterministically (every host resolves it the same way) and reports.
type Problem struct {
	Network string `json:"network"`
	Kind    string `json:"kind"`
	Detail  string `json:"detail"`
}

func (c Problem) String() string {
	return fmt.Sprintf("network %s: %s: %s", c.Network, c.Kind, c.Detail)
}

// Desired computes the kernel state for in.Node.
func Desired(in Input) (Target, []Problem) {
	st := Target{Networks: map[uint32]datapath.NetworkSpec{}, FDB: map[datapath.FDBKey]datapath.FDB{},
		Neigh: map[datapath.NeighKey]datapath.Neigh{}, Ports: map[string]bool{},
		FastHooks: map[string]datapath.FastHook{}, FastEntries: map[datapath.FastKey]datapath.FastEntry{},
		fastPort: map[string]string{}, Routes: map[netip.Addr]datapath.Route{}, peerIPs: map[string][]netip.Addr{}}
	var conflicts []Problem
	nets := map[string]model.Network{}
	taken := map[uint32]string{}
	for _, f := range in.Foreign {
		if f.Port == in.Port {
			taken[f.VNI] = f.Dev
		}
	}
	for _, n := range in.Networks {
		if in.NoInbound && !n.Encrypted && n.Name != model.HealthNetwork {
			conflicts = append(conflicts, Problem{Network: n.Name, Kind: "no-inbound",
				Detail: "this host accepts no inbound traffic (--no-inbound) and clear VXLAN cannot cross a masquerading NAT: the network is not programmed here; use an encrypted network"})
			continue
		}
		if n.Encrypted && in.Tunnel == nil {
			conflicts = append(conflicts, Problem{Network: n.Name, Kind: "encrypted",
				Detail: "this host has no tunnel key: the encrypted network is not programmed here"})
			continue
		}
		mtu, err := model.NetworkMTU(n, in.UnderlayMTU, in.Local.Is6())
		if err != nil {
			conflicts = append(conflicts, Problem{Network: n.Name, Kind: "mtu", Detail: err.Error()})
			continue
		}
		if dev, ok := taken[n.VNI]; ok {
			conflicts = append(conflicts, Problem{Network: n.Name, Kind: "foreign-vni",
				Detail: fmt.Sprintf("VNI %d is used here by device %s (made outside vxnet): the network is not programmed on this host", n.VNI, dev)})
			continue
		}
		spec := datapath.NetworkSpec{Name: n.Name, VNI: n.VNI, Port: in.Port, Local: in.Local, Underlay: in.Underlay,
			MTU: mtu, GatewayMAC: model.GatewayMAC(n.VNI).String()}
		if n.HasIPv4() {
			spec.Gateway = netip.PrefixFrom(n.Gateway, n.Subnet.Bits())
		}
		if n.Subnet6.IsValid() {
			spec.Gateway6 = netip.PrefixFrom(n.Gateway6, n.Subnet6.Bits())
		}
		if in.RouteSource {
			// No local address (IPv4), or the unspecified one (a device
			// of IPv6 whose source the route picks).
			spec.Local, spec.Underlay = netip.Addr{}, ""
			if in.Local.Is6() {
				spec.Local = netip.IPv6Unspecified()
			}
		}
		if n.Encrypted {
			// Routed through the tunnel: a bridge, no vxlan device.
			spec.Port, spec.Local, spec.Underlay, spec.Tunnel = 0, netip.Addr{}, "", in.Tunnel.Dev
		}
		if n.Name == model.HealthNetwork {
			// No address on the hosts' bridges: the health subnet stays
			// out of the hosts' routing tables.
			spec.Gateway, spec.Gateway6 = netip.Prefix{}, netip.Prefix{}
		}
		st.Networks[n.VNI] = spec
		nets[n.Name] = n
		if in.FastPath && !n.Encrypted {
			vx := datapath.VxlanName(n.VNI)
			st.FastHooks[vx] = datapath.FastHook{Dev: vx, VNI: n.VNI, Vxlan: true}
			if in.Unwrap && in.Underlay != "" {
				st.FastHooks[in.Underlay] = datapath.FastHook{Dev: in.Underlay, Underlay: true}
			}
		}
	}
	vteps, unreachable := map[string]netip.Addr{}, map[string]bool{}
	for _, nd := range in.Nodes {
		vteps[nd.Name] = nd.Addr
		if in.Local.IsValid() && nd.Addr.IsValid() && nd.Addr.Is4() != in.Local.Is4() {
			// One underlay family per cluster: a vxlan device carries
			// one, and vxnet does not translate between them.
			unreachable[nd.Name] = true
			conflicts = append(conflicts, Problem{Network: "*", Kind: "underlay-family",
				Detail: fmt.Sprintf("node %s is reached at %s and this host's underlay address is %s: a cluster's members must share one underlay family (all IPv4 or all IPv6); its containers are not reachable from here", nd.Name, nd.Addr, in.Local)})
			continue
		}
		if nd.NoInbound && nd.Name != in.Node {
			// Clear VXLAN does not reach it; neither does anything from a
			// host that is behind a masquerading NAT too.
			unreachable[nd.Name] = true
			if in.NoInbound {
				conflicts = append(conflicts, Problem{Network: "*", Kind: "no-inbound",
					Detail: fmt.Sprintf("node %s accepts no inbound traffic, as this host does: two hosts behind masquerading NATs cannot reach each other and vxnet does not relay between them; their containers do not reach each other", nd.Name)})
			}
		}
	}
	// Sort endpoints by ID so duplicates resolve the same way on every host.
	eps := append([]model.Endpoint(nil), in.Endpoints...)
	slices.SortFunc(eps, func(x, y model.Endpoint) int { return cmp.Compare(x.ID, y.ID) })
	type owner struct{ id string }
	type ipKey struct {
		net string
		ip  netip.Addr
	}
	type macKey struct{ net, mac string }
	type portKey struct {
		proto string
		port  uint16
	}
	seenIP := map[ipKey]owner{}
	seenMAC := map[macKey]owner{}
	seenPort := map[portKey]owner{}
	for _, e := range eps {
		n, ok := nets[e.Network]
		if !ok {
			continue
		}
		if e.Node == in.Node {
			st.Ports[e.ID] = true
		}
		if e.IP6.IsValid() && !n.Subnet6.Contains(e.IP6) {
			e.IP6 = netip.Addr{} // not of the network (as this host knows it): not programmed
		}
		if !e.IP.IsValid() && !e.IP6.IsValid() {
			continue // no address of the network: nothing to program
		}
		ik, ik6, mk := ipKey{e.Network, e.IP}, ipKey{e.Network, e.IP6}, macKey{e.Network, e.MAC}
		if o, dup := seenIP[ik]; dup && e.IP.IsValid() {
			conflicts = append(conflicts, Problem{Network: e.Network, Kind: "duplicate-ip",
				Detail: fmt.Sprintf("address %s is claimed by endpoints %s and %s; %s keeps it", e.IP, o.id, e.ID, o.id)})
			continue
		}
		if o, dup := seenIP[ik6]; dup && e.IP6.IsValid() {
			conflicts = append(conflicts, Problem{Network: e.Network, Kind: "duplicate-ip",
				Detail: fmt.Sprintf("address %s is claimed by endpoints %s and %s; %s keeps it", e.IP6, o.id, e.ID, o.id)})
			continue
		}
		if o, dup := seenMAC[mk]; dup {
			conflicts = append(conflicts, Problem{Network: e.Network, Kind: "duplicate-mac",
				Detail: fmt.Sprintf("MAC %s is claimed by endpoints %s and %s; %s keeps it", e.MAC, o.id, e.ID, o.id)})
			continue
		}
		seenMAC[mk] = owner{e.ID}
		for _, k := range []ipKey{ik, ik6} {
			if k.ip.IsValid() {
				seenIP[k] = owner{e.ID}
			}
		}
		if e.Node == in.Node && in.FastPath {
			dev := datapath.HostIfName(e.ID)
			st.FastHooks[dev] = datapath.FastHook{Dev: dev, VNI: n.VNI}
			fe := datapath.FastEntry{VNI: n.VNI, MAC: e.MAC, Dev: dev}
			st.FastEntries[fe.Key()] = fe
			st.fastPort[dev] = e.ID
		}
		if e.Node == in.Node {
			for _, p := range e.Ports {
				pk := portKey{p.Proto, p.HostPort}
				if o, dup := seenPort[pk]; dup {
					conflicts = append(conflicts, Problem{Network: e.Network, Kind: "duplicate-port",
						Detail: fmt.Sprintf("host port %d/%s is published by endpoints %s and %s; %s keeps it", p.HostPort, p.Proto, o.id, e.ID, o.id)})
					continue
				}
				if n.Internal {
					conflicts = append(conflicts, Problem{Network: e.Network, Kind: "internal-port",
						Detail: fmt.Sprintf("endpoint %s publishes %s on an internal network; not published", e.ID, p)})
					continue
				}
				seenPort[pk] = owner{e.ID}
				st.HostFirewall.Ports = append(st.HostFirewall.Ports, datapath.PublishedPort{VNI: n.VNI, Proto: p.Proto,
					HostPort: p.HostPort, IP: e.IP, Port: p.Port, IP6: e.IP6})
			}
			continue
		}
		vtep, alive := vteps[e.Node]
		if !alive {
			continue
		}
		if n.Encrypted {
			// Into the tunnel, to the peer that has the address among its
			// allowed ones (it needs a tunnel of its own).
			if t, ok := in.Tunnels[e.Node]; ok && t.Validate() == nil && !(in.NoInbound && unreachable[e.Node]) {
				for _, ip := range []netip.Addr{e.IP, e.IP6} {
					if !ip.IsValid() {
						continue
					}
					r := datapath.Route{VNI: n.VNI, IP: ip, Dev: in.Tunnel.Dev}
					st.Routes[r.IP] = r
					st.peerIPs[e.Node] = append(st.peerIPs[e.Node], ip)
					if ip.Is6() { // the bridge answers ND for it (IPv4: proxy ARP)
						nb := datapath.Neigh{VNI: n.VNI, IP: ip, Proxy: true}
						st.Neigh[nb.Key()] = nb
					}
				}
			}
			continue
		}
		if unreachable[e.Node] {
			continue
		}
		f := datapath.FDB{VNI: n.VNI, MAC: e.MAC, VTEP: vtep}
		st.FDB[f.Key()] = f
		if in.FastPath {
			fe := datapath.FastEntry{VNI: n.VNI, MAC: e.MAC, Dev: datapath.VxlanName(n.VNI), Remote: true, VTEP: vtep}
			st.FastEntries[fe.Key()] = fe
		}
		for _, ip := range []netip.Addr{e.IP, e.IP6} {
			if ip.IsValid() {
				nb := datapath.Neigh{VNI: n.VNI, IP: ip, MAC: e.MAC}
				st.Neigh[nb.Key()] = nb
			}
		}
	}
	st.Firewall = datapath.Firewall{Isolate: sortedKeys(st.Networks, cmp.Compare[uint32]), Port: in.Port, Notrack: in.Notrack}
	userNets := 0
	for _, vni := range st.Firewall.Isolate {
		n := nets[st.Networks[vni].Name]
		hn := datapath.HostNet{VNI: vni, Subnet: n.Subnet, Gateway: n.Gateway, Egress: !n.Internal, Subnet6: n.Subnet6, Gateway6: n.Gateway6}
		if n.Encrypted { // programmed only where there is a tunnel
			hn.Tunnel = in.Tunnel.Dev
		}
		if n.Name == model.HealthNetwork {
			// Its bridge forwards (the probes cross FORWARD where
			// br_netfilter is on); it has no gateway, so no names.
			hn.Gateway, hn.Gateway6, hn.Egress = netip.Addr{}, netip.Addr{}, false
		} else { // names are served at its gateways
			userNets++
		}
		st.HostFirewall.Networks = append(st.HostFirewall.Networks, hn)
		if n.Internal {
			st.Firewall.Internal = append(st.Firewall.Internal, vni)
		}
	}
	if userNets > 0 {
		st.HostFirewall.DNSPort = in.DNSPort
	}
	slices.SortFunc(st.HostFirewall.Ports, func(a, b datapath.PublishedPort) int {
		return model.PortMap{Proto: a.Proto, HostPort: a.HostPort}.Compare(model.PortMap{Proto: b.Proto, HostPort: b.HostPort})
	})
	for _, nd := range in.Nodes {
		if nd.Name != in.Node && nd.Addr.IsValid() {
			// A member reached at several addresses sends from any of them.
			st.Firewall.VTEPs = append(append(st.Firewall.VTEPs, nd.Addr), nd.Addrs...)
		}
	}
	slices.SortFunc(st.Firewall.VTEPs, netip.Addr.Compare)
	st.Firewall.VTEPs = slices.Compact(st.Firewall.VTEPs)
	if in.Open {
		st.Openings = &datapath.Openings{VXLANPort: in.Port, VTEPs: slices.Clone(st.Firewall.VTEPs),
			GossipPort: in.GossipPort, DNSPort: in.DNSPort}
	}
	for _, n := range in.Networks {
		if !n.Flood {
			continue
		}
		if _, ok := st.Networks[n.VNI]; !ok {
			continue
		}
		for _, nd := range in.Nodes {
			if nd.Name == in.Node || unreachable[nd.Name] {
				continue
			}
			f := datapath.FDB{VNI: n.VNI, MAC: datapath.ZeroMAC, VTEP: nd.Addr}
			st.FDB[f.Key()] = f
		}
	}
	st.tunnel(in, nets)
	return st, conflicts
}

// ARP has somewhere to go), and neighbours removed before their FDB entries.
func Plan(want Target, have datapath.Observed) []Op {
	var ops []Op
	// The openings come first: members must reach each other (gossip)
	// before there is any network.
	if want.Openings != nil && (have.Openings == nil || !have.Openings.Equal(*want.Openings)) {
		ops = append(ops, Op{Kind: EnsureOpenings, Openings: *want.Openings})
	}
	// The firewall goes in before any vxlan device or bridge exists: VXLAN
	// is admitted only from members (fail closed) and networks are isolated.
	if len(want.Networks) > 0 && (have.Firewall == nil || !have.Firewall.Equal(want.Firewall)) {
		ops = append(ops, Op{Kind: EnsureFirewall, Firewall: want.Firewall})
	}
	// The host's iptables let the networks' traffic through before their
	// devices exist (a host that drops forwarded traffic drops nothing of
	// ours), and stop doing so only after they are gone.
	if len(want.Networks) > 0 && (have.HostFirewall == nil || !have.HostFirewall.Equal(want.HostFirewall)) {
		ops = append(ops, Op{Kind: EnsureHostFirewall, HostFW: want.HostFirewall})
	}
	// The tunnel, and its peers' allowed addresses, exist before the
	// routes into it.
	if want.Tunnel != nil && (have.Tunnel == nil || !have.Tunnel.Equal(*want.Tunnel)) {
		ops = append(ops, Op{Kind: EnsureTunnel, Tunnel: *want.Tunnel})
	}
	rebuilt := map[uint32]bool{}
	for _, vni := range sortedKeys(want.Networks, cmp.Compare[uint32]) {
		spec := want.Networks[vni]
		cur, ok := have.Networks[vni]
		if !ok || cur != spec {
			ops = append(ops, Op{Kind: EnsureNetwork, Network: spec})
			// A changed VTEP address or port re-creates the vxlan device and
			// its entries with it: plan them all again.
			if ok && (cur.Local != spec.Local || cur.Port != spec.Port || cur.Underlay != spec.Underlay || cur.MTU == 0) {
				rebuilt[vni] = true
			}
		}
	}
	haveNeigh := make(map[datapath.NeighKey]datapath.Neigh, len(have.Neigh))
	for _, n := range have.Neigh {
		haveNeigh[n.Key()] = n
	}
	haveFDB := make(map[datapath.FDBKey]datapath.FDB, len(have.FDB))
	for _, f := range have.FDB {
		haveFDB[f.Key()] = f
	}
	for _, k := range sortedKeys(want.FDB, datapath.FDBKey.Compare) {
		f := want.FDB[k]
		if cur, ok := haveFDB[k]; !ok || cur != f || rebuilt[f.VNI] {
			ops = append(ops, Op{Kind: SetFDB, FDB: f})
		}
	}
	for _, k := range sortedKeys(want.Neigh, datapath.NeighKey.Compare) {
		n := want.Neigh[k]
		if cur, ok := haveNeigh[k]; !ok || cur != n || rebuilt[n.VNI] {
			ops = append(ops, Op{Kind: SetNeigh, Neigh: n})
		}
	}
	ops = append(ops, planFast(want, have, rebuilt)...)
	ops = append(ops, planRoutes(want, have)...)
	// Entries of networks that go away vanish with their devices.
	for _, n := range sortedNeigh(have.Neigh) {
		if _, keep := want.Networks[n.VNI]; !keep {
			continue
		}
		if _, ok := want.Neigh[n.Key()]; !ok {
			ops = append(ops, Op{Kind: DelNeigh, Neigh: n})
		}
	}
	for _, f := range sortedFDB(have.FDB) {
		if _, keep := want.Networks[f.VNI]; !keep {
			continue
		}
		if w, ok := want.FDB[f.Key()]; !ok || (f.MAC == datapath.ZeroMAC && w != f) {
			ops = append(ops, Op{Kind: DelFDB, FDB: f})
		}
	}
	ports := append([]datapath.Port(nil), have.Ports...)
	slices.SortFunc(ports, func(x, y datapath.Port) int { return cmp.Compare(x.ID, y.ID) })
	for _, p := range ports {
		if !want.Ports[p.ID] {
			ops = append(ops, Op{Kind: DetachPort, PortID: p.ID, VNI: p.VNI})
		}
	}
	for _, vni := range sortedKeys(have.Networks, cmp.Compare[uint32]) {
		if _, ok := want.Networks[vni]; !ok {
			ops = append(ops, Op{Kind: DeleteNetwork, VNI: vni})
		}
	}
	if len(want.Networks) == 0 && have.HostFirewall != nil {
		ops = append(ops, Op{Kind: RemoveHostFirewall})
	}
	if len(want.Networks) == 0 && have.Firewall != nil {
		ops = append(ops, Op{Kind: RemoveFirewall})
	}
	if want.Tunnel == nil && have.Tunnel != nil {
		ops = append(ops, Op{Kind: RemoveTunnel, Tunnel: *have.Tunnel})
	}
	if want.Openings == nil && have.Openings != nil {
		ops = append(ops, Op{Kind: RemoveOpenings})
	}
	return ops
}

// Apply runs ops in order, going on past failures, and returns every error.
func Apply(dp datapath.Dataplane, ops []Op) error {
	var errs []error
	failedNet := map[uint32]bool{}
	for _, op := range ops {
		var err error
		switch op.Kind {
		case EnsureFirewall:
			err = dp.EnsureFirewall(op.Firewall)
		case RemoveFirewall:
			err = dp.RemoveFirewall()
		case EnsureHostFirewall:
			err = dp.EnsureHostFirewall(op.HostFW)
		case RemoveHostFirewall:
			err = dp.RemoveHostFirewall()
		case EnsureOpenings:
			err = dp.EnsureOpenings(op.Openings)
		case RemoveOpenings:
			err = dp.RemoveOpenings()
		case SetRoute:
			err = dp.SetRoute(op.Route)
		case DelRoute:
			err = dp.DelRoute(op.Route)
		case EnsureTunnel:
			err = dp.EnsureTunnel(op.Tunnel)
		case RemoveTunnel:
			err = dp.RemoveTunnel(op.Tunnel.Dev)
		case EnsureNetwork:
			err = dp.EnsureNetwork(op.Network)
			if err != nil {
				failedNet[op.Network.VNI] = true
			}
		case SetNeigh:
			if failedNet[op.Neigh.VNI] {
				continue
			}
			err = dp.SetNeigh(op.Neigh)
		case SetFDB:
			if failedNet[op.FDB.VNI] {
				continue
			}
			err = dp.SetFDB(op.FDB)
		case DelFDB:
			err = dp.DelFDB(op.FDB)
		case DelNeigh:
			err = dp.DelNeigh(op.Neigh)
		case DetachPort:
			err = dp.Detach(op.PortID)
		case SetFastEntry:
			if failedNet[op.Entry.VNI] {
				continue
			}
			err = dp.SetFastEntry(op.Entry)
		case SetFastHook:
			if failedNet[op.Hook.VNI] {
				continue
			}
			err = dp.SetFastHook(op.Hook)
		case DelFastHook:
			err = dp.DelFastHook(op.Hook)
		case DelFastEntry:
			err = dp.DelFastEntry(op.Entry)
		case DeleteNetwork:
			err = dp.DeleteNetwork(op.VNI)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", op, err))
		}
	}
	return errors.Join(errs...)
}

// Sync observes, plans and applies once, returning the operations it ran.
func Sync(dp datapath.Dataplane, want Target) ([]Op, error) {
	ops, _, err := SyncObserved(dp, want)
	return ops, err
}

// SyncObserved is Sync, also returning what it observed before it acted.
func SyncObserved(dp datapath.Dataplane, want Target) ([]Op, datapath.Observed, error) {
	have, err := dp.Observe()
	if err != nil {
		return nil, have, fmt.Errorf("observe: %w", err)
	}
	ops := Plan(want, have)
	return ops, have, Apply(dp, ops)
}

// planFast returns the fast path's operations: entries before hooks (a
// hook with no entries passes every frame to the bridge), a port's only
// once the port exists, hooks off before entries go (a frame never meets a
// half-removed path); what a network or port that goes away holds goes
// with its device.
func planFast(want Target, have datapath.Observed, rebuilt map[uint32]bool) []Op {
	var ops []Op
	ports := map[string]bool{}
	for _, p := range have.Ports {
		ports[p.ID] = true
		if p.Shaped {
			// Someone shapes this port's traffic (tc on its host end):
			// it stays on the bridge path, both ways.
			want.FastHooks = maps.Clone(want.FastHooks)
			delete(want.FastHooks, p.HostIf)
			want.FastEntries = maps.Clone(want.FastEntries)
			for k, e := range want.FastEntries {
				if e.Dev == p.HostIf {
					delete(want.FastEntries, k)
				}
			}
		}
	}
	ready := func(dev string) bool {
		id, isPort := want.fastPort[dev]
		return !isPort || ports[id]
	}
	var hf datapath.FastPath
	if have.FastPath != nil {
		hf = *have.FastPath
	}
	haveHook := map[string]datapath.FastHook{}
	for _, h := range hf.Hooks {
		if h.Dev != "" && !h.Stale {
			haveHook[h.Dev] = h.Want()
		}
	}
	haveEntry := map[datapath.FastKey]datapath.FastEntry{}
	for _, e := range hf.Entries {
		haveEntry[e.Key()] = e
	}
	for _, k := range sortedKeys(want.FastEntries, datapath.FastKey.Compare) {
		e := want.FastEntries[k]
		if cur, ok := haveEntry[k]; ready(e.Dev) && (!ok || cur != e || rebuilt[e.VNI]) {
			ops = append(ops, Op{Kind: SetFastEntry, Entry: e})
		}
	}
	for _, dev := range sortedKeys(want.FastHooks, cmp.Compare[string]) {
		h := want.FastHooks[dev]
		if cur, ok := haveHook[dev]; ready(dev) && (!ok || cur != h || rebuilt[h.VNI]) {
			ops = append(ops, Op{Kind: SetFastHook, Hook: h})
		}
	}
	gone := func(vni uint32) bool { _, keep := want.Networks[vni]; return !keep }
	hooks := slices.Clone(hf.Hooks)
	slices.SortFunc(hooks, func(a, b datapath.FastHook) int { return cmp.Compare(a.Index, b.Index) })
	for _, h := range hooks {
		if h.Dev != "" && !h.Stale && !h.Underlay && gone(h.VNI) {
			continue // goes with its network's devices
		}
		if w, ok := want.FastHooks[h.Dev]; ok && (w == h.Want() || h.Stale) {
			continue // kept, or set again above
		}
		ops = append(ops, Op{Kind: DelFastHook, Hook: h})
	}
	entries := slices.Clone(hf.Entries)
	slices.SortFunc(entries, func(a, b datapath.FastEntry) int { return a.Key().Compare(b.Key()) })
	for _, e := range entries {
		if _, ok := want.FastEntries[e.Key()]; !ok && !gone(e.VNI) {
			ops = append(ops, Op{Kind: DelFastEntry, Entry: e})
		}
	}
	return ops
}

// sortedKeys returns m's keys in cmp order (one allocation, sized).
func sortedKeys[K comparable, V any](m map[K]V, cmp func(a, b K) int) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, cmp)
	return keys
}

func sortedFDB(s []datapath.FDB) []datapath.FDB {
	out := append([]datapath.FDB(nil), s...)
	slices.SortFunc(out, func(a, b datapath.FDB) int { return a.Key().Compare(b.Key()) })
	return out
}

func sortedNeigh(s []datapath.Neigh) []datapath.Neigh {
	out := append([]datapath.Neigh(nil), s...)
	slices.SortFunc(out, func(a, b datapath.Neigh) int { return a.Key().Compare(b.Key()) })
	return out
}

// RemoveAll takes away everything vxnet owns on a host (its devices,
// entries, ports, nftables table and iptables rules) and nothing else, and
// returns what it removed: the pass of a host that wants nothing.
func RemoveAll(dp datapath.Dataplane) ([]Op, error) { return Sync(dp, Target{}) }
