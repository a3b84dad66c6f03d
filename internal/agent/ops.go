package agent

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/ipam"
	"github.com/vxnet/vxnet/internal/model"
)

func badRequest(format string, args ...any) error {
	return &api.StatusError{Code: http.StatusBadRequest, Msg: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &api.StatusError{Code: http.StatusNotFound, Msg: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &api.StatusError{Code: http.StatusConflict, Msg: fmt.Sprintf(format, args...)}
}

// DeriveVNI picks a VNI from a network name when none is given: stable, in
// 4096..16777215, so the same name gets the same VNI on every host.
func DeriveVNI(name string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	return 4096 + h%(model.MaxVNI-4096)
}

// parseNetwork turns an API request into a validated network.
func parseNetwork(r api.NetworkCreate) (model.Network, error) {
	n := model.Network{Name: r.Name, VNI: r.VNI, MTU: r.MTU, Flood: r.Flood}
	if err := model.ValidateName("network", r.Name); err != nil {
		return n, badRequest("%v", err)
	}
	if r.Subnet == "" {
		return n, badRequest("network %s: --subnet is required (for example 10.20.0.0/16)", r.Name)
	}
	var err error
	if n.Subnet, err = model.ParseSubnet(r.Subnet); err != nil {
		return n, badRequest("%v", err)
	}
	if r.Gateway != "" {
		if n.Gateway, err = netip.ParseAddr(r.Gateway); err != nil {
			return n, badRequest("invalid gateway %q: want an IPv4 address inside %s", r.Gateway, n.Subnet)
		}
	}
	if r.Subnet6 != "" {
		if n.Subnet6, err = model.ParseSubnet(r.Subnet6); err != nil {
			return n, badRequest("%v", err)
		}
	}
	if r.Gateway6 != "" {
		if n.Gateway6, err = netip.ParseAddr(r.Gateway6); err != nil {
			return n, badRequest("invalid IPv6 gateway %q", r.Gateway6)
		}
	}
	if n.VNI == 0 {
		n.VNI = DeriveVNI(n.Name)
	}
	n.Normalize()
	if err := n.Validate(); err != nil {
		return n, badRequest("%v", err)
	}
	return n, nil
}

// CreateNetwork adds a network to the cluster; it appears under the same
// name in the dockerd of every agent that has one.
func (a *Agent) CreateNetwork(r api.NetworkCreate) (api.NetworkInfo, error) {
	return a.createNetwork(r, r.Name)
}

func (a *Agent) createNetwork(r api.NetworkCreate, dockerName string) (api.NetworkInfo, error) {
	n, err := parseNetwork(r)
	if err != nil {
		return api.NetworkInfo{}, err
	}
	n.DockerName = dockerName
	if _, err := model.EffectiveMTU(n.MTU, a.mtu, a.cfg.AdvertiseAddr.Is6()); err != nil {
		return api.NetworkInfo{}, badRequest("network %s: %v", n.Name, err)
	}
	a.apiMu.Lock()
	existing, _ := a.state.Networks()
	if err := model.CheckConflicts(existing, n); err != nil {
		a.apiMu.Unlock()
		return api.NetworkInfo{}, conflict("%v", err)
	}
	if cur, ok := a.state.Network(n.Name); ok && cur.Equal(n) {
		a.apiMu.Unlock()
		return a.networkInfo(n), nil // identical definition: agreement
	}
	rec, err := a.state.Put(cluster.NetworkKey(n.Name), n)
	a.apiMu.Unlock()
	if err != nil {
		return api.NetworkInfo{}, err
	}
	a.gossip.Publish(rec)
	a.markDirty()
	a.persistOrLog()
	// Another member may have created the same name (or VNI, or subnet) at
	// the same moment: let the pushes cross, then check who won.
	if len(a.gossip.Alive()) > 1 {
		time.Sleep(300 * time.Millisecond)
		if cur, ok := a.state.Network(n.Name); !ok || !cur.Equal(n) {
			r, _ := a.state.Get(cluster.NetworkKey(n.Name))
			return api.NetworkInfo{}, conflict("network %s was created at the same time by node %s with another definition (VNI %d, subnet %s); that one was kept", n.Name, r.Origin, cur.VNI, cur.Subnet)
		}
		nets, _ := a.state.Networks()
		found := false
		for _, x := range nets {
			found = found || x.Name == n.Name
		}
		if !found {
			err := model.CheckConflicts(without(nets, n.Name), n)
			if r, ok := a.state.Delete(cluster.NetworkKey(n.Name)); ok {
				a.gossip.Publish(r)
			}
			return api.NetworkInfo{}, conflict("network %s lost to a network created at the same time: %v", n.Name, err)
		}
	}
	a.log.Info("network created", "network", n.Name, "vni", n.VNI, "subnet", n.Subnet)
	return a.networkInfo(n), nil
}

func without(nets []model.Network, name string) []model.Network {
	var out []model.Network
	for _, n := range nets {
		if n.Name != name {
			out = append(out, n)
		}
	}
	return out
}

func (a *Agent) networkInfo(n model.Network) api.NetworkInfo {
	info := api.NetworkInfo{Network: n, Endpoints: map[string]int{}}
	info.EffectiveMTU, _ = model.EffectiveMTU(n.MTU, a.mtu, a.cfg.AdvertiseAddr.Is6())
	if r, ok := a.state.Get(cluster.NetworkKey(n.Name)); ok {
		info.Origin = r.Origin
	}
	for _, e := range a.state.Endpoints() {
		if e.Network == n.Name {
			info.Endpoints[e.Node]++
		}
	}
	return info
}

// Networks lists the networks.
func (a *Agent) Networks() []api.NetworkInfo {
	nets, _ := a.state.Networks()
	out := []api.NetworkInfo{}
	for _, n := range nets {
		out = append(out, a.networkInfo(n))
	}
	return out
}

// Network inspects one network.
func (a *Agent) Network(name string) (api.NetworkInfo, error) {
	n, ok := a.state.Network(name)
	if !ok {
		return api.NetworkInfo{}, a.unknownNetwork(name)
	}
	return a.networkInfo(n), nil
}

func (a *Agent) unknownNetwork(name string) error {
	nets, _ := a.state.Networks()
	var names []string
	for _, n := range nets {
		names = append(names, n.Name)
	}
	known := "none exist yet"
	if len(names) > 0 {
		known = "known: " + strings.Join(names, ", ")
	}
	return notFound("unknown network %q (%s)", name, known)
}

// RemoveNetwork removes a network; with endpoints only when forced.
func (a *Agent) RemoveNetwork(name string, force bool) error {
	a.apiMu.Lock()
	defer a.apiMu.Unlock()
	if _, ok := a.state.Network(name); !ok {
		return a.unknownNetwork(name)
	}
	var eps []string
	for _, e := range a.state.Endpoints() {
		if e.Network == name {
			eps = append(eps, e.ID+"@"+e.Node)
		}
	}
	if len(eps) > 0 && !force {
		return conflict("network %s still has %d endpoints (%s): detach them first, or use --force", name, len(eps), strings.Join(eps, ", "))
	}
	r, _ := a.state.Delete(cluster.NetworkKey(name))
	recs := []cluster.Record{r}
	for _, b := range a.state.Blocks(name) {
		if b.Node == a.state.Self() {
			if br, ok := a.state.Delete(cluster.BlockKey(name, b.CIDR)); ok {
				recs = append(recs, br)
			}
		}
	}
	a.gossip.Publish(recs...)
	a.markDirty()
	a.log.Info("network removed", "network", name, "forced_endpoints", len(eps))
	return a.persist()
}

// resolveNetns accepts a namespace path or a PID.
func resolveNetns(s string) (string, error) {
	if s == "" {
		return "", badRequest("--netns is required: a network namespace path (/run/netns/NAME, /proc/PID/ns/net) or a PID")
	}
	if pid, err := strconv.Atoi(s); err == nil {
		if pid <= 0 {
			return "", badRequest("invalid PID %d", pid)
		}
		s = fmt.Sprintf("/proc/%d/ns/net", pid)
	}
	if _, err := os.Stat(s); err != nil {
		return "", badRequest("network namespace %s does not exist", s)
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

func namespaceMatches(path, id string) bool {
	ino, err := nsInode(path)
	if err != nil {
		return false
	}
	return strings.HasSuffix(id, fmt.Sprintf(".%x", ino))
}

// Attach plugs a container namespace into a network.
func (a *Agent) Attach(r api.AttachRequest) (api.Attachment, error) {
	path, err := resolveNetns(r.Netns)
	if err != nil {
		return api.Attachment{}, err
	}
	ino, err := nsInode(path)
	if err != nil {
		return api.Attachment{}, badRequest("network namespace %s: %v", path, err)
	}
	a.apiMu.Lock()
	defer a.apiMu.Unlock()
	n, ok := a.state.Network(r.Network)
	if !ok {
		return api.Attachment{}, a.unknownNetwork(r.Network)
	}
	id := a.endpointID(n.Name, ino)
	mtu, err := model.EffectiveMTU(n.MTU, a.mtu, a.cfg.AdvertiseAddr.Is6())
	if err != nil {
		return api.Attachment{}, badRequest("network %s: %v", n.Name, err)
	}
	if rec, ok := a.state.Get(cluster.EndpointKey(id)); ok {
		e, _ := cluster.Decode[model.Endpoint](rec)
		return a.attachment(e, n, path, a.locals[id].IfName, mtu), nil
	}
	usedIP := map[netip.Addr]string{}
	usedMAC := map[string]string{}
	for _, e := range a.state.Endpoints() {
		if e.Network == n.Name {
			usedIP[e.IP] = e.ID
			usedMAC[e.MAC] = e.ID
		}
	}
	var ip netip.Addr
	var recs []cluster.Record
	if r.IP != "" {
		if ip, err = netip.ParseAddr(r.IP); err != nil || !ip.Is4() {
			return api.Attachment{}, badRequest("invalid address %q: want an IPv4 address inside %s", r.IP, n.Subnet)
		}
		if err := ipam.CheckStatic(n, ip, usedIP); err != nil {
			return api.Attachment{}, conflict("%v", err)
		}
	} else {
		var rec *cluster.Record
		ip, rec, err = a.allocate(n, usedIP)
		if err != nil {
			return api.Attachment{}, err
		}
		if rec != nil {
			recs = append(recs, *rec)
		}
	}
	mac := ipam.MACFor(ip)
	if r.MAC != "" {
		hw, err := model.ParseMAC(r.MAC)
		if err != nil {
			return api.Attachment{}, badRequest("%v", err)
		}
		mac = hw.String()
	}
	if other, taken := usedMAC[mac]; taken {
		return api.Attachment{}, conflict("MAC %s is already in use on network %s by endpoint %s", mac, n.Name, other)
	}
	ifname := r.IfName
	if ifname == "" {
		ifname = "eth0"
	}
	e := model.Endpoint{ID: id, Network: n.Name, Node: a.state.Self(), MAC: mac, IP: ip}
	// Port and record appear together under the datapath lock (see sync);
	// the network's devices (and the firewall before them) must exist
	// before the veth can join the bridge.
	a.dpMu.Lock()
	_, err = a.prepareLocked(n)
	var port datapath.Port
	if err == nil {
		port, err = a.dp.Attach(datapath.EndpointSpec{ID: id, VNI: n.VNI, Netns: path, IfName: ifname, MAC: mac,
			IP: netip.PrefixFrom(ip, n.Subnet.Bits()), Gateway: n.Gateway, MTU: mtu})
	}
	var rec cluster.Record
	if err == nil {
		rec, err = a.state.Put(cluster.EndpointKey(id), e)
		if err != nil {
			_ = a.dp.Detach(id)
		}
	}
	a.dpMu.Unlock()
	if err != nil {
		if len(recs) > 0 { // keep the block claim: it is valid and will be used
			a.gossip.Publish(recs...)
		}
		return api.Attachment{}, fmt.Errorf("attach %s to %s: %w", path, n.Name, err)
	}
	recs = append(recs, rec)
	a.gossip.Publish(recs...)
	a.locals[id] = localEndpoint{Netns: path, IfName: ifname}
	if err := a.store.putLocal(id, a.locals[id]); err != nil {
		a.log.Error("save local endpoint", "err", err)
	}
	a.persistOrLog()
	a.markDirty()
	a.log.Info("endpoint attached", "endpoint", id, "network", n.Name, "ip", ip, "mac", mac, "host_if", port.HostIf)
	return a.attachment(e, n, path, ifname, mtu), nil
}

func (a *Agent) attachment(e model.Endpoint, n model.Network, path, ifname string, mtu int) api.Attachment {
	return api.Attachment{ID: e.ID, Network: n.Name, Netns: path, IfName: ifname, HostIf: datapath.HostIfName(e.ID),
		MAC: e.MAC, IP: netip.PrefixFrom(e.IP, n.Subnet.Bits()).String(), Gateway: n.Gateway.String(), MTU: mtu}
}

// allocate takes a free address from this node's blocks, claiming a new
// block when they are full; apiMu held.
func (a *Agent) allocate(n model.Network, used map[netip.Addr]string) (netip.Addr, *cluster.Record, error) {
	claimed := map[netip.Prefix]string{}
	var mine []netip.Prefix
	for _, b := range a.state.Blocks(n.Name) {
		claimed[b.CIDR] = b.Node
		if b.Node == a.state.Self() {
			mine = append(mine, b.CIDR)
		}
	}
	sort.Slice(mine, func(i, j int) bool { return mine[i].Addr().Less(mine[j].Addr()) })
	if ip, ok := ipam.Allocate(n, mine, used); ok {
		return ip, nil, nil
	}
	b, err := ipam.FreeBlock(n.Subnet, a.state.Self(), claimed)
	if err != nil {
		// Every block is claimed: take any free address of the subnet.
		if ip, ok := ipam.Borrow(n, used); ok {
			a.log.Info("all address blocks claimed; borrowed an address", "network", n.Name, "ip", ip)
			return ip, nil, nil
		}
		return netip.Addr{}, nil, conflict("network %s: no free address left in %s (%d endpoints)", n.Name, n.Subnet, len(used))
	}
	rec, err := a.state.Put(cluster.BlockKey(n.Name, b), cluster.Block{Network: n.Name, CIDR: b, Node: a.state.Self()})
	if err != nil {
		return netip.Addr{}, nil, err
	}
	a.log.Info("claimed address block", "network", n.Name, "block", b)
	ip, ok := ipam.Allocate(n, []netip.Prefix{b}, used)
	if !ok {
		return netip.Addr{}, &rec, conflict("network %s: block %s has no free address", n.Name, b)
	}
	return ip, &rec, nil
}

// Detach removes a container namespace from a network.
func (a *Agent) Detach(r api.DetachRequest) error {
	a.apiMu.Lock()
	defer a.apiMu.Unlock()
	if _, ok := a.state.Network(r.Network); !ok {
		return a.unknownNetwork(r.Network)
	}
	path, err := resolveNetns(r.Netns)
	var id string
	if err == nil {
		ino, ierr := nsInode(path)
		if ierr != nil {
			return badRequest("network namespace %s: %v", path, ierr)
		}
		id = a.endpointID(r.Network, ino)
	} else {
		// The namespace is gone: find the endpoint by its recorded path.
		for lid, le := range a.locals {
			if le.Netns == r.Netns && strings.Contains(lid, "."+r.Network+".") {
				id = lid
			}
		}
		if id == "" {
			return err
		}
	}
	if _, ok := a.state.Get(cluster.EndpointKey(id)); !ok {
		return notFound("namespace %s is not attached to network %s on this host", r.Netns, r.Network)
	}
	if err := a.removeEndpoint(id); err != nil {
		return err
	}
	a.log.Info("endpoint detached", "endpoint", id, "network", r.Network)
	return nil
}

// Status reports the agent's view.
func (a *Agent) Status(withEndpoints bool) api.Status {
	s := api.Status{Node: a.state.Self(), Addr: a.cfg.AdvertiseAddr.String(), Members: a.gossip.Members(),
		Malformed: a.gossip.Malformed.Load(), Records: a.state.Len(), Syncs: a.syncs.Load(), KernelOps: a.kernelOps.Load()}
	a.statMu.Lock()
	s.LastSync, s.LastSyncDuration, s.Conflicts = a.lastSync, a.lastDur, append([]string{}, a.conflicts...)
	if a.syncErr != nil {
		s.SyncError = a.syncErr.Error()
	}
	if a.addrErr != nil {
		s.AddrError = a.addrErr.Error()
	}
	a.statMu.Unlock()
	alive := map[string]bool{}
	for _, n := range a.gossip.Alive() {
		alive[n.Name] = true
	}
	nets, _ := a.state.Networks()
	eps := a.state.Endpoints()
	for _, n := range nets {
		ns := api.NetworkStatus{Name: n.Name, VNI: n.VNI, Subnet: n.Subnet.String()}
		for _, e := range eps {
			switch {
			case e.Network != n.Name:
			case e.Node == s.Node:
				ns.Local++
			case alive[e.Node]:
				ns.Remote++
			}
		}
		s.Networks = append(s.Networks, ns)
	}
	if withEndpoints {
		s.Endpoints = eps
	}
	return s
}

// KeyOp changes this agent's keyring and saves it (never logging a key).
func (a *Agent) KeyOp(r api.KeyRequest) (api.Keyring, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(r.Key))
	if err != nil {
		return api.Keyring{}, badRequest("the key is not base64 (make one with 'vxnet key generate')")
	}
	a.apiMu.Lock()
	defer a.apiMu.Unlock()
	if err := a.gossip.KeyOp(r.Op, key); err != nil {
		return api.Keyring{}, badRequest("key %s %s: %v", r.Op, cluster.Fingerprint(key), err)
	}
	if err := saveKeyring(a.cfg.StateDir, a.gossip.Keys()); err != nil {
		return api.Keyring{}, err
	}
	a.log.Info("keyring changed", "op", r.Op, "key", cluster.Fingerprint(key))
	return a.Keyring(), nil
}

// Keyring lists key fingerprints, the primary first.
func (a *Agent) Keyring() api.Keyring {
	var k api.Keyring
	for i, key := range a.gossip.Keys() {
		if i == 0 {
			k.Primary = cluster.Fingerprint(key)
		}
		k.Keys = append(k.Keys, cluster.Fingerprint(key))
	}
	return k
}
