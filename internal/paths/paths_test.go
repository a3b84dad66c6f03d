package paths

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var (
	priv = netip.MustParseAddr("10.0.0.2")
	pub  = netip.MustParseAddr("203.0.113.2")
	t0   = time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
)

// round runs one probe round on table; answering lists the addresses that
// answer it. It returns the address in use for "b" afterwards.
func round(tb *Table, i int, answering ...netip.Addr) netip.Addr {
	now := t0.Add(time.Duration(i) * time.Second)
	tb.Targets(now)
	for _, a := range answering {
		tb.Answered("b", a, a, netip.MustParseAddr("198.51.100.1"), time.Millisecond, now)
	}
	addr, _ := tb.Route("b")
	return addr
}

// TestChoice: the first address that answers is used; a path that stops
// answering is left after DownAfter rounds, and taken back once it has
// answered UpAfter rounds in a row.
func TestChoice(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rounds [][]netip.Addr // who answers in each round
		want   []netip.Addr   // address in use after each round
	}{
		{"both answer: the first", [][]netip.Addr{{priv, pub}, {priv, pub}}, []netip.Addr{priv, priv}},
		{"only the second answers", [][]netip.Addr{{pub}, {pub}}, []netip.Addr{pub, pub}},
		{"nothing answers: the first, kept", [][]netip.Addr{{}, {}, {}, {}}, []netip.Addr{priv, priv, priv, priv}},
		{"private breaks: down after three misses, then public",
			[][]netip.Addr{{priv, pub}, {pub}, {pub}, {pub}, {pub}},
			[]netip.Addr{priv, priv, priv, priv, pub}},
		{"private heals: back after two answers in a row",
			[][]netip.Addr{{pub}, {pub}, {priv, pub}, {pub}, {priv, pub}, {priv, pub}},
			[]netip.Addr{pub, pub, pub, pub, pub, priv}},
		{"public breaks while in use: private, which answers again",
			[][]netip.Addr{{pub}, {pub}, {priv}, {priv}, {priv}, {priv}},
			[]netip.Addr{pub, pub, pub, priv, priv, priv}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := NewTable()
			tb.SetPeers(map[string][]netip.Addr{"b": {priv, pub}}, nil, t0)
			for i, answering := range tc.rounds {
				if got := round(tb, i, answering...); got != tc.want[i] {
					p, _ := tb.Peer("b")
					t.Fatalf("round %d: using %v, want %v (%s; %+v)", i, got, tc.want[i], p.Reason, p.Candidates)
				}
			}
		})
	}
}

// TestDemote: an address that answers but whose VXLAN does not pass is
// kept off for FirstDemotion, then twice as long; only the address in use
// is demoted; one that stops answering is tried again once it is back.
func TestDemote(t *testing.T) {
	tb := NewTable()
	tb.SetPeers(map[string][]netip.Addr{"b": {priv, pub}}, nil, t0)
	round(tb, 0, priv, pub)
	if tb.Demote("b", pub, "x", t0) {
		t.Error("an address not in use was demoted")
	}
	if !tb.Demote("b", priv, "VXLAN does not pass", t0) {
		t.Fatal("the address in use was not demoted")
	}
	p, _ := tb.Peer("b")
	if p.Addr != pub || !strings.Contains(p.Reason, "10.0.0.2 is kept off until 00:01:00 (VXLAN does not pass)") {
		t.Fatalf("after the demotion: %v, %s", p.Addr, p.Reason)
	}
	// Still off before the minute is out, back after it.
	tb.Targets(t0.Add(59 * time.Second))
	tb.Answered("b", priv, priv, pub, 0, t0.Add(59*time.Second))
	tb.Answered("b", pub, pub, pub, 0, t0.Add(59*time.Second))
	if a, _ := tb.Route("b"); a != pub {
		t.Fatalf("back on %v before the demotion ran out", a)
	}
	if a := round(tb, 61, priv, pub); a != priv {
		t.Fatalf("on %v after the demotion ran out, want %v", a, priv)
	}
	// The second demotion lasts two minutes.
	tb.Demote("b", priv, "again", t0.Add(61*time.Second))
	if p, _ := tb.Peer("b"); !p.Candidates[0].OffUntil.Equal(t0.Add(181 * time.Second)) {
		t.Errorf("second demotion until %v, want two minutes", p.Candidates[0].OffUntil)
	}
	// It stops answering, then answers again: tried again at once.
	for i := range DownAfter + 1 {
		round(tb, 62+i, pub)
	}
	round(tb, 70, priv, pub)
	if a := round(tb, 71, priv, pub); a != priv {
		t.Errorf("after the network changed: %v, want %v tried again", a, priv)
	}
}

// TestKnownFirst: a new peer starts on the address it joined at, not on
// its first (which may not reach across sites), and moves to the first
// once that answers steadily.
func TestKnownFirst(t *testing.T) {
	tb := NewTable()
	tb.SetPeers(map[string][]netip.Addr{"b": {priv, pub}}, map[string]netip.Addr{"b": pub}, t0)
	if a, _ := tb.Route("b"); a != pub {
		t.Fatalf("new peer on %v, want the address it joined at", a)
	}
	for i, want := range []netip.Addr{pub, priv} {
		if got := round(tb, i, priv, pub); got != want {
			t.Fatalf("round %d: %v, want %v", i, got, want)
		}
	}
}

// TestSetPeers: one address is used without probing; a peer's state
// survives an unchanged list; peers that left are forgotten; a changed
// list keeps the state of the addresses it keeps.
func TestSetPeers(t *testing.T) {
	tb := NewTable()
	tb.SetPeers(map[string][]netip.Addr{"a": {priv}, "b": {priv, pub}}, nil, t0)
	targets, _ := tb.Targets(t0)
	if len(targets) != 1 || len(targets["b"]) != 2 {
		t.Fatalf("targets %v: want b's two addresses only", targets)
	}
	if a, _ := tb.Route("a"); a != priv {
		t.Errorf("a: %v, want its only address", a)
	}
	tb.Answered("b", pub, pub, priv, time.Millisecond, t0)
	tb.SetPeers(map[string][]netip.Addr{"b": {priv, pub}}, nil, t0)
	if _, ok := tb.Route("a"); ok {
		t.Error("a left but is still routed")
	}
	if p, _ := tb.Peer("b"); !p.Candidates[1].Up || p.Addr != pub {
		t.Errorf("b lost its state: %+v", p)
	}
	tb.SetPeers(map[string][]netip.Addr{"b": {pub, priv, pub}}, nil, t0) // reordered, with a duplicate
	if p, _ := tb.Peer("b"); len(p.Candidates) != 2 || !p.Candidates[0].Up || p.Addr != pub || !strings.Contains(p.Reason, "first") {
		t.Errorf("b after reorder: %+v", p)
	}
	if tb.Answered("b", pub, pub, priv, 0, t0) {
		t.Error("a second answer to one probe changed the choice")
	}
	if tb.Answered("nobody", pub, pub, priv, 0, t0) {
		t.Error("an answer from an unknown peer changed something")
	}
}

// TestWire: probes and answers round-trip; anything else is refused as
// malformed, naming why.
func TestWire(t *testing.T) {
	key, other := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	probe := Msg{Nonce: 42, At: t0.UnixMilli(), From: "h1", To: "h2", Addr: pub}
	answer := Msg{Answer: true, Nonce: 42, At: t0.UnixMilli(), From: "h2", To: "h1", Addr: pub, SeenAs: netip.MustParseAddrPort("198.51.100.1:7947")}
	for _, m := range []Msg{probe, answer} {
		b, err := Encode(m, key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(b, [][]byte{other, key})
		if err != nil || got != m {
			t.Errorf("round trip %+v: %+v, %v", m, got, err)
		}
	}
	if !probe.Fresh(t0.Add(29*time.Second)) || probe.Fresh(t0.Add(31*time.Second)) || probe.Fresh(t0.Add(-31*time.Second)) {
		t.Error("a probe is fresh for MaxSkew either side of its time, and only then")
	}
	good, _ := Encode(probe, key)
	flipped := bytes.Clone(good)
	flipped[12] ^= 1
	for _, tc := range []struct {
		name string
		b    []byte
		keys [][]byte
		want string
	}{
		{"empty", nil, [][]byte{key}, "0 bytes"},
		{"not ours", append([]byte{0}, good[1:]...), [][]byte{key}, "malformed"},
		{"other key", good, [][]byte{other}, "not signed"},
		{"changed in flight", flipped, [][]byte{key}, "not signed"},
		{"truncated", good[:len(good)-1], [][]byte{key}, "not signed"},
		{"newer version", append([]byte{Magic, 9}, good[2:]...), [][]byte{key}, "version 9"},
	} {
		_, err := Decode(tc.b, tc.keys)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := Encode(Msg{From: strings.Repeat("x", 64), To: "h2", Addr: pub}, key); err == nil {
		t.Error("a 64-byte name was encoded")
	}
}

// FuzzDecode: no input makes Decode panic, and what it accepts encodes
// back to the same bytes.
func FuzzDecode(f *testing.F) {
	key := bytes.Repeat([]byte{1}, 32)
	b, _ := Encode(Msg{Nonce: 1, From: "a", To: "b", Addr: pub}, key)
	f.Add(b)
	b, _ = Encode(Msg{Answer: true, Nonce: 1, From: "a", To: "b", Addr: pub, SeenAs: netip.MustParseAddrPort("[2001:db8::1]:1")}, key)
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b, [][]byte{key})
		if err != nil {
			return
		}
		again, err := Encode(m, key)
		if err != nil || !bytes.Equal(again, b) {
			t.Errorf("%x decoded to %+v, encodes to %x (%v)", b, m, again, err)
		}
	})
}
