package dns

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/vxnet/vxnet/internal/model"
)

// Cluster is the cluster state names are answered from.
type Cluster struct {
	Networks  []model.Network
	Endpoints []model.Endpoint
	// Alive are the live members: the endpoints of the others do not answer.
	Alive map[string]bool
}

// NetworkOf returns the network whose subnet (IPv4 or IPv6) holds src.
func (c Cluster) NetworkOf(src netip.Addr) (model.Network, bool) {
	for _, n := range c.Networks {
		if n.Subnet.Contains(src) || n.Subnet6.Contains(src) {
			return n, true
		}
	}
	return model.Network{}, false
}

// Resolve answers a container's query: within the querier's network (the
// one whose subnet holds its address), NAME and NAME.NETWORK (the vxnet or
// Docker name of the network) resolve to every live endpoint with that
// name or alias (its IPv4 and IPv6 addresses, sorted, IPv4 first); other
// names go upstream, and a querier on no vxnet network is refused.
func (c Cluster) Resolve(src netip.Addr, name string) (Verdict, []netip.Addr) {
	n, found := c.NetworkOf(src)
	if !found {
		return Refuse, nil
	}
	label, suffix, qualified := strings.Cut(name, ".")
	if qualified && !strings.EqualFold(suffix, n.Name) && (n.DockerName == "" || !strings.EqualFold(suffix, n.DockerName)) {
		return Forward, nil
	}
	var ips []netip.Addr
	for _, e := range c.Endpoints {
		if e.Network == n.Name && c.Alive[e.Node] && e.HasName(label) {
			for _, ip := range []netip.Addr{e.IP, e.IP6} {
				if ip.IsValid() {
					ips = append(ips, ip)
				}
			}
		}
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	if len(ips) == 0 && !qualified {
		return Forward, nil // not a container name: the upstream servers answer
	}
	return Answer, ips
}
