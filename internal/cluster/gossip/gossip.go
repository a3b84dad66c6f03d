package gossip

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/paths"
)

// Config configures the gossip backend.
type Config struct {
	Name string
	Addr netip.Addr // bind address (the VTEP address on this host)
	// Binds are more of this host's addresses to listen at (a host
	// reached at several addresses on its interfaces); it sends from Addr.
	Binds []netip.Addr
	// NoInbound: this host accepts no inbound traffic (behind a
	// masquerading NAT); it probes every member so that they reach it.
	NoInbound bool
	// Advertise is the address memberlist knows this member at, when not
	// Addr (one the host does not have: a 1:1 NAT's public address).
	Advertise netip.Addr
	Port      int
	// LegacyPort, when not Port, is tried for a join address without a
	// port that does not answer on Port: members of a cluster that runs on
	// an earlier default.
	LegacyPort int
	// Keys are the cluster keys, the primary (used to encrypt) first. Empty
	// keys mean no encryption, allowed only with Insecure.
	Keys     [][]byte
	Insecure bool
	// OnChange is called (without locks held) whenever state or membership changed.
	OnChange func()
	Log      *slog.Logger
	// ProbeInterval tunes failure detection (default 1s).
	ProbeInterval time.Duration
	// OnSelfConflict is called when members still know this member's name
	// at another address that no longer answers as this member (after an
	// address change): rejoin once that old address has been declared dead.
	OnSelfConflict func()
	// OnNameClaimed is called when a live agent at another address answers
	// to this member's name after this member joined: the newcomer is
	// refused (its Join fails with ErrNameInUse), this member keeps going.
	OnNameClaimed func(addr netip.Addr)
	// OnCall answers another member's request (Request); nil refuses all.
	OnCall func(op string, body json.RawMessage) (any, error)
	// Transport replaces the network (nil: UDP and TCP on Addr:Port); the
	// simulation runs many members in one process over memberlist's
	// in-memory transport.
	Transport memberlist.Transport
}

// Gossip replicates a State between agents with hashicorp/memberlist: SWIM
// membership and failure detection, changes pushed to every member at once,
// and periodic full-state push/pull as anti-entropy.
type Gossip struct {
	cfg     Config
	state   *cluster.State
	ml      *memberlist.Memberlist
	spread  *Spreader
	keyring *memberlist.Keyring
	log     *slog.Logger

	mu      sync.Mutex
	contact map[string]cluster.Member
	nodes   map[string]*memberlist.Node // live members by name, self included
	peers   []string                    // their names but self's (nil: to rebuild)
	failed  map[string]failedMember     // members that failed, to reconnect to
	grace   time.Duration               // endpoints of a failed member stay this long
	stop    chan struct{}
	calls   cluster.Calls
	joins   int              // Join calls in progress
	claims  []netip.AddrPort // other addresses seen claiming our name during a Join

	malformed atomic.Int64 // messages refused from the network
	traffic   struct{ inMsgs, inBytes, outMsgs, outBytes atomic.Int64 }
	paths     pathState
}

// Traffic returns the counts so far.
func (g *Gossip) Traffic() cluster.Traffic {
	return cluster.Traffic{InMessages: g.traffic.inMsgs.Load(), InBytes: g.traffic.inBytes.Load(), OutMessages: g.traffic.outMsgs.Load(), OutBytes: g.traffic.outBytes.Load()}
}

func (g *Gossip) sent(msg []byte) {
	g.traffic.outMsgs.Add(1)
	g.traffic.outBytes.Add(int64(len(msg)))
}

// Start starts the member; it is alone until Join.
func Start(cfg Config, state *cluster.State) (*Gossip, error) {
	if len(cfg.Keys) == 0 && !cfg.Insecure {
		return nil, errors.New("no cluster key: give --key-file (create one with 'vxnet key generate') or --insecure")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.OnChange == nil {
		cfg.OnChange = func() {}
	}
	g := &Gossip{cfg: cfg, state: state, log: cfg.Log, contact: map[string]cluster.Member{},
		failed: map[string]failedMember{}, nodes: map[string]*memberlist.Node{}, stop: make(chan struct{})}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = cfg.Addr.String()
	mc.BindPort = cfg.Port
	mc.AdvertiseAddr = cfg.Addr.String()
	if cfg.Advertise.IsValid() {
		mc.AdvertiseAddr = cfg.Advertise.String()
	}
	mc.AdvertisePort = cfg.Port
	mc.Delegate = (*delegate)(g)
	mc.Events = (*events)(g)
	mc.Ping = (*pings)(g)
	mc.Conflict = (*conflicts)(g)
	mc.PushPullInterval = 15 * time.Second
	mc.GossipInterval = 100 * time.Millisecond
	mc.ProbeInterval = time.Second
	if cfg.ProbeInterval > 0 {
		mc.ProbeInterval = cfg.ProbeInterval
		mc.ProbeTimeout = cfg.ProbeInterval / 2
	}
	mc.SuspicionMult = 3
	// A host whose underlay address changed comes back under its name with
	// the new address once the old one has been dead this long.
	mc.DeadNodeReclaimTime = 3 * mc.ProbeInterval
	mc.Logger = log.New(&logWriter{log: cfg.Log}, "", 0)
	g.paths = pathState{table: paths.NewTable(), pending: map[uint64]sentProbe{}, observed: map[string]netip.AddrPort{}, seen: map[uint64]time.Time{}}
	// A host behind a masquerading NAT probes every member each round: the
	// probes keep its NAT's mappings open, and the members reach it back
	// through them.
	g.paths.table.ProbeAll = cfg.NoInbound
	if cfg.Transport != nil {
		mc.Transport = cfg.Transport
	} else {
		t, err := newPathTransport(g, append([]netip.Addr{cfg.Addr}, cfg.Binds...), cfg.Port, mc.Logger)
		if err != nil {
			if strings.Contains(err.Error(), "address already in use") {
				return nil, inUseError(cfg.Port, cfg.LegacyPort, err)
			}
			return nil, fmt.Errorf("start gossip on %s:%d: %w", cfg.Addr, cfg.Port, err)
		}
		mc.Transport, g.paths.t = t, t
	}
	if len(cfg.Keys) > 0 {
		kr, err := memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
		if err != nil {
			return nil, fmt.Errorf("cluster key: %w", err)
		}
		mc.Keyring = kr
		g.keyring = kr
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	// Before memberlist starts: it may call the delegate at once.
	g.spread = &Spreader{Self: cfg.Name, State: state, Log: cfg.Log, Peers: g.peerNames, Send: g.send,
		OnChange: func(changed []cluster.Record) {
			if slices.ContainsFunc(changed, func(r cluster.Record) bool { return strings.HasPrefix(r.Key, cluster.PrefixNode) }) {
				g.paths.stale.Store(true)
			}
			if slices.ContainsFunc(changed, cluster.AffectsKernel) {
				g.cfg.OnChange()
			}
		}}
	ml, err := memberlist.Create(mc)
	if err != nil {
		if g.paths.t != nil {
			_ = g.paths.t.Shutdown()
		}
		if strings.Contains(err.Error(), "address already in use") {
			return nil, inUseError(cfg.Port, cfg.LegacyPort, err)
		}
		return nil, fmt.Errorf("start gossip on %s:%d: %w", cfg.Addr, cfg.Port, err)
	}
	g.ml = ml
	g.grace = 2 * mc.ProbeInterval
	go g.every(4*mc.ProbeInterval, g.reconnect)
	// This member's state summary to one member at random (anti-entropy
	// between push/pulls).
	go g.every(DigestInterval, g.spread.Tick)
	if g.paths.t != nil {
		go g.every(g.probeInterval(), g.probePaths)
	}
	return g, nil
}

type failedMember struct {
	addr  string // host:port, to reconnect
	vtep  netip.Addr
	since time.Time
}

// reconnectFor bounds how long a failed member is retried.
const reconnectFor = 24 * time.Hour

// reconnect tries (every four probe intervals) to join the members that failed: a
// partition that heals is noticed by both sides within a period, instead of
// waiting for memberlist's gossip to the dead (which stops after a while).
func (g *Gossip) reconnect() {
	g.mu.Lock()
	var addrs []string
	for name, f := range g.failed {
		if time.Since(f.since) > reconnectFor {
			delete(g.failed, name)
			continue
		}
		addrs = append(addrs, f.addr)
	}
	g.mu.Unlock()
	if len(addrs) > 0 {
		if n, err := g.ml.Join(addrs); err == nil {
			g.log.Debug("reconnected to failed members", "contacted", n)
		}
	}
}

// every runs f each period until the member shuts down.
func (g *Gossip) every(period time.Duration, f func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
			f()
		}
	}
}

// Join contacts existing members ("addr" or "addr:port"); it succeeds when at
// least one answered, after a full state exchange with it.
func (g *Gossip) Join(addrs []string) (int, error) {
	var full, legacy []string
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			if g.cfg.LegacyPort != 0 && g.cfg.LegacyPort != g.cfg.Port {
				legacy = append(legacy, net.JoinHostPort(a, strconv.Itoa(g.cfg.LegacyPort)))
			}
			a = net.JoinHostPort(a, strconv.Itoa(g.cfg.Port))
		}
		full = append(full, a)
	}
	g.mu.Lock()
	g.joins++
	g.mu.Unlock()
	n, err := g.ml.Join(full)
	if n == 0 && len(legacy) > 0 {
		// Nobody answered on this member's port: a cluster on the old
		// default (the members tell each other their ports from then on).
		if n, err = g.ml.Join(legacy); n > 0 {
			g.log.Info("joined members on the earlier default gossip port", "port", g.cfg.LegacyPort, "own_port", g.cfg.Port)
		}
	}
	g.mu.Lock()
	g.joins--
	claims := g.claims
	if g.joins == 0 {
		g.claims = nil
	}
	g.mu.Unlock()
	if err != nil {
		return n, fmt.Errorf("join %v: %w", addrs, err)
	}
	// A member already known under our name at another address either is
	// this host before an address change (it no longer answers) or another
	// live agent with the same name: refuse to be the second one.
	for _, c := range claims {
		if g.answersAs(c) {
			return n, fmt.Errorf("%w: an agent at %s answers as %q (this agent advertises %s): give each host its own --name", cluster.ErrNameInUse, c.Addr(), g.cfg.Name, g.cfg.Addr)
		}
	}
	if len(claims) > 0 && g.cfg.OnSelfConflict != nil {
		g.cfg.OnSelfConflict()
	}
	return n, nil
}

// answersAs pings addr as this member's name: only an agent of that name
// acknowledges (memberlist ignores pings for another node). An address
// this agent listens at is its own (no other process holds that port
// there): this agent, from before it was reached at more addresses.
func (g *Gossip) answersAs(ap netip.AddrPort) bool {
	if ap.Port() == uint16(g.cfg.Port) && (ap.Addr() == g.cfg.Addr || slices.Contains(g.cfg.Binds, ap.Addr())) {
		return false
	}
	_, err := g.ml.Ping(g.cfg.Name, net.UDPAddrFromAddrPort(ap))
	return err == nil
}

// Publish spreads changed records of this member: pushed to a few members
// at once, who forward them, and gossiped (see Spreader). The cost on the
// caller's path does not grow with the cluster.
func (g *Gossip) Publish(recs ...cluster.Record) { g.spread.Publish(recs...) }

// peerNames returns the live members but this one.
func (g *Gossip) peerNames() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.peers == nil {
		g.peers = make([]string, 0, len(g.nodes))
		for name := range g.nodes {
			if name != g.cfg.Name {
				g.peers = append(g.peers, name)
			}
		}
		slices.Sort(g.peers)
	}
	return g.peers
}

// send sends one message to a member: a packet, or a stream (in the
// background) when reliable.
func (g *Gossip) send(to string, msg []byte, reliable bool) {
	g.mu.Lock()
	n := g.nodes[to]
	g.mu.Unlock()
	if n == nil {
		return
	}
	g.sent(msg)
	g.paths.mu.Lock()
	noInbound := g.paths.noInbound[to]
	g.paths.mu.Unlock()
	if reliable && noInbound {
		// It takes no stream (nothing inbound crosses its NAT): packets.
		for _, b := range packets(msg) {
			if err := g.ml.SendBestEffort(n, b); err != nil {
				g.log.Debug("push", "to", to, "err", err)
			}
		}
		return
	}
	if !reliable {
		if err := g.ml.SendBestEffort(n, msg); err != nil {
			g.log.Debug("push", "to", to, "err", err)
		}
		return
	}
	go func() {
		if err := g.ml.SendReliable(n, msg); err != nil {
			g.log.Debug("send", "to", to, "err", err)
		}
	}()
}

// metaDigest in a member's meta says it exchanges digests (MsgDigest).
const metaDigest = "digest"

// fullStateNeeded reports whether a live member predates digests: then
// push/pull carries the whole state, as those members expect.
func (g *Gossip) fullStateNeeded() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, n := range g.nodes {
		if !digests(n) {
			return true
		}
	}
	return false
}

func digests(n *memberlist.Node) bool {
	return slices.Contains(strings.Split(string(n.Meta), ","), metaDigest)
}

// MalformedMessages counts the messages refused from the network.
func (g *Gossip) MalformedMessages() int64 { return g.malformed.Load() }

// Alive returns the members whose endpoints stay programmed: the live and
// suspect ones, and those declared dead less than a grace period ago (two
// probe intervals), so that a member that is briefly starved or cut off and
// comes straight back does not make every host withdraw and re-add all its
// endpoints.
func (g *Gossip) Alive() []model.Node {
	if g.paths.t != nil && g.paths.stale.Swap(false) {
		g.refreshPaths() // every address a member lists is admitted at once
	}
	members := g.ml.Members()
	var out []model.Node
	seen := map[string]bool{}
	for _, m := range members {
		a, ok := netip.AddrFromSlice(m.Addr)
		if !ok {
			continue
		}
		out = append(out, g.node(m.Name, a.Unmap()))
		seen[m.Name] = true
	}
	g.mu.Lock()
	for name, f := range g.failed {
		if !seen[name] && time.Since(f.since) < g.grace && f.vtep.IsValid() {
			out = append(out, model.Node{Name: name, Addr: f.vtep})
		}
	}
	g.mu.Unlock()
	slices.SortFunc(out, func(x, y model.Node) int { return cmp.Compare(x.Name, y.Name) })
	return out
}

// Members returns every member known: the reachable ones ("alive", which
// includes members under suspicion: memberlist does not say which) and the
// ones that failed or left ("failed", with the time of the failure as last
// contact).
func (g *Gossip) Members() []cluster.Member {
	// memberlist calls our event delegate with its node lock held, and the
	// delegate takes g.mu: never call into memberlist while holding g.mu.
	members := g.ml.Members()
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []cluster.Member
	listed := map[string]bool{}
	for _, m := range members {
		a, _ := netip.AddrFromSlice(m.Addr)
		mm := g.contact[m.Name]
		mm.Name, mm.Addr, mm.State = m.Name, a.Unmap(), "alive"
		out = append(out, mm)
		listed[m.Name] = true
	}
	for name, f := range g.failed {
		if !listed[name] {
			out = append(out, cluster.Member{Name: name, Addr: f.vtep, State: "failed", LastContact: f.since})
		}
	}
	slices.SortFunc(out, func(x, y cluster.Member) int { return cmp.Compare(x.Name, y.Name) })
	return out
}

// Leave announces departure and stops.
func (g *Gossip) Leave(timeout time.Duration) error {
	err := g.ml.Leave(timeout)
	return errors.Join(err, g.Shutdown())
}

// Shutdown stops without announcing (as a crash would).
func (g *Gossip) Shutdown() error {
	g.mu.Lock()
	select {
	case <-g.stop:
	default:
		close(g.stop)
	}
	g.mu.Unlock()
	return g.ml.Shutdown()
}

func (g *Gossip) receive(b []byte, what string) {
	g.traffic.inMsgs.Add(1)
	g.traffic.inBytes.Add(int64(len(b)))
	if g.spread.Duplicate(b) {
		return
	}
	m, err := cluster.DecodeMessage(b)
	if errors.Is(err, cluster.ErrUnknownKind) {
		g.log.Debug("ignored a message of a kind this version does not know", "via", what, "err", err)
		return
	}
	if err != nil {
		g.malformed.Add(1)
		g.log.Warn("refused malformed message", "via", what, "bytes", len(b), "err", err)
		return
	}
	switch m.Kind {
	case cluster.MsgRequest:
		go g.answer(m.Call)
		return
	case cluster.MsgResponse:
		g.calls.Deliver(m.Call)
		return
	}
	g.spread.Handle(m, what)
}

// Request calls op on member node (over memberlist's reliable channel,
// encrypted with the cluster key) and waits for its answer.
func (g *Gossip) Request(node, op string, body any, timeout time.Duration) (json.RawMessage, error) {
	target := g.member(node)
	if target == nil {
		return nil, fmt.Errorf("member %s is not reachable (not a live member)", node)
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("%s request: %w", op, err)
	}
	id, ch, done := g.calls.Open(g.cfg.Name)
	defer done()
	msg, err := cluster.Encode(cluster.Message{Kind: cluster.MsgRequest, Call: &cluster.Call{ID: id, From: g.cfg.Name, Op: op, Body: b}})
	if err != nil {
		return nil, err
	}
	g.sent(msg)
	if err := g.ml.SendReliable(target, msg); err != nil {
		return nil, fmt.Errorf("%s request to %s: %w", op, node, err)
	}
	return cluster.Wait(ch, op, node, timeout, " (an older agent there?)")
}

// member returns the live member of that name, or nil.
func (g *Gossip) member(name string) *memberlist.Node {
	for _, m := range g.ml.Members() {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// answer runs a request and sends the response back to its sender.
func (g *Gossip) answer(c *cluster.Call) {
	resp := &cluster.Call{ID: c.ID, From: g.cfg.Name, Op: c.Op}
	if g.cfg.OnCall == nil {
		resp.Error = "this member answers no requests"
	} else if out, err := g.cfg.OnCall(c.Op, c.Body); err != nil {
		resp.Error = err.Error()
	} else if resp.Body, err = json.Marshal(out); err != nil {
		resp.Error = err.Error()
	}
	from := g.member(c.From)
	if from == nil {
		g.log.Warn("cannot answer a request: its sender is no live member", "op", c.Op, "from", c.From)
		return
	}
	msg, err := cluster.Encode(cluster.Message{Kind: cluster.MsgResponse, Call: resp})
	if err == nil {
		g.sent(msg)
		err = g.ml.SendReliable(from, msg)
	}
	if err != nil {
		g.log.Warn("answer request", "op", c.Op, "from", c.From, "err", err)
	}
}

// KeyOp changes the cluster keyring of this member: "install" adds a key
// (accepted for decryption), "use" makes an installed key the one that
// encrypts, "remove" drops a key that is not in use.
func (g *Gossip) KeyOp(op string, key []byte) error {
	if g.keyring == nil {
		return errors.New("this agent runs without encryption (--insecure): there is no keyring")
	}
	if l := len(key); l != 16 && l != 24 && l != 32 {
		return fmt.Errorf("invalid key of %d bytes: want 16, 24 or 32", l)
	}
	switch op {
	case "install":
		return g.keyring.AddKey(key)
	case "use":
		return g.keyring.UseKey(key)
	case "remove":
		return g.keyring.RemoveKey(key)
	}
	return fmt.Errorf("unknown key operation %q: want install, use or remove", op)
}

// Keys returns the keyring, the primary key first (nil without encryption).
func (g *Gossip) Keys() [][]byte {
	if g.keyring == nil {
		return nil
	}
	primary := g.keyring.GetPrimaryKey()
	out := [][]byte{primary}
	for _, k := range g.keyring.GetKeys() {
		if !bytes.Equal(k, primary) {
			out = append(out, k)
		}
	}
	return out
}

func (g *Gossip) sendState(n *memberlist.Node) {
	msg, err := cluster.Encode(cluster.Message{Kind: cluster.MsgState, Records: g.state.Snapshot()})
	if err != nil {
		g.log.Error("encode state", "err", err)
		return
	}
	if err := g.ml.SendReliable(n, msg); err != nil {
		g.log.Debug("send state", "to", n.Name, "err", err)
	}
}
