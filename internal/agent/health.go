package agent

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/model"
)

// Health probing: every agent keeps one endpoint on the reserved health
// network (model.HealthNetwork) in a namespace of its own, and every
// interval sends each live peer's health endpoint a small echo and a
// full-size one with DF. The probes take the containers' path (veth,
// bridge, vxlan, underlay and back), so a path that carries small packets
// but drops full-size ones is reported as an MTU problem, not as healthy.

// HealthPort is the side of health probing that touches the host.
type HealthPort interface {
	// Namespace returns the path of the named namespace for the health
	// endpoint, creating it when needed; onHost is false when the host's
	// mount namespace does not see it (the agent runs in a mount namespace
	// of its own and could not make it in the host's).
	Namespace(name string) (path string, onHost bool, err error)
	// Open returns a pinger sending from inside the namespace at nsPath.
	Open(nsPath string) (Pinger, error)
	// Neighbours makes the permanent neighbour entries of the health
	// endpoint's interface exactly peers (no ARP, nothing counted against
	// the host's neighbour-table limits).
	Neighbours(nsPath, ifname string, peers map[netip.Addr]net.HardwareAddr) error
}

// Pinger sends echo requests and waits for their replies.
type Pinger interface {
	// Ping sends size bytes of ICMP payload (DF set) and returns the
	// round-trip time, or an error when no reply came within timeout.
	Ping(dst netip.Addr, size int, timeout time.Duration) (time.Duration, error)
	Close() error
}

// smallProbe is the ICMP payload of the small probe (as ping's default).
const smallProbe = 56

// maxHealthEvents bounds the recent verdict changes kept for the page.
const maxHealthEvents = 100

// healthState is the agent's health probing state (guarded by mu).
type healthState struct {
	mu      sync.Mutex
	tracker health.Tracker
	err     error // why probing is not running
	at      time.Time
	events  []api.HealthEvent
	// published is the summary last put in the cluster state, and when.
	published   healthRecord
	publishedAt time.Time
	publishGap  time.Duration         // healthPublishGap (tests shorten it)
	ns          string                // the health namespace's path
	warning     string                // what is wrong with it, if anything
	neigh       map[netip.Addr]string // neighbour entries last made there
}

// healthRecord is what a member tells the cluster of its view: small, so
// it travels in one gossip packet in the common case (every path ok).
type healthRecord struct {
	Node string    `json:"node"`
	At   time.Time `json:"at"`
	// Probed is how many peers it probes; Bad their verdicts that are not
	// ok (the others are).
	Probed int                     `json:"probed"`
	Bad    map[string]health.State `json:"bad,omitempty"`
}

func (r healthRecord) same(o healthRecord) bool {
	return r.Node == o.Node && r.Probed == o.Probed && maps.Equal(r.Bad, o.Bad)
}

// Publishing: a changed view at most every healthPublishGap, an unchanged
// one every healthRefresh (so a late joiner and the "as of" stay fresh).
const (
	healthPublishGap = 2 * time.Second
	healthRefresh    = time.Minute
)

func (a *Agent) healthEnabled() bool {
	return a.healthPort != nil && a.cfg.HealthSubnet.IsValid()
}

func (a *Agent) healthInterval() time.Duration {
	return cmp.Or(a.cfg.HealthInterval, time.Second)
}

// healthEndpointID names this node's health endpoint.
func (a *Agent) healthEndpointID() string { return a.state.Self() + ".health" }

// runHealth sets up the health endpoint (retrying until it works) and then
// probes every interval until ctx ends.
func (a *Agent) runHealth(ctx context.Context) {
	if !a.healthEnabled() {
		return
	}
	var p Pinger
	defer func() {
		if p != nil {
			p.Close()
		}
	}()
	backoff := time.Second
	t := time.NewTicker(a.healthInterval())
	defer t.Stop()
	for {
		if p == nil {
			var err error
			p, err = a.setupHealth()
			a.hs.mu.Lock()
			a.hs.err = err
			a.hs.mu.Unlock()
			if err != nil {
				a.log.Warn("health probes not running yet; will retry", "err", err, "retry_in", backoff)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 30*time.Second)
				continue
			}
			backoff = time.Second
			a.log.Info("health probes running", "namespace", a.cfg.HealthNetns, "interval", a.healthInterval())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, ok := a.endpoint(a.healthEndpointID()); !ok {
			// Its namespace went away (and the sweep took the endpoint):
			// make both again.
			a.log.Warn("health endpoint gone; making it again")
			p.Close()
			p = nil
			continue
		}
		a.probeRound(p)
	}
}

// setupHealth makes sure the health network exists (every agent defines it
// the same way, so concurrent creations agree), plugs this node's health
// endpoint into its namespace and opens the pinger there.
func (a *Agent) setupHealth() (Pinger, error) {
	want := api.NetworkCreate{Name: model.HealthNetwork, Subnet: a.cfg.HealthSubnet.String(), VNI: model.HealthVNI, Internal: true}
	if cur, ok := a.state.Network(model.HealthNetwork); ok {
		if cur.Subnet != a.cfg.HealthSubnet {
			a.log.Warn("the cluster's health network has another subnet than --health-subnet; using the cluster's",
				"cluster", cur.Subnet, "flag", a.cfg.HealthSubnet)
		}
	} else if _, err := a.createNetwork(want, ""); err != nil {
		return nil, fmt.Errorf("health network %s (%s): %w", model.HealthNetwork, a.cfg.HealthSubnet, err)
	}
	ns, onHost, err := a.healthPort.Namespace(a.cfg.HealthNetns)
	if err != nil {
		return nil, err
	}
	warning := ""
	if !onHost {
		warning = fmt.Sprintf("the health namespace %s exists only in the agent's mount namespace: 'ip netns' on the host does not show it, "+
			"and a restarted agent makes a new one; run 'vxnet agent --prepare' (same flags) outside the sandbox first, "+
			"as the packaged unit does (ExecStartPre=+), or give the agent CAP_SYS_CHROOT", ns)
		a.log.Warn("health namespace not visible on the host", "namespace", ns, "why", warning)
	}
	// Kept like a runtime's container: present while its namespace path is.
	res, err := a.addEndpoint(endpointRequest{ID: a.healthEndpointID(), Network: model.HealthNetwork, Netns: ns, IfName: "eth0",
		ContainerID: model.HealthNetwork})
	if err != nil {
		return nil, fmt.Errorf("health endpoint: %w", err)
	}
	p, err := a.healthPort.Open(ns)
	if err != nil {
		return nil, err
	}
	a.hs.mu.Lock()
	a.hs.tracker.BigSize = res.MTU // the full-size probe's packet: the inner MTU
	a.hs.ns, a.hs.neigh, a.hs.warning = ns, nil, warning
	a.hs.mu.Unlock()
	return p, nil
}

type healthTarget struct {
	node string
	addr netip.Addr
	mac  string
}

// healthTargets are the health endpoints of the live peers.
func (a *Agent) healthTargets() []healthTarget {
	alive := map[string]bool{}
	for _, n := range a.repl.Alive() {
		alive[n.Name] = true
	}
	self := a.state.Self()
	var out []healthTarget
	for _, e := range a.state.Endpoints() {
		if e.Network == model.HealthNetwork && e.Node != self && alive[e.Node] && e.IP.Is4() {
			out = append(out, healthTarget{e.Node, e.IP, e.MAC})
		}
	}
	return out
}

// probeRound probes every target once (small and full-size at the same
// time, all targets in parallel) and records the verdicts.
func (a *Agent) probeRound(p Pinger) {
	targets := a.healthTargets()
	a.syncHealthNeighbours(targets)
	a.hs.mu.Lock()
	mtu := a.hs.tracker.BigSize
	a.hs.mu.Unlock()
	timeout := a.healthInterval() * 8 / 10
	results := make([]health.Result, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(2)
		go func() {
			defer wg.Done()
			rtt, err := p.Ping(t.addr, smallProbe, timeout)
			results[i].Small, results[i].RTT = err == nil, rtt
		}()
		go func() {
			defer wg.Done()
			_, err := p.Ping(t.addr, mtu-28, timeout)
			results[i].Big = err == nil
		}()
	}
	wg.Wait()
	now := time.Now()
	keep := map[string]bool{}
	var changes []health.Change
	a.hs.mu.Lock()
	for i, t := range targets {
		keep[t.node] = true
		if c, ok := a.hs.tracker.Record(t.node, t.addr, results[i], now); ok {
			changes = append(changes, c)
			a.hs.events = append(a.hs.events, api.HealthEvent{At: now, Peer: c.Node, From: c.From, To: c.To, Cause: c.Cause})
		}
	}
	if n := len(a.hs.events); n > maxHealthEvents {
		a.hs.events = append([]api.HealthEvent(nil), a.hs.events[n-maxHealthEvents:]...)
	}
	a.hs.tracker.Forget(keep)
	a.hs.at = now
	rec := healthRecord{Node: a.state.Self(), At: now, Probed: len(targets)}
	for _, p := range a.hs.tracker.Peers() {
		if p.State != health.OK {
			if rec.Bad == nil {
				rec.Bad = map[string]health.State{}
			}
			rec.Bad[p.Node] = p.State
		}
	}
	since := now.Sub(a.hs.publishedAt)
	publish := (!rec.same(a.hs.published) && since >= a.hs.publishGap) || since >= healthRefresh
	if publish {
		a.hs.published, a.hs.publishedAt = rec, now
	}
	a.hs.mu.Unlock()
	for _, c := range changes {
		switch c.To {
		case health.OK, health.Unknown:
			a.log.Info("overlay path to peer", "peer", c.Node, "state", c.To, "was", c.From)
		default:
			a.log.Warn("overlay path to peer", "peer", c.Node, "state", c.To, "was", c.From, "cause", c.Cause)
		}
	}
	if publish {
		a.publishHealth(rec)
	}
}

// syncHealthNeighbours keeps a permanent neighbour entry per target in the
// health namespace (when the targets changed).
func (a *Agent) syncHealthNeighbours(targets []healthTarget) {
	want := map[netip.Addr]string{}
	macs := map[netip.Addr]net.HardwareAddr{}
	for _, t := range targets {
		mac, err := net.ParseMAC(t.mac)
		if err != nil {
			continue
		}
		want[t.addr], macs[t.addr] = t.mac, mac
	}
	a.hs.mu.Lock()
	ns, same := a.hs.ns, a.hs.neigh != nil && maps.Equal(a.hs.neigh, want)
	a.hs.mu.Unlock()
	if same {
		return
	}
	if err := a.healthPort.Neighbours(ns, "eth0", macs); err != nil {
		a.log.Warn("health neighbours", "err", err)
		return
	}
	a.hs.mu.Lock()
	a.hs.neigh = want
	a.hs.mu.Unlock()
}

// healthReport is this node's view.
func (a *Agent) healthReport() api.HealthReport {
	r := api.HealthReport{Node: a.state.Self(), Enabled: a.healthEnabled(), Peers: []health.Peer{}}
	a.hs.mu.Lock()
	defer a.hs.mu.Unlock()
	r.At, r.BigSize, r.Namespace, r.Warning = a.hs.at, a.hs.tracker.BigSize, a.hs.ns, a.hs.warning
	if a.hs.err != nil {
		r.Error = a.hs.err.Error()
	}
	if !r.Enabled {
		r.Error = "health probes are off (--health-subnet off)"
	}
	r.Peers = append(r.Peers, a.hs.tracker.Peers()...)
	return r
}

// publishHealth puts this node's view in the cluster state, for 'vxnet
// health --all' and the page on any member.
func (a *Agent) publishHealth(r healthRecord) {
	a.mu.Lock()
	rec, err := a.state.Put(cluster.HealthKey(r.Node), r)
	a.mu.Unlock()
	if err != nil {
		a.log.Warn("publish health view", "err", err)
		return
	}
	a.repl.Publish(rec)
}

// Health answers GET /v1/health.
func (a *Agent) Health(all bool) api.Health {
	h := api.Health{HealthReport: a.healthReport()}
	a.hs.mu.Lock()
	h.Events = append([]api.HealthEvent(nil), a.hs.events...)
	a.hs.mu.Unlock()
	if !all {
		return h
	}
	members := a.repl.Alive()
	for _, r := range a.state.List(cluster.PrefixHealth) {
		rec, err := cluster.Decode[healthRecord](r)
		if err != nil || rec.Node == h.Node {
			continue
		}
		rep := api.HealthReport{Node: rec.Node, At: rec.At, Enabled: true, Peers: []health.Peer{}}
		for _, m := range members {
			if m.Name == rec.Node {
				continue
			}
			st, bad := rec.Bad[m.Name]
			if !bad {
				st = health.OK
			}
			rep.Peers = append(rep.Peers, health.Peer{Node: m.Name, Addr: m.Addr, State: st})
		}
		h.All = append(h.All, rep)
	}
	h.All = append(h.All, h.HealthReport) // our own, fresher than our record
	sort.Slice(h.All, func(i, j int) bool { return h.All[i].Node < h.All[j].Node })
	return h
}

// errHealthReserved refuses user operations on the health network.
var errHealthReserved = model.Errorf(model.ErrInvalid, "network %s is reserved for vxnet's health probes; pick another name", model.HealthNetwork)
