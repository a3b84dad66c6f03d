package agent

import (
	"cmp"
	"hash/fnv"
	"net/netip"
	"strings"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/model"
)

// DeriveVNI picks a VNI from a network name when none is given: stable (the
// same on every host), from model.AutoVNIMin up, clear of other overlays'.
func DeriveVNI(name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return model.AutoVNIMin + h.Sum32()%(model.MaxVNI-model.AutoVNIMin)
}

func invalid(format string, args ...any) error {
	return model.Errorf(model.ErrInvalid, format, args...)
}

func conflict(format string, args ...any) error {
	return model.Errorf(model.ErrConflict, format, args...)
}

// parseNetwork turns an API request into a validated network.
func parseNetwork(r api.NetworkCreate) (model.Network, error) {
	n := model.Network{Name: r.Name, VNI: r.VNI, MTU: r.MTU, Flood: r.Flood, Internal: r.Internal, Encrypted: r.Encrypted}
	if err := model.ValidateName("network", r.Name); err != nil {
		return n, invalid("%w", err)
	}
	if r.Subnet == "" && r.Subnet6 == "" {
		return n, invalid("network %s: --subnet is required (for example 10.20.0.0/16), or --subnet6 alone for an IPv6-only network", r.Name)
	}
	var err error
	if r.Subnet != "" {
		if n.Subnet, err = model.ParseSubnet(r.Subnet); err != nil {
			return n, invalid("%w", err)
		}
	}
	if r.Gateway != "" {
		if n.Gateway, err = netip.ParseAddr(r.Gateway); err != nil {
			return n, invalid("invalid gateway %q: want an IPv4 address inside %s", r.Gateway, n.Subnet)
		}
	}
	if r.Subnet6 != "" {
		if n.Subnet6, err = model.ParseSubnet(r.Subnet6); err != nil {
			return n, invalid("%w", err)
		}
	}
	if r.Gateway6 != "" {
		if n.Gateway6, err = netip.ParseAddr(r.Gateway6); err != nil {
			return n, invalid("invalid IPv6 gateway %q", r.Gateway6)
		}
	}
	if n.VNI == 0 {
		n.VNI = DeriveVNI(n.Name)
	}
	n.Normalize()
	if err := n.Validate(); err != nil {
		return n, invalid("%w", err)
	}
	return n, nil
}

// CreateNetwork adds a network to the cluster; it appears under the same
// name in the dockerd of every agent that has one.
func (a *Agent) CreateNetwork(r api.NetworkCreate) (api.NetworkInfo, error) {
	if r.Name == model.HealthNetwork {
		return api.NetworkInfo{}, errHealthReserved
	}
	return a.createNetwork(r, r.Name)
}

func (a *Agent) createNetwork(r api.NetworkCreate, dockerName string) (api.NetworkInfo, error) {
	n, err := parseNetwork(r)
	if err != nil {
		return api.NetworkInfo{}, err
	}
	n.DockerName = dockerName
	if _, err := a.underlay.networkMTU(n); err != nil {
		return api.NetworkInfo{}, invalid("network %s: %w", n.Name, err)
	}
	a.mu.Lock()
	existing, _ := a.state.Networks()
	if n.VNI, err = a.state.AvoidForeign(a.cfg.VXLANPort, n.VNI, r.VNI != 0); err != nil {
		a.mu.Unlock()
		return api.NetworkInfo{}, conflict("%w", err)
	}
	if err := model.CheckConflicts(existing, n); err != nil {
		a.mu.Unlock()
		return api.NetworkInfo{}, conflict("%w", err)
	}
	if cur, ok := a.state.Network(n.Name); ok && cur.Equal(n) {
		a.mu.Unlock()
		return a.networkInfo(n), nil // identical definition: agreement
	}
	rec, err := a.state.PutFormat(cluster.NetworkKey(n.Name), n, cluster.NetworkFormat(n))
	a.mu.Unlock()
	if err != nil {
		return api.NetworkInfo{}, err
	}
	// Another member may create the same name (or VNI, or subnet) before
	// this record reaches it: every member then keeps the same one (the
	// higher version, then origin, for one name; the one written first for
	// a VNI or subnet), and the member whose network lost reports it in its
	// status (see cluster.State.SupersededNotices).
	a.repl.Publish(rec)
	a.Resync()
	a.persistOrLog()
	a.log.Info("network created", "network", n.Name, "vni", n.VNI, "subnet", n.Subnet)
	return a.networkInfo(n), nil
}

func (a *Agent) networkInfo(n model.Network) api.NetworkInfo {
	info := api.NetworkInfo{Network: n, Endpoints: map[string]int{}}
	info.EffectiveMTU, _ = a.underlay.networkMTU(n)
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
		if n.Name == model.HealthNetwork {
			continue // shown by 'vxnet health'
		}
		out = append(out, a.networkInfo(n))
	}
	return out
}

// Network inspects one network.
func (a *Agent) Network(name string) (api.NetworkInfo, error) {
	n, err := a.network(name)
	if err != nil {
		return api.NetworkInfo{}, err
	}
	return a.networkInfo(n), nil
}

// network returns a network by name (or Docker name), or an ErrNotFound
// naming the known ones.
func (a *Agent) network(name string) (model.Network, error) {
	if n, ok := a.state.NetworkNamed(name); ok {
		return n, nil
	}
	nets, _ := a.state.Networks()
	var names []string
	for _, n := range nets {
		if n.Name != model.HealthNetwork {
			names = append(names, cmp.Or(n.DockerName, n.Name))
		}
	}
	known := "none exist yet"
	if len(names) > 0 {
		known = "known: " + strings.Join(names, ", ")
	}
	return model.Network{}, model.Errorf(model.ErrNotFound, "unknown network %q (%s)", name, known)
}

// RemoveNetwork removes a network; with endpoints only when forced (their
// records go with it, and every host removes its ports on its next pass).
func (a *Agent) RemoveNetwork(name string, force bool) error {
	if name == model.HealthNetwork {
		return errHealthReserved
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	n, err := a.network(name)
	if err != nil {
		return err
	}
	name = n.Name
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
	a.repl.Publish(recs...)
	a.Resync()
	a.log.Info("network removed", "network", name, "forced_endpoints", len(eps))
	return a.persist()
}
