package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLinksNoStore: the plugin, which a runtime execs for every container
// start, links neither store's libraries (memberlist, etcd, gRPC): it only
// asks the local agent.
func TestLinksNoStore(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, heavy := range []string{"hashicorp/memberlist", "go.etcd.io/", "google.golang.org/grpc", "/internal/cluster/gossip", "/internal/cluster/etcd"} {
			if strings.Contains(pkg, heavy) {
				t.Errorf("vxnet-cni links %s", pkg)
			}
		}
	}
}
