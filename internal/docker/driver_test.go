package docker

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/model"
)

// agentFake keeps what the driver asks of the agent.
type agentFake struct {
	mu       sync.Mutex
	networks map[string]model.Network
	docker   map[string]string // Docker network ID -> cluster network
	reserved map[netip.Addr]bool
	eps      map[string]model.Endpoint
	ports    map[string][]model.PortMap
	named    map[string]string // network -> Docker name
}

func newAgentFake() *agentFake {
	return &agentFake{networks: map[string]model.Network{}, docker: map[string]string{}, reserved: map[netip.Addr]bool{},
		eps: map[string]model.Endpoint{}, ports: map[string][]model.PortMap{}, named: map[string]string{}}
}

func (f *agentFake) Self() string { return "h1" }
func (f *agentFake) Networks() []model.Network {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []model.Network
	for _, n := range f.networks {
		out = append(out, n)
	}
	return out
}
func (f *agentFake) Network(name string) (model.Network, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.networks[name]
	return n, ok
}
func (f *agentFake) CreateNetwork(r api.NetworkCreate) error {
	n := model.Network{Name: r.Name, Subnet: netip.MustParsePrefix(r.Subnet), VNI: r.VNI, Internal: r.Internal}
	n.Normalize()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.networks[r.Name] = n
	return nil
}
func (f *agentFake) RemoveNetwork(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.networks[name]; !ok {
		return model.Errorf(model.ErrNotFound, "unknown network %q", name)
	}
	delete(f.networks, name)
	return nil
}
func (f *agentFake) DockerNetwork(id string) (string, error) { return f.docker[id], nil }
func (f *agentFake) PutDockerNetwork(id, name string) error  { f.docker[id] = name; return nil }
func (f *agentFake) DelDockerNetwork(id string) error        { delete(f.docker, id); return nil }
func (f *agentFake) Reserve(n model.Network, v6 bool, address string) (netip.Addr, error) {
	ip := n.Gateway.Next()
	if v6 {
		ip = n.Gateway6.Next()
	}
	if address != "" {
		ip = netip.MustParseAddr(address)
	}
	if f.reserved[ip] {
		return netip.Addr{}, model.Errorf(model.ErrConflict, "address %s is in use", ip)
	}
	f.reserved[ip] = true
	return ip, nil
}
func (f *agentFake) Unreserve(ip netip.Addr) { delete(f.reserved, ip) }
func (f *agentFake) AddEndpoint(id, network, ifname string, ip, ip6 netip.Addr, mac string) (model.Endpoint, error) {
	e := model.Endpoint{ID: id, Network: network, Node: "h1", IP: ip, IP6: ip6, MAC: mac}
	f.eps[id] = e
	return e, nil
}
func (f *agentFake) HasEndpoint(id string) bool { _, ok := f.eps[id]; return ok }
func (f *agentFake) SetPorts(id string, ports []model.PortMap) error {
	f.ports[id] = ports
	return nil
}
func (f *agentFake) RemoveEndpoint(id string) error {
	if _, ok := f.eps[id]; !ok {
		return model.Errorf(model.ErrNotFound, "no endpoint %s", id)
	}
	delete(f.eps, id)
	return nil
}
func (f *agentFake) SetDockerName(network, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.named[network] = name
}
func (f *agentFake) SetNames(string, string, []string) error { return nil }

// TestDriver walks a Docker network's life through the driver: the pool
// and gateway, the network (new, or a vxnet network adopted by subnet), an
// endpoint's address, MAC, join, published ports and leave, and the
// network's removal; bad input is refused with its reason.
func TestDriver(t *testing.T) {
	a := newAgentFake()
	d := NewDriver(a, nil, nil)
	if _, err := d.RequestPool("", false); err == nil || !strings.Contains(err.Error(), "explicit --subnet") {
		t.Fatalf("no subnet: %v", err)
	}
	if _, err := d.RequestPool("10.9.0.0/24", true); err == nil || !strings.Contains(err.Error(), "IPv6") {
		t.Fatalf("v6 pool: %v", err)
	}
	pool, err := d.RequestPool("10.9.0.0/24", false)
	if err != nil || pool != "10.9.0.0/24" {
		t.Fatalf("pool %q %v", pool, err)
	}
	if gw, err := d.RequestAddress(pool, "", true); err != nil || gw != "10.9.0.1/24" {
		t.Fatalf("gateway %q %v", gw, err)
	}
	if err := d.CreateNetwork(Network{DockerID: "0123456789abcdef", Subnet: pool}); err != nil {
		t.Fatal(err)
	}
	name := NetworkName("0123456789abcdef")
	if _, ok := a.networks[name]; !ok || a.docker["0123456789abcdef"] != name {
		t.Fatalf("network %s not made: %v %v", name, a.networks, a.docker)
	}
	// Another subnet overlapping it is refused; the same subnet is adopted.
	if _, err := d.RequestPool("10.9.0.0/16", false); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("overlapping pool: %v", err)
	}
	if err := d.CreateNetwork(Network{DockerID: "other", Subnet: pool, Internal: true}); !errors.Is(err, model.ErrConflict) || !strings.Contains(err.Error(), "--internal") {
		t.Fatalf("adopting with another internal flag: %v", err)
	}
	if err := d.CreateNetwork(Network{DockerID: "other", Subnet: pool}); err != nil || a.docker["other"] != name {
		t.Fatalf("adopting by subnet: %v %v", err, a.docker)
	}
	addr, err := d.RequestAddress(pool, "", false)
	if err != nil || addr != "10.9.0.2/24" {
		t.Fatalf("address %q %v", addr, err)
	}
	if _, err := d.CreateEndpoint(Endpoint{DockerID: "ep1", Address: addr, MAC: "zz"}); !errors.Is(err, model.ErrInvalid) {
		t.Fatalf("bad MAC: %v", err)
	}
	mac, err := d.CreateEndpoint(Endpoint{DockerID: "ep1", Address: addr})
	if err != nil || mac == "" {
		t.Fatalf("endpoint: %q %v", mac, err)
	}
	if _, err := d.Join("0123456789abcdef", "nope", "sb"); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("join of an endpoint never created: %v", err)
	}
	j, err := d.Join("0123456789abcdef", "ep1", "sb")
	if err != nil || !strings.HasPrefix(j.SrcName, "vxc") || j.Gateway != "10.9.0.1" {
		t.Fatalf("join %+v %v", j, err)
	}
	id := EndpointID("h1", "ep1")
	if e, ok := a.eps[id]; !ok || e.IP != netip.MustParseAddr("10.9.0.2") || e.MAC != mac {
		t.Fatalf("endpoint %s: %+v", id, a.eps)
	}
	ports := []model.PortMap{{Proto: "tcp", HostPort: 8080, Port: 80}}
	if err := d.Publish("0123456789abcdef", "ep1", ports); err != nil || !slices.Equal(a.ports[id], ports) {
		t.Fatalf("publish: %v %v", err, a.ports)
	}
	if err := d.Leave("0123456789abcdef", "ep1"); err != nil || a.HasEndpoint(id) {
		t.Fatalf("leave: %v", err)
	}
	if err := d.Publish("0123456789abcdef", "ep1", nil); err != nil {
		t.Fatalf("revoking the ports of an endpoint gone: %v", err)
	}
	if err := d.ReleaseAddress(pool, addr); err != nil || a.reserved[netip.MustParseAddr("10.9.0.2")] {
		t.Fatalf("release: %v %v", err, a.reserved)
	}
	if err := d.DeleteNetwork("0123456789abcdef"); err != nil || len(a.networks) != 0 {
		t.Fatalf("delete: %v %v", err, a.networks)
	}
	if err := d.DeleteNetwork("other"); err != nil || len(a.docker) != 0 {
		t.Fatalf("delete of a network already gone: %v %v", err, a.docker)
	}
}
