package agent

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/model"
)

// Health probing (health.Prober) runs beside the agent; the agent gives it
// the health network, this node's health endpoint, the peers' endpoints
// and the cluster state to publish its view in (healthAgent).

// Publishing: a changed view at most every healthPublishGap, an unchanged
// one every minute (so a late joiner and the "as of" stay fresh).
const healthPublishGap = 2 * time.Second

func (a *Agent) healthEnabled() bool {
	return a.prober != nil && a.cfg.HealthSubnet.IsValid()
}

// healthEndpointID names this node's health endpoint.
func (a *Agent) healthEndpointID() string { return a.state.Self() + ".health" }

// newProber returns the prober of this agent over port.
func (a *Agent) newProber(port health.Port, publishGap time.Duration) *health.Prober {
	return health.NewProber(health.ProberConfig{Netns: a.cfg.HealthNetns, Node: a.state.Self(), Interval: a.cfg.HealthInterval,
		PublishGap: publishGap, Log: a.log, OnRound: a.demoteBrokenPaths}, port, (*healthAgent)(a))
}

// PathDemoter is a replicator that can keep an address of a peer out of
// use (gossip).
type PathDemoter interface {
	Demote(peer string, addr netip.Addr, why string) bool
}

// demoteBrokenPaths moves a pair off an address that answers the path
// probes (on the gossip port) while the health probes through VXLAN went
// unanswered since after the pair moved there (for four probe intervals
// at least): something between passes
// the one and not the other (a NAT that rewrites UDP 4789, a firewall).
func (a *Agent) demoteBrokenPaths(verdicts []health.Peer) {
	pr, ok := a.repl.(PathReporter)
	d, ok2 := a.repl.(PathDemoter)
	if !ok || !ok2 {
		return
	}
	broken := map[string]health.Peer{}
	for _, v := range verdicts {
		if v.State == health.Unreachable {
			broken[v.Node] = v
		}
	}
	if len(broken) == 0 {
		return
	}
	// Not for a moment's failure: a member that just joined is probed
	// before its health endpoint reached everyone.
	settled := time.Now().Add(-4 * a.cfg.HealthInterval)
	for _, p := range pr.Paths() {
		v, bad := broken[p.Peer]
		if !bad || !p.Probed() || !v.Since.After(p.Since) || v.Since.After(settled) {
			continue
		}
		why := fmt.Sprintf("answers probes, but VXLAN there went unanswered since %s", v.Since.UTC().Format(time.TimeOnly))
		if d.Demote(p.Peer, p.Addr, why) {
			a.log.Warn("path demoted", "peer", p.Peer, "addr", p.Addr, "why", why)
		}
	}
}

// healthAgent is the agent as the prober sees it.
type healthAgent Agent

// Endpoint makes sure the health network exists (every agent defines it
// the same way, so concurrent creations agree) and plugs this node's
// health endpoint into the namespace at ns.
func (h *healthAgent) Endpoint(ns string) (int, error) {
	a := (*Agent)(h)
	want := api.NetworkCreate{Name: model.HealthNetwork, Subnet: a.cfg.HealthSubnet.String(), VNI: model.HealthVNI, Internal: true}
	if cur, ok := a.state.Network(model.HealthNetwork); ok {
		if cur.Subnet != a.cfg.HealthSubnet {
			a.log.Warn("the cluster's health network has another subnet than --health-subnet; using the cluster's",
				"cluster", cur.Subnet, "flag", a.cfg.HealthSubnet)
		}
	} else if _, err := a.createNetwork(want, ""); err != nil {
		return 0, fmt.Errorf("health network %s (%s): %w", model.HealthNetwork, a.cfg.HealthSubnet, err)
	}
	// Kept like a runtime's container: present while its namespace path is.
	res, err := a.addEndpoint(endpointRequest{ID: a.healthEndpointID(), Network: model.HealthNetwork, Netns: ns, IfName: "eth0",
		ContainerID: model.HealthNetwork})
	if err != nil {
		return 0, fmt.Errorf("health endpoint: %w", err)
	}
	return res.MTU, nil
}

// HasEndpoint reports whether this node's health endpoint exists.
func (h *healthAgent) HasEndpoint() bool {
	a := (*Agent)(h)
	_, ok := a.endpoint(a.healthEndpointID())
	return ok
}

// Targets are the health endpoints of the live peers.
func (h *healthAgent) Targets() []health.Target {
	a := (*Agent)(h)
	if a.cfg.NoInbound {
		return nil // clear VXLAN does not reach this host: the tunnel's probes only
	}
	alive := map[string]bool{}
	for _, n := range a.repl.Alive() {
		alive[n.Name] = !n.NoInbound // ditto for a peer behind a masquerading NAT
	}
	self := a.state.Self()
	var out []health.Target
	for _, e := range a.state.Endpoints() {
		if e.Network == model.HealthNetwork && e.Node != self && alive[e.Node] && e.IP.Is4() {
			out = append(out, health.Target{Node: e.Node, Addr: e.IP, MAC: e.MAC})
		}
	}
	return out
}

// Via is the address in use for each peer reached at more than one, and
// those of its addresses that do not answer from here.
func (h *healthAgent) Via() (map[string]netip.Addr, map[string][]netip.Addr) {
	a := (*Agent)(h)
	pr, ok := a.repl.(PathReporter)
	if !ok {
		return nil, nil
	}
	var via map[string]netip.Addr
	var unreached map[string][]netip.Addr
	for _, p := range pr.Paths() {
		if !p.Probed() {
			continue
		}
		if via == nil {
			via, unreached = map[string]netip.Addr{}, map[string][]netip.Addr{}
		}
		via[p.Peer] = p.Addr
		for _, c := range p.Candidates {
			if !c.Up && (c.Misses > 0 || c.Answers > 0) {
				unreached[p.Peer] = append(unreached[p.Peer], c.Addr)
			}
		}
	}
	return via, unreached
}

// Publish puts this node's view in the cluster state, for 'vxnet health
// --all' and the page on any member.
func (h *healthAgent) Publish(r health.Record) {
	a := (*Agent)(h)
	a.mu.Lock()
	rec, err := a.state.Put(cluster.HealthKey(r.Node), r)
	a.mu.Unlock()
	if err != nil {
		a.log.Warn("publish health view", "err", err)
		return
	}
	a.repl.Publish(rec)
}

// healthReport is this node's view, and its recent verdict changes.
func (a *Agent) healthReport() (api.HealthReport, []health.Event) {
	r := api.HealthReport{Node: a.state.Self(), Enabled: a.healthEnabled(), Peers: []health.Peer{}}
	if !r.Enabled {
		r.Error = "health probes are off (--health-subnet off)"
		return r, nil
	}
	v := a.prober.View()
	r.Via, r.Unreached = (*healthAgent)(a).Via()
	r.At, r.BigSize, r.Namespace, r.Warning, r.Peers, r.TunnelPeers = v.At, v.BigSize, v.Namespace, v.Warning, v.Peers, v.TunnelPeers
	if v.Err != nil {
		r.Error = v.Err.Error()
	}
	return r, v.Events
}

// Health answers GET /v1/health.
func (a *Agent) Health(all bool) api.Health {
	var h api.Health
	h.HealthReport, h.Events = a.healthReport()
	if !all {
		return h
	}
	members := a.repl.Alive()
	noInbound := map[string]bool{a.state.Self(): a.cfg.NoInbound}
	for _, m := range members {
		noInbound[m.Name] = noInbound[m.Name] || m.NoInbound
	}
	for _, r := range a.state.List(cluster.PrefixHealth) {
		rec, err := cluster.Decode[health.Record](r)
		if err != nil || rec.Node == h.Node {
			continue
		}
		rep := api.HealthReport{Node: rec.Node, At: rec.At, Enabled: true, Peers: []health.Peer{}, Via: rec.Via, Unreached: rec.Unreached}
		for _, m := range members {
			if m.Name == rec.Node || m.NoInbound || noInbound[rec.Node] {
				continue // no clear VXLAN to or from a host behind a masquerading NAT
			}
			st, bad := rec.Bad[m.Name]
			if !bad {
				st = health.OK
			}
			rep.Peers = append(rep.Peers, health.Peer{Node: m.Name, Addr: m.Addr, State: st})
		}
		for _, name := range rec.Tunnel {
			st, bad := rec.TunnelBad[name]
			if !bad {
				st = health.OK
			}
			rep.TunnelPeers = append(rep.TunnelPeers, health.Peer{Node: name, State: st, Path: health.PathWireGuard})
		}
		h.All = append(h.All, rep)
	}
	h.All = append(h.All, h.HealthReport) // our own, fresher than our record
	slices.SortFunc(h.All, func(x, y api.HealthReport) int { return cmp.Compare(x.Node, y.Node) })
	return h
}

// errHealthReserved refuses user operations on the health network.
var errHealthReserved = model.Errorf(model.ErrInvalid, "network %s is reserved for vxnet's health probes; pick another name", model.HealthNetwork)
