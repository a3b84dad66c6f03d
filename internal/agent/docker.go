package agent

import (
	"net/netip"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/docker"
	"github.com/vxnet/vxnet/internal/model"
)

// The Docker network and IPAM driver (docker.Driver) runs beside the
// agent; the agent gives it its networks, addresses and endpoints
// (dockerAgent).

// reservedForDocker marks an address the IPAM handed to Docker for an
// endpoint that has not joined yet.
const reservedForDocker = "docker-reservation"

// DockerDriver returns the Docker driver over this agent (cmd/vxnet serves
// it on the plugin socket).
func (a *Agent) DockerDriver() *docker.Driver { return a.docker }

// dockerAgent is the agent as the Docker driver sees it.
type dockerAgent Agent

func (d *dockerAgent) a() *Agent    { return (*Agent)(d) }
func (d *dockerAgent) Self() string { return d.state.Self() }

func (d *dockerAgent) Networks() []model.Network {
	nets, _ := d.state.Networks()
	return nets
}

func (d *dockerAgent) Network(name string) (model.Network, bool) { return d.state.Network(name) }

func (d *dockerAgent) CreateNetwork(r api.NetworkCreate) error {
	_, err := d.a().createNetwork(r, "")
	return err
}

func (d *dockerAgent) RemoveNetwork(name string) error         { return d.a().RemoveNetwork(name, false) }
func (d *dockerAgent) DockerNetwork(id string) (string, error) { return d.store.dockerNetwork(id) }
func (d *dockerAgent) PutDockerNetwork(id, name string) error {
	return d.store.putDockerNetwork(id, name)
}
func (d *dockerAgent) DelDockerNetwork(id string) error { return d.store.delDockerNetwork(id) }

func (d *dockerAgent) AddEndpoint(id, network, ifname string, ip, ip6 netip.Addr, mac string) (model.Endpoint, error) {
	req := endpointRequest{ID: id, Network: network, IfName: ifname, IP: ip.String(), MAC: mac, Reserved: true}
	if ip6.IsValid() {
		req.IP6 = ip6.String()
	}
	res, err := d.a().addEndpoint(req)
	return res.Endpoint, err
}

func (d *dockerAgent) HasEndpoint(id string) bool {
	_, ok := d.a().endpoint(id)
	return ok
}

func (d *dockerAgent) SetPorts(id string, ports []model.PortMap) error {
	return d.a().setPorts(id, ports)
}

func (d *dockerAgent) RemoveEndpoint(id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.a().removeEndpointLocked(id)
}

func (d *dockerAgent) SetNames(id, name string, aliases []string) error {
	return d.a().setNames(id, name, aliases)
}

// SetDockerName records the Docker name of a network made through this
// host's dockerd, so the other dockerds get it too.
func (d *dockerAgent) SetDockerName(network, name string) {
	d.mu.Lock()
	n, ok := d.state.Network(network)
	if ok && n.DockerName == "" {
		n.DockerName = name
		if r, err := d.state.PutFormat(cluster.NetworkKey(network), n, cluster.NetworkFormat(n)); err == nil {
			d.repl.Publish(r)
		}
	}
	d.mu.Unlock()
	d.a().Resync()
}

// Reserve checks or allocates an address (IPv6: v6) for a Docker endpoint
// that will join later, and holds it until then (or until Docker releases
// it).
func (d *dockerAgent) Reserve(n model.Network, v6 bool, address string) (netip.Addr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v6 && !n.Subnet6.IsValid() {
		return netip.Addr{}, invalid("network %s has no IPv6 subnet", n.Name)
	}
	if !v6 && !n.HasIPv4() {
		return netip.Addr{}, invalid("network %s is IPv6-only", n.Name)
	}
	used, _ := d.a().usedLocked(n)
	b := &blocks{a: d.a()}
	ip, err := d.a().address(n, v6, address, false, used, b)
	d.repl.Publish(b.recs...)
	if err == nil {
		d.own.reserved[ip] = reservedForDocker
	}
	return ip, err
}

func (d *dockerAgent) Unreserve(ip netip.Addr) {
	d.mu.Lock()
	delete(d.own.reserved, ip)
	d.mu.Unlock()
}
