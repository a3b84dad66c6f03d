package agent

import (
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/docker"
	"github.com/vxnet/vxnet/internal/ipam"
	"github.com/vxnet/vxnet/internal/model"
)

// dockerBackend implements docker.Backend on the agent: Docker networks are
// cluster networks (matched by subnet), Docker endpoints are endpoints of
// this node whose veth Docker itself moves into the container. It only
// translates: addresses, endpoints and networks go through the agent's one
// path for each.
type dockerBackend struct {
	a *Agent

	mu  sync.Mutex // a leaf: taken after a.mu, never before
	eps map[string]docker.Endpoint
}

func newDockerBackend(a *Agent) *dockerBackend {
	return &dockerBackend{a: a, eps: map[string]docker.Endpoint{}}
}

// Docker network IDs are per dockerd: each host maps its own IDs to cluster
// network names, in its store.

var _ docker.Backend = (*dockerBackend)(nil)

// reservedForDocker marks an address the IPAM handed to Docker for an
// endpoint that has not joined yet.
const reservedForDocker = "docker-reservation"

// DockerNetworkName names the cluster network of a Docker network.
func DockerNetworkName(dockerID string) string {
	if len(dockerID) > 12 {
		dockerID = dockerID[:12]
	}
	return "docker-" + dockerID
}

func dockerEndpointID(node, dockerID string) string {
	if len(dockerID) > 16 {
		dockerID = dockerID[:16]
	}
	return node + ".docker." + dockerID
}

// networkBySubnet finds the cluster network of a Docker pool.
func (d *dockerBackend) networkBySubnet(pool string) (model.Network, error) {
	p, err := model.ParseSubnet(pool)
	if err != nil {
		return model.Network{}, invalid("%w", err)
	}
	nets, _ := d.a.state.Networks()
	for _, n := range nets {
		if n.Subnet == p {
			return n, nil
		}
	}
	return model.Network{}, model.Errorf(model.ErrNotFound, "no vxnet network has subnet %s", p)
}

func (d *dockerBackend) networkByDockerID(id string) (model.Network, error) {
	name, err := d.a.store.dockerNetwork(id)
	if err != nil {
		return model.Network{}, err
	}
	if name == "" {
		name = DockerNetworkName(id)
	}
	if n, ok := d.a.state.Network(name); ok {
		return n, nil
	}
	return model.Network{}, model.Errorf(model.ErrNotFound, "docker network %s is not a vxnet network (any more)", id)
}

func (d *dockerBackend) RequestPool(subnet string, v6 bool) (string, error) {
	if v6 {
		return "", invalid("IPv6 pools are not supported by vxnet's IPAM yet")
	}
	if subnet == "" {
		return "", invalid("vxnet's IPAM needs an explicit --subnet, for example --subnet 172.18.0.0/16")
	}
	p, err := model.ParseSubnet(subnet)
	if err != nil {
		return "", invalid("%w", err)
	}
	nets, _ := d.a.state.Networks()
	for _, n := range nets {
		if n.Subnet != p && n.Subnet.Overlaps(p) {
			return "", conflict("subnet %s overlaps subnet %s of vxnet network %q", p, n.Subnet, n.Name)
		}
	}
	return p.String(), nil
}

func (d *dockerBackend) ReleasePool(string) error { return nil }

func (d *dockerBackend) RequestAddress(pool, address string, gateway bool) (string, error) {
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
		if n, err := d.networkBySubnet(pool); err == nil && n.Gateway != gw {
			return "", conflict("gateway %s differs from the gateway %s of vxnet network %q with subnet %s", gw, n.Gateway, n.Name, p)
		}
		return netip.PrefixFrom(gw, p.Bits()).String(), nil
	}
	n, err := d.networkBySubnet(pool)
	if err != nil {
		return "", err
	}
	ip, err := d.a.reserve(n, address)
	if err != nil {
		return "", err
	}
	return netip.PrefixFrom(ip, n.Subnet.Bits()).String(), nil
}

func (d *dockerBackend) ReleaseAddress(pool, address string) error {
	ip, err := netip.ParseAddr(address)
	if err != nil {
		p, perr := netip.ParsePrefix(address)
		if perr != nil {
			return invalid("invalid address %q", address)
		}
		ip = p.Addr()
	}
	d.a.unreserve(ip)
	return nil
}

func (d *dockerBackend) CreateNetwork(dn docker.Network) error {
	if existing, err := d.networkBySubnet(dn.Subnet); err == nil {
		// A network vxnet already has (made with 'vxnet network create' or
		// by Docker on another host): adopt it if the options agree.
		if dn.VNI != 0 && dn.VNI != existing.VNI {
			return conflict("subnet %s belongs to vxnet network %q with VNI %d, not %d", dn.Subnet, existing.Name, existing.VNI, dn.VNI)
		}
		if dn.Internal != existing.Internal {
			return conflict("subnet %s belongs to vxnet network %q, which is %s; create the Docker network %s --internal", dn.Subnet, existing.Name,
				map[bool]string{true: "internal", false: "not internal"}[existing.Internal], map[bool]string{true: "with", false: "without"}[existing.Internal])
		}
		return d.a.store.putDockerNetwork(dn.DockerID, existing.Name)
	}
	req := api.NetworkCreate{Name: DockerNetworkName(dn.DockerID), Subnet: dn.Subnet, VNI: dn.VNI, MTU: dn.MTU, Flood: dn.Flood, Internal: dn.Internal}
	if dn.Gateway != "" {
		gw := dn.Gateway
		if p, err := netip.ParsePrefix(gw); err == nil {
			gw = p.Addr().String()
		}
		req.Gateway = gw
	}
	// Docker does not tell the driver the network's name: it is learnt from
	// dockerd once the network exists, and then other dockerds get it too.
	if _, err := d.a.createNetwork(req, ""); err != nil {
		return err
	}
	if d.a.dockerd != nil {
		go d.a.learnDockerName(dn.DockerID, req.Name)
	}
	return d.a.store.putDockerNetwork(dn.DockerID, req.Name)
}

func (d *dockerBackend) DeleteNetwork(dockerID string) error {
	n, err := d.networkByDockerID(dockerID)
	if err != nil {
		return d.a.store.delDockerNetwork(dockerID) // not ours any more: forget it
	}
	if err := d.a.RemoveNetwork(n.Name, false); err != nil && !errors.Is(err, model.ErrNotFound) {
		return err
	}
	return d.a.store.delDockerNetwork(dockerID)
}

func (d *dockerBackend) CreateEndpoint(e docker.Endpoint) (string, error) {
	p, err := netip.ParsePrefix(e.Address)
	if err != nil {
		return "", invalid("invalid endpoint address %q", e.Address)
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

func (d *dockerBackend) DeleteEndpoint(dockerNetwork, dockerID string) error {
	d.mu.Lock()
	delete(d.eps, dockerID)
	d.mu.Unlock()
	return nil
}

// Join plugs a Docker endpoint in through the agent's endpoint transaction;
// its container end stays in the host namespace for Docker to move.
func (d *dockerBackend) Join(dockerNetwork, dockerID, sandbox string) (docker.Joined, error) {
	n, err := d.networkByDockerID(dockerNetwork)
	if err != nil {
		return docker.Joined{}, err
	}
	d.mu.Lock()
	e, ok := d.eps[dockerID]
	d.mu.Unlock()
	if !ok {
		return docker.Joined{}, model.Errorf(model.ErrNotFound, "unknown endpoint %s: CreateEndpoint was not called on this host", dockerID)
	}
	p, err := netip.ParsePrefix(e.Address)
	if err != nil {
		return docker.Joined{}, invalid("invalid endpoint address %q", e.Address)
	}
	id := dockerEndpointID(d.a.state.Self(), dockerID)
	peer := "vxc" + strings.TrimPrefix(datapath.HostIfName(id), "vxv")
	res, err := d.a.addEndpoint(endpointRequest{ID: id, Network: n.Name, IfName: peer,
		IP: p.Addr().String(), MAC: e.MAC, Reserved: true})
	if err != nil {
		return docker.Joined{}, err
	}
	d.a.log.Info("docker endpoint joined", "endpoint", id, "network", n.Name, "ip", res.Endpoint.IP, "sandbox", sandbox)
	if d.a.dockerd != nil {
		go d.a.learnContainerNames(dockerNetwork, dockerID, id)
	}
	return docker.Joined{SrcName: peer, Gateway: n.Gateway.String()}, nil
}

// Publish sets the ports a Docker endpoint publishes (libnetwork calls it
// after Join with `docker run -p` bindings, and with none on the way out).
func (d *dockerBackend) Publish(dockerNetwork, dockerID string, ports []model.PortMap) error {
	id := dockerEndpointID(d.a.state.Self(), dockerID)
	if len(ports) == 0 {
		if _, ok := d.a.endpoint(id); !ok {
			return nil // revoking for an endpoint already gone
		}
	}
	return d.a.setPorts(id, ports)
}

func (d *dockerBackend) Leave(dockerNetwork, dockerID string) error {
	id := dockerEndpointID(d.a.state.Self(), dockerID)
	d.a.mu.Lock()
	defer d.a.mu.Unlock()
	if err := d.a.removeEndpointLocked(id); err != nil {
		return err
	}
	d.a.log.Info("docker endpoint left", "endpoint", id)
	return nil
}

// reserve checks or allocates an address for a Docker endpoint that will
// join later, and holds it until then (or until Docker releases it).
func (a *Agent) reserve(n model.Network, address string) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	used, _ := a.usedLocked(n)
	ip, recs, err := a.address(n, endpointRequest{IP: address}, used)
	a.repl.Publish(recs...)
	if err != nil {
		return netip.Addr{}, err
	}
	a.reserved[ip] = reservedForDocker
	return ip, nil
}

func (a *Agent) unreserve(ip netip.Addr) {
	a.mu.Lock()
	delete(a.reserved, ip)
	a.mu.Unlock()
}

// learnDockerName asks dockerd for the name of a network Docker created
// through this agent and records it in the cluster state.
func (a *Agent) learnDockerName(dockerID, network string) {
	for i := 0; i < 100; i++ {
		time.Sleep(50 * time.Millisecond)
		info, err := a.dockerd.Network(dockerID)
		if err != nil {
			continue
		}
		a.mu.Lock()
		n, ok := a.state.Network(network)
		if ok && n.DockerName == "" {
			n.DockerName = info.Name
			if r, err := a.state.Put(cluster.NetworkKey(network), n); err == nil {
				a.repl.Publish(r)
			}
		}
		a.mu.Unlock()
		a.log.Info("docker network named", "network", network, "docker_name", info.Name)
		a.markDirty()
		return
	}
	a.log.Warn("could not learn the docker name of a network; other dockerds will not get it", "network", network)
}

// learnContainerNames asks dockerd which container holds a Docker endpoint
// (it knows once Join has returned) and records the container's name and
// network aliases on the endpoint, for the other hosts' resolvers.
func (a *Agent) learnContainerNames(dockerNetwork, dockerID, id string) {
	for i := 0; i < 100; i++ {
		time.Sleep(50 * time.Millisecond)
		info, err := a.dockerd.Network(dockerNetwork)
		if err != nil {
			continue
		}
		for cid, c := range info.Containers {
			if c.EndpointID != dockerID {
				continue
			}
			name := strings.TrimPrefix(c.Name, "/")
			var aliases []string
			if ci, err := a.dockerd.Container(cid); err == nil {
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
				a.log.Warn("docker container name is no DNS label; only its aliases resolve", "name", name)
				name = ""
			}
			if err := a.setNames(id, name, ok); err != nil {
				a.log.Warn("record docker container names", "endpoint", id, "err", err)
			}
			return
		}
	}
	a.log.Warn("could not learn the container of a docker endpoint; it has no name on other hosts", "endpoint", id)
}

// syncDocker keeps the local dockerd's vxnet networks equal to the cluster's:
// it creates the ones it lacks and removes (empty) ones the cluster dropped.
func (a *Agent) syncDocker() {
	dns, err := a.dockerd.Networks("vxnet")
	if errors.Is(err, docker.ErrNoDaemon) {
		return // no dockerd (yet)
	}
	if err != nil {
		a.log.Warn("list docker networks", "err", err)
		return
	}
	nets, _ := a.state.Networks()
	have := map[string]docker.NetworkInfo{}
	for _, dn := range dns {
		for _, c := range dn.IPAM.Config {
			have[c.Subnet] = dn
		}
	}
	want := map[string]bool{}
	for _, n := range nets {
		want[n.Subnet.String()] = true
		if _, ok := have[n.Subnet.String()]; ok || n.DockerName == "" {
			continue
		}
		opts := map[string]string{docker.OptVNI: strconv.FormatUint(uint64(n.VNI), 10)}
		if n.Flood {
			opts[docker.OptFlood] = "true"
		}
		if err := a.dockerd.CreateNetwork(n.DockerName, n.Subnet.String(), n.Gateway.String(), n.Internal, opts); err != nil {
			a.log.Warn("create docker network", "network", n.Name, "docker_name", n.DockerName, "err", err)
			continue
		}
		a.log.Info("created docker network", "network", n.Name, "docker_name", n.DockerName)
	}
	for subnet, dn := range have {
		if want[subnet] || len(dn.Containers) > 0 {
			continue
		}
		if err := a.dockerd.RemoveNetwork(dn.ID); err != nil && !errors.Is(err, docker.ErrNotFound) {
			a.log.Warn("remove docker network", "docker_name", dn.Name, "err", err)
			continue
		}
		a.log.Info("removed docker network the cluster no longer has", "docker_name", dn.Name)
	}
}
