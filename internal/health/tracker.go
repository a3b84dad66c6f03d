// Package health judges the overlay path to every peer from probes sent
// through the real datapath: a small echo and a full-size one with DF, each
// interval, from a reserved health endpoint on this host to the one on each
// peer. Tracker holds the verdicts (pure logic); ICMP sends the probes.
package health

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Verdict is the verdict on the path to one peer.
type Verdict string

const (
	// Unknown: fewer probes than a verdict needs.
	Unknown Verdict = "unknown"
	// OK: the recent probes of both sizes were answered.
	OK Verdict = "ok"
	// Degraded: the path works but lost some probes in the window.
	Degraded Verdict = "degraded"
	// MTU: small probes are answered and full-size ones (DF) are not: a
	// black hole for full-size packets (path MTU below the underlay's, or a
	// NIC offload that corrupts large VXLAN frames).
	MTU Verdict = "mtu"
	// Unreachable: the recent small probes all went unanswered.
	Unreachable Verdict = "unreachable"
)

// Result is the outcome of one probe round to one peer.
type Result struct {
	Small, Big bool          // answered
	RTT        time.Duration // of the small probe, when answered
}

// Peer is the verdict on one peer.
type Peer struct {
	Node  string     `json:"node"`
	Addr  netip.Addr `json:"addr"` // its health endpoint
	State Verdict    `json:"state"`
	RTTms float64    `json:"rtt_ms"` // moving average of answered small probes
	Loss  float64    `json:"loss"`   // fraction of small probes lost in the window
	// BigLoss is the fraction of full-size probes lost in the window.
	BigLoss float64   `json:"big_loss"`
	Since   time.Time `json:"since"`
	Cause   string    `json:"cause,omitempty"`
	Probes  int       `json:"probes"` // rounds in the window
	// Path is "" for the overlay (the health network), PathWireGuard for
	// the encrypted networks' path (host to host through the tunnel).
	Path string `json:"path,omitempty"`
}

// PathWireGuard names the encrypted networks' path in Peer.Path.
const PathWireGuard = "wireguard"

// Change is a verdict that changed, with its cause.
type Change struct {
	Node     string
	From, To Verdict
	Cause    string
}

// Tracker keeps a window of results per peer.
type Tracker struct {
	// Window is how many rounds a verdict looks at (default 10); Streak is
	// how many consecutive losses make a peer unreachable or an MTU problem
	// (default 3).
	Window, Streak int
	// BigSize is the size of the full-size probe, for the cause text.
	BigSize int
	// Path is the path the tracker's probes take (Peer.Path).
	Path  string
	peers map[string]*track
}

type track struct {
	addr    netip.Addr
	results []Result // oldest first, at most Window
	rtt     float64  // ms, moving average
	state   Verdict
	since   time.Time
	cause   string
}

func (t *Tracker) window() int {
	if t.Window <= 0 {
		return 10
	}
	return t.Window
}

func (t *Tracker) streak() int {
	if t.Streak <= 0 {
		return 3
	}
	return t.Streak
}

// Record adds one round's result for node and returns the change of its
// verdict, if any.
func (t *Tracker) Record(node string, addr netip.Addr, r Result, now time.Time) (Change, bool) {
	if t.peers == nil {
		t.peers = map[string]*track{}
	}
	p, ok := t.peers[node]
	if !ok || p.addr != addr {
		p = &track{addr: addr, state: Unknown, since: now}
		t.peers[node] = p
	}
	p.results = append(p.results, r)
	if len(p.results) > t.window() {
		p.results = p.results[len(p.results)-t.window():]
	}
	if r.Small {
		ms := float64(r.RTT) / float64(time.Millisecond)
		if p.rtt == 0 {
			p.rtt = ms
		} else {
			p.rtt = 0.7*p.rtt + 0.3*ms
		}
	}
	state, cause := t.judge(p.results)
	if state == p.state {
		p.cause = cause
		return Change{}, false
	}
	c := Change{Node: node, From: p.state, To: state, Cause: cause}
	p.state, p.since, p.cause = state, now, cause
	return c, true
}

// judge gives the verdict on a window of results (oldest first).
func (t *Tracker) judge(rs []Result) (Verdict, string) {
	n, k := len(rs), t.streak()
	if n < k {
		return Unknown, ""
	}
	lostSmall, lostBig := losses(rs)
	{
		last := rs[n-k:]
		allSmallLost, allBigLost := true, true
		for _, r := range last {
			allSmallLost = allSmallLost && !r.Small
			allBigLost = allBigLost && !r.Big
		}
		switch {
		case allSmallLost && t.Path == PathWireGuard:
			return Unreachable, fmt.Sprintf("the last %d probes through the WireGuard tunnel went unanswered (small and full-size)", k)
		case allSmallLost:
			return Unreachable, fmt.Sprintf("the last %d probes through the overlay went unanswered (small and full-size)", k)
		case allBigLost: // and some small one answered (else the case above)
			return MTU, fmt.Sprintf("small probes are answered but the last %d full-size probes (%d bytes, DF) were lost: a path MTU below the underlay's, or a NIC offload corrupting large VXLAN frames", k, t.BigSize)
		}
	}
	if lostSmall > 0 || lostBig > 0 {
		return Degraded, fmt.Sprintf("lost %d of %d small and %d of %d full-size probes", lostSmall, n, lostBig, n)
	}
	return OK, ""
}

// Forget drops the peers not in keep (gone from the cluster).
func (t *Tracker) Forget(keep map[string]bool) {
	for name := range t.peers {
		if !keep[name] {
			delete(t.peers, name)
		}
	}
}

// Peers returns the verdicts, sorted by node.
func (t *Tracker) Peers() []Peer {
	var out []Peer
	for name, p := range t.peers {
		lostSmall, lostBig := losses(p.results)
		n := len(p.results)
		pe := Peer{Node: name, Addr: p.addr, State: p.state, RTTms: round(p.rtt), Since: p.since, Cause: p.cause, Probes: n, Path: t.Path}
		if n > 0 {
			pe.Loss, pe.BigLoss = round(float64(lostSmall)/float64(n)), round(float64(lostBig)/float64(n))
		}
		out = append(out, pe)
	}
	slices.SortFunc(out, func(x, y Peer) int { return cmp.Compare(x.Node, y.Node) })
	return out
}

// losses counts the unanswered small and full-size probes of a window.
func losses(rs []Result) (small, big int) {
	for _, r := range rs {
		if !r.Small {
			small++
		}
		if !r.Big {
			big++
		}
	}
	return small, big
}

func round(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }
