package reconcile

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
)

// tunnel adds the WireGuard device, the firewall's guard of the encrypted
// networks and the tunnel's openings, where an encrypted network is
// programmed.
func (st *Target) tunnel(in Input, nets map[string]model.Network) {
	for vni, spec := range st.Networks {
		if n := nets[spec.Name]; n.Encrypted {
			st.Firewall.Encrypted = append(st.Firewall.Encrypted, datapath.EncryptedNet{VNI: vni, Subnet: n.Subnet, Subnet6: n.Subnet6})
		}
	}
	if len(st.Firewall.Encrypted) == 0 {
		return
	}
	slices.SortFunc(st.Firewall.Encrypted, func(a, b datapath.EncryptedNet) int { return cmp.Compare(a.VNI, b.VNI) })
	me := in.Tunnel
	t := &datapath.Tunnel{Dev: me.Dev, Port: me.Info.Port, MTU: in.UnderlayMTU - model.Overhead(true, in.Local.Is6()),
		Addr: model.TunnelAddr(me.Info.Key), Key: me.Info.Key, Peers: []datapath.TunnelPeer{}}
	for _, nd := range in.Nodes {
		pt, ok := in.Tunnels[nd.Name]
		if nd.Name == in.Node || !ok || pt.Validate() != nil || !nd.Addr.IsValid() || pt.Key == me.Info.Key || (in.NoInbound && nd.NoInbound) {
			continue
		}
		ips := append([]netip.Addr{model.TunnelAddr(pt.Key)}, st.peerIPs[nd.Name]...)
		slices.SortFunc(ips, netip.Addr.Compare)
		p := datapath.TunnelPeer{Key: pt.Key, Endpoint: netip.AddrPortFrom(nd.Addr, uint16(pt.Port)), AllowedIPs: slices.Compact(ips)}
		if nd.NoInbound {
			// Behind a masquerading NAT: its handshakes say where it is.
			p.Endpoint = netip.AddrPort{}
		}
		if in.PSK != nil {
			p.PSK = in.PSK(me.Info.Key, pt.Key)
		}
		t.Peers = append(t.Peers, p)
	}
	datapath.SortPeers(t.Peers)
	st.Tunnel = t
	st.Firewall.TunnelDev = me.Dev
	if st.Openings != nil {
		st.Openings.TunnelPort, st.Openings.TunnelDev = me.Info.Port, me.Dev
	}
}

// planRoutes returns the routes into the tunnel to set (once the tunnel
// allows their addresses: the plan puts them after the tunnel) and those
// to remove.
func planRoutes(want Target, have datapath.Observed) []Op {
	var ops []Op
	haveRoute := map[netip.Addr]datapath.Route{}
	for _, r := range have.Routes {
		haveRoute[r.IP] = r
	}
	for _, ip := range sortedKeys(want.Routes, netip.Addr.Compare) {
		// The kernel has no VNI of a route: IP and device are what count.
		if r := want.Routes[ip]; haveRoute[ip].Dev != r.Dev {
			ops = append(ops, Op{Kind: SetRoute, Route: r})
		}
	}
	for _, ip := range sortedKeys(haveRoute, netip.Addr.Compare) {
		if _, ok := want.Routes[ip]; !ok {
			ops = append(ops, Op{Kind: DelRoute, Route: haveRoute[ip]})
		}
	}
	return ops
}
