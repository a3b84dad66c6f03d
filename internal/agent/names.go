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

// names is the cluster state as the resolver answers from it.
func (a *Agent) names() dns.Cluster {
	nets, _ := a.state.Networks()
	c := dns.Cluster{Networks: nets, Endpoints: a.state.Endpoints(), Alive: map[string]bool{}}
	for _, nd := range a.repl.Alive() {
		c.Alive[nd.Name] = true
	}
	if a.restored.Load() {
		// Restarted and not yet back in the cluster: the saved state is
		// the best knowledge there is. Without this, the names of other
		// hosts' containers went upstream (NXDOMAIN, or SERVFAIL with no
		// upstream) for as long as the first join took.
		for _, e := range c.Endpoints {
			c.Alive[e.Node] = true
		}
	}
	return c
}

// RedirectedTo returns the gateway of src's network in src's family:
// where the host firewall redirects its DNS queries.
func (a *Agent) RedirectedTo(src netip.Addr) (netip.Addr, bool) {
	nets, _ := a.state.Networks()
	n, ok := dns.Cluster{Networks: nets}.NetworkOf(src)
	if src.Is6() {
		return n.Gateway6, ok && n.Gateway6.IsValid()
	}
	return n.Gateway, ok && n.Gateway.IsValid()
}

// Resolve answers a container's DNS query from the cluster state.
func (a *Agent) Resolve(src netip.Addr, name string) (dns.Verdict, []netip.Addr) {
	return a.names().Resolve(src, name)
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
