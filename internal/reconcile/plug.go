package reconcile

import (
	"net/netip"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
)

// Port is a container's interface to plug into a network.
type Port struct {
	ID            string // the endpoint's ID
	Netns, IfName string // its namespace ("" leaves the container end in this one) and interface
	MAC           string
	IP, IP6       netip.Addr // IP6: on a network with an IPv6 subnet
	Network       model.Network
}

// Plug plugs a port into a host that Sync has just brought to want: its
// network's devices and firewall exist first, and the port takes the
// network's MTU as want has it (the one source of a network's MTU on a
// host). The agent's endpoint transaction and the lab's static hosts both
// plug ports through it; a pass removes ports that want does not keep.
func Plug(dp datapath.Dataplane, want Target, p Port) (datapath.Port, error) {
	spec, ok := want.Networks[p.Network.VNI]
	if !ok {
		return datapath.Port{}, model.Errorf(model.ErrConflict, "network %s is not programmable on this host (see 'vxnet status' for conflicts)", p.Network.Name)
	}
	es := datapath.EndpointSpec{ID: p.ID, VNI: spec.VNI, Netns: p.Netns, IfName: p.IfName, MAC: p.MAC,
		IP: netip.PrefixFrom(p.IP, p.Network.Subnet.Bits()), Gateway: p.Network.Gateway, MTU: spec.MTU}
	if p.IP6.IsValid() && p.Network.Subnet6.IsValid() {
		es.IP6, es.Gateway6 = netip.PrefixFrom(p.IP6, p.Network.Subnet6.Bits()), p.Network.Gateway6
	}
	return dp.Attach(es)
}
