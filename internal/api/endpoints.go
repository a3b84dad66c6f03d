package api

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vxnet/vxnet/internal/model"
)

// EndpointRow is one endpoint as `vxnet endpoints` and the live page show
// it. Its JSON (`vxnet endpoints --json`, a list of these) is stable: fields
// are added, never renamed or removed.
type EndpointRow struct {
	// Name is the container's name on its network ("" when it has none);
	// Aliases its other names there.
	Name    string   `json:"name"`
	Aliases []string `json:"aliases,omitempty"`
	// Network is the network's name: its Docker name when it was made
	// through Docker (NetworkID is then vxnet's name of it).
	Network   string `json:"network"`
	NetworkID string `json:"network_id,omitempty"`
	// Host is the member the endpoint runs on.
	Host string `json:"host"`
	IP   string `json:"ip"`
	IP6  string `json:"ip6,omitempty"`
	MAC  string `json:"mac"`
	// Ports are its published ports, HOSTPORT:PORT/PROTO, at Host's
	// addresses.
	Ports []string `json:"ports,omitempty"`
	// From is the way it was attached: docker (the Docker driver), cni (a
	// runtime through vxnet-cni: podman, containerd, Kubernetes) or attach
	// (`vxnet attach`, the API).
	From  string    `json:"from"`
	ID    string    `json:"id"`
	Since time.Time `json:"since,omitzero"`
}

// The ways an endpoint is attached (EndpointRow.From).
const (
	FromDocker = "docker"
	FromCNI    = "cni"
	FromAttach = "attach"
)

// EndpointFrom tells how an endpoint was attached from its ID: the Docker
// driver's are NODE.docker.ID, a CNI runtime's NODE.NETWORK.cHASH (of its
// container and interface), the others NODE.NETWORK.INODE.
func EndpointFrom(id string) string {
	parts := strings.Split(id, ".")
	switch {
	case len(parts) >= 3 && parts[len(parts)-2] == "docker":
		return FromDocker
	case len(parts) >= 3 && strings.HasPrefix(parts[len(parts)-1], "c") && len(parts[len(parts)-1]) == 17:
		return FromCNI
	}
	return FromAttach
}

// DockerNames maps the names of the networks made through Docker to their
// Docker names.
func DockerNames(nets []NetworkStatus) map[string]string {
	out := map[string]string{}
	for _, n := range nets {
		if n.DockerName != "" {
			out[n.Name] = n.DockerName
		}
	}
	return out
}

// EndpointRows turns endpoints into rows, those of host and network (by
// either name) only when given, without the health network's (vxnet's
// own), sorted by network, host, name and address; docker maps network
// names to Docker names (DockerNames).
func EndpointRows(eps []model.Endpoint, docker map[string]string, host, network string) []EndpointRow {
	out := []EndpointRow{}
	for _, e := range eps {
		dn := docker[e.Network]
		if e.Network == model.HealthNetwork || (host != "" && e.Node != host) || (network != "" && e.Network != network && dn != network) {
			continue
		}
		r := EndpointRow{Name: e.Name, Aliases: e.Aliases, Network: cmp.Or(dn, e.Network), Host: e.Node, IP: AddrText(e.IP), IP6: AddrText(e.IP6), MAC: e.MAC,
			From: EndpointFrom(e.ID), ID: e.ID, Since: e.Since}
		if dn != "" {
			r.NetworkID = e.Network
		}
		for _, p := range e.Ports {
			r.Ports = append(r.Ports, p.String())
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b EndpointRow) int {
		return cmp.Or(cmp.Compare(a.Network, b.Network), cmp.Compare(a.Host, b.Host), cmp.Compare(a.Name, b.Name), cmp.Compare(a.IP, b.IP))
	})
	return out
}

// NetworkCounts counts, per network (not the health network: `vxnet health`
// shows it), the endpoints on self and the live ones elsewhere.
func NetworkCounts(nets []model.Network, eps []model.Endpoint, self string, alive map[string]bool) []NetworkStatus {
	var out []NetworkStatus
	for _, n := range nets {
		if n.Name == model.HealthNetwork {
			continue
		}
		ns := NetworkStatus{Name: n.Name, DockerName: n.DockerName, VNI: n.VNI, Subnet: subnets(n), Encrypted: n.Encrypted}
		for _, e := range eps {
			switch {
			case e.Network != n.Name:
			case e.Node == self:
				ns.Local++
			case alive[e.Node]:
				ns.Remote++
			}
		}
		out = append(out, ns)
	}
	return out
}

// AddrText is an address as text, "" when it is not valid (an IPv6-only
// endpoint's IPv4 address, an IPv4-only one's IPv6 address).
func AddrText(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// subnets names a network's subnets: IPv4, IPv6 or both (comma-separated).
func subnets(n model.Network) string {
	var out []string
	for _, p := range []netip.Prefix{n.Subnet, n.Subnet6} {
		if p.IsValid() {
			out = append(out, p.String())
		}
	}
	return strings.Join(out, ",")
}
