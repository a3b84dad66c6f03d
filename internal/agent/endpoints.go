package agent

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/ipam"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/reconcile"
)

// This file is the one endpoint path. Every front door (the local API's
// attach, the Docker driver's join, the CNI plugin through the API) turns
// its request into an endpointRequest and calls addEndpoint; every removal
// goes through removeEndpointLocked; the addresses a network has in use are
// computed in usedLocked alone.

// endpointRequest is what a front door asks of the endpoint transaction.
type endpointRequest struct {
	// ID names the endpoint; the front door derives it from what
	// identifies the container (namespace inode, Docker endpoint ID).
	ID      string
	Network string
	// Netns is the container's namespace path. Empty leaves the container
	// end in the host namespace, named IfName, for the runtime to move.
	Netns  string
	IfName string
	// IP is a static address ("" allocates one from this node's blocks);
	// IP6 likewise on a network with an IPv6 subnet.
	IP  string
	IP6 string
	// MAC is the container interface's MAC ("" derives one from the IP).
	MAC string
	// Reserved says IP was reserved for this endpoint by the Docker IPAM
	// (RequestAddress): that reservation does not count as a clash, and is
	// released once the endpoint holds the address.
	Reserved bool
	// Ports to publish at this host's addresses.
	Ports []model.PortMap
	// Name and Aliases the network's containers resolve to the endpoint.
	Name    string
	Aliases []string
	// ContainerID is the runtime's container ID (CNI), kept for GC.
	ContainerID string
}

// endpointResult is what addEndpoint made.
type endpointResult struct {
	Endpoint model.Endpoint
	Network  model.Network
	MTU      int
	HostIf   string
	IfName   string
	Netns    string
}

func (r endpointResult) attachment() api.Attachment {
	n, e := r.Network, r.Endpoint
	att := api.Attachment{ID: e.ID, Network: n.Name, Netns: r.Netns, IfName: r.IfName, HostIf: r.HostIf, MAC: e.MAC, MTU: r.MTU}
	if e.IP.IsValid() {
		att.IP, att.Gateway = netip.PrefixFrom(e.IP, n.Subnet.Bits()).String(), n.Gateway.String()
	}
	if e.IP6.IsValid() {
		att.IP6, att.Gateway6 = netip.PrefixFrom(e.IP6, n.Subnet6.Bits()).String(), n.Gateway6.String()
	}
	for _, p := range e.Ports {
		att.Published = append(att.Published, p.String())
	}
	att.Name, att.Aliases = e.Name, e.Aliases
	return att
}

// addEndpoint is the endpoint transaction: check or allocate the address,
// program the port, write and publish the record, persist; on any failure
// nothing is left behind but a block claim (valid, and used next time).
// Asking again for an endpoint that exists returns it (and re-plugs its port
// if it went missing).
func (a *Agent) addEndpoint(req endpointRequest) (endpointResult, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, err := a.network(req.Network)
	if err != nil {
		return endpointResult{}, err
	}
	if a.cfg.NoInbound && !n.Encrypted && n.Name != model.HealthNetwork {
		return endpointResult{}, invalid("network %s is not encrypted, and this host accepts no inbound traffic (--no-inbound): clear VXLAN cannot cross a masquerading NAT, so no other host could reach this endpoint; use an encrypted network (vxnet network create NAME --encrypted)", n.Name)
	}
	mtu, err := a.underlay.networkMTU(n)
	if err != nil {
		return endpointResult{}, invalid("network %s: %w", n.Name, err)
	}
	if req.IfName == "" {
		req.IfName = "eth0"
	}
	if req.Ports, err = model.ValidatePorts(req.Ports); err != nil {
		return endpointResult{}, invalid("%w", err)
	}
	if err := checkNames(req.Name, req.Aliases); err != nil {
		return endpointResult{}, err
	}
	res := endpointResult{Network: n, MTU: mtu, HostIf: datapath.HostIfName(req.ID), IfName: req.IfName, Netns: req.Netns}
	var recs []cluster.Record // block claims, then the endpoint
	e, exists := a.endpoint(req.ID)
	if exists {
		if le, ok := a.own.locals[req.ID]; ok && le.IfName != "" {
			res.IfName = le.IfName
		}
		if req.IP != "" && req.IP != api.AddrText(e.IP) {
			return endpointResult{}, conflict("%s is already attached to network %s with address %s, not %s", a.describe(req), n.Name, cmp.Or(api.AddrText(e.IP), "none"), req.IP)
		}
		if want, err := netip.ParseAddr(req.IP6); err == nil && want != e.IP6 {
			return endpointResult{}, conflict("%s is already attached to network %s with IPv6 address %s, not %s", a.describe(req), n.Name, e.IP6, req.IP6)
		}
		if len(req.Ports) > 0 && !slices.Equal(req.Ports, e.Ports) {
			return endpointResult{}, conflict("%s is already attached to network %s publishing %v, not %v", a.describe(req), n.Name, e.Ports, req.Ports)
		}
	} else {
		if req.Ports, err = a.checkPortsLocked(n, req.ID, req.Ports); err != nil {
			return endpointResult{}, err
		}
		e = model.Endpoint{ID: req.ID, Network: n.Name, Node: a.state.Self(), Ports: req.Ports, Name: req.Name, Aliases: req.Aliases,
			Since: time.Now().UTC().Truncate(time.Second)}
		ips, macs := a.usedLocked(n)
		if e.IP, e.IP6, recs, err = a.addresses(n, req, ips); err != nil {
			a.repl.Publish(recs...)
			return endpointResult{}, err
		}
		if e.MAC, err = ipam.PickMAC(n, req.MAC, cmp.Or(e.IP, e.IP6), macs); err != nil {
			a.repl.Publish(recs...)
			return endpointResult{}, err
		}
	}
	res.Endpoint = e
	// Port and record appear together under the kernel lock (see
	// passLocked); the pass first makes the firewall and the network's
	// devices exist, which the port needs.
	a.kernelMu.Lock()
	err = a.plugLocked(req, res)
	var rec cluster.Record
	if err == nil && !exists {
		if rec, err = a.state.Put(cluster.EndpointKey(e.ID), e); err != nil {
			_ = a.dp.Detach(e.ID)
		}
	}
	a.kernelMu.Unlock()
	if err != nil {
		a.repl.Publish(recs...) // keep the block claim: it is valid and will be used
		return endpointResult{}, fmt.Errorf("attach %s to %s: %w", a.describe(req), n.Name, err)
	}
	if !exists {
		recs = append(recs, rec)
	}
	a.repl.Publish(recs...)
	if req.Reserved {
		delete(a.own.reserved, e.IP)
		delete(a.own.reserved, e.IP6)
	}
	le := localEndpoint{Netns: req.Netns, IfName: res.IfName, ContainerID: req.ContainerID}
	if a.own.locals[e.ID] != le {
		a.own.locals[e.ID] = le
		if err := a.store.putLocal(e.ID, le); err != nil {
			a.log.Error("save local endpoint", "endpoint", e.ID, "err", err)
		}
	}
	a.persistOrLog()
	a.Resync()
	if !exists {
		a.log.Info("endpoint attached", "endpoint", e.ID, "network", n.Name, "ip", e.IP, "ip6", e.IP6, "mac", e.MAC, "host_if", res.HostIf)
	}
	return res, nil
}

// checkPortsLocked validates ports endpoint id would publish on network n:
// none on an internal network, none a local endpoint publishes already,
// none a process of this host listens on; mu held. It returns them sorted.
func (a *Agent) checkPortsLocked(n model.Network, id string, ports []model.PortMap) ([]model.PortMap, error) {
	if len(ports) == 0 {
		return nil, nil
	}
	ports, err := model.ValidatePorts(ports)
	if err != nil {
		return nil, invalid("%w", err)
	}
	if n.Internal {
		return nil, invalid("network %s is internal: it publishes no ports", n.Name)
	}
	held := map[model.PortMap]string{}
	var had []model.PortMap
	for _, e := range a.state.Endpoints() {
		if e.Node != a.state.Self() {
			continue
		}
		for _, p := range e.Ports {
			if e.ID == id {
				had = append(had, p)
				continue
			}
			held[model.PortMap{Proto: p.Proto, HostPort: p.HostPort}] = e.ID
		}
	}
	for _, p := range ports {
		if by, ok := held[model.PortMap{Proto: p.Proto, HostPort: p.HostPort}]; ok {
			return nil, conflict("host port %d/%s is already published on this host by endpoint %s", p.HostPort, p.Proto, by)
		}
		if slices.ContainsFunc(had, func(o model.PortMap) bool { return o.Proto == p.Proto && o.HostPort == p.HostPort }) {
			continue // ours already: published by vxnet, not bound
		}
		if err := a.host.PortFree(p.Proto, p.HostPort); err != nil {
			return nil, conflict("%w", err)
		}
	}
	return ports, nil
}

// setPorts changes the ports a local endpoint publishes (the Docker
// driver learns them after Join): the record changes, and every pass
// programs them.
func (a *Agent) setPorts(id string, ports []model.PortMap) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.endpoint(id)
	if !ok || e.Node != a.state.Self() {
		return model.Errorf(model.ErrNotFound, "no endpoint %s on this host", id)
	}
	n, err := a.network(e.Network)
	if err != nil {
		return err
	}
	if ports, err = a.checkPortsLocked(n, id, ports); err != nil {
		return err
	}
	if slices.Equal(ports, e.Ports) {
		return nil
	}
	e.Ports = ports
	rec, err := a.state.Put(cluster.EndpointKey(id), e)
	if err != nil {
		return err
	}
	a.repl.Publish(rec)
	a.persistOrLog()
	a.Resync()
	a.log.Info("endpoint ports changed", "endpoint", id, "ports", fmt.Sprint(ports))
	return nil
}

// plugLocked runs a pass and plugs the endpoint's port; kernelMu held.
func (a *Agent) plugLocked(req endpointRequest, res endpointResult) error {
	want, err := a.passLocked()
	if err != nil {
		return err
	}
	_, err = reconcile.Plug(a.dp, want, reconcile.Port{ID: req.ID, Netns: req.Netns, IfName: res.IfName,
		MAC: res.Endpoint.MAC, IP: res.Endpoint.IP, IP6: res.Endpoint.IP6, Network: res.Network})
	return err
}

func (a *Agent) describe(req endpointRequest) string {
	if req.Netns != "" {
		return "namespace " + req.Netns
	}
	return "endpoint " + req.ID
}

// endpoint returns an endpoint record by ID.
func (a *Agent) endpoint(id string) (model.Endpoint, bool) {
	rec, ok := a.state.Get(cluster.EndpointKey(id))
	if !ok {
		return model.Endpoint{}, false
	}
	e, err := cluster.Decode[model.Endpoint](rec)
	return e, err == nil
}

// usedLocked returns the addresses and MACs a network has in use, by whom:
// every endpoint of the cluster and the addresses reserved for Docker
// endpoints not yet joined; mu held.
func (a *Agent) usedLocked(n model.Network) (ips map[netip.Addr]string, macs map[string]string) {
	ips, macs = map[netip.Addr]string{}, map[string]string{}
	for _, e := range a.state.Endpoints() {
		if e.Network == n.Name {
			for _, ip := range []netip.Addr{e.IP, e.IP6} {
				if ip.IsValid() {
					ips[ip] = e.ID
				}
			}
			macs[e.MAC] = e.ID
		}
	}
	for ip, by := range a.own.reserved {
		if n.Subnet.Contains(ip) || n.Subnet6.Contains(ip) {
			if _, taken := ips[ip]; !taken {
				ips[ip] = by
			}
		}
	}
	return ips, macs
}

// addresses checks the static addresses asked for or allocates them, an
// IPv4 address and, on a network with an IPv6 subnet, an IPv6 one, given
// the addresses in use (both families); mu held. It returns the block
// claims it made (to publish, even when it fails: they are valid).
func (a *Agent) addresses(n model.Network, req endpointRequest, used map[netip.Addr]string) (ip, ip6 netip.Addr, recs []cluster.Record, err error) {
	if req.IP6 != "" && !n.Subnet6.IsValid() {
		return ip, ip6, nil, invalid("network %s has no IPv6 subnet: no IPv6 address (%s) can be given on it; create the network with --subnet6", n.Name, req.IP6)
	}
	if req.IP != "" && !n.HasIPv4() {
		return ip, ip6, nil, invalid("network %s is IPv6-only: no IPv4 address (%s) can be given on it; give --ip6", n.Name, req.IP)
	}
	b := &blocks{a: a}
	if n.HasIPv4() {
		if ip, err = a.address(n, false, req.IP, req.Reserved, used, b); err != nil {
			return ip, ip6, b.recs, err
		}
	}
	if n.Subnet6.IsValid() {
		if ip6, err = a.address(n, true, req.IP6, req.Reserved, used, b); err != nil {
			return netip.Addr{}, ip6, b.recs, err
		}
	}
	return ip, ip6, b.recs, nil
}

// address checks a static address of one family (want, "" for none) or
// allocates one; reserved: want was reserved for this endpoint by the
// Docker IPAM, so that reservation is no clash; mu held.
func (a *Agent) address(n model.Network, v6 bool, want string, reserved bool, used map[netip.Addr]string, b *blocks) (netip.Addr, error) {
	pool := ipam.PoolOf(n, v6)
	var w netip.Addr
	if want != "" {
		var err error
		w, err = netip.ParseAddr(want)
		if err != nil || w.Is6() != v6 || w.Is4In6() || w.Zone() != "" {
			return netip.Addr{}, invalid("invalid address %q: want an %s address inside %s", want, pool.Family(), pool.Subnet)
		}
		if reserved && used[w] == reservedForDocker {
			used = maps.Clone(used)
			delete(used, w)
		}
	}
	return ipam.Pick(pool, w, used, b, a.log)
}

// blocks claims address blocks in the cluster state for ipam.Pick; mu held.
type blocks struct {
	a    *Agent
	recs []cluster.Record // the claims made
}

func (b *blocks) Self() string { return b.a.state.Self() }

func (b *blocks) Claimed(network string) map[netip.Prefix]string {
	out := map[netip.Prefix]string{}
	for _, bl := range b.a.state.Blocks(network) {
		out[bl.CIDR] = bl.Node
	}
	return out
}

// Claim writes the block's record; a store that can claim (etcd) takes it
// only if no other member holds it, so no address is ever given twice.
func (b *blocks) Claim(network string, cidr netip.Prefix) (bool, string, error) {
	a := b.a
	block := cluster.Block{Network: network, CIDR: cidr, Node: a.state.Self()}
	c, strong := a.repl.(Claimer)
	if !strong {
		rec, err := a.state.Put(cluster.BlockKey(network, cidr), block)
		if err != nil {
			return false, "", err
		}
		b.recs = append(b.recs, rec)
		return true, "", nil
	}
	rec, err := a.state.Prepare(cluster.BlockKey(network, cidr), block)
	if err != nil {
		return false, "", err
	}
	won, holder, err := c.Claim(rec)
	if err != nil {
		return false, "", err
	}
	if won {
		_, _ = a.state.Merge([]cluster.Record{rec})
		b.recs = append(b.recs, rec)
		return true, "", nil
	}
	// Another member holds it (or our tombstone is newer): learn that.
	_, _ = a.state.Merge([]cluster.Record{holder})
	if h, err := cluster.Decode[cluster.Block](holder); err == nil && !holder.Deleted {
		return false, h.Node, nil
	}
	return false, "", nil
}

// removeEndpointLocked unplugs a local endpoint and deletes its record;
// mu held. An endpoint already gone is no error.
func (a *Agent) removeEndpointLocked(id string) error {
	a.kernelMu.Lock()
	err := a.dp.Detach(id)
	r, deleted := a.state.Delete(cluster.EndpointKey(id))
	a.kernelMu.Unlock()
	if deleted {
		a.repl.Publish(r)
	}
	if err != nil {
		return fmt.Errorf("detach endpoint %s: %w", id, err)
	}
	if _, ok := a.own.locals[id]; ok {
		delete(a.own.locals, id)
		if err := a.store.delLocal(id); err != nil {
			return err
		}
	}
	a.Resync()
	return a.persist()
}

// The local API's front door.

// resolveNetns accepts a namespace path or a PID.
func resolveNetns(s string) (string, error) {
	if s == "" {
		return "", invalid("--netns is required: a network namespace path (/run/netns/NAME, /proc/PID/ns/net) or a PID")
	}
	if pid, err := strconv.Atoi(s); err == nil {
		if pid <= 0 {
			return "", invalid("invalid PID %d", pid)
		}
		s = fmt.Sprintf("/proc/%d/ns/net", pid)
	}
	if _, err := os.Stat(s); err != nil {
		return "", invalid("network namespace %s does not exist", s)
	}
	return s, nil
}

func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// endpointID names an endpoint after node, network and namespace identity,
// so the same container reached by different paths is one endpoint.
func (a *Agent) endpointID(network string, ino uint64) string {
	return fmt.Sprintf("%s.%s.%x", a.state.Self(), network, ino)
}

// containerEndpointID names the endpoint of a runtime's container
// interface (CNI): the same ADD, repeated after a crash, is the same
// endpoint, and DEL finds it with the namespace gone.
func (a *Agent) containerEndpointID(network, containerID, ifname string) string {
	h := fnv.New64a()
	h.Write([]byte(containerID + "/" + ifname))
	return fmt.Sprintf("%s.%s.c%016x", a.state.Self(), network, h.Sum64())
}

func namespaceMatches(path, id string) bool {
	ino, err := nsInode(path)
	if err != nil {
		return false
	}
	return strings.HasSuffix(id, fmt.Sprintf(".%x", ino))
}

// Attach plugs a container namespace into a network.
func (a *Agent) Attach(r api.AttachRequest) (api.Attachment, error) {
	if r.Network == model.HealthNetwork {
		return api.Attachment{}, errHealthReserved
	}
	if n, ok := a.state.NetworkNamed(r.Network); ok {
		r.Network = n.Name // a Docker name names its network
	}
	path, err := resolveNetns(r.Netns)
	if err != nil {
		return api.Attachment{}, err
	}
	ino, err := nsInode(path)
	if err != nil {
		return api.Attachment{}, invalid("network namespace %s: %w", path, err)
	}
	id := a.endpointID(r.Network, ino)
	if r.ContainerID != "" {
		id = a.containerEndpointID(r.Network, r.ContainerID, cmp.Or(r.IfName, "eth0"))
	}
	var ports []model.PortMap
	for _, s := range r.Publish {
		p, err := model.ParsePortMap(s)
		if err != nil {
			return api.Attachment{}, invalid("%w", err)
		}
		ports = append(ports, p)
	}
	res, err := a.addEndpoint(endpointRequest{ID: id, Network: r.Network, Netns: path, IfName: r.IfName,
		IP: r.IP, IP6: r.IP6, MAC: r.MAC, Ports: ports, Name: r.Name, Aliases: r.Aliases, ContainerID: r.ContainerID})
	if err != nil {
		return api.Attachment{}, err
	}
	return res.attachment(), nil
}

// Detach removes a container namespace from a network.
func (a *Agent) Detach(r api.DetachRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, err := a.network(r.Network)
	if err != nil {
		return err
	}
	r.Network = n.Name
	if r.ContainerID != "" {
		id := a.containerEndpointID(r.Network, r.ContainerID, cmp.Or(r.IfName, "eth0"))
		if _, ok := a.endpoint(id); !ok {
			return model.Errorf(model.ErrNotFound, "container %s (interface %s) is not attached to network %s on this host", r.ContainerID, cmp.Or(r.IfName, "eth0"), r.Network)
		}
		if err := a.removeEndpointLocked(id); err != nil {
			return err
		}
		a.log.Info("endpoint detached", "endpoint", id, "network", r.Network, "container", r.ContainerID)
		return nil
	}
	path, err := resolveNetns(r.Netns)
	var id string
	if err == nil {
		ino, ierr := nsInode(path)
		if ierr != nil {
			return invalid("network namespace %s: %w", path, ierr)
		}
		id = a.endpointID(r.Network, ino)
	} else {
		// The namespace is gone: find the endpoint by its recorded path.
		for lid, le := range a.own.locals {
			if le.Netns == r.Netns && strings.Contains(lid, "."+r.Network+".") {
				id = lid
			}
		}
		if id == "" {
			return err
		}
	}
	if _, ok := a.endpoint(id); !ok {
		return model.Errorf(model.ErrNotFound, "namespace %s is not attached to network %s on this host", r.Netns, r.Network)
	}
	if err := a.removeEndpointLocked(id); err != nil {
		return err
	}
	a.log.Info("endpoint detached", "endpoint", id, "network", r.Network)
	return nil
}

// LocalEndpoints lists this host's endpoints with what only it knows of
// them (the CNI plugin's GC compares them with the runtime's containers).
func (a *Agent) LocalEndpoints() []api.LocalEndpoint {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := []api.LocalEndpoint{}
	for _, e := range a.state.Endpoints() {
		if e.Node != a.state.Self() || e.Network == model.HealthNetwork {
			continue
		}
		le := a.own.locals[e.ID]
		out = append(out, api.LocalEndpoint{ID: e.ID, Network: e.Network, Netns: le.Netns, IfName: le.IfName,
			ContainerID: le.ContainerID, IP: api.AddrText(e.IP), IP6: api.AddrText(e.IP6), MAC: e.MAC})
	}
	return out
}
