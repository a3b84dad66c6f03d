package gossip

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/vxnet/vxnet/internal/cluster"
)

// memberlist's callbacks into a member: its messages and state exchanges
// (delegate), membership events, name conflicts, ping round trips, and its
// log lines.

type delegate Gossip

func (d *delegate) NodeMeta(limit int) []byte { return []byte(metaDigest) }

func (d *delegate) NotifyMsg(b []byte) { (*Gossip)(d).receive(b, "push") }

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	out := d.spread.Broadcasts(overhead, limit)
	for _, b := range out {
		(*Gossip)(d).sent(b)
	}
	return out
}

func (d *delegate) LocalState(join bool) []byte {
	b, err := d.spread.LocalState(join, (*Gossip)(d).fullStateNeeded())
	if err != nil {
		d.log.Error("encode state", "err", err)
		return nil
	}
	(*Gossip)(d).sent(b)
	return b
}

func (d *delegate) MergeRemoteState(buf []byte, join bool) { (*Gossip)(d).receive(buf, "push-pull") }

type events Gossip

func (e *events) NotifyJoin(n *memberlist.Node) {
	e.log.Info("member joined", "member", n.Name, "addr", n.Addr.String())
	e.paths.stale.Store(true)
	e.mu.Lock()
	_, wasFailed := e.failed[n.Name]
	delete(e.failed, n.Name)
	e.nodes[n.Name], e.peers = n, nil
	e.mu.Unlock()
	e.cfg.OnChange()
	if wasFailed && n.Name != e.cfg.Name {
		// A member that comes back (after a partition or a restart)
		// exchanges digests now with a few of us rather than at the next
		// push/pull, so both sides converge at once. (A first join
		// exchanges state anyway.) A member before digests gets our
		// whole state.
		if digests(n) {
			e.spread.Rejoined(n.Name)
		} else {
			go (*Gossip)(e).sendState(n)
		}
	}
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	e.log.Warn("member left or failed", "member", n.Name, "addr", n.Addr.String())
	e.paths.stale.Store(true)
	// Withdraw its endpoints once the grace has passed.
	time.AfterFunc(e.grace+10*time.Millisecond, e.cfg.OnChange)
	// Failed or left: either way, try to get back in touch (a member that
	// left for good just does not answer).
	e.mu.Lock()
	delete(e.nodes, n.Name)
	e.peers = nil
	vtep, _ := netip.AddrFromSlice(n.Addr)
	e.failed[n.Name] = failedMember{addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))), vtep: vtep.Unmap(), since: time.Now()}
	e.mu.Unlock()
	e.cfg.OnChange()
}

func (e *events) NotifyUpdate(n *memberlist.Node) {
	e.log.Info("member updated", "member", n.Name, "addr", n.Addr.String())
	e.mu.Lock()
	e.nodes[n.Name], e.peers = n, nil
	e.mu.Unlock()
	e.cfg.OnChange()
}

type conflicts Gossip

func (c *conflicts) NotifyConflict(existing, other *memberlist.Node) {
	c.log.Warn("two addresses claim one member name", "member", existing.Name, "known", existing.Addr.String(), "claimed", other.Addr.String())
	if existing.Name != c.cfg.Name {
		return
	}
	a, ok := netip.AddrFromSlice(other.Addr)
	if !ok {
		return
	}
	claim := netip.AddrPortFrom(a.Unmap(), other.Port)
	c.mu.Lock()
	joining := c.joins > 0
	if joining {
		c.claims = append(c.claims, claim)
	}
	c.mu.Unlock()
	if joining {
		return // Join decides once the state exchange is over
	}
	// Called with memberlist's node lock held: ping from another goroutine.
	g := (*Gossip)(c)
	go func() {
		if g.answersAs(claim) {
			g.log.Error("another agent uses this member's name; it is refused by the members and should be given its own --name",
				"member", g.cfg.Name, "other", claim.String())
			if g.cfg.OnNameClaimed != nil {
				g.cfg.OnNameClaimed(claim.Addr())
			}
			return
		}
		if g.cfg.OnSelfConflict != nil {
			g.cfg.OnSelfConflict()
		}
	}()
}

type pings Gossip

func (p *pings) AckPayload() []byte { return nil }

func (p *pings) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, payload []byte) {
	p.mu.Lock()
	p.contact[other.Name] = cluster.Member{LastContact: time.Now(), RTT: rtt}
	p.mu.Unlock()
}

// logWriter turns memberlist's "[LEVEL] memberlist: ..." lines into slog records.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	level := slog.LevelDebug
	switch {
	case bytes.Contains(p, []byte("[ERR]")):
		level = slog.LevelError
	case bytes.Contains(p, []byte("[WARN]")):
		level = slog.LevelWarn
	}
	w.log.Log(context.Background(), level, line, "component", "memberlist")
	return len(p), nil
}
