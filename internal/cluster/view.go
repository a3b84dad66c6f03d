package cluster

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/vxnet/vxnet/internal/model"
)

// Block is a part of a network's subnet claimed by one node for allocation.
type Block struct {
	Network string       `json:"network"`
	CIDR    netip.Prefix `json:"cidr"`
	Node    string       `json:"node"`
}

// NodeInfo is what a member tells the cluster about itself.
type NodeInfo struct {
	Name string `json:"name"`
	// Version of its vxnet binary, and the highest record format it reads.
	Version string `json:"version"`
	Format  int    `json:"format"`
	// Foreign are the VXLAN devices on the host that vxnet did not make:
	// vxnet's networks avoid their VNIs on their port.
	Foreign []model.ForeignVXLAN `json:"foreign,omitempty"`
	// Tunnel is the host's WireGuard public key and port (nil: none, an
	// agent from before encrypted networks).
	Tunnel *model.TunnelInfo `json:"tunnel,omitempty"`
	// Addrs are the addresses the host is reached at, in order of
	// preference (empty: the one its membership says, alone). Each peer
	// uses the first that answers its probes.
	Addrs []netip.Addr `json:"addrs,omitempty"`
	// NoInbound: the host accepts no inbound traffic (--no-inbound).
	NoInbound bool `json:"noInbound,omitempty"`
}

// Same reports whether two node records say the same.
func (n NodeInfo) Same(o NodeInfo) bool {
	return n.Name == o.Name && n.Version == o.Version && n.Format == o.Format && slices.Equal(n.Foreign, o.Foreign) && slices.Equal(n.Addrs, o.Addrs) && n.NoInbound == o.NoInbound &&
		(n.Tunnel == nil) == (o.Tunnel == nil) && (n.Tunnel == nil || *n.Tunnel == *o.Tunnel)
}

// TunnelOwners maps the tunnel public keys in node records to their
// nodes' names.
func TunnelOwners(nodes []NodeInfo) map[string]string {
	out := map[string]string{}
	for _, n := range nodes {
		if n.Tunnel != nil {
			out[n.Tunnel.Key] = n.Name
		}
	}
	return out
}

// ForeignVNI returns a foreign VXLAN device that uses vni on port on some
// member's host, and that host.
func (s *State) ForeignVNI(port int, vni uint32) (node string, dev model.ForeignVXLAN, found bool) {
	for _, n := range s.Nodes() {
		for _, f := range n.Foreign {
			if f.Port == port && f.VNI == vni {
				return n.Name, f, true
			}
		}
	}
	return "", model.ForeignVXLAN{}, false
}

// AvoidForeign returns vni when no foreign device uses it on port on any
// member's host. Otherwise an explicit VNI is refused naming the host and
// the device, and a derived one moves on to the next free VNI.
func (s *State) AvoidForeign(port int, vni uint32, explicit bool) (uint32, error) {
	for range 1 << 10 {
		node, f, taken := s.ForeignVNI(port, vni)
		if !taken {
			return vni, nil
		}
		if explicit {
			return 0, fmt.Errorf("VNI %d is used by device %s on %s (VXLAN port %d, made outside vxnet): pick another --vni, or omit it", vni, f.Dev, node, f.Port)
		}
		if vni++; vni >= model.MaxVNI { // MaxVNI is the health network's
			vni = model.AutoVNIMin
		}
	}
	return 0, fmt.Errorf("no free VNI near %d on port %d", vni, port)
}

// ForeignCollisions describes the networks whose VNI a foreign device
// uses on port on some host (that host cannot program them).
func (s *State) ForeignCollisions(port int) []string {
	nets, _ := s.Networks()
	var out []string
	for _, n := range nets {
		if node, f, ok := s.ForeignVNI(port, n.VNI); ok {
			out = append(out, fmt.Sprintf("network %s (VNI %d) collides with device %s on %s (VXLAN port %d, made outside vxnet): %s cannot carry it; remove that device, or recreate the network with another --vni",
				n.Name, n.VNI, f.Dev, node, port, node))
		}
	}
	return out
}

// HealthKey builds the key of a member's health record.
func HealthKey(node string) string { return PrefixHealth + node }

// NodeKey builds the key of a node record.
func NodeKey(name string) string { return PrefixNode + name }

// Nodes returns every node record, by name.
func (s *State) Nodes() []NodeInfo {
	var out []NodeInfo
	for _, r := range s.List(PrefixNode) {
		if n, err := Decode[NodeInfo](r); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// NetworkKey, EndpointKey and BlockKey build record keys.
func NetworkKey(name string) string { return PrefixNetwork + name }
func EndpointKey(id string) string  { return PrefixEndpoint + id }
func BlockKey(network string, cidr netip.Prefix) string {
	return PrefixBlock + network + "/" + cidr.String()
}

// Conflict is a clash in the replicated state, resolved the same way on
// every member and reported.
type Conflict struct {
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
}

// Networks returns the usable networks: of two that claim the same VNI or
// overlapping subnets, the one written first (lower version, then origin)
// keeps it and the other is reported.
func (s *State) Networks() ([]model.Network, []Conflict) {
	recs := s.List(PrefixNetwork)
	slices.SortFunc(recs, func(x, y Record) int { return olderFirst(x, y) })
	var out []model.Network
	var conflicts []Conflict
	for _, r := range recs {
		n, err := Decode[model.Network](r)
		if err != nil {
			conflicts = append(conflicts, Conflict{Kind: "invalid-network", Detail: err.Error()})
			continue
		}
		if err := model.CheckConflicts(out, n); err != nil {
			conflicts = append(conflicts, Conflict{Kind: "network", Detail: fmt.Sprintf("network %s (from %s) is not programmed: %v", n.Name, r.Origin, err)})
			continue
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(x, y model.Network) int { return cmp.Compare(x.Name, y.Name) })
	return out, conflicts
}

// NetworkNamed returns one network by its name, or else by its Docker
// name when exactly one network has it.
func (s *State) NetworkNamed(name string) (model.Network, bool) {
	if n, ok := s.Network(name); ok {
		return n, true
	}
	nets, _ := s.Networks()
	var found []model.Network
	for _, n := range nets {
		if n.DockerName != "" && n.DockerName == name {
			found = append(found, n)
		}
	}
	if len(found) != 1 {
		return model.Network{}, false
	}
	return found[0], true
}

// Network returns one network by name.
func (s *State) Network(name string) (model.Network, bool) {
	r, ok := s.Get(NetworkKey(name))
	if !ok {
		return model.Network{}, false
	}
	n, err := Decode[model.Network](r)
	return n, err == nil
}

// Endpoints returns every endpoint record.
// The decoded list is cached until the state changes; callers must not
// modify it.
func (s *State) Endpoints() []model.Endpoint {
	s.mu.RLock()
	if s.epCache != nil && s.epCacheGen == s.gen {
		out := s.epCache
		s.mu.RUnlock()
		return out
	}
	gen := s.gen
	s.mu.RUnlock()
	out := []model.Endpoint{}
	for _, r := range s.List(PrefixEndpoint) {
		if e, err := Decode[model.Endpoint](r); err == nil {
			out = append(out, e)
		}
	}
	s.mu.Lock()
	if s.gen == gen {
		s.epCache, s.epCacheGen = out, gen
	}
	s.mu.Unlock()
	return out
}

// Blocks returns every block claim of a network.
func (s *State) Blocks(network string) []Block {
	var out []Block
	for _, r := range s.List(PrefixBlock + network + "/") {
		if b, err := Decode[Block](r); err == nil {
			out = append(out, b)
		}
	}
	return out
}

// ValidateRecord checks that a record received from the network is well formed.
func ValidateRecord(r Record) error {
	if err := checkEnvelope(r); err != nil || r.Deleted || !r.readable() {
		return err // a newer format's value is not ours to judge
	}
	switch {
	case len(r.Key) > len(PrefixNetwork) && r.Key[:len(PrefixNetwork)] == PrefixNetwork:
		n, err := Decode[model.Network](r)
		if err != nil {
			return err
		}
		if NetworkKey(n.Name) != r.Key {
			return fmt.Errorf("record %s holds network %q", r.Key, n.Name)
		}
		return n.Validate()
	case len(r.Key) > len(PrefixEndpoint) && r.Key[:len(PrefixEndpoint)] == PrefixEndpoint:
		e, err := Decode[model.Endpoint](r)
		if err != nil {
			return err
		}
		if EndpointKey(e.ID) != r.Key {
			return fmt.Errorf("record %s holds endpoint %q", r.Key, e.ID)
		}
		if _, err := model.ParseMAC(e.MAC); err != nil {
			return fmt.Errorf("record %s: %w", r.Key, err)
		}
		if !e.IP.Is4() && !(!e.IP.IsValid() && e.IP6.IsValid()) {
			return fmt.Errorf("record %s: endpoint address %s is not IPv4 (and the endpoint has no IPv6 address)", r.Key, e.IP)
		}
		if e.IP6.IsValid() && (!e.IP6.Is6() || e.IP6.Is4In6() || e.IP6.Zone() != "") {
			return fmt.Errorf("record %s: endpoint IPv6 address %s is not IPv6", r.Key, e.IP6)
		}
		if _, err := model.ValidatePorts(e.Ports); err != nil {
			return fmt.Errorf("record %s: %w", r.Key, err)
		}
		if e.Name != "" {
			if err := model.ValidateHostname("container name", e.Name); err != nil {
				return fmt.Errorf("record %s: %w", r.Key, err)
			}
		}
		for _, al := range e.Aliases {
			if err := model.ValidateHostname("alias", al); err != nil {
				return fmt.Errorf("record %s: %w", r.Key, err)
			}
		}
		return errors.Join(model.ValidateName("network", e.Network), model.ValidateName("node", e.Node))
	case strings.HasPrefix(r.Key, PrefixNode):
		n, err := Decode[NodeInfo](r)
		if err != nil {
			return err
		}
		if NodeKey(n.Name) != r.Key {
			return fmt.Errorf("record %s holds node %q", r.Key, n.Name)
		}
		return model.ValidateName("node", n.Name)
	case strings.HasPrefix(r.Key, PrefixHealth):
		var h struct {
			Node string `json:"node"`
		}
		if err := json.Unmarshal(r.Value, &h); err != nil {
			return fmt.Errorf("record %s: %w", r.Key, err)
		}
		if HealthKey(h.Node) != r.Key {
			return fmt.Errorf("record %s holds the health view of %q", r.Key, h.Node)
		}
		return model.ValidateName("node", h.Node)
	default:
		b, err := Decode[Block](r)
		if err != nil {
			return err
		}
		if !b.CIDR.IsValid() || BlockKey(b.Network, b.CIDR) != r.Key {
			return fmt.Errorf("record %s holds block %s of %q", r.Key, b.CIDR, b.Network)
		}
		return model.ValidateName("node", b.Node)
	}
}

// olderFirst orders records by age, the newest last (Newer decides).
func olderFirst(x, y Record) int {
	switch {
	case y.Newer(x):
		return -1
	case x.Newer(y):
		return 1
	}
	return 0
}

// SupersededNotices describes this node's networks that a definition
// another member wrote at the same time replaced.
func (s *State) SupersededNotices() []string {
	var out []string
	for _, sup := range s.Superseded() {
		mine, err1 := Decode[model.Network](sup.Mine)
		by, err2 := Decode[model.Network](sup.By)
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, fmt.Sprintf("network %s created here (VNI %d, subnet %s) was replaced by the definition node %s created at the same time (VNI %d, subnet %s)",
			mine.Name, mine.VNI, mine.Subnet, sup.By.Origin, by.VNI, by.Subnet))
	}
	return out
}
