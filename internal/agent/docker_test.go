package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/docker"
	"github.com/vxnet/vxnet/internal/ipam"
	"github.com/vxnet/vxnet/internal/model"
)

const dockerNet = "4b1d0000000000000000000000000000000000000000000000000000000000aa"

// dockerRun replays libnetwork's calls for `docker run --net N [--ip IP]`
// up to Join and returns the endpoint ID it used.
func dockerRun(t *testing.T, d *docker.Driver, network, pool, ip, epID string) (docker.Joined, string, error) {
	t.Helper()
	addr, err := d.RequestAddress(pool, ip, false)
	if err != nil {
		return docker.Joined{}, "", err
	}
	mac, err := d.CreateEndpoint(docker.Endpoint{DockerNetwork: network, DockerID: epID, Address: addr})
	if err != nil {
		return docker.Joined{}, addr, err
	}
	if want := ipam.MACFor(netip.MustParsePrefix(addr).Addr()); mac != want {
		t.Errorf("mac %s, want %s (derived from %s)", mac, want, addr)
	}
	j, err := d.Join(network, epID, "/var/run/docker/netns/x")
	return j, addr, err
}

func TestDockerEndpointPath(t *testing.T) {
	b := newBus()
	dd := newFakeDockerd()
	h1 := newNode(t, b, "h1", 1, "", withDockerd(dd))
	h2 := newNode(t, b, "h2", 2, "")
	if _, err := h2.repl.(Joiner).Join(nil); err != nil {
		t.Fatal(err)
	}
	d := h1.docker

	pool, err := d.RequestPool("172.18.0.0/16", false)
	if err != nil || pool != "172.18.0.0/16" {
		t.Fatalf("pool %q, %v", pool, err)
	}
	gw, err := d.RequestAddress(pool, "", true)
	if err != nil || gw != "172.18.0.1/16" {
		t.Fatalf("gateway %q, %v", gw, err)
	}
	dd.add(dockerNet, "vxlan-net", pool)
	if err := d.CreateNetwork(docker.Network{DockerID: dockerNet, Subnet: pool, Gateway: gw}); err != nil {
		t.Fatal(err)
	}
	name := docker.NetworkName(dockerNet)
	n, ok := h2.state.Network(name)
	if !ok || n.Subnet.String() != pool {
		t.Fatalf("h2 has no cluster network %s: %+v", name, n)
	}
	// The Docker name is learnt from dockerd and spread.
	eventually(t, "the docker name on h2", func() bool {
		n, _ := h2.state.Network(name)
		return n.DockerName == "vxlan-net"
	})

	j, addr, err := dockerRun(t, d, dockerNet, pool, "172.18.0.11", "ep1")
	if err != nil {
		t.Fatal(err)
	}
	id := docker.EndpointID("h1", "ep1")
	if addr != "172.18.0.11/16" || j.Gateway != "172.18.0.1" || j.SrcName != "vxc"+strings.TrimPrefix(datapath.HostIfName(id), "vxv") {
		t.Errorf("joined %+v at %s", j, addr)
	}
	// One path: the same record, port and local entry as an attach.
	if e, ok := h2.Agent.endpoint(id); !ok || e.IP != netip.MustParseAddr("172.18.0.11") || e.Node != "h1" {
		t.Errorf("h2 sees %+v", e)
	}
	if got := portIDs(observe(t, h1.dp)); !slices.Equal(got, []string{id}) {
		t.Errorf("ports %v", got)
	}
	if le := h1.own.locals[id]; le.Netns != "" || le.IfName != j.SrcName {
		t.Errorf("local entry %+v", le)
	}
	if len(h1.own.reserved) != 0 {
		t.Errorf("reservation kept after join: %v", h1.own.reserved)
	}

	// The address is taken for every front door, on every host.
	_, err = h2.Attach(api.AttachRequest{Network: name, Netns: netns(t, "x"), IP: "172.18.0.11"})
	wantErr(t, err, model.ErrConflict, "address 172.18.0.11 is already in use on network "+name+" by endpoint "+id)
	_, _, err = dockerRun(t, d, dockerNet, pool, "172.18.0.11", "ep2")
	wantErr(t, err, model.ErrConflict, "address 172.18.0.11 is already in use on network "+name+" by endpoint "+id)

	// A reserved address is taken too until Docker joins or releases it.
	r, err := d.RequestAddress(pool, "", false)
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParsePrefix(r).Addr()
	_, err = h1.Attach(api.AttachRequest{Network: name, Netns: netns(t, "y"), IP: ip.String()})
	wantErr(t, err, model.ErrConflict, fmt.Sprintf("address %s is already in use on network %s by endpoint %s", ip, name, reservedForDocker))
	if err := d.ReleaseAddress(pool, r); err != nil {
		t.Fatal(err)
	}
	mustAttach(t, h1, api.AttachRequest{Network: name, Netns: netns(t, "y"), IP: ip.String()})

	// The container's name and aliases are learnt from dockerd after Join
	// and spread: names that are no DNS label are left out.
	dd.mu.Lock()
	n2 := dd.networks[dockerNet]
	n2.Containers = map[string]struct{ Name, EndpointID string }{"cid1": {Name: "c1", EndpointID: "ep1"}}
	dd.networks[dockerNet] = n2
	ci := docker.ContainerInfo{ID: "cid1", Name: "/c1"}
	ci.NetworkSettings.Networks = map[string]struct {
		EndpointID string
		Aliases    []string
	}{"vxlan-net": {EndpointID: "ep1", Aliases: []string{"web", "c1", "my.dotted", "cid1"}}}
	dd.containers = map[string]docker.ContainerInfo{"cid1": ci}
	dd.mu.Unlock()
	eventually(t, "the container name on h2", func() bool {
		e, _ := h2.Agent.endpoint(id)
		return e.Name == "c1" && slices.Equal(e.Aliases, []string{"web", "cid1"})
	})
	// -p: libnetwork publishes after Join and revokes before Leave.
	if err := d.Publish(dockerNet, "ep1", []model.PortMap{{Proto: "tcp", HostPort: 8080, Port: 80}}); err != nil {
		t.Fatal(err)
	}
	if e, _ := h2.Agent.endpoint(id); len(e.Ports) != 1 || e.Ports[0].HostPort != 8080 {
		t.Errorf("h2 sees ports %v", e.Ports)
	}
	_, _, err = dockerRun(t, d, dockerNet, pool, "", "ep3")
	if err != nil {
		t.Fatal(err)
	}
	err = d.Publish(dockerNet, "ep3", []model.PortMap{{Proto: "tcp", HostPort: 8080, Port: 81}})
	wantErr(t, err, model.ErrConflict, "host port 8080/tcp is already published on this host by endpoint "+id)
	for range 2 {
		if err := d.Publish(dockerNet, "ep1", nil); err != nil {
			t.Fatal(err)
		}
	}
	if e, _ := h2.Agent.endpoint(id); len(e.Ports) != 0 {
		t.Errorf("ports after revoke: %v", e.Ports)
	}
	// Leave: record and port go; a second Leave is no error.
	for range 2 {
		if err := d.Leave(dockerNet, "ep1"); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := h2.Agent.endpoint(id); ok {
		t.Error("h2 still has the endpoint after Leave")
	}
	if slices.Contains(portIDs(observe(t, h1.dp)), id) {
		t.Error("port left after Leave")
	}
	if err := d.DeleteEndpoint(dockerNet, "ep1"); err != nil {
		t.Fatal(err)
	}
}

// TestDockerDualStack: a network made with --ipv6 through the IPAM driver
// (an IPv4 and an IPv6 pool): the endpoint holds an address of each, the
// join gives both gateways, the other host sees both, and the IPv6
// address is taken cluster-wide like the IPv4 one.
func TestDockerDualStack(t *testing.T) {
	b := newBus()
	h1 := newNode(t, b, "h1", 1, "")
	h2 := newNode(t, b, "h2", 2, "")
	if _, err := h2.repl.(Joiner).Join(nil); err != nil {
		t.Fatal(err)
	}
	d := h1.docker
	pool, err := d.RequestPool("172.19.0.0/16", false)
	if err != nil {
		t.Fatal(err)
	}
	pool6, err := d.RequestPool("fd00:19::/64", true)
	if err != nil || pool6 != "fd00:19::/64" {
		t.Fatalf("IPv6 pool %q, %v", pool6, err)
	}
	gw6, err := d.RequestAddress(pool6, "", true)
	if err != nil || gw6 != "fd00:19::1/64" {
		t.Fatalf("IPv6 gateway %q, %v", gw6, err)
	}
	if err := d.CreateNetwork(docker.Network{DockerID: dockerNet, Subnet: pool, Subnet6: pool6, Gateway6: gw6}); err != nil {
		t.Fatal(err)
	}
	name := docker.NetworkName(dockerNet)
	if n, _ := h2.state.Network(name); n.Subnet6.String() != pool6 || n.Gateway6.String() != "fd00:19::1" {
		t.Fatalf("h2 sees %+v", n)
	}
	if _, err := d.RequestAddress(pool6, "", true); err != nil {
		t.Fatalf("IPv6 gateway of the existing network: %v", err)
	}
	_, err = d.RequestAddress(pool6, "fd00:19::fe", true)
	wantErr(t, err, model.ErrConflict, `gateway fd00:19::fe differs from the gateway fd00:19::1 of vxnet network "`+name+`" with subnet fd00:19::/64`)
	addr, err := d.RequestAddress(pool, "", false)
	if err != nil {
		t.Fatal(err)
	}
	addr6, err := d.RequestAddress(pool6, "fd00:19::11", false)
	if err != nil || addr6 != "fd00:19::11/64" {
		t.Fatalf("IPv6 address %q, %v", addr6, err)
	}
	if _, err := d.CreateEndpoint(docker.Endpoint{DockerNetwork: dockerNet, DockerID: "ep1", Address: addr, AddressIPv6: addr6}); err != nil {
		t.Fatal(err)
	}
	j, err := d.Join(dockerNet, "ep1", "/var/run/docker/netns/x")
	if err != nil || j.Gateway6 != "fd00:19::1" || j.Gateway != "172.19.0.1" {
		t.Fatalf("joined %+v, %v", j, err)
	}
	id := docker.EndpointID("h1", "ep1")
	if e, ok := h2.Agent.endpoint(id); !ok || e.IP6 != netip.MustParseAddr("fd00:19::11") || e.IP.String()+"/16" != addr {
		t.Errorf("h2 sees %+v", e)
	}
	if len(h1.own.reserved) != 0 {
		t.Errorf("reservations kept after join: %v", h1.own.reserved)
	}
	_, err = h2.Attach(api.AttachRequest{Network: name, Netns: netns(t, "x"), IP6: "fd00:19::11"})
	wantErr(t, err, model.ErrConflict, "address fd00:19::11 is already in use on network "+name+" by endpoint "+id)
	_, err = d.RequestAddress(pool6, "fd00:19::11", false)
	wantErr(t, err, model.ErrConflict, "address fd00:19::11 is already in use on network "+name+" by endpoint "+id)
	// An allocated IPv6 address is reserved until released.
	r6, err := d.RequestAddress(pool6, "", false)
	if err != nil || !netip.MustParsePrefix(pool6).Contains(netip.MustParsePrefix(r6).Addr()) {
		t.Fatalf("allocated IPv6 %q, %v", r6, err)
	}
	ip6 := netip.MustParsePrefix(r6).Addr()
	_, err = h1.Attach(api.AttachRequest{Network: name, Netns: netns(t, "y"), IP6: ip6.String()})
	wantErr(t, err, model.ErrConflict, fmt.Sprintf("address %s is already in use on network %s by endpoint %s", ip6, name, reservedForDocker))
}

func TestDockerErrors(t *testing.T) {
	b := newBus()
	h1 := newNode(t, b, "h1", 1, "")
	d := h1.docker
	mustCreate(t, h1, "web", "10.20.0.0/16")
	webVNI := DeriveVNI("web")
	for _, tc := range []struct {
		name string
		call func() error
		kind error
		msg  string
	}{
		{"v6 pool without subnet", func() error { _, err := d.RequestPool("", true); return err }, model.ErrInvalid, "vxnet's IPAM needs an explicit IPv6 subnet with --ipv6, for example --subnet fd00:1::/64"},
		{"v4 subnet as v6 pool", func() error { _, err := d.RequestPool("10.30.0.0/16", true); return err }, model.ErrInvalid, "subnet 10.30.0.0/16 is not an IPv6 subnet"},
		{"v6 subnet differs", func() error {
			return d.CreateNetwork(docker.Network{DockerID: "n1", Subnet: "10.20.0.0/16", Subnet6: "fd00:9::/64"})
		}, model.ErrConflict, `subnet 10.20.0.0/16 belongs to vxnet network "web", whose IPv6 subnet is none, not fd00:9::/64`},
		{"no subnet", func() error { _, err := d.RequestPool("", false); return err }, model.ErrInvalid, "vxnet's IPAM needs an explicit --subnet, for example --subnet 172.18.0.0/16"},
		{"overlap", func() error { _, err := d.RequestPool("10.20.5.0/24", false); return err }, model.ErrConflict, `subnet 10.20.5.0/24 overlaps subnet 10.20.0.0/16 of vxnet network "web"`},
		{"gateway differs", func() error { _, err := d.RequestAddress("10.20.0.0/16", "10.20.0.254", true); return err }, model.ErrConflict,
			`gateway 10.20.0.254 differs from the gateway 10.20.0.1 of vxnet network "web" with subnet 10.20.0.0/16`},
		{"gateway outside", func() error { _, err := d.RequestAddress("10.20.0.0/16", "10.99.0.1", true); return err }, model.ErrInvalid,
			`invalid gateway "10.99.0.1": want an address inside 10.20.0.0/16`},
		{"unknown pool", func() error { _, err := d.RequestAddress("10.77.0.0/16", "", false); return err }, model.ErrNotFound, "no vxnet network has subnet 10.77.0.0/16"},
		{"vni differs", func() error { return d.CreateNetwork(docker.Network{DockerID: "n1", Subnet: "10.20.0.0/16", VNI: 7}) }, model.ErrConflict,
			fmt.Sprintf(`subnet 10.20.0.0/16 belongs to vxnet network "web" with VNI %d, not 7`, webVNI)},
		{"join unknown network", func() error { _, err := d.Join("n9", "e1", ""); return err }, model.ErrNotFound, "docker network n9 is not a vxnet network (any more)"},
		{"bad endpoint mac", func() error {
			_, err := d.CreateEndpoint(docker.Endpoint{DockerID: "e1", Address: "10.20.0.5/16", MAC: "nope"})
			return err
		}, model.ErrInvalid, `invalid MAC "nope": want six hex octets such as 02:42:ac:11:00:02`},
	} {
		t.Run(tc.name, func(t *testing.T) { wantErr(t, tc.call(), tc.kind, tc.msg) })
	}
	// Adopting a network vxnet already has: Join before CreateEndpoint is refused.
	if err := d.CreateNetwork(docker.Network{DockerID: "n1", Subnet: "10.20.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	_, err := d.Join("n1", "e1", "")
	wantErr(t, err, model.ErrNotFound, "unknown endpoint e1: CreateEndpoint was not called on this host")
	// Deleting a Docker network that holds a vxnet network made elsewhere
	// (empty) removes it; a second delete only forgets the mapping.
	if err := d.DeleteNetwork("n1"); err != nil {
		t.Fatal(err)
	}
	if _, ok := h1.state.Network("web"); ok {
		t.Error("web survived the docker network removal")
	}
	if err := d.DeleteNetwork("n1"); err != nil {
		t.Fatal(err)
	}
}

// Every agent with a dockerd keeps its vxnet networks equal to the
// cluster's: it creates those it lacks and removes empty ones the cluster
// dropped, and leaves a dockerd that is not there alone.
func TestSyncDocker(t *testing.T) {
	b := newBus()
	dd := newFakeDockerd()
	h1 := newNode(t, b, "h1", 1, "", withDockerd(dd))
	mustCreate(t, h1, "web", "10.20.0.0/16")
	mustCreate(t, h1, "db", "10.21.0.0/16")
	dd.add("stale", "old-net", "10.99.0.0/16")
	if err := h1.step(); err != nil {
		t.Fatal(err)
	}
	if got := dd.names(); !slices.Equal(got, []string{"db", "web"}) {
		t.Errorf("dockerd networks %v, want [db web]", got)
	}
	if err := h1.RemoveNetwork("db", false); err != nil {
		t.Fatal(err)
	}
	dd.mu.Lock()
	dd.down = true
	dd.mu.Unlock()
	if err := h1.step(); err != nil {
		t.Fatal(err)
	}
	dd.mu.Lock()
	dd.down = false
	dd.mu.Unlock()
	if err := h1.step(); err != nil {
		t.Fatal(err)
	}
	if got := dd.names(); !slices.Equal(got, []string{"web"}) {
		t.Errorf("dockerd networks %v, want [web]", got)
	}
}
