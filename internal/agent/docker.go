package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
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
// this node whose veth Docker itself moves into the container.
type dockerBackend struct {
	a *Agent

	mu       sync.Mutex
	reserved map[netip.Addr]string // addresses handed to Docker, not yet joined
	eps      map[string]docker.Endpoint
}

func newDockerBackend(a *Agent) *dockerBackend {
	return &dockerBackend{a: a, reserved: map[netip.Addr]string{}, eps: map[string]docker.Endpoint{}}
}

// Docker network IDs are per dockerd: each host maps its own IDs to cluster
// network names, in its store.

var _ docker.Backend = (*dockerBackend)(nil)

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
		return model.Network{}, err
	}
	nets, _ := d.a.state.Networks()
	for _, n := range nets {
		if n.Subnet == p {
			return n, nil
		}
	}
	return model.Network{}, fmt.Errorf("no vxnet network has subnet %s", p)
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
	return model.Network{}, fmt.Errorf("docker network %s is not a vxnet network (any more)", id)
}

func (d *dockerBackend) RequestPool(subnet string, v6 bool) (string, error) {
	if v6 {
		return "", fmt.Errorf("IPv6 pools are not supported by vxnet's IPAM yet")
	}
	if subnet == "" {
		return "", fmt.Errorf("vxnet's IPAM needs an explicit --subnet, for example --subnet 172.18.0.0/16")
	}
	p, err := model.ParseSubnet(subnet)
	if err != nil {
		return "", err
	}
	nets, _ := d.a.state.Networks()
	for _, n := range nets {
		if n.Subnet != p && n.Subnet.Overlaps(p) {
			return "", fmt.Errorf("subnet %s overlaps subnet %s of vxnet network %q", p, n.Subnet, n.Name)
		}
	}
	return p.String(), nil
}

func (d *dockerBackend) ReleasePool(string) error { return nil }

func (d *dockerBackend) RequestAddress(pool, address string, gateway bool) (string, error) {
	p, err := model.ParseSubnet(pool)
	if err != nil {
		return "", err
	}
	if gateway {
		// The anycast gateway is the same on every host: nothing to reserve.
		gw := model.FirstHost(p)
		if address != "" {
			if gw, err = netip.ParseAddr(address); err != nil || !p.Contains(gw) {
				return "", fmt.Errorf("invalid gateway %q: want an address inside %s", address, p)
			}
		}
		if n, err := d.networkBySubnet(pool); err == nil && n.Gateway != gw {
			return "", fmt.Errorf("gateway %s differs from the gateway %s of vxnet network %q with subnet %s", gw, n.Gateway, n.Name, p)
		}
		return netip.PrefixFrom(gw, p.Bits()).String(), nil
	}
	n, err := d.networkBySubnet(pool)
	if err != nil {
		return "", err
	}
	d.a.apiMu.Lock()
	defer d.a.apiMu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	used := d.usedLocked(n)
	var ip netip.Addr
	if address != "" {
		if ip, err = netip.ParseAddr(address); err != nil {
			return "", fmt.Errorf("invalid address %q: want an IPv4 address inside %s", address, n.Subnet)
		}
		if err := ipam.CheckStatic(n, ip, used); err != nil {
			return "", err
		}
	} else {
		var rec *cluster.Record
		ip, rec, err = d.a.allocate(n, used)
		if err != nil {
			return "", err
		}
		if rec != nil {
			d.a.gossip.Publish(*rec)
		}
	}
	d.reserved[ip] = "docker-reservation"
	return netip.PrefixFrom(ip, n.Subnet.Bits()).String(), nil
}

// usedLocked lists the addresses taken in a network, reservations included.
func (d *dockerBackend) usedLocked(n model.Network) map[netip.Addr]string {
	used := map[netip.Addr]string{}
	for _, e := range d.a.state.Endpoints() {
		if e.Network == n.Name {
			used[e.IP] = e.ID
		}
	}
	for ip, id := range d.reserved {
		if n.Subnet.Contains(ip) {
			used[ip] = id
		}
	}
	return used
}

func (d *dockerBackend) ReleaseAddress(pool, address string) error {
	ip, err := netip.ParseAddr(address)
	if err != nil {
		if p, perr := netip.ParsePrefix(address); perr == nil {
			ip = p.Addr()
		} else {
			return fmt.Errorf("invalid address %q", address)
		}
	}
	d.mu.Lock()
	delete(d.reserved, ip)
	d.mu.Unlock()
	return nil
}

func (d *dockerBackend) CreateNetwork(dn docker.Network) error {
	if existing, err := d.networkBySubnet(dn.Subnet); err == nil {
		// A network vxnet already has (made with 'vxnet network create' or
		// by Docker on another host): adopt it if the options agree.
		if dn.VNI != 0 && dn.VNI != existing.VNI {
			return fmt.Errorf("subnet %s belongs to vxnet network %q with VNI %d, not %d", dn.Subnet, existing.Name, existing.VNI, dn.VNI)
		}
		return d.a.store.putDockerNetwork(dn.DockerID, existing.Name)
	}
	req := api.NetworkCreate{Name: DockerNetworkName(dn.DockerID), Subnet: dn.Subnet, VNI: dn.VNI, MTU: dn.MTU, Flood: dn.Flood}
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
	if d.a.dockerc != nil {
		go d.a.learnDockerName(dn.DockerID, req.Name)
	}
	return d.a.store.putDockerNetwork(dn.DockerID, req.Name)
}

func (d *dockerBackend) DeleteNetwork(dockerID string) error {
	n, err := d.networkByDockerID(dockerID)
	if err != nil {
		return d.a.store.delDockerNetwork(dockerID) // not ours any more: forget it
	}
	if err := d.a.RemoveNetwork(n.Name, false); err != nil && !api.IsNotFound(err) {
		return err
	}
	return d.a.store.delDockerNetwork(dockerID)
}

func (d *dockerBackend) CreateEndpoint(e docker.Endpoint) (string, error) {
	p, err := netip.ParsePrefix(e.Address)
	if err != nil {
		return "", fmt.Errorf("invalid endpoint address %q", e.Address)
	}
	mac := e.MAC
	if mac == "" {
		mac = ipam.MACFor(p.Addr())
	} else if hw, err := model.ParseMAC(mac); err != nil {
		return "", err
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

func (d *dockerBackend) Join(dockerNetwork, dockerID, sandbox string) (docker.Joined, error) {
	n, err := d.networkByDockerID(dockerNetwork)
	if err != nil {
		return docker.Joined{}, err
	}
	d.mu.Lock()
	e, ok := d.eps[dockerID]
	d.mu.Unlock()
	if !ok {
		return docker.Joined{}, fmt.Errorf("unknown endpoint %s: CreateEndpoint was not called on this host", dockerID)
	}
	p, err := netip.ParsePrefix(e.Address)
	if err != nil {
		return docker.Joined{}, err
	}
	id := dockerEndpointID(d.a.state.Self(), dockerID)
	peer := "vxc" + strings.TrimPrefix(datapath.HostIfName(id), "vxv")
	a := d.a
	a.apiMu.Lock()
	defer a.apiMu.Unlock()
	rec := model.Endpoint{ID: id, Network: n.Name, Node: a.state.Self(), MAC: e.MAC, IP: p.Addr()}
	a.dpMu.Lock()
	spec, err := a.prepareLocked(n)
	if err == nil {
		_, err = a.dp.Attach(datapath.EndpointSpec{ID: id, VNI: n.VNI, IfName: peer, MAC: e.MAC,
			IP: netip.PrefixFrom(p.Addr(), n.Subnet.Bits()), Gateway: n.Gateway, MTU: spec.MTU})
	}
	var r cluster.Record
	if err == nil {
		r, err = a.state.Put(cluster.EndpointKey(id), rec)
	}
	a.dpMu.Unlock()
	if err != nil {
		return docker.Joined{}, fmt.Errorf("join %s to %s: %w", dockerID, n.Name, err)
	}
	d.mu.Lock()
	delete(d.reserved, p.Addr())
	d.mu.Unlock()
	a.gossip.Publish(r)
	a.persistOrLog()
	a.markDirty()
	a.log.Info("docker endpoint joined", "endpoint", id, "network", n.Name, "ip", p.Addr(), "sandbox", sandbox)
	return docker.Joined{SrcName: peer, Gateway: n.Gateway.String()}, nil
}

func (d *dockerBackend) Leave(dockerNetwork, dockerID string) error {
	id := dockerEndpointID(d.a.state.Self(), dockerID)
	d.a.apiMu.Lock()
	defer d.a.apiMu.Unlock()
	if err := d.a.removeEndpoint(id); err != nil {
		return err
	}
	d.a.log.Info("docker endpoint left", "endpoint", id)
	return nil
}

// learnDockerName asks dockerd for the name of a network Docker created
// through this agent and records it in the cluster state.
func (a *Agent) learnDockerName(dockerID, network string) {
	for i := 0; i < 100; i++ {
		time.Sleep(50 * time.Millisecond)
		info, err := a.dockerc.Network(dockerID)
		if err != nil {
			continue
		}
		a.apiMu.Lock()
		n, ok := a.state.Network(network)
		if ok && n.DockerName == "" {
			n.DockerName = info.Name
			if r, err := a.state.Put(cluster.NetworkKey(network), n); err == nil {
				a.gossip.Publish(r)
			}
		}
		a.apiMu.Unlock()
		a.log.Info("docker network named", "network", network, "docker_name", info.Name)
		a.markDirty()
		return
	}
	a.log.Warn("could not learn the docker name of a network; other dockerds will not get it", "network", network)
}

// syncDocker keeps the local dockerd's vxnet networks equal to the cluster's:
// it creates the ones it lacks and removes (empty) ones the cluster dropped.
func (a *Agent) syncDocker() {
	if _, err := os.Stat(a.dockerc.Socket); err != nil {
		return // no dockerd (yet)
	}
	dns, err := a.dockerc.Networks("vxnet")
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
		if err := a.dockerc.CreateNetwork(n.DockerName, n.Subnet.String(), n.Gateway.String(), opts); err != nil {
			a.log.Warn("create docker network", "network", n.Name, "docker_name", n.DockerName, "err", err)
			continue
		}
		a.log.Info("created docker network", "network", n.Name, "docker_name", n.DockerName)
	}
	for subnet, dn := range have {
		if want[subnet] || len(dn.Containers) > 0 {
			continue
		}
		if err := a.dockerc.RemoveNetwork(dn.ID); err != nil && !errors.Is(err, docker.ErrNotFound) {
			a.log.Warn("remove docker network", "docker_name", dn.Name, "err", err)
			continue
		}
		a.log.Info("removed docker network the cluster no longer has", "docker_name", dn.Name)
	}
}
