package docker

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/ipam"
	"github.com/vxnet/vxnet/internal/model"
)

// Driver implements Backend on the agent: Docker networks are cluster
// networks (matched by subnet), Docker endpoints are endpoints of this node
// whose veth Docker itself moves into the container. It only translates:
// addresses, endpoints and networks go through the agent's one path for
// each (Agent). With a Dockerd it also keeps that dockerd's vxnet networks
// equal to the cluster's (Sync) and learns names from it.
type Driver struct {
	agent   Agent
	dockerd Dockerd // nil: none to keep in step
	log     *slog.Logger

	mu  sync.Mutex // a leaf: never held while calling the agent
	eps map[string]Endpoint
}

// Agent is what the driver needs of the agent.
type Agent interface {
	Self() string
	// Networks are the cluster's networks; Network one of them by name.
	Networks() []model.Network
	Network(name string) (model.Network, bool)
	// CreateNetwork and RemoveNetwork go through the agent's network path.
	CreateNetwork(api.NetworkCreate) error
	RemoveNetwork(name string) error
	// DockerNetwork, PutDockerNetwork and DelDockerNetwork keep this
	// host's map of Docker network IDs to cluster networks ("" unknown).
	DockerNetwork(id string) (string, error)
	PutDockerNetwork(id, name string) error
	DelDockerNetwork(id string) error
	// Reserve checks or allocates an address (IPv6: v6) for an endpoint
	// that joins later, and holds it until Unreserve (or the join).
	Reserve(n model.Network, v6 bool, address string) (netip.Addr, error)
	Unreserve(ip netip.Addr)
	// AddEndpoint plugs an endpoint (its container end left in this
	// namespace, named ifname) with its reserved addresses (ip6 invalid:
	// none); HasEndpoint, SetPorts and RemoveEndpoint act on one by ID.
	AddEndpoint(id, network, ifname string, ip, ip6 netip.Addr, mac string) (model.Endpoint, error)
	HasEndpoint(id string) bool
	SetPorts(id string, ports []model.PortMap) error
	RemoveEndpoint(id string) error
	// SetDockerName records a network's Docker name in the cluster state;
	// SetNames an endpoint's container name and aliases.
	SetDockerName(network, name string)
	SetNames(id, name string, aliases []string) error
}

// Dockerd is the part of the local dockerd's API the driver uses.
type Dockerd interface {
	Networks(driver string) ([]NetworkInspect, error)
	Network(idOrName string) (NetworkInspect, error)
	CreateNetwork(n NetworkCreate) error
	RemoveNetwork(idOrName string) error
	Container(id string) (ContainerInfo, error)
}

// NewDriver returns the driver over the agent (dockerd may be nil).
func NewDriver(agent Agent, dockerd Dockerd, log *slog.Logger) *Driver {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{agent: agent, dockerd: dockerd, log: log, eps: map[string]Endpoint{}}
}

// Docker network IDs are per dockerd: each host maps its own IDs to cluster
// network names, in its store.

var _ Backend = (*Driver)(nil)

func invalid(format string, args ...any) error {
	return model.Errorf(model.ErrInvalid, format, args...)
}
func conflict(format string, args ...any) error {
	return model.Errorf(model.ErrConflict, format, args...)
}

// NetworkName names the cluster network of a Docker network.
func NetworkName(dockerID string) string {
	if len(dockerID) > 12 {
		dockerID = dockerID[:12]
	}
	return "docker-" + dockerID
}

// EndpointID names the endpoint of a Docker endpoint on node.
func EndpointID(node, dockerID string) string {
	if len(dockerID) > 16 {
		dockerID = dockerID[:16]
	}
	return node + ".docker." + dockerID
}

// networkBySubnet finds the cluster network of a Docker pool (its IPv4 or
// its IPv6 subnet).
func (d *Driver) networkBySubnet(pool string) (model.Network, error) {
	p, err := model.ParseSubnet(pool)
	if err != nil {
		return model.Network{}, invalid("%w", err)
	}
	nets := d.agent.Networks()
	for _, n := range nets {
		if n.Subnet == p || n.Subnet6 == p {
			return n, nil
		}
	}
	return model.Network{}, model.Errorf(model.ErrNotFound, "no vxnet network has subnet %s", p)
}

func (d *Driver) networkByDockerID(id string) (model.Network, error) {
	name, err := d.agent.DockerNetwork(id)
	if err != nil {
		return model.Network{}, err
	}
	if name == "" {
		name = NetworkName(id)
	}
	if n, ok := d.agent.Network(name); ok {
		return n, nil
	}
	return model.Network{}, model.Errorf(model.ErrNotFound, "docker network %s is not a vxnet network (any more)", id)
}

func (d *Driver) RequestPool(subnet string, v6 bool) (string, error) {
	if subnet == "" && v6 {
		return "", invalid("vxnet's IPAM needs an explicit IPv6 subnet with --ipv6, for example --subnet fd00:1::/64")
	}
	if subnet == "" {
		return "", invalid("vxnet's IPAM needs an explicit --subnet, for example --subnet 172.18.0.0/16")
	}
	p, err := model.ParseSubnet(subnet)
	if err != nil {
		return "", invalid("%w", err)
	}
	if p.Addr().Is6() != v6 {
		return "", invalid("subnet %s is not an %s subnet", p, map[bool]string{true: "IPv6", false: "IPv4"}[v6])
	}
	nets := d.agent.Networks()
	for _, n := range nets {
		for _, have := range []netip.Prefix{n.Subnet, n.Subnet6} {
			if have.IsValid() && have != p && have.Overlaps(p) {
				return "", conflict("subnet %s overlaps subnet %s of vxnet network %q", p, have, n.Name)
			}
		}
	}
	return p.String(), nil
}

func (d *Driver) ReleasePool(string) error { return nil }

func (d *Driver) RequestAddress(pool, address string, gateway bool) (string, error) {
	p, err := model.ParseSubnet(pool)
	if err != nil {
		return "", invalid("%w", err)
	}
	if gateway {
		// The anycast gateway is the same on every host: nothing to reserve.
		gw := model.FirstHost(p)
		if address != "" {
			if gw, err = netip.ParseAddr(address); err != nil || !p.Contains(gw) {
				return "", invalid("invalid gateway %q: want an address inside %s", address, p)
			}
		}
		if n, err := d.networkBySubnet(pool); err == nil {
			have := n.Gateway
			if p.Addr().Is6() {
				have = n.Gateway6
			}
			if have != gw {
				return "", conflict("gateway %s differs from the gateway %s of vxnet network %q with subnet %s", gw, have, n.Name, p)
			}
		}
		return netip.PrefixFrom(gw, p.Bits()).String(), nil
	}
	n, err := d.networkBySubnet(pool)
	if err != nil {
		return "", err
	}
	ip, err := d.agent.Reserve(n, p.Addr().Is6(), address)
	if err != nil {
		return "", err
	}
	return netip.PrefixFrom(ip, p.Bits()).String(), nil
}

func (d *Driver) ReleaseAddress(pool, address string) error {
	ip, err := netip.ParseAddr(address)
	if err != nil {
		p, perr := netip.ParsePrefix(address)
		if perr != nil {
			return invalid("invalid address %q", address)
		}
		ip = p.Addr()
	}
	d.agent.Unreserve(ip)
	return nil
}

func (d *Driver) CreateNetwork(dn Network) error {
	if existing, err := d.networkBySubnet(dn.Subnet); err == nil {
		// A network vxnet already has (made with 'vxnet network create' or
		// by Docker on another host): adopt it if the options agree.
		if dn.VNI != 0 && dn.VNI != existing.VNI {
			return conflict("subnet %s belongs to vxnet network %q with VNI %d, not %d", dn.Subnet, existing.Name, existing.VNI, dn.VNI)
		}
		if dn.Encrypted != existing.Encrypted {
			return conflict("subnet %s belongs to vxnet network %q, which is %s; create the Docker network %s -o %s",
				dn.Subnet, existing.Name, map[bool]string{true: "encrypted", false: "not encrypted"}[existing.Encrypted],
				map[bool]string{true: "with", false: "without"}[existing.Encrypted], OptEncrypted)
		}
		if sub6, _ := model.ParseSubnet(dn.Subnet6); sub6 != existing.Subnet6 {
			return conflict("subnet %s belongs to vxnet network %q, whose IPv6 subnet is %s, not %s", dn.Subnet, existing.Name,
				orNone(existing.Subnet6), orNone(sub6))
		}
		if dn.Internal != existing.Internal {
			return conflict("subnet %s belongs to vxnet network %q, which is %s; create the Docker network %s --internal", dn.Subnet, existing.Name,
				map[bool]string{true: "internal", false: "not internal"}[existing.Internal], map[bool]string{true: "with", false: "without"}[existing.Internal])
		}
		return d.agent.PutDockerNetwork(dn.DockerID, existing.Name)
	}
	req := api.NetworkCreate{Name: NetworkName(dn.DockerID), Subnet: dn.Subnet, Subnet6: dn.Subnet6, VNI: dn.VNI, MTU: dn.MTU,
		Flood: dn.Flood, Internal: dn.Internal, Encrypted: dn.Encrypted, Gateway: bareAddr(dn.Gateway), Gateway6: bareAddr(dn.Gateway6)}
	// Docker does not tell the driver the network's name: it is learnt from
	// dockerd once the network exists, and then other dockerds get it too.
	if err := d.agent.CreateNetwork(req); err != nil {
		return err
	}
	if d.dockerd != nil {
		go d.learnDockerName(dn.DockerID, req.Name)
	}
	return d.agent.PutDockerNetwork(dn.DockerID, req.Name)
}

// bareAddr drops the prefix length Docker may give a gateway.
func bareAddr(s string) string {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr().String()
	}
	return s
}

func orNone(p netip.Prefix) string {
	if !p.IsValid() {
		return "none"
	}
	return p.String()
}

func (d *Driver) DeleteNetwork(dockerID string) error {
	n, err := d.networkByDockerID(dockerID)
	if err != nil {
		return d.agent.DelDockerNetwork(dockerID) // not ours any more: forget it
	}
	if err := d.agent.RemoveNetwork(n.Name); err != nil && !errors.Is(err, model.ErrNotFound) {
		return err
	}
	return d.agent.DelDockerNetwork(dockerID)
}

func (d *Driver) CreateEndpoint(e Endpoint) (string, error) {
	p, err := netip.ParsePrefix(e.Address)
	if err != nil {
		return "", invalid("invalid endpoint address %q", e.Address)
	}
	if e.AddressIPv6 != "" {
		if _, err := netip.ParsePrefix(e.AddressIPv6); err != nil {
			return "", invalid("invalid endpoint IPv6 address %q", e.AddressIPv6)
		}
	}
	mac := e.MAC
	if mac == "" {
		mac = ipam.MACFor(p.Addr())
	} else if hw, err := model.ParseMAC(mac); err != nil {
		return "", invalid("%w", err)
	} else {
		mac = hw.String()
	}
	e.MAC = mac
	d.mu.Lock()
	d.eps[e.DockerID] = e
	d.mu.Unlock()
	return mac, nil
}

func (d *Driver) DeleteEndpoint(dockerNetwork, dockerID string) error {
	d.mu.Lock()
	delete(d.eps, dockerID)
	d.mu.Unlock()
	return nil
}

// Join plugs a Docker endpoint in through the agent's endpoint transaction;
// its container end stays in the host namespace for Docker to move.
func (d *Driver) Join(dockerNetwork, dockerID, sandbox string) (Joined, error) {
	n, err := d.networkByDockerID(dockerNetwork)
	if err != nil {
		return Joined{}, err
	}
	d.mu.Lock()
	e, ok := d.eps[dockerID]
	d.mu.Unlock()
	if !ok {
		return Joined{}, model.Errorf(model.ErrNotFound, "unknown endpoint %s: CreateEndpoint was not called on this host", dockerID)
	}
	p, err := netip.ParsePrefix(e.Address)
	if err != nil {
		return Joined{}, invalid("invalid endpoint address %q", e.Address)
	}
	var ip6 netip.Addr
	if e.AddressIPv6 != "" {
		p6, err := netip.ParsePrefix(e.AddressIPv6)
		if err != nil {
			return Joined{}, invalid("invalid endpoint IPv6 address %q", e.AddressIPv6)
		}
		ip6 = p6.Addr()
	}
	id := EndpointID(d.agent.Self(), dockerID)
	peer := "vxc" + strings.TrimPrefix(datapath.HostIfName(id), "vxv")
	ep, err := d.agent.AddEndpoint(id, n.Name, peer, p.Addr(), ip6, e.MAC)
	if err != nil {
		return Joined{}, err
	}
	d.log.Info("docker endpoint joined", "endpoint", id, "network", n.Name, "ip", ep.IP, "sandbox", sandbox)
	if d.dockerd != nil {
		go d.learnContainerNames(dockerNetwork, dockerID, id)
	}
	j := Joined{SrcName: peer, Gateway: n.Gateway.String()}
	if ep.IP6.IsValid() {
		j.Gateway6 = n.Gateway6.String()
	}
	return j, nil
}

// Publish sets the ports a Docker endpoint publishes (libnetwork calls it
// after Join with `docker run -p` bindings, and with none on the way out).
func (d *Driver) Publish(dockerNetwork, dockerID string, ports []model.PortMap) error {
	id := EndpointID(d.agent.Self(), dockerID)
	if len(ports) == 0 && !d.agent.HasEndpoint(id) {
		return nil // revoking for an endpoint already gone
	}
	return d.agent.SetPorts(id, ports)
}

func (d *Driver) Leave(dockerNetwork, dockerID string) error {
	id := EndpointID(d.agent.Self(), dockerID)
	if err := d.agent.RemoveEndpoint(id); err != nil {
		return err
	}
	d.log.Info("docker endpoint left", "endpoint", id)
	return nil
}

// learnDockerName asks dockerd for the name of a network Docker created
// through this agent and records it in the cluster state.
func (d *Driver) learnDockerName(dockerID, network string) {
	for i := 0; i < 100; i++ {
		time.Sleep(50 * time.Millisecond)
		info, err := d.dockerd.Network(dockerID)
		if err != nil {
			continue
		}
		d.agent.SetDockerName(network, info.Name)
		d.log.Info("docker network named", "network", network, "docker_name", info.Name)
		return
	}
	d.log.Warn("could not learn the docker name of a network; other dockerds will not get it", "network", network)
}

// learnContainerNames asks dockerd which container holds a Docker endpoint
// (it knows once Join has returned) and records the container's name and
// network aliases on the endpoint, for the other hosts' resolvers.
func (d *Driver) learnContainerNames(dockerNetwork, dockerID, id string) {
	for i := 0; i < 100; i++ {
		time.Sleep(50 * time.Millisecond)
		info, err := d.dockerd.Network(dockerNetwork)
		if err != nil {
			continue
		}
		for cid, c := range info.Containers {
			if c.EndpointID != dockerID {
				continue
			}
			name := strings.TrimPrefix(c.Name, "/")
			var aliases []string
			if ci, err := d.dockerd.Container(cid); err == nil {
				for _, nw := range ci.NetworkSettings.Networks {
					if nw.EndpointID == dockerID {
						aliases = nw.Aliases
					}
				}
			}
			// Names that are no DNS label (Docker allows dots) are left out.
			var ok []string
			for _, al := range aliases {
				if model.ValidateHostname("alias", al) == nil && !strings.EqualFold(al, name) && !slices.Contains(ok, al) {
					ok = append(ok, al)
				}
			}
			if model.ValidateHostname("container name", name) != nil {
				d.log.Warn("docker container name is no DNS label; only its aliases resolve", "name", name)
				name = ""
			}
			if err := d.agent.SetNames(id, name, ok); err != nil {
				d.log.Warn("record docker container names", "endpoint", id, "err", err)
			}
			return
		}
	}
	d.log.Warn("could not learn the container of a docker endpoint; it has no name on other hosts", "endpoint", id)
}

// Sync keeps the local dockerd's vxnet networks equal to the cluster's: it
// creates the ones it lacks and removes (empty) ones the cluster dropped.
func (d *Driver) Sync() {
	if d.dockerd == nil {
		return
	}
	dns, err := d.dockerd.Networks("vxnet")
	if errors.Is(err, ErrNoDaemon) {
		return // no dockerd (yet)
	}
	if err != nil {
		d.log.Warn("list docker networks", "err", err)
		return
	}
	nets := d.agent.Networks()
	have := map[string]NetworkInspect{}
	for _, dn := range dns {
		for _, c := range dn.IPAM.Config {
			have[c.Subnet] = dn
		}
	}
	want := map[string]bool{}
	for _, n := range nets {
		if !n.HasIPv4() {
			continue // IPv6-only: Docker's networks need an IPv4 pool
		}
		want[n.Subnet.String()] = true
		if n.Subnet6.IsValid() {
			want[n.Subnet6.String()] = true
		}
		if _, ok := have[n.Subnet.String()]; ok || n.DockerName == "" {
			continue
		}
		opts := map[string]string{OptVNI: strconv.FormatUint(uint64(n.VNI), 10)}
		if n.Flood {
			opts[OptFlood] = "true"
		}
		if n.Encrypted {
			opts[OptEncrypted] = "true"
		}
		nc := NetworkCreate{Name: n.DockerName, Subnet: n.Subnet.String(), Gateway: n.Gateway.String(), Internal: n.Internal, Options: opts}
		if n.Subnet6.IsValid() {
			nc.Subnet6, nc.Gateway6 = n.Subnet6.String(), n.Gateway6.String()
		}
		if err := d.dockerd.CreateNetwork(nc); err != nil {
			d.log.Warn("create docker network", "network", n.Name, "docker_name", n.DockerName, "err", err)
			continue
		}
		d.log.Info("created docker network", "network", n.Name, "docker_name", n.DockerName)
	}
	for subnet, dn := range have {
		if want[subnet] || len(dn.Containers) > 0 {
			continue
		}
		if err := d.dockerd.RemoveNetwork(dn.ID); err != nil && !errors.Is(err, ErrNotFound) {
			d.log.Warn("remove docker network", "docker_name", dn.Name, "err", err)
			continue
		}
		d.log.Info("removed docker network the cluster no longer has", "docker_name", dn.Name)
	}
}
