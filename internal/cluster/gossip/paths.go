package gossip

import (
	"crypto/rand"
	"encoding/binary"
	"log"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/paths"
)

// A member may be reached at several addresses (its node record lists
// them, in order of preference). memberlist knows each member at one
// address, its identity; the transport below sends to the address the
// path table chose for the member instead, so gossip takes the same path
// as VXLAN. Path probes share the gossip port: the transport hands packets
// that start with paths.Magic to the prober, the rest to memberlist.

// pathTransport is memberlist's UDP and TCP transport with each member's
// traffic sent to the address in use for it.
type pathTransport struct {
	*memberlist.NetTransport
	g       *Gossip
	packets chan *memberlist.Packet
	// closing: Shutdown has begun (packets are dropped, so that the
	// transport's listener is never stuck handing one over); done: it
	// ended.
	closing, done chan struct{}
	shutdown      sync.Once
	shutdownErr   error
}

// newPathTransport listens at every address of binds (the first is where
// it sends from: memberlist's transport sends through its first listener).
func newPathTransport(g *Gossip, binds []netip.Addr, port int, logger *log.Logger) (*pathTransport, error) {
	var addrs []string
	for _, a := range binds {
		addrs = append(addrs, a.String())
	}
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: addrs, BindPort: port, Logger: logger})
	if err != nil {
		return nil, err
	}
	t := &pathTransport{NetTransport: nt, g: g, packets: make(chan *memberlist.Packet),
		closing: make(chan struct{}), done: make(chan struct{})}
	go t.sort()
	return t, nil
}

// sort passes memberlist its packets and the prober its own, until the
// transport is shut down: the listener hands over every packet it reads,
// and would wait forever (and with it memberlist's Shutdown) for a reader
// that left.
func (t *pathTransport) sort() {
	in := t.NetTransport.PacketCh()
	for {
		select {
		case p := <-in:
			if len(p.Buf) > 0 && p.Buf[0] == paths.Magic {
				t.g.pathPacket(p)
				continue
			}
			select {
			case t.packets <- p:
			case <-t.closing: // dropped: memberlist is going
			}
		case <-t.done:
			return
		}
	}
}

// Shutdown closes the sockets, then stops sorting.
func (t *pathTransport) Shutdown() error {
	t.shutdown.Do(func() {
		close(t.closing)
		t.shutdownErr = t.NetTransport.Shutdown()
		close(t.done)
	})
	return t.shutdownErr
}

func (t *pathTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *pathTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.NetTransport.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *pathTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return t.NetTransport.WriteToAddress(b, t.g.routed(a))
}

func (t *pathTransport) DialAddressTimeout(a memberlist.Address, d time.Duration) (net.Conn, error) {
	return t.NetTransport.DialAddressTimeout(t.g.routed(a), d)
}

// pathState is the prober's: the table and the probes in flight.
type pathState struct {
	mu      sync.Mutex
	table   *paths.Table
	pending map[uint64]sentProbe
	// observed is where each member's last probe came from; noInbound the
	// members that accept no inbound traffic (reached only there).
	observed  map[string]netip.AddrPort
	noInbound map[string]bool
	// seen are the nonces of the probes answered within MaxSkew: a probe
	// replayed from elsewhere moves nothing.
	seen map[uint64]time.Time
	t    *pathTransport // nil: no probing (a transport given by the caller)
	// stale: members or their node records changed since the table was
	// last given them.
	stale atomic.Bool
}

type sentProbe struct {
	peer string
	addr netip.Addr
	at   time.Time
}

// routed returns a with the address in use for its member.
func (g *Gossip) routed(a memberlist.Address) memberlist.Address {
	if a.Name == "" {
		return a
	}
	g.paths.mu.Lock()
	addr, ok := g.paths.table.Route(a.Name)
	seen, behindNAT := g.paths.observed[a.Name], g.paths.noInbound[a.Name]
	g.paths.mu.Unlock()
	if behindNAT && seen.IsValid() {
		// Through the mapping its NAT keeps open to this host.
		a.Addr = seen.String()
		return a
	}
	if !ok {
		return a
	}
	_, port, err := net.SplitHostPort(a.Addr)
	if err != nil {
		return a
	}
	a.Addr = net.JoinHostPort(addr.String(), port)
	return a
}

// Demote keeps peer's address addr out of use for a while (see
// paths.Table.Demote).
func (g *Gossip) Demote(peer string, addr netip.Addr, why string) bool {
	g.paths.mu.Lock()
	changed := g.paths.table.Demote(peer, addr, why, time.Now())
	g.paths.mu.Unlock()
	if changed {
		g.logPaths()
		g.cfg.OnChange()
	}
	return changed
}

// Paths returns the path to every peer.
func (g *Gossip) Paths() []paths.Path {
	g.paths.mu.Lock()
	defer g.paths.mu.Unlock()
	out := g.paths.table.Paths()
	for i, p := range out {
		if seen := g.paths.observed[p.Peer]; g.paths.noInbound[p.Peer] && seen.IsValid() {
			out[i].Reason = "it accepts no inbound traffic: reached through its NAT's mapping " + seen.String() + ", where its probes come from"
		}
	}
	return out
}

// candidates are the addresses of the live members but self, in their
// order of preference: the ones their node records list, else the one
// memberlist knows. A member that accepts no inbound traffic is reached
// where its probes come from (its NAT's mapping), once one came. It also
// returns the members that accept no inbound traffic.
func (g *Gossip) candidates() (map[string][]netip.Addr, map[string]netip.Addr, map[string]bool) {
	listed, noInbound := map[string][]netip.Addr{}, map[string]bool{}
	for _, n := range g.state.Nodes() {
		listed[n.Name] = n.Addrs
		if n.NoInbound {
			noInbound[n.Name] = true
		}
	}
	g.paths.mu.Lock()
	observed := maps.Clone(g.paths.observed)
	g.paths.mu.Unlock()
	out, known := map[string][]netip.Addr{}, map[string]netip.Addr{}
	for _, m := range g.ml.Members() {
		a, ok := netip.AddrFromSlice(m.Addr)
		if m.Name == g.cfg.Name || !ok {
			continue
		}
		known[m.Name] = a.Unmap()
		switch {
		case noInbound[m.Name]:
			if seen := observed[m.Name]; seen.IsValid() {
				out[m.Name] = []netip.Addr{seen.Addr()}
			}
		case len(listed[m.Name]) > 0:
			out[m.Name] = listed[m.Name]
		default:
			out[m.Name] = []netip.Addr{a.Unmap()}
		}
	}
	return out, known, noInbound
}

// refreshPaths gives the path table the members and their addresses as
// the cluster state has them now, and reports whether a choice changed.
func (g *Gossip) refreshPaths() bool {
	cands, known, noInbound := g.candidates()
	g.paths.mu.Lock()
	defer g.paths.mu.Unlock()
	g.paths.noInbound = noInbound
	return g.paths.table.SetPeers(cands, known, time.Now())
}

// probePaths runs one round: the candidates from the cluster state, then
// a probe to every address of every peer that has more than one.
func (g *Gossip) probePaths() {
	changed := g.refreshPaths()
	now := time.Now()
	g.paths.mu.Lock()
	targets, moved := g.paths.table.Targets(now)
	changed = changed || moved
	for n, p := range g.paths.pending {
		if now.Sub(p.at) > 2*g.probeInterval() {
			delete(g.paths.pending, n)
		}
	}
	for n, at := range g.paths.seen {
		if now.Sub(at) > paths.MaxSkew {
			delete(g.paths.seen, n)
		}
	}
	type send struct {
		to netip.AddrPort
		b  []byte
	}
	var out []send
	keys := g.pathKeys()
	for peer, addrs := range targets {
		for _, a := range addrs {
			nonce := randomNonce()
			b, err := paths.Encode(paths.Msg{Nonce: nonce, At: now.UnixMilli(), From: g.cfg.Name, To: peer, Addr: a}, keys[0])
			if err != nil {
				g.log.Warn("encode path probe", "peer", peer, "err", err)
				continue
			}
			g.paths.pending[nonce] = sentProbe{peer: peer, addr: a, at: now}
			out = append(out, send{netip.AddrPortFrom(a, uint16(g.cfg.Port)), b})
		}
	}
	g.paths.mu.Unlock()
	for _, s := range out {
		if _, err := g.paths.t.NetTransport.WriteTo(s.b, s.to.String()); err != nil {
			g.log.Debug("path probe", "to", s.to, "err", err)
		}
	}
	if changed {
		g.logPaths()
		g.cfg.OnChange()
	}
}

// pathPacket answers a probe or records an answer.
func (g *Gossip) pathPacket(p *memberlist.Packet) {
	from, err := netip.ParseAddrPort(p.From.String())
	if err != nil {
		return
	}
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	m, err := paths.Decode(p.Buf, g.pathKeys())
	if err != nil {
		g.malformed.Add(1)
		g.log.Debug("refused path message", "from", from, "err", err)
		return
	}
	if m.To != g.cfg.Name {
		return // meant for a member that was at this address before
	}
	if !m.Answer {
		now := time.Now()
		if !m.Fresh(now) {
			g.malformed.Add(1)
			g.log.Debug("refused a stale path probe (replayed, or a clock far off)", "from", from, "member", m.From, "sent", time.UnixMilli(m.At))
			return
		}
		g.paths.mu.Lock()
		_, replayed := g.paths.seen[m.Nonce]
		if !replayed {
			g.paths.seen[m.Nonce] = now
			g.paths.observed[m.From] = from
		}
		g.paths.mu.Unlock()
		if replayed {
			return
		}
		b, err := paths.Encode(paths.Msg{Answer: true, Nonce: m.Nonce, At: now.UnixMilli(), From: g.cfg.Name, To: m.From, Addr: m.Addr, SeenAs: from}, g.pathKeys()[0])
		if err == nil {
			_, err = g.paths.t.NetTransport.WriteTo(b, from.String())
		}
		if err != nil {
			g.log.Debug("answer path probe", "to", from, "err", err)
		}
		return
	}
	g.paths.mu.Lock()
	sent, ok := g.paths.pending[m.Nonce]
	delete(g.paths.pending, m.Nonce)
	changed := ok && sent.peer == m.From && sent.addr == m.Addr &&
		g.paths.table.Answered(sent.peer, sent.addr, from.Addr(), m.SeenAs.Addr(), time.Since(sent.at), time.Now())
	g.paths.mu.Unlock()
	if changed {
		g.logPaths()
		g.cfg.OnChange()
	}
}

// logPaths logs the paths that are probed.
func (g *Gossip) logPaths() {
	for _, p := range g.Paths() {
		if p.Probed() {
			g.log.Info("path", "peer", p.Peer, "addr", p.Addr, "reason", p.Reason)
		}
	}
}

// pathKeys are the keys that sign probes, the primary first; without
// encryption (--insecure) an empty key, which authenticates nothing.
func (g *Gossip) pathKeys() [][]byte {
	if k := g.Keys(); len(k) > 0 {
		return k
	}
	return [][]byte{{}}
}

func (g *Gossip) probeInterval() time.Duration {
	if g.cfg.ProbeInterval > 0 {
		return g.cfg.ProbeInterval
	}
	return time.Second
}

// node is a live member as the datapath sees it: reached at the address in
// use, sending from the ones it lists, the identity memberlist knows, and
// where its answers came from.
func (g *Gossip) node(name string, identity netip.Addr) model.Node {
	g.paths.mu.Lock()
	p, ok := g.paths.table.Peer(name)
	seen, behindNAT := g.paths.observed[name], g.paths.noInbound[name]
	g.paths.mu.Unlock()
	n := model.Node{Name: name, Addr: identity, NoInbound: behindNAT}
	if behindNAT && !seen.IsValid() {
		n.Addrs = []netip.Addr{identity}
		return n
	}
	if !ok {
		return n
	}
	addrs := []netip.Addr{identity}
	if seen.IsValid() {
		addrs = append(addrs, seen.Addr())
	}
	for _, c := range p.Candidates {
		addrs = append(addrs, c.Addr)
		if c.From.IsValid() {
			addrs = append(addrs, c.From)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	n.Addr, n.Addrs = p.Addr, slices.Compact(addrs)
	return n
}

func randomNonce() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:])
}

// packets splits a message for a member that takes no stream: records in
// state messages of at most PackLimit bytes each, a digest without them.
// What does not split (a large digest) goes as it is, in IP fragments.
func packets(msg []byte) [][]byte {
	if len(msg) <= PackLimit {
		return [][]byte{msg}
	}
	m, err := cluster.DecodeMessage(msg)
	if err != nil || len(m.Records) == 0 || (m.Kind != cluster.MsgState && m.Kind != cluster.MsgDigest) {
		return [][]byte{msg}
	}
	recs := m.Records
	var out [][]byte
	if m.Kind == cluster.MsgDigest {
		m.Records = nil
		b, err := cluster.Encode(m)
		if err != nil {
			return [][]byte{msg}
		}
		out = append(out, b)
	}
	ps, err := pack(cluster.MsgState, recs, PackLimit)
	if err != nil {
		return [][]byte{msg}
	}
	for _, p := range ps {
		out = append(out, p.msg)
	}
	return out
}
