package cluster

import (
	"errors"
	"strings"
	"testing"
)

// TestEtcdRefusesKeys: the etcd store has no keyring, and says why; it
// refuses to start without endpoints. (Its behaviour against a real etcd
// cluster is internal/e2e's TestEtcd.)
func TestEtcdRefusesKeys(t *testing.T) {
	var e Etcd
	if err := e.KeyOp("install", []byte("k")); !errors.Is(err, ErrNoKeyring) {
		t.Errorf("KeyOp = %v, want ErrNoKeyring", err)
	}
	if e.Keys() != nil {
		t.Error("etcd store lists keys")
	}
	if _, err := StartEtcd(EtcdConfig{Name: "h1"}, NewState("h1")); err == nil || !strings.Contains(err.Error(), "no endpoints: want --store etcd://HOST:PORT") {
		t.Errorf("start without endpoints: %v", err)
	}
}
