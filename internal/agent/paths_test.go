package agent

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/paths"
)

// pathRepl is a replicator that reports paths and records demotions; the
// rest of Replicator is not called here.
type pathRepl struct {
	Replicator
	paths   []paths.Path
	demoted []string
}

func (r *pathRepl) Paths() []paths.Path { return r.paths }
func (r *pathRepl) Demote(peer string, addr netip.Addr, why string) bool {
	r.demoted = append(r.demoted, peer+" "+addr.String())
	return true
}

// TestDemoteBrokenPaths: a pair is moved off an address when its health
// probes through VXLAN have failed for four intervals since after the pair
// moved there, and only then.
func TestDemoteBrokenPaths(t *testing.T) {
	now := time.Now()
	priv, pub := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("203.0.113.2")
	two := []paths.Candidate{{Addr: priv, Up: true}, {Addr: pub, Up: true}}
	for _, tc := range []struct {
		name    string
		path    paths.Path
		verdict health.Peer
		want    bool
	}{
		{"failing since after the move, for long enough", paths.Path{Peer: "h2", Addr: priv, Since: now.Add(-time.Minute), Candidates: two},
			health.Peer{Node: "h2", State: health.Unreachable, Since: now.Add(-5 * time.Second)}, true},
		{"failing since before the move", paths.Path{Peer: "h2", Addr: pub, Since: now.Add(-3 * time.Second), Candidates: two},
			health.Peer{Node: "h2", State: health.Unreachable, Since: now.Add(-10 * time.Second)}, false},
		{"failing for a moment", paths.Path{Peer: "h2", Addr: priv, Since: now.Add(-time.Minute), Candidates: two},
			health.Peer{Node: "h2", State: health.Unreachable, Since: now.Add(-2 * time.Second)}, false},
		{"one address: nothing to move to", paths.Path{Peer: "h2", Addr: priv, Since: now.Add(-time.Minute), Candidates: two[:1]},
			health.Peer{Node: "h2", State: health.Unreachable, Since: now.Add(-5 * time.Second)}, false},
		{"degraded is not broken", paths.Path{Peer: "h2", Addr: priv, Since: now.Add(-time.Minute), Candidates: two},
			health.Peer{Node: "h2", State: health.Degraded, Since: now.Add(-5 * time.Second)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &pathRepl{paths: []paths.Path{tc.path}}
			a := &Agent{repl: r, cfg: Config{HealthInterval: time.Second}, log: slog.New(slog.DiscardHandler)}
			a.demoteBrokenPaths([]health.Peer{tc.verdict})
			if got := len(r.demoted) == 1; got != tc.want {
				t.Errorf("demoted %v, want %v", r.demoted, tc.want)
			}
		})
	}
}
