// Package agent is vxnet's per-host core: it keeps the replicated state,
// runs the one endpoint transaction every front door calls (local API,
// Docker driver, CNI), and runs the reconcile loop that programs this host's
// kernel from the cluster state.
//
// Its side effects are injected (Deps): the dataplane, the replicator that
// spreads the state between hosts, the host's address lookups and the local
// dockerd. cmd/vxnet wires the real ones; the unit tests wire fakes.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/config"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/docker"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/metrics"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/paths"
	"github.com/vxnet/vxnet/internal/trace"
	"github.com/vxnet/vxnet/internal/version"
)

// Config configures an agent (config.Agent: built from flags, the JSON
// file and the defaults by internal/config).
type Config = config.Agent

// Replicator spreads the cluster state between hosts and tells who is
// alive: gossip (cluster/gossip) or etcd (cluster/etcd).
type Replicator interface {
	// Publish sends changed records to the other members.
	Publish(recs ...cluster.Record)
	// Alive lists the members whose endpoints are programmed, self included.
	Alive() []model.Node
	// Members lists every member known, failed ones included.
	Members() []cluster.Member
	// MalformedMessages counts messages refused from the network.
	MalformedMessages() int64
	// Traffic counts the messages and bytes sent and received.
	Traffic() cluster.Traffic
	// Request calls an operation on one member and returns its answer.
	Request(node, op string, body any, timeout time.Duration) (json.RawMessage, error)
	// Shutdown stops without leaving (peers keep our endpoints until
	// failure detection).
	Shutdown() error
}

// What only some stores do is an interface of its own, which a replicator
// implements or not.

// PathReporter is a replicator that picks the address each peer is
// reached at (gossip: it probes the addresses of peers that list several).
type PathReporter interface {
	Paths() []paths.Path
}

// Joiner is a replicator whose members find each other by contacting one
// (gossip); with etcd every member finds the others in the store.
type Joiner interface {
	// Join contacts members; it succeeds when at least one answered.
	Join(addrs []string) (int, error)
}

// Keyring is a replicator that encrypts with cluster keys (gossip); etcd
// connections are secured by etcd's own TLS.
type Keyring interface {
	// KeyOp installs, uses or removes a key.
	KeyOp(op string, key []byte) error
	// Keys returns the keyring, the primary key first.
	Keys() [][]byte
}

// Claimer is a replicator that can write a record only if no other member
// holds its key (etcd): address blocks are then claimed with the store's
// consistency. When another member holds it, Claim returns its record.
type Claimer interface {
	Claim(rec cluster.Record) (won bool, holder cluster.Record, err error)
}

// ReplicatorConfig is what the agent hands the replicator it starts.
type ReplicatorConfig struct {
	// State is the agent's replicated state, restored from its store.
	State *cluster.State
	// Keys are the cluster keys to use (the saved keyring after a rotation).
	Keys [][]byte
	// OnChange is called when state or membership changed.
	OnChange func()
	// OnSelfConflict is called when members still know this node at an
	// old address.
	OnSelfConflict func()
	// OnNameClaimed is called when a live agent elsewhere uses this node's
	// name (the replicator refuses it).
	OnNameClaimed func(addr netip.Addr)
	// OnCall answers other members' requests.
	OnCall func(op string, body json.RawMessage) (any, error)
}

// HostNet answers questions about this host's network: its addresses, ports and redirections.
type HostNet interface {
	// Underlay returns the device holding addr and its MTU.
	Underlay(addr netip.Addr) (dev string, mtu int, err error)
	// HasAddr reports whether addr is configured on an interface.
	HasAddr(addr netip.Addr) (bool, error)
	// PortFree reports an error naming what holds a host port (proto tcp
	// or udp) when something on the host listens there.
	PortFree(proto string, port uint16) error
	// OriginalDst returns where a query redirected to the resolver was
	// going (see dns.Upstream).
	OriginalDst(proto string, client, local netip.AddrPort) (netip.AddrPort, error)
}

// Deps are the agent's side effects.
type Deps struct {
	Dataplane datapath.Dataplane
	HostNet   HostNet
	// StartReplicator starts the replicator over the agent's state.
	StartReplicator func(ReplicatorConfig) (Replicator, error)
	// Dockerd is the local dockerd (nil: none to keep in step).
	Dockerd docker.Dockerd
	// Health sends the health probes (nil: none).
	Health health.Port
	// Tracer taps interfaces for 'vxnet trace' (nil: no tracing).
	Tracer trace.Tracer
	// TunnelKeys makes the host's WireGuard key pair anew (nil: none).
	TunnelKeys TunnelKeys
}

// TunnelKeys replaces the host's WireGuard key pair, giving the dataplane
// the new private key and returning the public one.
type TunnelKeys interface {
	Rotate() (public string, err error)
}

// Agent is the core of one host.
//
// Lock order: mu before kernelMu; stats.mu is a leaf (nothing is taken
// while holding it). The services beside the agent (the Docker driver,
// the health prober, the trace) hold their own locks only while touching
// their own state, never while calling the agent, so they are leaves too.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	state    *cluster.State
	repl     Replicator
	store    *store
	dp       datapath.Dataplane
	host     HostNet
	underlay underlay

	dirty chan struct{}
	fatal chan error // an error that stops Run (see fail)

	// mu serialises the agent's own writes to the cluster state: address
	// allocation, endpoint and network records, local endpoints, keyring.
	mu  sync.Mutex
	own ownState // guarded by mu
	// kernelMu serialises kernel programming (see pass).
	kernelMu sync.Mutex

	saved     saved
	rejoining atomic.Bool
	// restored is set while a restarted agent's saved state has not met
	// the cluster yet (until its first join answers or gives up): the
	// resolver then counts the saved endpoints' hosts as alive.
	restored atomic.Bool
	stats    passStats
	metrics  *metrics.Metrics

	docker *docker.Driver
	prober *health.Prober // nil without health probes
	traces *trace.Service // nil without a tracer

	tunnelKeys TunnelKeys
	tunnelKey  atomic.Pointer[string] // this host's public key ("": none)
}

// underlay is the device the advertise address is on, its MTU and the
// family VXLAN runs over.
type underlay struct {
	dev string
	mtu int
	v6  bool
}

// networkMTU is the MTU of a network on this host (its vxlan device,
// bridge and every port): the one place it is derived, from the
// network's own setting and the underlay (reconcile derives the devices'
// from the same inputs, which the pass hands it).
func (u underlay) networkMTU(n model.Network) (int, error) {
	return model.NetworkMTU(n, u.mtu, u.v6)
}

// ownState is what this agent holds of its own (Agent.mu).
type ownState struct {
	locals map[string]localEndpoint
	// reserved holds addresses handed to Docker endpoints not joined yet.
	reserved map[netip.Addr]string
}

// saved is what the loop last wrote to the store.
type saved struct {
	gen     atomic.Uint64 // state generation
	members []string      // member addresses (loop only)
}

// passStats are the reconcile passes' figures for status and metrics.
type passStats struct {
	mu sync.Mutex
	// fastHooks and fastEntries are the last pass's fast path (mu).
	fastHooks, fastEntries int
	lastSync               time.Time
	lastDur                time.Duration
	syncErr                error
	addrErr                error // the advertise address is gone from this host
	conflicts              []string
	claimedBy              map[netip.Addr]time.Time // other agents seen using this node's name
	syncs                  atomic.Int64
	kernelOps              atomic.Int64
	foreign                []model.ForeignVXLAN // the VXLAN devices vxnet did not make, last seen
	tunnel                 *datapath.Tunnel     // the WireGuard device, last seen
}

// lastForeign is the last pass's view of the VXLAN devices vxnet did not make.
func (p *passStats) lastForeign() []model.ForeignVXLAN {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.foreign
}

// fail stops Run with err (the first one wins).
func (a *Agent) fail(err error) {
	select {
	case a.fatal <- err:
	default:
	}
}

// New prepares an agent: store, state, underlay, replicator. Call Run to
// serve. The caller owns deps.Dataplane and closes it after Run.
func New(cfg Config, deps Deps) (*Agent, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ResyncInterval == 0 {
		cfg.ResyncInterval = 10 * time.Second
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Dataplane == nil || deps.HostNet == nil || deps.StartReplicator == nil {
		return nil, errors.New("agent: a dataplane, a host and a replicator are required")
	}
	st, err := openStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Log, store: st, dp: deps.Dataplane, host: deps.HostNet,
		dirty: make(chan struct{}, 1), own: ownState{reserved: map[netip.Addr]string{}}, fatal: make(chan error, 1)}
	a.stats.claimedBy = map[netip.Addr]time.Time{}
	ok := false
	defer func() {
		if !ok {
			st.close()
		}
	}()
	name, err := st.identity(cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("node identity: %w", err)
	}
	if name != cfg.Name {
		return nil, fmt.Errorf("state directory %s belongs to node %q, not %q: use --name %s or another --state-dir", cfg.StateDir, name, cfg.Name, name)
	}
	a.state = cluster.NewState(name)
	saved, err := st.loadState()
	if err != nil {
		return nil, fmt.Errorf("load saved state: %w", err)
	}
	a.state.Restore(saved.Records, saved.Clock)
	a.restored.Store(len(saved.Records) > 0)
	if a.own.locals, err = st.locals(); err != nil {
		return nil, err
	}
	keys := cfg.Keys
	if len(keys) > 0 {
		saved, err := loadKeyring(cfg.StateDir)
		if err != nil {
			return nil, err
		}
		if len(saved) > 0 {
			cfg.Log.Info("using the keyring saved by a key rotation", "keys", len(saved), "primary", cluster.Fingerprint(saved[0]))
			keys = saved
		}
	}
	a.underlay.dev, a.underlay.mtu, err = deps.HostNet.Underlay(cfg.AdvertiseAddr)
	a.underlay.v6 = cfg.AdvertiseAddr.Is6()
	if err != nil {
		return nil, err
	}
	a.metrics = metrics.New((*metricsSource)(a))
	if deps.Health != nil {
		a.prober = a.newProber(deps.Health, healthPublishGap)
	}
	a.docker = docker.NewDriver((*dockerAgent)(a), deps.Dockerd, a.log.With("component", "docker"))
	a.tunnelKeys = deps.TunnelKeys
	a.tunnelKey.Store(&cfg.TunnelKey)
	if deps.Tracer != nil {
		a.traces = trace.NewService(trace.Config{VXLANPort: cfg.VXLANPort, Fast: cfg.Datapath.Mode == config.DatapathBPF, Log: a.log}, deps.Tracer, (*traceAgent)(a))
	}
	a.repl, err = deps.StartReplicator(ReplicatorConfig{State: a.state, Keys: keys,
		OnChange: a.Resync, OnSelfConflict: a.rejoinLater, OnNameClaimed: a.nameClaimed, OnCall: a.onCall})
	if err != nil {
		return nil, err
	}
	ok = true
	return a, nil
}

// checkAddr reports, in status and once in the log, when the advertise
// address is no longer on this host: peers keep sending VXLAN to it, so
// nothing reaches this host's containers until the agent restarts with its
// new address. Checked on every resync tick.
func (a *Agent) checkAddr() {
	ok, err := a.host.HasAddr(a.cfg.AdvertiseAddr)
	if err != nil {
		a.log.Warn("check advertise address", "err", err)
		return
	}
	var lost error
	if !ok {
		lost = fmt.Errorf("advertise address %s is no longer on any interface of this host: peers cannot reach it; restart the agent with its new address (--advertise-addr, or none to take the default route's)", a.cfg.AdvertiseAddr)
	}
	a.stats.mu.Lock()
	was := a.stats.addrErr
	a.stats.addrErr = lost
	a.stats.mu.Unlock()
	switch {
	case lost != nil && was == nil:
		a.log.Error("advertise address lost", "addr", a.cfg.AdvertiseAddr, "err", lost)
	case lost == nil && was != nil:
		a.log.Info("advertise address back", "addr", a.cfg.AdvertiseAddr)
	}
}

// nameClaimed records that a live agent at addr uses this node's name; it
// is shown in status for an hour.
func (a *Agent) nameClaimed(addr netip.Addr) {
	a.stats.mu.Lock()
	defer a.stats.mu.Unlock()
	a.stats.claimedBy[addr] = time.Now()
	a.Resync()
}

// nameClaimNotices describes the other agents seen using this node's name
// within the last hour (stats.mu held).
func (a *Agent) nameClaimNoticesLocked() []string {
	var out []string
	for addr, at := range a.stats.claimedBy {
		if time.Since(at) > time.Hour {
			delete(a.stats.claimedBy, addr)
			continue
		}
		out = append(out, fmt.Sprintf("name-in-use: an agent at %s also calls itself %q (seen %s); the members refuse it: give that host its own --name",
			addr, a.cfg.Name, at.UTC().Format(time.RFC3339)))
	}
	slices.Sort(out)
	return out
}

// rejoinLater joins again once the members have declared this node's old
// address dead and may accept the new one (one pending rejoin at a time).
func (a *Agent) rejoinLater() {
	if len(a.cfg.Join) == 0 || !a.rejoining.CompareAndSwap(false, true) {
		return
	}
	probe := a.cfg.ProbeInterval
	if probe == 0 {
		probe = time.Second
	}
	time.AfterFunc(8*probe, func() {
		defer a.rejoining.Store(false)
		j, ok := a.repl.(Joiner)
		if !ok {
			return
		}
		if _, err := j.Join(a.cfg.Join); err != nil {
			a.log.Warn("rejoin after address change", "err", err)
			return
		}
		a.log.Info("rejoined the cluster with the new address")
	})
}

// persist writes the cluster state to the store unless it has not changed
// since the last write (the loop and the front doors both call it).
func (a *Agent) persist() error {
	gen := a.state.Generation()
	if gen == a.saved.gen.Load() {
		return nil
	}
	if err := a.store.saveState(a.state); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	a.saved.gen.Store(gen)
	return nil
}

func (a *Agent) persistOrLog() {
	if err := a.persist(); err != nil {
		a.log.Error("persist", "err", err)
	}
}

// rememberMembers saves the other members' addresses when they changed.
func (a *Agent) rememberMembers() {
	var addrs []string
	for _, n := range a.repl.Alive() {
		if n.Name != a.state.Self() {
			addrs = append(addrs, n.Addr.String())
		}
	}
	if len(addrs) == 0 || slices.Equal(addrs, a.saved.members) {
		return
	}
	if err := a.store.saveMembers(addrs); err != nil {
		a.log.Error("save members", "err", err)
		return
	}
	a.saved.members = addrs
}

// Resync asks for a reconcile pass now (a change, a host firewall reloaded).
func (a *Agent) Resync() {
	select {
	case a.dirty <- struct{}{}:
	default:
	}
}

// Run joins the cluster and reconciles until ctx ends; what the agent
// serves (the API, the Docker driver, metrics, names) the caller opens
// beside it (cmd/vxnet). A caller that does not Run after New calls Close.
func (a *Agent) Run(ctx context.Context) error {
	defer a.store.close()
	a.log.Info("agent started", "node", a.state.Self(), "addr", a.cfg.AdvertiseAddr, "underlay", a.underlay.dev,
		"underlay_mtu", a.underlay.mtu, "socket", a.cfg.Socket, "encrypted", len(a.cfg.Keys) > 0)
	a.announce()
	a.joinKnown(ctx)
	loopCtx, stopLoop := context.WithCancel(ctx)
	defer stopLoop()
	loopDone := make(chan struct{})
	var fatal error
	select {
	case fatal = <-a.fatal: // refused while joining: never program the kernel
		close(loopDone)
	default:
		go func() { a.loop(loopCtx); close(loopDone) }()
		if a.healthEnabled() {
			go a.prober.Run(loopCtx)
		}
		select {
		case <-ctx.Done():
		case fatal = <-a.fatal:
		}
	}
	if fatal != nil {
		a.log.Error("stopping", "err", fatal)
		stopLoop()
	}
	<-loopDone
	a.persistOrLog()
	// Stop without leaving: the kernel keeps forwarding and peers keep our
	// endpoints until failure detection, so a restart is invisible. (Never
	// leave after a name clash either: the leave would speak for the other
	// agent of that name.)
	return errors.Join(fatal, a.repl.Shutdown())
}

// Close releases what New started (the replicator, the store), for a
// caller that gives up before Run.
func (a *Agent) Close() error {
	err := a.repl.Shutdown()
	a.store.close()
	return err
}

// Instrument counts the requests of a front door (api, docker) in the
// agent's metrics.
func (a *Agent) Instrument(door string, h http.Handler) http.Handler {
	return a.metrics.Instrument(door, h)
}

// MetricsHandler serves the agent's Prometheus metrics (GET /metrics).
func (a *Agent) MetricsHandler() http.Handler { return a.metrics.Handler() }

// metricsSource is the agent as its metrics read it.
type metricsSource Agent

func (m *metricsSource) Status(withEndpoints bool) api.Status {
	return (*Agent)(m).Status(withEndpoints)
}
func (m *metricsSource) Traffic() cluster.Traffic { return m.repl.Traffic() }
func (m *metricsSource) HealthPeers() []health.Peer {
	r, _ := (*Agent)(m).healthReport()
	return r.Peers
}

// announce records this node's version and the VXLAN devices vxnet did
// not make here in the cluster state (when they changed): every member's
// status shows the versions, and networks avoid those devices' VNIs.
func (a *Agent) announce() {
	me := cluster.NodeInfo{Name: a.state.Self(), Version: version.String(), Format: cluster.WireFormat,
		Foreign: a.stats.lastForeign(), Tunnel: a.tunnelInfo(), Addrs: a.cfg.Addrs, NoInbound: a.cfg.NoInbound}
	a.mu.Lock()
	defer a.mu.Unlock()
	if r, ok := a.state.Get(cluster.NodeKey(me.Name)); ok {
		if cur, err := cluster.Decode[cluster.NodeInfo](r); err == nil && cur.Same(me) {
			return
		}
	}
	rec, err := a.state.Put(cluster.NodeKey(me.Name), me)
	if err != nil {
		a.log.Error("announce version", "err", err)
		return
	}
	a.repl.Publish(rec)
	a.persistOrLog()
}

// joinKnown joins the given members and the ones known before a restart.
func (a *Agent) joinKnown(ctx context.Context) {
	join := append([]string(nil), a.cfg.Join...)
	if known, err := a.store.members(); err == nil {
		for _, m := range known {
			if !slices.Contains(join, m) {
				join = append(join, m)
			}
		}
	}
	if len(join) > 0 {
		a.join(ctx, join)
	}
	a.restored.Store(false)
}

// join contacts the given members, retrying in the background until one
// answers. The first attempt is waited for (bounded) so that the first
// reconcile pass sees the cluster, not an empty one.
func (a *Agent) join(ctx context.Context, addrs []string) {
	j, ok := a.repl.(Joiner)
	if !ok {
		return
	}
	first := make(chan struct{})
	go func() {
		defer close(first)
		backoff := 500 * time.Millisecond
		for attempt := 1; ; attempt++ {
			n, err := j.Join(addrs)
			if err == nil {
				a.log.Info("joined cluster", "contacted", n)
				return
			}
			if errors.Is(err, cluster.ErrNameInUse) {
				a.fail(err)
				return
			}
			a.log.Warn("join failed; retrying", "attempt", attempt, "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 10*time.Second)
		}
	}()
	select {
	case <-first:
	case <-time.After(5 * time.Second):
		a.log.Warn("no member answered yet; starting with the saved state")
	case <-ctx.Done():
	}
}

func (a *Agent) loop(ctx context.Context) {
	tick := time.NewTicker(a.cfg.ResyncInterval)
	defer tick.Stop()
	gc := time.NewTicker(time.Minute)
	defer gc.Stop()
	backoff := 100 * time.Millisecond
	a.Resync()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.dirty:
		case <-tick.C:
			a.checkAddr()
		case <-gc.C:
			if n := a.state.CollectTombstones(10 * time.Minute); n > 0 {
				a.log.Debug("collected tombstones", "count", n)
			}
			continue
		}
		if err := a.step(); err != nil {
			a.log.Warn("reconcile failed; will retry", "err", err, "retry_in", backoff)
			time.AfterFunc(backoff, a.Resync)
			backoff = min(backoff*2, 10*time.Second)
		} else {
			backoff = 100 * time.Millisecond
		}
	}
}

// step is one turn of the loop: a reconcile pass, then the housekeeping that
// follows the state (stale local endpoints, remembered members, dockerd's
// networks, the store).
func (a *Agent) step() error {
	err := a.sync()
	a.gcLocal()
	a.rememberMembers()
	a.docker.Sync()
	a.persistOrLog()
	return err
}
