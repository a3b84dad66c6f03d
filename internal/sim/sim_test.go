package sim

import (
	"testing"
	"time"
)

// TestSmallCluster: twenty members over the in-memory transport all find
// each other, one change reaches every one of them, nobody is declared
// dead at steady state, and traffic is counted.
func TestSmallCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster for several seconds")
	}
	res, err := Run(Config{Members: 20, ProbeInterval: 200 * time.Millisecond, Window: time.Second, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.FalseDeaths != 0 {
		t.Errorf("%d false deaths at steady state", res.FalseDeaths)
	}
	if res.ConvergeMaxMs <= 0 || res.ConvergeMaxMs > 5000 {
		t.Errorf("one change took %.1f ms to reach every member", res.ConvergeMaxMs)
	}
	if res.BytesPerMemberSec <= 0 || res.MsgsPerMemberSec <= 0 {
		t.Errorf("no traffic counted: %+v", res)
	}
	if _, err := Run(Config{Members: 1}); err == nil {
		t.Error("a one-member simulation ran")
	}
}
