package sim

import (
	"testing"
)

// TestModelSmallCluster runs the model at 100 members: the cold start
// converges, every change reaches every member, restarted members get the
// full state back, and the figures are plausible (a change takes at least
// one network hop; traffic is counted).
func TestModelSmallCluster(t *testing.T) {
	res, err := RunModel(ModelConfig{Members: 100, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.ColdStartMs <= 0 || res.ColdStartMs > 60_000 {
		t.Errorf("cold start %.0f ms", res.ColdStartMs)
	}
	if res.ConvergeP50Ms < 0.3 || res.ConvergeMaxMs > 2000 {
		t.Errorf("one change p50 %.1f ms, max %.1f ms", res.ConvergeP50Ms, res.ConvergeMaxMs)
	}
	if res.SteadyBytesPerSec <= 0 || res.ChurnBytesPerSec <= res.SteadyBytesPerSec {
		t.Errorf("traffic steady %.0f B/s, churn %.0f B/s", res.SteadyBytesPerSec, res.ChurnBytesPerSec)
	}
	if res.RejoinMaxMs <= 0 {
		t.Errorf("restarted members: %.0f ms to full state", res.RejoinMaxMs)
	}
	if _, err := RunModel(ModelConfig{Members: 1}); err == nil {
		t.Error("a one-member model ran")
	}
}
