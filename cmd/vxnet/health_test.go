package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/health"
)

// TestPrintHealthView: a view with no probe round yet, or a peer with no
// verdict change yet, says so in words, never a zero time as a duration
// ("2562047h47m16.854775807s ago"); a warning is shown.
func TestPrintHealthView(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name    string
		h       api.Health
		want    []string
		notWant []string
	}{
		{"never probed", api.Health{HealthReport: api.HealthReport{Node: "h1", Enabled: true, Error: "health endpoint: no network"}},
			[]string{"node h1: health endpoint: no network", "node h1: no probe round yet", "(no peer with a health endpoint yet)"}, []string{"2562047h", "as of"}},
		{"probed", api.Health{HealthReport: api.HealthReport{Node: "h1", Enabled: true, At: now.Add(-2 * time.Second), BigSize: 1450,
			Peers: []health.Peer{{Node: "h2", State: health.OK, Since: now.Add(-time.Minute)}, {Node: "h3", State: health.Unknown}}}},
			[]string{"as of 2", "h2    ok", "1m0s ago", "h3    unknown", "never"}, []string{"2562047h", "no probe round"}},
		{"warning", api.Health{HealthReport: api.HealthReport{Node: "h1", Enabled: true, At: now, Warning: "the health namespace x exists only in the agent's mount namespace"}},
			[]string{"warning: the health namespace x exists only"}, nil},
		{"off", api.Health{HealthReport: api.HealthReport{Node: "h1", Error: "health probes are off (--health-subnet off)"}},
			[]string{"node h1: health probes are off"}, []string{"no probe round", "PEER"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			printHealthView(&b, tc.h)
			out := b.String()
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(out, w) {
					t.Errorf("output has %q:\n%s", w, out)
				}
			}
		})
	}
}
