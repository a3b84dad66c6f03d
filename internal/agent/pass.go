package agent

import (
	"os"
	"slices"
	"time"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/config"
	"github.com/vxnet/vxnet/internal/reconcile"
)

// The kernel is programmed by one function, passLocked, reached two ways:
// the loop's sync (every change, every resync tick) and the endpoint
// transaction, which runs a pass before it plugs in a port so that the
// firewall and then the network's devices exist first (and the port is
// ready when attach returns, not one loop turn later). Both hold kernelMu;
// the transaction also holds mu, taken first.

// input builds the reconcile input from the cluster state.
func (a *Agent) input() (reconcile.Input, []cluster.Conflict) {
	nets, conflicts := a.state.Networks()
	in := reconcile.Input{
		Node: a.state.Self(), Local: a.cfg.AdvertiseAddr, Port: a.cfg.VXLANPort, Underlay: a.underlay.dev,
		UnderlayMTU: a.underlay.mtu, Networks: nets, Nodes: a.repl.Alive(), Endpoints: a.state.Endpoints(), DNSPort: a.cfg.DNSPort,
		FastPath: a.cfg.Datapath.Mode == config.DatapathBPF, Foreign: a.stats.lastForeign(),
		Open: a.cfg.ManageHostFirewall, GossipPort: a.cfg.GossipListen(), Notrack: a.cfg.Notrack, NoInbound: a.cfg.NoInbound,
		RouteSource: len(a.cfg.Addrs) > 0, Unwrap: a.cfg.Unwrap,
	}
	a.tunnelInput(&in)
	return in, conflicts
}

// passLocked runs one reconcile pass and records its outcome for status;
// kernelMu held. The input is read under the lock: the endpoint transaction
// writes its record before it lets go of the kernel, so a pass never sees a
// fresh port without its record (and removes it).
func (a *Agent) passLocked() (reconcile.Target, error) {
	start := time.Now()
	in, cconf := a.input()
	want, rconf := reconcile.Desired(in)
	ops, have, err := reconcile.SyncObserved(a.dp, want)
	a.stats.kernelOps.Add(int64(len(ops))) // before syncs: a pass counted is a pass whose writes are counted
	a.stats.syncs.Add(1)
	a.metrics.ObservePass(time.Since(start))
	if len(ops) > 0 {
		a.log.Debug("reconciled", "ops", len(ops))
	}
	var conflicts []string
	for _, c := range cconf {
		conflicts = append(conflicts, c.Detail)
	}
	for _, c := range rconf {
		conflicts = append(conflicts, c.String())
	}
	conflicts = append(conflicts, a.state.SupersededNotices()...)
	conflicts = append(conflicts, a.state.ForeignCollisions(a.cfg.VXLANPort)...)
	a.stats.mu.Lock()
	conflicts = append(conflicts, a.nameClaimNoticesLocked()...)
	if len(conflicts) != len(a.stats.conflicts) {
		for _, c := range conflicts {
			a.log.Warn("conflict in cluster state", "detail", c)
		}
	}
	a.stats.lastSync, a.stats.lastDur, a.stats.syncErr, a.stats.conflicts = time.Now(), time.Since(start), err, conflicts
	a.stats.fastHooks, a.stats.fastEntries = len(want.FastHooks), len(want.FastEntries)
	if have.Networks != nil { // observed
		a.stats.foreign, a.stats.tunnel = have.Foreign, have.Tunnel
	}
	a.stats.mu.Unlock()
	return want, err
}

// sync runs one reconcile pass, then announces what it found that others
// must know when it changed (VXLAN devices vxnet did not make), outside
// the kernel lock.
func (a *Agent) sync() error {
	a.kernelMu.Lock()
	before := a.stats.lastForeign()
	_, err := a.passLocked()
	changed := !slices.Equal(before, a.stats.lastForeign())
	a.kernelMu.Unlock()
	if changed {
		a.announce()
	}
	return err
}

// present reports whether a local endpoint's namespace is still there: the
// same namespace (by inode, which the endpoint is named after), or, for a
// runtime's container (CNI), its namespace path.
func (le localEndpoint) present(id string) bool {
	if le.ContainerID != "" {
		_, err := os.Stat(le.Netns)
		return err == nil
	}
	return namespaceMatches(le.Netns, id)
}

// gcLocal removes local endpoints whose namespace is gone or whose network
// was removed.
func (a *Agent) gcLocal() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range a.state.Endpoints() {
		if e.Node != a.state.Self() {
			continue
		}
		le, known := a.own.locals[e.ID]
		_, netOK := a.state.Network(e.Network)
		gone := known && le.Netns != "" && !le.present(e.ID)
		if netOK && !gone {
			continue
		}
		a.log.Info("removing stale endpoint", "endpoint", e.ID, "network_exists", netOK, "netns_exists", !gone)
		if err := a.removeEndpointLocked(e.ID); err != nil {
			a.log.Warn("remove stale endpoint", "endpoint", e.ID, "err", err)
		}
	}
}
