package gossip

import (
	"bytes"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/vxnet/vxnet/internal/cluster"
)

// How changes travel (the Spreader). The numbers keep the work of one
// change on one member bounded whatever the cluster's size. The origin
// pushes it to up to originFanout members (one packet each)
// and queues it for memberlist's gossip rounds (a second path for lost
// packets). In a cluster that fits in originFanout that is all: every
// member gets one copy. In a larger one, every member that learns
// something new forwards it at once to forwardFanout others (infect and
// forward: about 98% of members have it after a few hops of one packet
// each) and gossips it too, which reaches the rest; each member then takes
// in about ten copies of a change, and drops the copies unread
// (Duplicate). Anti-entropy (digests) repairs whatever was lost.
const (
	// PackLimit bounds one records message sent as a packet (by UDP or
	// piggybacked on gossip); larger records travel alone over a stream.
	PackLimit     = 1000
	originFanout  = 256
	forwardFanout = 4
	// maxQueued bounds the gossip queue; anti-entropy covers what is pruned.
	maxQueued = 4096
	// DigestInterval is how often a member sends its summary to one
	// member at random (Tick): a lost change is repaired within seconds,
	// not at memberlist's push/pull (15 s to 90 s as the cluster grows).
	DigestInterval = 2 * time.Second
	// recheckAfter lets changes in flight land before a difference of
	// summaries is taken for one that needs an exchange.
	recheckAfter = time.Second
)

// Spreader is vxnet's dissemination protocol apart from its transport:
// Gossip runs it over memberlist, the simulation over a model of
// memberlist's rounds in virtual time.
type Spreader struct {
	Self  string
	State *cluster.State
	// Peers returns the live members other than this one.
	Peers func() []string
	// Send sends msg to member to; reliable asks for a stream (large
	// messages, anti-entropy), otherwise a packet that may be lost.
	Send func(to string, msg []byte, reliable bool)
	// OnChange gets the records that changed this member's state.
	OnChange func(changed []cluster.Record)
	Log      *slog.Logger
	// Rand picks a number in [0, n) (default math/rand/v2).
	Rand func(n int) int
	// After runs f after d (default time.AfterFunc).
	After func(d time.Duration, f func())

	once  sync.Once
	queue *memberlist.TransmitLimitedQueue

	// seen holds hashes of the records messages taken in lately: the
	// copies forwarding and gossip bring (about ten per change) are
	// dropped before they are decoded.
	seenMu   sync.Mutex
	seen     map[uint64]struct{}
	seenRing []uint64
	seenNext int
}

func (s *Spreader) init() {
	s.once.Do(func() {
		if s.Rand == nil {
			s.Rand = rand.N[int]
		}
		if s.Log == nil {
			s.Log = slog.New(slog.DiscardHandler)
		}
		if s.After == nil {
			s.After = func(d time.Duration, f func()) { time.AfterFunc(d, f) }
		}
		if s.OnChange == nil {
			s.OnChange = func([]cluster.Record) {}
		}
		s.queue = &memberlist.TransmitLimitedQueue{NumNodes: func() int { return len(s.Peers()) + 1 }, RetransmitMult: 2}
	})
}

// Publish spreads this member's changed records: pushed to up to
// originFanout members now, queued for gossip.
func (s *Spreader) Publish(recs ...cluster.Record) {
	s.spread(recs, originFanout)
}

// relays reports whether members forward what is new to them: only when
// the origin cannot push to every member itself.
func (s *Spreader) relays() bool { return len(s.Peers()) > originFanout }

func (s *Spreader) spread(recs []cluster.Record, fanout int) {
	if len(recs) == 0 {
		return
	}
	s.init()
	msgs, err := Pack(recs, PackLimit)
	if err != nil {
		s.Log.Error("publish", "err", err)
		return
	}
	targets := sample(s.Peers(), fanout, s.Rand)
	for _, p := range msgs {
		s.Duplicate(p.msg) // its echoes are copies too
		big := len(p.msg) > PackLimit
		for _, t := range targets {
			s.Send(t, p.msg, big)
		}
		if !big {
			s.queue.QueueBroadcast(p.broadcast())
		}
	}
	if n := s.queue.NumQueued(); n > maxQueued {
		s.queue.Prune(maxQueued)
	}
}

// seenCap bounds the hashes of messages remembered.
const seenCap = 8192

// Duplicate reports whether b is a records message this member already
// took in (and remembers it otherwise); only records messages are
// remembered: they alone come in many identical copies.
func (s *Spreader) Duplicate(b []byte) bool {
	if !bytes.HasPrefix(b, []byte(`{"kind":"records"`)) {
		return false
	}
	h := fnv.New64a()
	h.Write(b)
	sum := h.Sum64()
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	if s.seen == nil {
		s.seen = make(map[uint64]struct{}, seenCap)
		s.seenRing = make([]uint64, seenCap)
	}
	if _, ok := s.seen[sum]; ok {
		return true
	}
	if old := s.seenRing[s.seenNext]; old != 0 {
		delete(s.seen, old)
	}
	s.seen[sum] = struct{}{}
	s.seenRing[s.seenNext] = sum
	s.seenNext = (s.seenNext + 1) % seenCap
	return false
}

// Broadcasts returns queued messages for a gossip packet (memberlist's
// Delegate.GetBroadcasts).
func (s *Spreader) Broadcasts(overhead, limit int) [][]byte {
	s.init()
	return s.queue.GetBroadcasts(overhead, limit)
}

// Queued returns how many messages wait for gossip.
func (s *Spreader) Queued() int {
	s.init()
	return s.queue.NumQueued()
}

// LocalState is this member's side of a push/pull exchange: a summary of
// its state (root and count); at a join its full digest, so that each side
// at once sends the other the records of the origins that differ; its
// whole state when old is set (a member before digests is in the cluster).
func (s *Spreader) LocalState(join, old bool) ([]byte, error) {
	if old {
		return cluster.Encode(cluster.Message{Kind: cluster.MsgState, Records: s.State.Snapshot()})
	}
	return cluster.Encode(cluster.Message{Kind: cluster.MsgDigest, From: s.Self, Digest: s.State.Digest(join)})
}

// Handle takes a records, state or digest message in; via says how it came
// ("push" for messages and gossip, "push-pull" for the exchange).
func (s *Spreader) Handle(m cluster.Message, via string) {
	s.init()
	changed, err := s.State.Merge(m.Records)
	if err != nil {
		s.Log.Warn("merge", "via", via, "err", err)
	}
	if len(changed) > 0 {
		s.OnChange(changed)
		// In a cluster larger than one origin's push, news travels on:
		// forwarded at once and gossiped. Records that came with a state
		// exchange are old news repaired, not forwarded (after a partition
		// that would flood the cluster).
		if m.Kind == cluster.MsgRecords && s.relays() {
			s.spread(changed, forwardFanout)
		}
	}
	if m.Kind != cluster.MsgDigest || m.Digest == nil || m.From == s.Self {
		return
	}
	d := *m.Digest
	switch {
	case !d.Full:
		// A summary. On a difference, one side (the receiver, or the
		// lower name of a push/pull pair, where both get one) answers
		// with its own summary a moment later; if they still differ
		// then, the peer starts the exchange of full digests.
		if s.State.Digest(false).Root == d.Root {
			return
		}
		if d.Recheck {
			s.sendDigest(m.From, nil, true)
			return
		}
		if via == "push-pull" && s.Self > m.From {
			return
		}
		from := m.From
		s.After(recheckAfter, func() { s.sendSummary(from, true) })
	case d.Reply:
		s.sendDigest(m.From, s.State.Differing(d), false)
	default:
		if recs := s.State.Differing(d); len(recs) > 0 {
			b, err := cluster.Encode(cluster.Message{Kind: cluster.MsgState, Records: recs})
			if err != nil {
				s.Log.Error("encode state", "err", err)
				return
			}
			s.Send(m.From, b, true)
		}
	}
}

// Tick sends this member's summary to one member at random; call it every
// DigestInterval.
func (s *Spreader) Tick() {
	s.init()
	if to := sample(s.Peers(), 1, s.Rand); len(to) == 1 {
		s.sendSummary(to[0], false)
	}
}

func (s *Spreader) sendSummary(to string, recheck bool) {
	d := s.State.Digest(false)
	d.Recheck = recheck
	b, err := cluster.Encode(cluster.Message{Kind: cluster.MsgDigest, From: s.Self, Digest: d})
	if err != nil {
		s.Log.Error("encode digest", "err", err)
		return
	}
	// The periodic summary is a packet; the recheck, rare, goes by stream.
	s.Send(to, b, recheck)
}

// Exchange starts a full digest exchange with member to (after it came
// back from a partition or a restart): both sides end with the newer
// records of each other.
func (s *Spreader) Exchange(to string) { s.sendDigest(to, nil, true) }

// rejoinExchanges is how many members, on average, start a digest
// exchange with a member that came back: all of them would send it N
// digests at once.
const rejoinExchanges = 3

// Rejoined is called when member name is back after it had failed (a
// restart, a healed partition): a few members, picked at random by each
// deciding alone, exchange digests with it at once; push/pull does the
// rest later.
func (s *Spreader) Rejoined(name string) {
	s.init()
	if n := len(s.Peers()); n <= rejoinExchanges || s.Rand(n) < rejoinExchanges {
		s.Exchange(name)
	}
}

// sendDigest sends this member's full digest (and records the peer lacks);
// reply asks the peer for its records and digest in return.
func (s *Spreader) sendDigest(to string, recs []cluster.Record, reply bool) {
	d := s.State.Digest(true)
	d.Reply = reply
	b, err := cluster.Encode(cluster.Message{Kind: cluster.MsgDigest, From: s.Self, Digest: d, Records: recs})
	if err != nil {
		s.Log.Error("encode digest", "err", err)
		return
	}
	s.Send(to, b, true)
}

// packed is one message of Pack and, when it holds one record, its key
// (a newer change of that key replaces it in the gossip queue).
type packed struct {
	msg []byte
	key string
}

func (p packed) broadcast() memberlist.Broadcast {
	if p.key != "" {
		return namedBroadcast{p.msg, p.key}
	}
	return uniqueBroadcast(p.msg)
}

// Pack encodes records as records messages of at most limit bytes each; a
// record too large for limit alone gets a message of its own.
func Pack(recs []cluster.Record, limit int) ([]packed, error) {
	return pack(cluster.MsgRecords, recs, limit)
}

// pack is Pack into messages of a kind (records, or state: old news that
// is not forwarded).
func pack(kind string, recs []cluster.Record, limit int) ([]packed, error) {
	const overhead = len(`{"kind":"records","records":[]}`)
	var out []packed
	var group []cluster.Record
	size := overhead
	flush := func() error {
		if len(group) == 0 {
			return nil
		}
		b, err := cluster.Encode(cluster.Message{Kind: kind, Records: group})
		if err != nil {
			return err
		}
		p := packed{msg: b}
		if len(group) == 1 {
			p.key = group[0].Key
		}
		out = append(out, p)
		group, size = nil, overhead
		return nil
	}
	for _, r := range recs {
		b, err := r.MarshalJSON()
		if err != nil {
			return nil, err
		}
		if len(group) > 0 && size+1+len(b) > limit {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		group = append(group, r)
		size += len(b) + 1
	}
	return out, flush()
}

type namedBroadcast struct {
	msg []byte
	key string
}

func (b namedBroadcast) Invalidates(o memberlist.Broadcast) bool {
	n, ok := o.(namedBroadcast)
	return ok && n.key == b.key
}
func (b namedBroadcast) Name() string    { return b.key }
func (b namedBroadcast) Message() []byte { return b.msg }
func (b namedBroadcast) Finished()       {}

type uniqueBroadcast []byte

func (b uniqueBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b uniqueBroadcast) Message() []byte                       { return b }
func (b uniqueBroadcast) Finished()                             {}
func (b uniqueBroadcast) UniqueBroadcast()                      {}

// sample picks up to k of names at random.
func sample(names []string, k int, rnd func(int) int) []string {
	if len(names) <= k {
		return names
	}
	names = slices.Clone(names)
	for i := range k {
		j := i + rnd(len(names)-i)
		names[i], names[j] = names[j], names[i]
	}
	return names[:k]
}
