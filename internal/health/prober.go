package health

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// The prober: every interval, from this host's health endpoint (in a
// namespace of its own), a small echo and a full-size one with DF to each
// live peer's health endpoint. The probes take the containers' path (veth,
// bridge, vxlan, underlay and back), so a path that carries small packets
// but drops full-size ones is reported as an MTU problem, not as healthy.
// The prober owns the verdicts; the agent, behind Agent, owns the health
// network, the endpoints and the cluster state.

// Port is the side of probing that touches the host.
type Port interface {
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
	// OpenTunnel returns a pinger sending ICMPv6 from the host's own
	// namespace (to the peers' tunnel addresses, through WireGuard).
	OpenTunnel() (Pinger, error)
}

// Pinger sends echo requests and waits for their replies.
type Pinger interface {
	// Ping sends size bytes of ICMP payload (DF set) and returns the
	// round-trip time, or an error when no reply came within timeout.
	Ping(dst netip.Addr, size int, timeout time.Duration) (time.Duration, error)
	Close() error
}

// Agent is what the prober needs of the agent.
type Agent interface {
	// Endpoint makes sure the health network exists and this node's health
	// endpoint is plugged into the namespace at nsPath; it returns the
	// endpoint's MTU (the full-size probe's size).
	Endpoint(nsPath string) (mtu int, err error)
	// HasEndpoint reports whether this node's health endpoint still exists
	// (its namespace may have gone, and the endpoint with it).
	HasEndpoint() bool
	// Targets are the live peers' health endpoints.
	Targets() []Target
	// TunnelTargets are the live peers' tunnel addresses, while this host
	// carries an encrypted network, and the tunnel's MTU.
	TunnelTargets() ([]Target, int)
	// Via is, for each peer reached at more than one address, the one in
	// use (nil: none such); Unreached its addresses that do not answer
	// from here.
	Via() (via map[string]netip.Addr, unreached map[string][]netip.Addr)
	// Publish puts this node's view in the cluster state.
	Publish(Record)
}

// Target is a peer's health endpoint.
type Target struct {
	Node string
	Addr netip.Addr
	MAC  string
}

// Record is what a member tells the cluster of its view: small, so it
// travels in one gossip packet in the common case (every path ok).
type Record struct {
	Node string    `json:"node"`
	At   time.Time `json:"at"`
	// Probed is how many peers it probes; Bad their verdicts that are not
	// ok (the others are).
	Probed int                `json:"probed"`
	Bad    map[string]Verdict `json:"bad,omitempty"`
	// Tunnel lists the peers it probes through the WireGuard tunnel;
	// TunnelBad their verdicts that are not ok.
	Tunnel    []string           `json:"tunnel,omitempty"`
	TunnelBad map[string]Verdict `json:"tunnelBad,omitempty"`
	// Via is, for each peer reached at more than one address, the one this
	// member uses (so each side sees both directions of a pair).
	Via map[string]netip.Addr `json:"via,omitempty"`
	// Unreached are, for each peer reached at more than one address, those
	// that do not answer this member's probes.
	Unreached map[string][]netip.Addr `json:"unreached,omitempty"`
}

// Same reports whether two records say the same (their times aside).
func (r Record) Same(o Record) bool {
	return r.Node == o.Node && r.Probed == o.Probed && maps.Equal(r.Bad, o.Bad) &&
		slices.Equal(r.Tunnel, o.Tunnel) && maps.Equal(r.TunnelBad, o.TunnelBad) && maps.Equal(r.Via, o.Via) &&
		maps.EqualFunc(r.Unreached, o.Unreached, slices.Equal[[]netip.Addr])
}

// Event is one change of a verdict.
type Event struct {
	At    time.Time `json:"at"`
	Peer  string    `json:"peer"`
	From  Verdict   `json:"from"`
	To    Verdict   `json:"to"`
	Cause string    `json:"cause,omitempty"`
}

// View is this node's probing as it stands.
type View struct {
	At        time.Time // of the last round (zero: none yet)
	BigSize   int
	Namespace string
	Warning   string // what is wrong with the namespace, if anything
	Err       error  // why probing is not running
	Peers     []Peer
	// TunnelPeers are the verdicts on the encrypted networks' path (host
	// to host through WireGuard), while this host carries one.
	TunnelPeers []Peer
	Events      []Event // the recent verdict changes, newest last
}

// ProberConfig configures a prober.
type ProberConfig struct {
	// Netns names the namespace of the health endpoint (/run/netns/NAME).
	Netns    string
	Node     string
	Interval time.Duration // default 1 s
	// PublishGap spaces the publication of a changed view (default 2 s);
	// an unchanged one is published every Refresh (default a minute), so
	// a late joiner and the "as of" stay fresh.
	PublishGap, Refresh time.Duration
	Log                 *slog.Logger
	// OnRound, when set, is given the overlay verdicts after each round.
	OnRound func([]Peer)
}

// smallProbe is the ICMP payload of the small probe (as ping's default).
const smallProbe = 56

// maxEvents bounds the recent verdict changes kept for the page.
const maxEvents = 100

// Prober probes the peers and keeps the verdicts.
type Prober struct {
	cfg   ProberConfig
	port  Port
	agent Agent
	log   *slog.Logger

	mu      sync.Mutex
	tracker Tracker
	// tunnel tracks the WireGuard path (its pinger opened when there are
	// tunnel targets, closed when there are none).
	tunnel       Tracker
	tunnelPinger Pinger
	err          error
	at           time.Time
	events       []Event
	// published is the view last put in the cluster state, and when.
	published   Record
	publishedAt time.Time
	ns          string
	warning     string
	neigh       map[netip.Addr]string // neighbour entries last made there
}

// NewProber returns a prober; Run starts it.
func NewProber(cfg ProberConfig, port Port, agent Agent) *Prober {
	cfg.Interval = cmp.Or(cfg.Interval, time.Second)
	cfg.PublishGap = cmp.Or(cfg.PublishGap, 2*time.Second)
	cfg.Refresh = cmp.Or(cfg.Refresh, time.Minute)
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Prober{cfg: cfg, port: port, agent: agent, log: cfg.Log, tunnel: Tracker{Path: PathWireGuard}}
}

// Run sets up the health endpoint (retrying until it works) and then
// probes every interval until ctx ends.
func (p *Prober) Run(ctx context.Context) {
	var pinger Pinger
	defer func() {
		if pinger != nil {
			pinger.Close()
		}
		p.closeTunnel()
	}()
	backoff := time.Second
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		if pinger == nil {
			var err error
			pinger, err = p.Setup()
			p.mu.Lock()
			p.err = err
			p.mu.Unlock()
			if err != nil {
				p.log.Warn("health probes not running yet; will retry", "err", err, "retry_in", backoff)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 30*time.Second)
				continue
			}
			backoff = time.Second
			p.log.Info("health probes running", "namespace", p.cfg.Netns, "interval", p.cfg.Interval)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !p.agent.HasEndpoint() {
			// Its namespace went away (and the sweep took the endpoint):
			// make both again.
			p.log.Warn("health endpoint gone; making it again")
			pinger.Close()
			pinger = nil
			continue
		}
		p.Round(pinger)
	}
}

// Setup makes the namespace, has the agent plug the endpoint into it and
// opens the pinger there.
func (p *Prober) Setup() (Pinger, error) {
	ns, onHost, err := p.port.Namespace(p.cfg.Netns)
	if err != nil {
		return nil, err
	}
	warning := ""
	if !onHost {
		warning = fmt.Sprintf("the health namespace %s exists only in the agent's mount namespace: 'ip netns' on the host does not show it, "+
			"and a restarted agent makes a new one; run 'vxnet agent --prepare' (same flags) outside the sandbox first, "+
			"as the packaged unit does (ExecStartPre=+), or give the agent CAP_SYS_CHROOT", ns)
		p.log.Warn("health namespace not visible on the host", "namespace", ns, "why", warning)
	}
	mtu, err := p.agent.Endpoint(ns)
	if err != nil {
		return nil, err
	}
	pinger, err := p.port.Open(ns)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.tracker.BigSize = mtu // the full-size probe's packet: the inner MTU
	p.ns, p.neigh, p.warning = ns, nil, warning
	p.mu.Unlock()
	return pinger, nil
}

// Round probes every target once (small and full-size at the same time,
// all targets in parallel) and records the verdicts.
func (p *Prober) Round(pinger Pinger) {
	targets := p.agent.Targets()
	p.syncNeighbours(targets)
	p.mu.Lock()
	mtu := p.tracker.BigSize
	p.mu.Unlock()
	tunTargets, tunMTU := p.agent.TunnelTargets()
	via, unreached := p.agent.Via()
	tunPinger := p.tunnelPingerFor(len(tunTargets) > 0)
	if tunPinger == nil {
		tunTargets = nil
	}
	var results, tunResults []Result
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); results = p.probe(pinger, targets, mtu-28) }()
	go func() { defer wg.Done(); tunResults = p.probe(tunPinger, tunTargets, tunMTU-48) }() // ICMPv6: 40 + 8
	wg.Wait()
	now := time.Now()
	keep := map[string]bool{}
	var changes []Change
	p.mu.Lock()
	for i, t := range targets {
		keep[t.Node] = true
		if c, ok := p.tracker.Record(t.Node, t.Addr, results[i], now); ok {
			changes = append(changes, c)
			p.events = append(p.events, Event{At: now, Peer: c.Node, From: c.From, To: c.To, Cause: c.Cause})
		}
	}
	tunKeep := map[string]bool{}
	p.tunnel.BigSize = tunMTU
	for i, t := range tunTargets {
		tunKeep[t.Node] = true
		if c, ok := p.tunnel.Record(t.Node, t.Addr, tunResults[i], now); ok {
			c.Node += " (" + PathWireGuard + ")"
			changes = append(changes, c)
			p.events = append(p.events, Event{At: now, Peer: c.Node, From: c.From, To: c.To, Cause: c.Cause})
		}
	}
	p.tunnel.Forget(tunKeep)
	if n := len(p.events); n > maxEvents {
		p.events = append([]Event(nil), p.events[n-maxEvents:]...)
	}
	p.tracker.Forget(keep)
	p.at = now
	rec := Record{Node: p.cfg.Node, At: now, Probed: len(targets), Via: via, Unreached: unreached}
	for _, peer := range p.tracker.Peers() {
		if peer.State != OK {
			if rec.Bad == nil {
				rec.Bad = map[string]Verdict{}
			}
			rec.Bad[peer.Node] = peer.State
		}
	}
	for _, peer := range p.tunnel.Peers() {
		rec.Tunnel = append(rec.Tunnel, peer.Node)
		if peer.State != OK {
			if rec.TunnelBad == nil {
				rec.TunnelBad = map[string]Verdict{}
			}
			rec.TunnelBad[peer.Node] = peer.State
		}
	}
	since := now.Sub(p.publishedAt)
	publish := (!rec.Same(p.published) && since >= p.cfg.PublishGap) || since >= p.cfg.Refresh
	if publish {
		p.published, p.publishedAt = rec, now
	}
	p.mu.Unlock()
	for _, c := range changes {
		switch c.To {
		case OK, Unknown:
			p.log.Info("path to peer", "peer", c.Node, "state", c.To, "was", c.From)
		default:
			p.log.Warn("path to peer", "peer", c.Node, "state", c.To, "was", c.From, "cause", c.Cause)
		}
	}
	if publish {
		p.agent.Publish(rec)
	}
	if p.cfg.OnRound != nil {
		p.cfg.OnRound(p.View().Peers)
	}
}

// probe sends one small and one full-size (big bytes of payload) echo to
// each target, all at once, and returns the results in the targets' order.
func (p *Prober) probe(pinger Pinger, targets []Target, big int) []Result {
	timeout := p.cfg.Interval * 8 / 10
	results := make([]Result, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(2)
		go func() {
			defer wg.Done()
			rtt, err := pinger.Ping(t.Addr, smallProbe, timeout)
			results[i].Small, results[i].RTT = err == nil, rtt
		}()
		go func() {
			defer wg.Done()
			_, err := pinger.Ping(t.Addr, big, timeout)
			results[i].Big = err == nil
		}()
	}
	wg.Wait()
	return results
}

// tunnelPingerFor returns the pinger of the tunnel path, opening it when
// wanted and there is none, closing it when not wanted (nil then, or when
// it cannot be opened: the tunnel path goes unprobed this round).
func (p *Prober) tunnelPingerFor(want bool) Pinger {
	if !want {
		p.closeTunnel()
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tunnelPinger == nil {
		pg, err := p.port.OpenTunnel()
		if err != nil {
			p.log.Warn("tunnel probes not running", "err", err)
			return nil
		}
		p.tunnelPinger = pg
	}
	return p.tunnelPinger
}

func (p *Prober) closeTunnel() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tunnelPinger != nil {
		p.tunnelPinger.Close()
		p.tunnelPinger = nil
	}
	p.tunnel.Forget(nil)
}

// syncNeighbours keeps a permanent neighbour entry per target in the
// health namespace (when the targets changed).
func (p *Prober) syncNeighbours(targets []Target) {
	want := map[netip.Addr]string{}
	macs := map[netip.Addr]net.HardwareAddr{}
	for _, t := range targets {
		mac, err := net.ParseMAC(t.MAC)
		if err != nil {
			continue
		}
		want[t.Addr], macs[t.Addr] = t.MAC, mac
	}
	p.mu.Lock()
	ns, same := p.ns, p.neigh != nil && maps.Equal(p.neigh, want)
	p.mu.Unlock()
	if same {
		return
	}
	if err := p.port.Neighbours(ns, "eth0", macs); err != nil {
		p.log.Warn("health neighbours", "err", err)
		return
	}
	p.mu.Lock()
	p.neigh = want
	p.mu.Unlock()
}

// SetError records why probing is not running (tests).
func (p *Prober) SetError(err error) {
	p.mu.Lock()
	p.err = err
	p.mu.Unlock()
}

// View returns this node's probing as it stands.
func (p *Prober) View() View {
	p.mu.Lock()
	defer p.mu.Unlock()
	return View{At: p.at, BigSize: p.tracker.BigSize, Namespace: p.ns, Warning: p.warning, Err: p.err,
		Peers: append([]Peer{}, p.tracker.Peers()...), TunnelPeers: p.tunnel.Peers(), Events: append([]Event(nil), p.events...)}
}
