package gossip

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/cluster"
)

func epRecord(origin string, i int, pad int) cluster.Record {
	v := fmt.Sprintf(`{"id":"%s.web.%d","network":"web","node":"%s","mac":"02:00:00:00:%02x:%02x","ip":"10.1.%d.%d","note":"%s"}`,
		origin, i, origin, i/256, i%256, i/256, i%256+1, strings.Repeat("x", pad))
	return cluster.Record{Key: cluster.EndpointKey(fmt.Sprintf("%s.web.%d", origin, i)), Value: []byte(v), Version: uint64(i + 1), Origin: origin}
}

func TestPack(t *testing.T) {
	for _, tc := range []struct {
		name      string
		recs      []cluster.Record
		limit     int
		wantMsgs  int
		wantAlone []int // messages expected above the limit
	}{
		{"none", nil, 1000, 0, nil},
		{"one", []cluster.Record{epRecord("h1", 1, 0)}, 1000, 1, nil},
		{"many small", func() (r []cluster.Record) {
			for i := range 40 {
				r = append(r, epRecord("h1", i, 0))
			}
			return
		}(), 1000, 7, nil},
		{"a large one alone between small ones", []cluster.Record{epRecord("h1", 1, 0), epRecord("h1", 2, 1500), epRecord("h1", 3, 0)}, 1000, 3, []int{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs, err := Pack(tc.recs, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) != tc.wantMsgs {
				t.Fatalf("%d messages, want %d", len(msgs), tc.wantMsgs)
			}
			var got []cluster.Record
			for i, p := range msgs {
				m, err := cluster.DecodeMessage(p.msg)
				if err != nil {
					t.Fatalf("message %d does not decode: %v", i, err)
				}
				if m.Kind != cluster.MsgRecords {
					t.Errorf("message %d is %q", i, m.Kind)
				}
				if len(p.msg) > tc.limit && !slices.Contains(tc.wantAlone, i) {
					t.Errorf("message %d has %d bytes, over the %d limit", i, len(p.msg), tc.limit)
				}
				if (p.key != "") != (len(m.Records) == 1) || (p.key != "" && p.key != m.Records[0].Key) {
					t.Errorf("message %d of %d records named %q", i, len(m.Records), p.key)
				}
				got = append(got, m.Records...)
			}
			if !sameRecords(got, tc.recs) {
				t.Errorf("records changed by packing")
			}
		})
	}
}

// bus delivers Spreader messages between members synchronously; packets
// are lost with probability loss, streams never.
type bus struct {
	members map[string]*Spreader
	names   []string
	loss    float64
	rnd     *rand.Rand
	sent    map[string]int // messages sent by member
	queue   []func()
	dups    int // copies dropped before decoding
}

func newBus(n int, loss float64) *bus {
	b := &bus{members: map[string]*Spreader{}, loss: loss, rnd: rand.New(rand.NewPCG(1, 2)), sent: map[string]int{}}
	for i := range n {
		b.names = append(b.names, fmt.Sprintf("m%03d", i))
	}
	for _, name := range b.names {
		s := &Spreader{Self: name, State: cluster.NewState(name), Rand: b.rnd.IntN,
			After: func(_ time.Duration, f func()) { b.queue = append(b.queue, f) }}
		s.Peers = func() []string {
			return slices.DeleteFunc(slices.Clone(b.names), func(n string) bool { return n == s.Self })
		}
		s.Send = func(to string, msg []byte, reliable bool) {
			b.sent[s.Self]++
			if !reliable && b.rnd.Float64() < b.loss {
				return
			}
			b.queue = append(b.queue, func() { b.deliver(to, msg, "push") })
		}
		b.members[name] = s
	}
	return b
}

func (b *bus) deliver(to string, msg []byte, via string) {
	if b.members[to].Duplicate(msg) {
		b.dups++
		return
	}
	m, err := cluster.DecodeMessage(msg)
	if err != nil {
		panic(err)
	}
	b.members[to].Handle(m, via)
}

func (b *bus) drain() {
	for len(b.queue) > 0 {
		f := b.queue[0]
		b.queue = b.queue[1:]
		f()
	}
}

// gossipRound gives every member one memberlist gossip round: queued
// broadcasts to three random members.
func (b *bus) gossipRound() {
	for _, name := range b.names {
		s := b.members[name]
		for _, to := range sample(s.Peers(), 3, b.rnd.IntN) {
			for _, msg := range s.Broadcasts(2, 1350) {
				b.queue = append(b.queue, func() { b.deliver(to, msg, "push") })
			}
		}
	}
	b.drain()
}

// pushPull runs memberlist's exchange between two members.
func (b *bus) pushPull(x, y string) {
	sx, _ := b.members[x].LocalState(false, false)
	sy, _ := b.members[y].LocalState(false, false)
	b.deliver(y, sx, "push-pull")
	b.deliver(x, sy, "push-pull")
	b.drain()
}

func (b *bus) has(key string) int {
	n := 0
	for _, s := range b.members {
		if _, ok := s.State.Get(key); ok {
			n++
		}
	}
	return n
}

func TestSpreadReachesAllWithBoundedWork(t *testing.T) {
	for _, tc := range []struct {
		members  int
		relaying bool
	}{{originFanout + 1, false}, {400, true}} {
		t.Run(fmt.Sprint(tc.members), func(t *testing.T) {
			n := tc.members
			b := newBus(n, 0)
			origin := b.members["m007"]
			rec := epRecord("m007", 1, 0)
			_, _ = origin.State.Merge([]cluster.Record{rec})
			origin.Publish(rec)
			b.drain()
			direct := b.has(rec.Key)
			rounds := 0
			for b.has(rec.Key) < n && rounds < 20 {
				b.gossipRound()
				rounds++
			}
			if got := b.has(rec.Key); got < n {
				t.Fatalf("after %d gossip rounds %d of %d members have the change", rounds, got, n)
			}
			t.Logf("pushes and forwarding reached %d of %d; gossip rounds to all: %d; copies dropped undecoded: %d", direct, n, rounds, b.dups)
			// The origin pushes to at most originFanout members; in a
			// cluster that fits, nobody else sends anything; in a larger
			// one every other member forwards once (gossip rounds aside).
			if b.sent["m007"] != min(n-1, originFanout) {
				t.Errorf("origin sent %d messages, want %d", b.sent["m007"], min(n-1, originFanout))
			}
			for name, c := range b.sent {
				want := map[bool]int{false: 0, true: forwardFanout}[tc.relaying]
				if name != "m007" && c > want {
					t.Errorf("%s sent %d messages for one change, want at most %d", name, c, want)
				}
			}
			if !tc.relaying && (direct != n || b.dups != 0) {
				t.Errorf("a cluster the origin covers: %d of %d reached by the push, %d copies", direct, n, b.dups)
			}
			if tc.relaying && (direct < n*9/10 || b.dups == 0) {
				t.Errorf("forwarding reached %d of %d members (want 90%%), %d copies recognised", direct, n, b.dups)
			}
		})
	}
}

func TestAntiEntropyRepairsLoss(t *testing.T) {
	b := newBus(20, 1) // every packet lost: only anti-entropy carries records
	for i, name := range b.names[:5] {
		s := b.members[name]
		rec := epRecord(name, i, 0)
		_, _ = s.State.Merge([]cluster.Record{rec})
		s.Publish(rec)
	}
	b.drain()
	if b.members["m000"].Queued() == 0 {
		t.Fatal("nothing queued for gossip")
	}
	// Rounds of memberlist's push/pull: each member with one other.
	for range 8 {
		for _, x := range b.names {
			y := sample(b.members[x].Peers(), 1, b.rnd.IntN)[0]
			b.pushPull(x, y)
		}
	}
	root := b.members["m000"].State.Digest(false).Root
	for _, name := range b.names {
		if d := b.members[name].State.Digest(false); d.Root != root || d.Count != 5 {
			t.Errorf("%s holds %d records (root %x), want 5 (root %x)", name, d.Count, d.Root, root)
		}
	}
	// Converged members exchange summaries only.
	before := len(b.queue)
	sx, _ := b.members["m003"].LocalState(false, false)
	if len(sx) > 200 {
		t.Errorf("a converged member's push/pull state is %d bytes", len(sx))
	}
	b.pushPull("m003", "m004")
	if len(b.queue) != before {
		t.Errorf("converged members sent more than summaries")
	}
	if full, _ := b.members["m003"].LocalState(false, true); !strings.Contains(string(full), `"kind":"state"`) {
		t.Errorf("full local state is not a state message: %.80s", full)
	}
}

// TestTickRepairs: a record one member holds and nobody was told of (its
// push lost) reaches everyone through the periodic summaries alone, and
// equal members exchange nothing but summaries.
func TestTickRepairs(t *testing.T) {
	b := newBus(30, 0)
	_, _ = b.members["m017"].State.Merge([]cluster.Record{epRecord("m017", 1, 0)})
	for round := 0; round < 15 && b.has(cluster.EndpointKey("m017.web.1")) < 30; round++ {
		for _, name := range b.names {
			b.members[name].Tick()
		}
		b.drain()
	}
	if got := b.has(cluster.EndpointKey("m017.web.1")); got != 30 {
		t.Fatalf("%d of 30 members have the record after the summaries", got)
	}
	clear(b.sent)
	for _, name := range b.names {
		b.members[name].Tick()
	}
	b.drain()
	for name, n := range b.sent {
		if n != 1 {
			t.Errorf("%s sent %d messages in a round of equal members, want its one summary", name, n)
		}
	}
}

// TestJoinExchange: at a join both sides send full digests, and each at
// once sends the other what it lacks, with no recheck delay.
func TestJoinExchange(t *testing.T) {
	b := newBus(2, 0)
	x, y := b.members["m000"], b.members["m001"]
	for i := range 3 {
		_, _ = x.State.Merge([]cluster.Record{epRecord("m000", i, 0)})
		_, _ = y.State.Merge([]cluster.Record{epRecord("m001", i, 0)})
	}
	delayed := 0
	for _, m := range []*Spreader{x, y} {
		m.After = func(time.Duration, func()) { delayed++ }
	}
	sx, _ := x.LocalState(true, false)
	sy, _ := y.LocalState(true, false)
	b.deliver("m001", sx, "push-pull")
	b.deliver("m000", sy, "push-pull")
	b.drain()
	if x.State.Len() != 6 || y.State.Len() != 6 || delayed != 0 {
		t.Fatalf("after a join exchange: %d and %d records, %d delayed rechecks; want 6, 6, 0", x.State.Len(), y.State.Len(), delayed)
	}
}

func TestDuplicate(t *testing.T) {
	s := &Spreader{Self: "a", State: cluster.NewState("a")}
	recs, _ := cluster.Encode(cluster.Message{Kind: cluster.MsgRecords, Records: []cluster.Record{epRecord("h1", 1, 0)}})
	digest := []byte(`{"kind":"digest","records":[],"from":"h1","digest":{"root":7,"count":2}}`)
	for i, tc := range []struct {
		msg  []byte
		want bool
	}{{recs, false}, {recs, true}, {digest, false}, {digest, false}} {
		if got := s.Duplicate(tc.msg); got != tc.want {
			t.Errorf("%d: Duplicate(%.30s) = %v, want %v", i, tc.msg, got, tc.want)
		}
	}
	// The memory is bounded: the oldest are forgotten.
	for i := range seenCap {
		m, _ := cluster.Encode(cluster.Message{Kind: cluster.MsgRecords, Records: []cluster.Record{epRecord("h2", i, 0)}})
		s.Duplicate(m)
	}
	if s.Duplicate(recs) || len(s.seen) != seenCap {
		t.Errorf("after %d others the first is still remembered (%d kept)", seenCap, len(s.seen))
	}
}

// sameRecords compares records as they travel (what a member keeps of its
// own, such as when it saw a record, is not compared).
func sameRecords(a, b []cluster.Record) bool {
	ja, erra := json.Marshal(a)
	jb, errb := json.Marshal(b)
	return erra == nil && errb == nil && bytes.Equal(ja, jb)
}
