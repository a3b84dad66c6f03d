package sim

import (
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/cluster/gossip"
	"github.com/vxnet/vxnet/internal/model"
)

// The model runs vxnet's dissemination protocol — gossip.Spreader with
// the real state, codec, merge and memberlist's transmit-limited queue —
// for every member in virtual time, over a model of what memberlist does
// around it: gossip rounds (every 100 ms to 3 members, its own membership
// messages first), probes (one per member per second), push/pull
// exchanges (the interval scaled with the cluster as memberlist scales
// it, the membership list costed at its wire size), joins through a
// member already in, and failure detection of members that went down.
// Time does not pass while the process computes, so 1,000 members fit on
// two cores; what the model does not hold is CPU contention and the false
// deaths it causes in real processes (measured in the lab instead).

// ModelConfig is one run of the model.
type ModelConfig struct {
	Members int
	// Endpoints each member publishes after it joined (default 10).
	Endpoints int
	// Changes is how many single changes are timed to every member (default 20).
	Changes int
	// Churn is the fraction of members that restart during the churn
	// window (default 0.05; negative: none).
	Churn float64
	// Window is the steady-state and the churn window (default 30 s).
	Window time.Duration
	// StartSpread is the time over which members start (default 10 s).
	StartSpread time.Duration
	Seed        uint64
}

// ModelResult is what one run measured (all times virtual).
type ModelResult struct {
	Members int `json:"members"`
	// ColdStart is from the first member's start to every member knowing
	// every other and holding every record.
	ColdStartMs float64 `json:"cold_start_ms"`
	// Drained is when the last gossip queue emptied after the cold start.
	DrainedMs float64 `json:"drained_ms"`
	// Converge* is over (change, member) pairs: publish to arrival.
	ConvergeP50Ms float64 `json:"converge_p50_ms"`
	ConvergeP99Ms float64 `json:"converge_p99_ms"`
	ConvergeMaxMs float64 `json:"converge_max_ms"`
	// Steady and churn traffic per member (everything sent: memberlist's
	// probes, gossip and push/pull as modelled, vxnet's messages).
	SteadyBytesPerSec float64 `json:"steady_bytes_per_member_per_s"`
	SteadyMsgsPerSec  float64 `json:"steady_msgs_per_member_per_s"`
	ChurnBytesPerSec  float64 `json:"churn_bytes_per_member_per_s"`
	ChurnMsgsPerSec   float64 `json:"churn_msgs_per_member_per_s"`
	// ChurnConvergeMaxMs is the slowest arrival, at the members up
	// throughout, of changes published while members restarted.
	ChurnConvergeMaxMs float64 `json:"churn_converge_max_ms"`
	// Restarted members all hold the full state again within this time of
	// coming back.
	RejoinMaxMs float64 `json:"rejoin_max_ms"`
	HeapKBPer   float64 `json:"heap_kb_per_member"`
	// Wall is how long the run took on this machine.
	WallS float64 `json:"wall_s"`
}

// memberlist's settings as vxnet sets them, and wire sizes of its messages.
const (
	gossipInterval = 100 * time.Millisecond
	gossipNodes    = 3
	probeInterval  = time.Second
	pushPullBase   = 15 * time.Second
	packetLimit    = 1400 - 12     // UDP buffer less compound header
	packetHeader   = 28 + 12       // IP/UDP and memberlist's compound header
	probeBytes     = 2 * (28 + 40) // ping and ack
	nodeStateBytes = 48            // one member in a push/pull membership list
	aliveBytes     = 60            // an alive or dead message
	latency        = 300 * time.Microsecond
	bytesPerSec    = 125e6 // a 1 Gbit/s link for streams
)

type event struct {
	at  time.Duration
	seq int
	fn  func()
}

type events []event

func (e events) Len() int { return len(e) }
func (e events) Less(i, j int) bool {
	if e[i].at != e[j].at {
		return e[i].at < e[j].at
	}
	return e[i].seq < e[j].seq
}
func (e events) Swap(i, j int) { e[i], e[j] = e[j], e[i] }
func (e *events) Push(x any)   { *e = append(*e, x.(event)) }
func (e *events) Pop() any {
	old := *e
	x := old[len(old)-1]
	*e = old[:len(old)-1]
	return x
}

type modelMember struct {
	name  string
	up    bool
	sp    *gossip.Spreader
	inc   int                 // incarnation: raised to refute a death, and on restart
	view  map[string]nodeView // members known, self included
	peers []string            // the alive ones but self (nil: rebuild)
	// mlq holds memberlist's own broadcasts (alive and dead messages).
	mlq         *memberlist.TransmitLimitedQueue
	bytes, msgs int64 // sent, since the last reset
	suspect     map[string]bool
	// restarted members: when they came back and when they held every
	// record again.
	restarted         bool
	upAt, fullAgainAt time.Duration
}

// nodeView is what a member believes of another, as in memberlist.
type nodeView struct {
	alive bool
	inc   int
}

type world struct {
	cfg    ModelConfig
	now    time.Duration
	seq    int
	q      events
	rnd    *rand.Rand
	ms     []*modelMember
	byName map[string]*modelMember
	// arrivals of watched keys: key -> member -> time
	watch     map[string]map[string]time.Duration
	published map[string]time.Duration
	origin    map[string]string
	total     int // records every member should hold
}

func (m *world) at(d time.Duration, fn func()) {
	m.seq++
	heap.Push(&m.q, event{at: m.now + d, seq: m.seq, fn: fn})
}

// run processes events until virtual time t.
func (m *world) run(t time.Duration) {
	for len(m.q) > 0 && m.q[0].at <= t {
		e := heap.Pop(&m.q).(event)
		m.now = e.at
		e.fn()
	}
	m.now = t
}

func (m *world) jitter() time.Duration { return latency + time.Duration(m.rnd.Int64N(int64(latency))) }

func (mm *modelMember) peerNames() []string {
	if mm.peers == nil {
		mm.peers = make([]string, 0, len(mm.view))
		for n, v := range mm.view {
			if v.alive && n != mm.name {
				mm.peers = append(mm.peers, n)
			}
		}
		slices.Sort(mm.peers)
	}
	return mm.peers
}

func (m *world) send(from *modelMember, to string, b []byte, reliable bool) {
	from.msgs++
	from.bytes += int64(len(b) + packetHeader)
	d := m.jitter()
	if reliable {
		d += 3*latency + time.Duration(float64(len(b))/bytesPerSec*float64(time.Second))
	}
	m.at(d, func() { m.deliver(to, b, "push") })
}

func (m *world) deliver(to string, b []byte, via string) {
	t := m.byName[to]
	if t == nil || !t.up {
		return
	}
	if len(b) > 0 && b[0] != '{' {
		m.membership(t, string(b))
		return
	}
	if t.sp.Duplicate(b) {
		return
	}
	msg, err := cluster.DecodeMessage(b)
	if err != nil {
		panic(fmt.Sprintf("model: a member sent a message others refuse: %v", err))
	}
	t.sp.Handle(msg, via)
}

// membership handles memberlist's alive ("+name@inc") and dead
// ("-name@inc") messages by memberlist's rules: news is re-broadcast, a
// member refutes its own death with a higher incarnation.
func (m *world) membership(t *modelMember, msg string) {
	alive := msg[0] == '+'
	name, incs, _ := strings.Cut(msg[1:], "@")
	inc, _ := strconv.Atoi(incs)
	if name == t.name {
		if !alive && t.up && inc >= t.inc {
			t.inc = inc + 1
			t.mlq.QueueBroadcast(mlBroadcast(fmt.Sprintf("+%s@%d", t.name, t.inc)))
		}
		return
	}
	cur, known := t.view[name]
	switch {
	case alive && known && inc <= cur.inc:
		return
	case !alive && (!known || !cur.alive || inc < cur.inc):
		return
	}
	t.view[name] = nodeView{alive: alive, inc: inc}
	t.peers = nil
	t.mlq.QueueBroadcast(mlBroadcast(msg))
	if alive && known && !cur.alive {
		t.sp.Rejoined(name)
	}
}

func aliveMsg(mm *modelMember) string { return fmt.Sprintf("+%s@%d", mm.name, mm.inc) }

type mlBroadcast string

func (b mlBroadcast) Invalidates(o memberlist.Broadcast) bool {
	x, ok := o.(mlBroadcast)
	return ok && x.Name() == b.Name()
}
func (b mlBroadcast) Name() string {
	name, _, _ := strings.Cut(string(b[1:]), "@")
	return name
}
func (b mlBroadcast) Message() []byte { return []byte(b) }
func (b mlBroadcast) Finished()       {}

// gossip is one memberlist gossip round of member mm.
func (m *world) gossip(mm *modelMember) {
	m.at(gossipInterval, func() { m.gossip(mm) })
	if !mm.up {
		return
	}
	for _, to := range sampleN(mm.peerNames(), gossipNodes, m.rnd) {
		msgs := mm.mlq.GetBroadcasts(2, packetLimit)
		used := 0
		for _, b := range msgs {
			used += len(b) + 2
		}
		msgs = append(msgs, mm.sp.Broadcasts(2, packetLimit-used)...)
		if len(msgs) == 0 {
			return
		}
		size := packetHeader
		for _, b := range msgs {
			size += len(b) + 2
		}
		mm.msgs++
		mm.bytes += int64(size)
		d := m.jitter()
		for _, b := range msgs {
			m.at(d, func() { m.deliver(to, b, "push") })
		}
	}
}

// probe is one failure-detection probe of member mm.
func (m *world) probe(mm *modelMember) {
	m.at(probeInterval, func() { m.probe(mm) })
	if !mm.up {
		return
	}
	peers := mm.peerNames()
	if len(peers) == 0 {
		return
	}
	target := peers[m.rnd.IntN(len(peers))]
	mm.msgs += 2
	mm.bytes += probeBytes
	if m.byName[target].up || mm.suspect[target] {
		return
	}
	// No ack: suspected, declared dead after memberlist's suspicion
	// timeout (SuspicionMult 3 × log10(N) probe intervals) unless it
	// answers again by then.
	mm.suspect[target] = true
	n := float64(len(mm.view))
	timeout := time.Duration(3 * math.Max(1, math.Log10(n)) * float64(probeInterval))
	m.at(timeout, func() {
		delete(mm.suspect, target)
		if v := mm.view[target]; mm.up && !m.byName[target].up && v.alive {
			m.membership(mm, fmt.Sprintf("-%s@%d", target, v.inc))
		}
	})
}

// digestTick is the agent's summary to one member every DigestInterval.
func (m *world) digestTick(mm *modelMember) {
	m.at(gossip.DigestInterval, func() { m.digestTick(mm) })
	if mm.up {
		mm.sp.Tick()
	}
}

// pushPullInterval scales like memberlist's pushPullScale.
func pushPullInterval(n int) time.Duration {
	if n <= 32 {
		return pushPullBase
	}
	mult := math.Ceil(math.Log2(float64(n))-math.Log2(32)) + 1
	return time.Duration(mult) * pushPullBase
}

func (m *world) pushPullTick(mm *modelMember) {
	iv := pushPullInterval(len(mm.view))
	m.at(iv/2+time.Duration(m.rnd.Int64N(int64(iv))), func() { m.pushPullTick(mm) })
	if !mm.up {
		return
	}
	peers := mm.peerNames()
	if len(peers) == 0 {
		return
	}
	m.pushPull(mm, m.byName[peers[m.rnd.IntN(len(peers))]], false)
}

// pushPull is memberlist's exchange: both membership lists and both local
// states, over a stream.
func (m *world) pushPull(a, b *modelMember, join bool) {
	if !b.up {
		return
	}
	sa, _ := a.sp.LocalState(join, false)
	sb, _ := b.sp.LocalState(join, false)
	a.msgs++
	b.msgs++
	a.bytes += int64(len(sa) + len(a.view)*nodeStateBytes + packetHeader)
	b.bytes += int64(len(sb) + len(b.view)*nodeStateBytes + packetHeader)
	d := 4*latency + time.Duration(float64(len(sa)+len(sb)+(len(a.view)+len(b.view))*nodeStateBytes)/bytesPerSec*float64(time.Second))
	m.at(d, func() {
		if !a.up || !b.up {
			return
		}
		// Membership first, as memberlist merges it before the user state.
		for _, pair := range [][2]*modelMember{{a, b}, {b, a}} {
			from, to := pair[0], pair[1]
			for name, v := range from.view {
				if v.alive {
					m.membership(to, fmt.Sprintf("+%s@%d", name, v.inc))
				}
			}
		}
		m.deliver(b.name, sa, "push-pull")
		m.deliver(a.name, sb, "push-pull")
	})
}

func (m *world) start(mm *modelMember, seeds []*modelMember) {
	mm.up = true
	if mm.restarted {
		mm.inc++
	}
	mm.view = map[string]nodeView{mm.name: {alive: true, inc: mm.inc}}
	mm.peers = nil
	mm.mlq.QueueBroadcast(mlBroadcast(aliveMsg(mm)))
	m.join(mm, seeds)
}

// join is the agent's join: through the first seed that is up, retried
// every second with another member it knew while none answers.
func (m *world) join(mm *modelMember, seeds []*modelMember) {
	for _, s := range seeds {
		if s.up {
			mm.view[s.name] = nodeView{alive: true, inc: s.inc}
			mm.peers = nil
			m.pushPull(mm, s, true)
			return
		}
	}
	m.at(time.Second, func() {
		if mm.up && len(mm.peerNames()) == 0 {
			m.join(mm, []*modelMember{m.ms[m.rnd.IntN(len(m.ms))]})
		}
	})
}

func newModel(cfg ModelConfig) *world {
	m := &world{cfg: cfg, rnd: rand.New(rand.NewPCG(cfg.Seed, 17)), byName: map[string]*modelMember{},
		watch: map[string]map[string]time.Duration{}, published: map[string]time.Duration{}, origin: map[string]string{}}
	for i := range cfg.Members {
		mm := &modelMember{name: fmt.Sprintf("m%04d", i), suspect: map[string]bool{}, view: map[string]nodeView{}}
		mm.sp = &gossip.Spreader{Self: mm.name, State: cluster.NewState(mm.name), Rand: m.rnd.IntN,
			Peers: mm.peerNames,
			After: func(d time.Duration, f func()) { m.at(d, f) },
			Send:  func(to string, b []byte, reliable bool) { m.send(mm, to, b, reliable) },
			OnChange: func(changed []cluster.Record) {
				for _, r := range changed {
					if w := m.watch[r.Key]; w != nil {
						if _, ok := w[mm.name]; !ok {
							w[mm.name] = m.now
						}
					}
				}
			}}
		mm.mlq = &memberlist.TransmitLimitedQueue{NumNodes: func() int { return len(mm.view) }, RetransmitMult: 4}
		m.ms = append(m.ms, mm)
		m.byName[mm.name] = mm
	}
	return m
}

// publish writes one endpoint record on mm and spreads it; watched ones
// are timed to every member.
func (m *world) publish(mm *modelMember, i int, watched bool) string {
	id := fmt.Sprintf("%s.web.%d", mm.name, i)
	ep := model.Endpoint{ID: id, Network: "web", Node: mm.name,
		MAC: fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", i>>8&0xff, i&0xff, len(m.published)>>8&0xff, len(m.published)&0xff),
		IP:  netip.AddrFrom4([4]byte{10, byte(i), byte(len(m.published) >> 8), byte(len(m.published))})}
	rec, err := mm.sp.State.Put(cluster.EndpointKey(id), ep)
	if err != nil {
		panic(err)
	}
	if watched {
		m.watch[rec.Key] = map[string]time.Duration{mm.name: m.now}
		m.published[rec.Key] = m.now
		m.origin[rec.Key] = mm.name
	}
	mm.sp.Publish(rec)
	return rec.Key
}

func (m *world) allConverged() bool {
	for _, mm := range m.ms {
		if !mm.up || len(mm.peerNames()) != len(m.ms)-1 || mm.sp.State.Len() != m.total {
			return false
		}
	}
	return true
}

// RunModel runs the model once.
func RunModel(cfg ModelConfig) (ModelResult, error) {
	if cfg.Members < 2 {
		return ModelResult{}, fmt.Errorf("invalid member count %d: want at least 2", cfg.Members)
	}
	if cfg.Endpoints == 0 {
		cfg.Endpoints = 10
	}
	if cfg.Changes == 0 {
		cfg.Changes = 20
	}
	if cfg.Churn == 0 {
		cfg.Churn = 0.05
	}
	if cfg.Window == 0 {
		cfg.Window = 30 * time.Second
	}
	if cfg.StartSpread == 0 {
		cfg.StartSpread = 10 * time.Second
	}
	wall := time.Now()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	m := newModel(cfg)
	res := ModelResult{Members: cfg.Members}
	m.total = cfg.Members * cfg.Endpoints

	// Cold start: members start over StartSpread and join through the
	// first member or one already in; each then attaches its endpoints.
	for i, mm := range m.ms {
		at := time.Duration(0)
		if i > 0 {
			at = time.Duration(m.rnd.Int64N(int64(cfg.StartSpread)))
		}
		m.at(at, func() {
			seeds := []*modelMember{m.ms[0]}
			for range 2 {
				seeds = append(seeds, m.ms[m.rnd.IntN(len(m.ms))])
			}
			m.start(mm, seeds)
			for e := range cfg.Endpoints {
				m.publish(mm, e, false)
			}
			m.at(0, func() { m.gossip(mm) })
			m.at(time.Duration(m.rnd.Int64N(int64(probeInterval))), func() { m.probe(mm) })
			m.at(time.Duration(m.rnd.Int64N(int64(pushPullBase))), func() { m.pushPullTick(mm) })
			m.at(time.Duration(m.rnd.Int64N(int64(gossip.DigestInterval))), func() { m.digestTick(mm) })
		})
	}
	limit := 10 * time.Minute
	for !m.allConverged() {
		if m.now > limit {
			return res, fmt.Errorf("cold start of %d members: not converged after %s (virtual)", cfg.Members, limit)
		}
		m.run(m.now + 100*time.Millisecond)
	}
	res.ColdStartMs = ms2(m.now)

	// Steady state: traffic with nothing changing, once the gossip queues
	// have sent what the cold start left in them.
	for m.queued() > 0 {
		m.run(m.now + 100*time.Millisecond)
	}
	res.DrainedMs = ms2(m.now)
	m.run(m.now + 5*time.Second)
	resetCounts(m)
	m.run(m.now + cfg.Window)
	res.SteadyBytesPerSec, res.SteadyMsgsPerSec = perMember(m, cfg.Window)
	resetCounts(m)

	// Single changes from random members, spaced out.
	var keys []string
	for c := range cfg.Changes {
		mm := m.ms[m.rnd.IntN(len(m.ms))]
		keys = append(keys, m.publish(mm, cfg.Endpoints+c, true))
		m.total++
		m.run(m.now + 500*time.Millisecond)
	}
	m.run(m.now + 5*time.Second)
	lat, err := m.latencies(keys, nil)
	if err != nil {
		return res, err
	}
	res.ConvergeP50Ms, res.ConvergeP99Ms, res.ConvergeMaxMs = ms2(pct(lat, 50)), ms2(pct(lat, 99)), ms2(lat[len(lat)-1])

	// Churn: a fraction of members restart (down 10 s, then join again
	// through a member they knew) while changes go on.
	if cfg.Churn > 0 {
		resetCounts(m)
		n := max(1, int(cfg.Churn*float64(len(m.ms))))
		churned := map[string]bool{}
		for _, i := range m.rnd.Perm(len(m.ms))[:n] {
			mm := m.ms[i]
			churned[mm.name] = true
			down := time.Duration(m.rnd.Int64N(int64(cfg.Window / 2)))
			m.at(down, func() {
				mm.up = false
				m.at(10*time.Second, func() {
					mm.restarted = true
					mm.upAt = m.now
					seeds := []*modelMember{m.byName[mm.peerNames()[m.rnd.IntN(len(mm.peerNames()))]]}
					m.start(mm, seeds)
				})
			})
		}
		var ckeys []string
		for c := range cfg.Changes {
			m.at(time.Duration(c)*cfg.Window/time.Duration(cfg.Changes), func() {
				for {
					mm := m.ms[m.rnd.IntN(len(m.ms))]
					if mm.up && !churned[mm.name] {
						ckeys = append(ckeys, m.publish(mm, 1000+c, true))
						m.total++
						return
					}
				}
			})
		}
		// The restarted members must hold everything again: checked
		// every 10 ms.
		check := func() {
			for _, mm := range m.ms {
				if mm.restarted && mm.fullAgainAt == 0 && mm.up && mm.sp.State.Len() == m.total {
					mm.fullAgainAt = m.now
				}
			}
		}
		end := m.now + cfg.Window
		for m.now < end {
			m.run(m.now + 10*time.Millisecond)
			check()
		}
		res.ChurnBytesPerSec, res.ChurnMsgsPerSec = perMember(m, cfg.Window)
		deadline := m.now + 5*time.Minute
		for !m.allConverged() {
			if m.now > deadline {
				return res, fmt.Errorf("after churn: not converged within 5 min (virtual): %s", m.lagging())
			}
			m.run(m.now + 10*time.Millisecond)
			check()
		}
		for _, mm := range m.ms {
			if mm.restarted {
				at := mm.fullAgainAt
				if at == 0 {
					at = m.now
				}
				res.RejoinMaxMs = max(res.RejoinMaxMs, ms2(at-mm.upAt))
			}
		}
		clat, err := m.latencies(ckeys, churned)
		if err != nil {
			return res, fmt.Errorf("during churn: %w", err)
		}
		res.ChurnConvergeMaxMs = ms2(clat[len(clat)-1])
	}

	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	res.HeapKBPer = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / 1024 / float64(len(m.ms))
	runtime.KeepAlive(m)
	res.WallS = math.Round(time.Since(wall).Seconds()*10) / 10
	return res, nil
}
