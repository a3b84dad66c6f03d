// Package paths picks, for each pair of hosts, the address one reaches the
// other at. A host may be reached at several addresses (a private one
// inside its site, a public one across sites, behind a 1:1 NAT); it lists
// them in order of preference. Each host probes every address of every
// peer that has more than one, and uses the first that answers; it moves
// to the next when that one stops answering and back when it answers
// again. The Table holds the choices and is pure (time is given); the
// wire format of the probes is in wire.go.
package paths

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Thresholds of a candidate's state, in probe rounds.
const (
	// DownAfter unanswered probes in a row put an address down.
	DownAfter = 3
	// UpAfter answers in a row bring an address back ahead of the one in
	// use (one answer is enough when nothing else answers).
	UpAfter = 2
)

// Candidate is one address of a peer and what probing it found.
type Candidate struct {
	Addr netip.Addr `json:"addr"`
	// Up: it answers; Answers and Misses are the current run of answered
	// and unanswered probes.
	Up      bool          `json:"up"`
	Answers int           `json:"answers,omitempty"`
	Misses  int           `json:"misses,omitempty"`
	RTT     time.Duration `json:"rtt,omitempty"`
	LastOK  time.Time     `json:"lastOk,omitzero"`
	// SeenAs is this host's address as the peer saw a probe sent to Addr
	// (its public address when a NAT is between).
	SeenAs netip.Addr `json:"seenAs,omitzero"`
	// From is the address the peer's answer came from.
	From netip.Addr `json:"from,omitzero"`
	// OffUntil keeps an address that answers out of use: the pair's VXLAN
	// did not pass there (Demote), for the Why.
	OffUntil  time.Time `json:"offUntil,omitzero"`
	Why       string    `json:"why,omitempty"`
	demotions int
	pending   bool
}

// usable reports whether the candidate may carry the pair's traffic.
func (c Candidate) usable(now time.Time) bool { return c.Up && !now.Before(c.OffUntil) }

// Path is the choice for one peer.
type Path struct {
	Peer       string      `json:"peer"`
	Addr       netip.Addr  `json:"addr"`
	Reason     string      `json:"reason"`
	Since      time.Time   `json:"since,omitzero"`
	Candidates []Candidate `json:"candidates"`
}

// Probed reports whether the peer's addresses are probed (it has more
// than one).
func (p Path) Probed() bool { return len(p.Candidates) > 1 }

// Table holds every peer's candidates and the address in use.
type Table struct {
	peers map[string]*Path
	// ProbeAll probes every peer, also one with a single address (a host
	// behind a masquerading NAT keeps its mappings open that way).
	ProbeAll bool
}

// NewTable returns an empty table.
func NewTable() *Table { return &Table{peers: map[string]*Path{}} }

// SetPeers makes the table's peers exactly those given, with their
// addresses in order of preference. A peer whose addresses did not change
// keeps its state; an address kept keeps its own. A new peer starts on the
// address it is known at (known, when among its addresses: the one it
// joined at, which answered) until probes say better. It reports whether
// any choice changed.
func (t *Table) SetPeers(peers map[string][]netip.Addr, known map[string]netip.Addr, now time.Time) bool {
	changed := false
	for name := range t.peers {
		if _, ok := peers[name]; !ok {
			delete(t.peers, name)
			changed = true
		}
	}
	for name, addrs := range peers {
		addrs = dedupe(addrs)
		if len(addrs) == 0 {
			continue
		}
		p, ok := t.peers[name]
		if !ok {
			p = &Path{Peer: name}
			if k := known[name]; slices.Contains(addrs, k) {
				p.Addr, p.Since = k, now
			}
			t.peers[name] = p
		}
		if ok && sameAddrs(p.Candidates, addrs) {
			continue
		}
		old := p.Candidates
		p.Candidates = make([]Candidate, len(addrs))
		for i, a := range addrs {
			p.Candidates[i] = Candidate{Addr: a}
			if j := slices.IndexFunc(old, func(c Candidate) bool { return c.Addr == a }); j >= 0 {
				p.Candidates[i] = old[j]
			}
		}
		if t.choose(p, now) {
			changed = true
		}
	}
	return changed
}

// Route returns the address in use for peer.
func (t *Table) Route(peer string) (netip.Addr, bool) {
	p, ok := t.peers[peer]
	if !ok || !p.Addr.IsValid() {
		return netip.Addr{}, false
	}
	return p.Addr, true
}

// Peer returns a copy of peer's path.
func (t *Table) Peer(peer string) (Path, bool) {
	p, ok := t.peers[peer]
	if !ok {
		return Path{}, false
	}
	c := *p
	c.Candidates = slices.Clone(p.Candidates)
	return c, true
}

// Paths returns a copy of every path, by peer name.
func (t *Table) Paths() []Path {
	var out []Path
	for name := range t.peers {
		p, _ := t.Peer(name)
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Path) int { return strings.Compare(a.Peer, b.Peer) })
	return out
}

// Targets are the addresses to probe this round, by peer: every address
// of the peers that have more than one. A probe still unanswered from the
// round before counts as a miss.
func (t *Table) Targets(now time.Time) (map[string][]netip.Addr, bool) {
	out := map[string][]netip.Addr{}
	changed := false
	for name, p := range t.peers {
		if !p.Probed() && !t.ProbeAll {
			continue
		}
		for i := range p.Candidates {
			c := &p.Candidates[i]
			if c.pending {
				c.Misses++
				c.Answers = 0
				if c.Misses >= DownAfter {
					// The network changed: a demotion is tried again once
					// it answers again.
					c.Up, c.OffUntil, c.Why = false, time.Time{}, ""
				}
			}
			c.pending = true
			out[name] = append(out[name], c.Addr)
		}
		if t.choose(p, now) {
			changed = true
		}
	}
	return out, changed
}

// Answered records an answer from peer to a probe sent to addr, and
// reports whether the choice changed.
func (t *Table) Answered(peer string, addr, from, seenAs netip.Addr, rtt time.Duration, now time.Time) bool {
	p, ok := t.peers[peer]
	if !ok {
		return false
	}
	i := slices.IndexFunc(p.Candidates, func(c Candidate) bool { return c.Addr == addr })
	if i < 0 {
		return false
	}
	c := &p.Candidates[i]
	if !c.pending { // a duplicate, or an answer to a probe already counted as lost
		return false
	}
	c.pending, c.Misses, c.Up = false, 0, true
	c.Answers++
	c.RTT, c.LastOK, c.From, c.SeenAs = rtt, now, from, seenAs
	return t.choose(p, now)
}

// Demotion bounds: an address that answers probes while the pair's VXLAN
// does not pass there is kept out of use for FirstDemotion, twice as long
// at each demotion after, at most MaxDemotion, or until it stops
// answering (the network changed) and answers again.
const (
	FirstDemotion = time.Minute
	MaxDemotion   = time.Hour
)

// Demote keeps peer's address addr out of use (why says what failed
// there), when it is the one in use; it reports whether the choice
// changed.
func (t *Table) Demote(peer string, addr netip.Addr, why string, now time.Time) bool {
	p, ok := t.peers[peer]
	if !ok || p.Addr != addr || !p.Probed() {
		return false
	}
	i := slices.IndexFunc(p.Candidates, func(c Candidate) bool { return c.Addr == addr })
	c := &p.Candidates[i]
	d := min(FirstDemotion<<min(c.demotions, 6), MaxDemotion)
	c.demotions++
	c.OffUntil, c.Why = now.Add(d), why
	return t.choose(p, now)
}

// choose sets p's address: the first candidate that answers, where one
// ahead of the address in use must have answered UpAfter times in a row;
// with none answering, the address in use stays (or the first, before any
// probe). It reports whether the address changed.
func (t *Table) choose(p *Path, now time.Time) bool {
	cur := slices.IndexFunc(p.Candidates, func(c Candidate) bool { return c.Addr == p.Addr })
	pick, reason := -1, ""
	for i, c := range p.Candidates {
		if !c.usable(now) {
			continue
		}
		if cur >= 0 && i < cur && c.Answers < UpAfter {
			continue // not yet steady enough to move back to
		}
		pick = i
		break
	}
	switch {
	case len(p.Candidates) == 1:
		pick, reason = 0, "its only address"
	case pick == 0:
		reason = "its first address, answers"
	case pick > 0:
		reason = "answers; " + describeAhead(p.Candidates[:pick], now)
	case cur >= 0 && !p.Candidates[cur].probed():
		pick, reason = cur, "the address it joined at; not probed yet"
	case cur >= 0:
		pick, reason = cur, "no address answers; kept the one in use"
	default:
		pick, reason = 0, "not probed yet"
	}
	addr := p.Candidates[pick].Addr
	p.Reason = reason
	if addr == p.Addr {
		return false
	}
	p.Addr, p.Since = addr, now
	return true
}

func (c Candidate) probed() bool { return c.Answers > 0 || c.Misses > 0 || c.Up }

// describeAhead says why the candidates ahead of the one picked are not
// in use.
func describeAhead(cs []Candidate, now time.Time) string {
	var down, steady, off []string
	for _, c := range cs {
		switch {
		case c.Up && !c.usable(now):
			off = append(off, fmt.Sprintf("%s is kept off until %s (%s)", c.Addr, c.OffUntil.UTC().Format(time.TimeOnly), c.Why))
		case c.Up:
			steady = append(steady, c.Addr.String())
		default:
			down = append(down, c.Addr.String())
		}
	}
	var parts []string
	if len(down) > 0 {
		parts = append(parts, strings.Join(down, ", ")+" does not")
	}
	if len(steady) > 0 {
		parts = append(parts, strings.Join(steady, ", ")+" answers again, not yet steadily")
	}
	return strings.Join(append(parts, off...), "; ")
}

func dedupe(addrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if a.IsValid() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func sameAddrs(cs []Candidate, addrs []netip.Addr) bool {
	if len(cs) != len(addrs) {
		return false
	}
	for i := range cs {
		if cs[i].Addr != addrs[i] {
			return false
		}
	}
	return true
}
