package sim

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// What the model measures: queues, lag, latencies and traffic per member.

func (m *world) queued() int {
	n := 0
	for _, mm := range m.ms {
		n += mm.sp.Queued() + mm.mlq.NumQueued()
	}
	return n
}

// lagging describes the members not converged.
func (m *world) lagging() string {
	var out []string
	for _, mm := range m.ms {
		if !mm.up || len(mm.peerNames()) != len(m.ms)-1 || mm.sp.State.Len() != m.total {
			out = append(out, fmt.Sprintf("%s (up %v, knows %d alive, %d of %d records)", mm.name, mm.up, len(mm.peerNames()), mm.sp.State.Len(), m.total))
		}
	}
	return fmt.Sprintf("%d members: %s", len(out), strings.Join(out[:min(4, len(out))], "; "))
}

// latencies returns publish-to-arrival times of keys at every member but
// those skipped, sorted.
func (m *world) latencies(keys []string, skip map[string]bool) ([]time.Duration, error) {
	var lat []time.Duration
	for _, k := range keys {
		w := m.watch[k]
		var missing []string
		for _, mm := range m.ms {
			if skip[mm.name] || m.origin[k] == mm.name {
				continue
			}
			at, ok := w[mm.name]
			if !ok {
				missing = append(missing, mm.name)
				continue
			}
			lat = append(lat, at-m.published[k])
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("change %s never reached %d members (%s)", k, len(missing), strings.Join(missing[:min(5, len(missing))], ", "))
		}
	}
	slices.Sort(lat)
	return lat, nil
}

func resetCounts(m *world) {
	for _, mm := range m.ms {
		mm.bytes, mm.msgs = 0, 0
	}
}

func perMember(m *world, w time.Duration) (bytes, msgs float64) {
	var b, n int64
	for _, mm := range m.ms {
		b += mm.bytes
		n += mm.msgs
	}
	d := float64(len(m.ms)) * w.Seconds()
	return float64(b) / d, float64(n) / d
}

// sampleN picks k distinct names at random.
func sampleN(names []string, k int, rnd *rand.Rand) []string {
	if len(names) <= k {
		return names
	}
	out := make([]string, 0, k)
	for len(out) < k {
		if n := names[rnd.IntN(len(names))]; !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}
