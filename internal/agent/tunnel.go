package agent

import (
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/reconcile"
	"github.com/vxnet/vxnet/internal/tunnel"
)

// tunnelInfo is what this host publishes of its WireGuard device (nil:
// no tunnel here).
func (a *Agent) tunnelInfo() *model.TunnelInfo {
	if a.cfg.TunnelPort == 0 || a.cfg.TunnelKey == "" {
		return nil
	}
	return &model.TunnelInfo{Key: a.cfg.TunnelKey, Port: a.cfg.TunnelPort}
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
