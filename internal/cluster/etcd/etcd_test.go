package etcd

import (
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/cluster"
)

// TestStartWithoutEndpoints: the etcd store refuses to start without
// endpoints and says what it wants.
func TestStartWithoutEndpoints(t *testing.T) {
	if _, err := Start(Config{Name: "h1"}, cluster.NewState("h1")); err == nil || !strings.Contains(err.Error(), "no endpoints: want --store etcd://HOST:PORT") {
		t.Errorf("start without endpoints: %v", err)
	}
}
