package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestShipsNoRigs: the shipped binary carries no benchmark or simulation
// rig (they are cmd/vxnet-bench).
func TestShipsNoRigs(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasSuffix(pkg, "/internal/bench") || strings.HasSuffix(pkg, "/internal/sim") {
			t.Errorf("vxnet links %s", pkg)
		}
	}
}
