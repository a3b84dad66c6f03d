package agent

import (
	"encoding/base64"
	"strings"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/config"
	"github.com/vxnet/vxnet/internal/version"
)

// Status reports the agent's view.
func (a *Agent) Status(withEndpoints bool) api.Status {
	s := api.Status{Node: a.state.Self(), Version: version.String(), Format: cluster.WireFormat,
		Addr: a.cfg.AdvertiseAddr.String(), Members: a.repl.Members(),
		Malformed: a.repl.MalformedMessages(), Records: a.state.Len(), Syncs: a.stats.syncs.Load(), KernelOps: a.stats.kernelOps.Load(),
		Nodes: a.state.Nodes(), Datapath: a.cfg.Datapath.Mode, DatapathReason: a.cfg.Datapath.Reason}
	if s.Datapath == "" {
		s.Datapath = config.DatapathBridge
	}
	s.Unreadable = a.state.Unreadable() // omitted when empty
	s.Addrs, s.NoInbound = a.cfg.Addrs, a.cfg.NoInbound
	if p, ok := a.repl.(PathReporter); ok {
		s.Paths = p.Paths()
	}
	a.stats.mu.Lock()
	s.LastSync, s.LastSyncDuration, s.Conflicts = a.stats.lastSync, a.stats.lastDur, append([]string{}, a.stats.conflicts...)
	if a.stats.syncErr != nil {
		s.SyncError = a.stats.syncErr.Error()
	}
	if a.stats.addrErr != nil {
		s.AddrError = a.stats.addrErr.Error()
	}
	s.FastHooks, s.FastEntries = a.stats.fastHooks, a.stats.fastEntries
	s.Tunnel = a.stats.tunnel
	a.stats.mu.Unlock()
	alive := map[string]bool{}
	for _, n := range a.repl.Alive() {
		alive[n.Name] = true
	}
	nets, _ := a.state.Networks()
	eps := a.state.Endpoints()
	s.Networks = api.NetworkCounts(nets, eps, s.Node, alive)
	if withEndpoints {
		s.Endpoints = eps
	}
	return s
}

// KeyOp changes this agent's keyring and saves it (never logging a key).
func (a *Agent) KeyOp(r api.KeyRequest) (api.Keyring, error) {
	if r.Op == api.OpRotateNode {
		return a.rotateTunnelKey()
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(r.Key))
	if err != nil {
		return api.Keyring{}, invalid("the key is not base64 (make one with 'vxnet key generate')")
	}
	kr, ok := a.repl.(Keyring)
	if !ok {
		return api.Keyring{}, errNoKeyring
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := kr.KeyOp(r.Op, key); err != nil {
		return api.Keyring{}, invalid("key %s %s: %w", r.Op, cluster.Fingerprint(key), err)
	}
	if err := saveKeyring(a.cfg.StateDir, kr.Keys()); err != nil {
		return api.Keyring{}, err
	}
	a.log.Info("keyring changed", "op", r.Op, "key", cluster.Fingerprint(key))
	a.Resync() // the tunnel's pre-shared keys follow the primary key
	return a.Keyring(), nil
}

// errNoKeyring refuses key operations on a store without cluster keys.
var errNoKeyring = invalid("the etcd store has no cluster keys: connections to etcd are secured by etcd's own TLS; cluster keys are for the gossip store")

// Keyring lists key fingerprints, the primary first (none without a
// keyring).
func (a *Agent) Keyring() api.Keyring {
	var k api.Keyring
	kr, ok := a.repl.(Keyring)
	if !ok {
		return k
	}
	for i, key := range kr.Keys() {
		if i == 0 {
			k.Primary = cluster.Fingerprint(key)
		}
		k.Keys = append(k.Keys, cluster.Fingerprint(key))
	}
	return k
}
