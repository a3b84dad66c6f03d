package agent

import (
	"fmt"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/reconcile"
	"github.com/vxnet/vxnet/internal/tunnel"
)

// tunnelInfo is what this host publishes of its WireGuard device (nil:
// no tunnel here).
func (a *Agent) tunnelInfo() *model.TunnelInfo {
	k := a.tunnelKey.Load()
	if a.cfg.TunnelPort == 0 || k == nil || *k == "" {
		return nil
	}
	return &model.TunnelInfo{Key: *k, Port: a.cfg.TunnelPort}
}

// rotateTunnelKey makes this host's WireGuard key pair anew: the device
// takes the new private key at once (between passes), the node record
// carries the new public key to every member, whose next pass uses it.
func (a *Agent) rotateTunnelKey() (api.Keyring, error) {
	if a.tunnelKeys == nil || a.cfg.TunnelPort == 0 {
		return api.Keyring{}, invalid("this agent has no tunnel (--tunnel-port 0): no node key to rotate")
	}
	a.kernelMu.Lock()
	pub, err := a.tunnelKeys.Rotate()
	if err == nil {
		a.tunnelKey.Store(&pub)
	}
	a.kernelMu.Unlock()
	if err != nil {
		return api.Keyring{}, fmt.Errorf("rotate the node key: %w", err)
	}
	a.log.Info("node key rotated", "public_key", pub)
	a.announce()
	a.Resync()
	k := a.Keyring()
	k.NodeKey = pub
	return k, nil
}

// tunnelInput fills the reconcile input's tunnel: this host's device, the
// members' published keys, and the pairs' pre-shared keys from the
// primary cluster key.
func (a *Agent) tunnelInput(in *reconcile.Input) {
	me := a.tunnelInfo()
	if me == nil {
		return
	}
	in.Tunnel = &reconcile.TunnelInput{Dev: datapath.TunnelName(a.state.Self()), Info: *me}
	in.Tunnels = map[string]model.TunnelInfo{}
	for _, n := range a.state.Nodes() {
		if n.Tunnel != nil {
			in.Tunnels[n.Name] = *n.Tunnel
		}
	}
	in.Tunnels[a.state.Self()] = *me
	if kr, ok := a.repl.(Keyring); ok {
		if keys := kr.Keys(); len(keys) > 0 {
			primary := keys[0]
			in.PSK = func(x, y string) [32]byte { return tunnel.PSK(primary, x, y) }
		}
	}
}

// TunnelTargets are the tunnel addresses of the live peers this host's
// WireGuard device has (as the last pass found it), with its MTU: the
// encrypted networks' path, probed host to host.
func (h *healthAgent) TunnelTargets() ([]health.Target, int) {
	a := (*Agent)(h)
	a.stats.mu.Lock()
	t := a.stats.tunnel
	a.stats.mu.Unlock()
	if t == nil {
		return nil, 0
	}
	alive := map[string]bool{}
	for _, n := range a.repl.Alive() {
		alive[n.Name] = true
	}
	names := cluster.TunnelOwners(a.state.Nodes())
	var out []health.Target
	for _, p := range t.Peers {
		if name := names[p.Key]; name != "" && alive[name] {
			out = append(out, health.Target{Node: name, Addr: model.TunnelAddr(p.Key)})
		}
	}
	return out, t.MTU
}
