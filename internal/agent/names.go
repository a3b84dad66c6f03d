package agent

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/dns"
	"github.com/vxnet/vxnet/internal/model"
)

var _ dns.Names = (*Agent)(nil)

// networkOf returns the network whose subnet holds src.
func (a *Agent) networkOf(src netip.Addr) (model.Network, bool) {
	nets, _ := a.state.Networks()
	for _, n := range nets {
		if n.Subnet.Contains(src) {
			return n, true
		}
	}
	return model.Network{}, false
}

// RedirectedTo returns the gateway of src's network: where the host
// firewall redirects its DNS queries.
func (a *Agent) RedirectedTo(src netip.Addr) (netip.Addr, bool) {
	n, ok := a.networkOf(src)
	return n.Gateway, ok
}

// Resolve answers a container's DNS query from the cluster state: within
// the querier's network (the one whose subnet holds its address), NAME and
// NAME.NETWORK (the vxnet or Docker name of the network) resolve to every
// live endpoint with that name or alias; other names go upstream, and a
// querier on no vxnet network is refused.
func (a *Agent) Resolve(src netip.Addr, name string) (dns.Verdict, []netip.Addr) {
	n, found := a.networkOf(src)
	if !found {
		return dns.Refuse, nil
	}
	label, suffix, qualified := strings.Cut(name, ".")
	if qualified && !strings.EqualFold(suffix, n.Name) && (n.DockerName == "" || !strings.EqualFold(suffix, n.DockerName)) {
		return dns.Forward, nil
	}
	alive := map[string]bool{}
	for _, nd := range a.repl.Alive() {
		alive[nd.Name] = true
	}
	var ips []netip.Addr
	for _, e := range a.state.Endpoints() {
		if e.Network == n.Name && alive[e.Node] && e.HasName(label) {
			ips = append(ips, e.IP)
		}
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	if len(ips) == 0 && !qualified {
		return dns.Forward, nil // not a container name: the upstream servers answer
	}
	return dns.Answer, ips
}

// setNames changes the name and aliases a local endpoint answers to (the
// Docker driver learns them from dockerd after Join).
func (a *Agent) setNames(id, name string, aliases []string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.endpoint(id)
	if !ok || e.Node != a.state.Self() {
		return model.Errorf(model.ErrNotFound, "no endpoint %s on this host", id)
	}
	if e.Name == name && slices.Equal(e.Aliases, aliases) {
		return nil
	}
	e.Name, e.Aliases = name, aliases
	rec, err := a.state.Put(cluster.EndpointKey(id), e)
	if err != nil {
		return err
	}
	a.repl.Publish(rec)
	a.persistOrLog()
	a.log.Info("endpoint named", "endpoint", id, "name", name, "aliases", strings.Join(aliases, ","))
	return nil
}

// checkNames validates a name and aliases.
func checkNames(name string, aliases []string) error {
	if name != "" {
		if err := model.ValidateHostname("container name", name); err != nil {
			return invalid("%w", err)
		}
	}
	for _, al := range aliases {
		if err := model.ValidateHostname("alias", al); err != nil {
			return invalid("%w", err)
		}
	}
	return nil
}
