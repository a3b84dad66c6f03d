package lab

import (
	"fmt"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/reconcile"
)

// VXLANPort is the lab's VXLAN UDP port.
const VXLANPort = 4789

// StaticInput returns the reconcile input of one host when the lab programs
// the hosts itself (no agent): every host and container is known up front.
func (l *Lab) StaticInput(host Host) reconcile.Input {
	in := reconcile.Input{Node: host.Name, Local: host.Addr, Port: VXLANPort, Underlay: "eth0",
		UnderlayMTU: UnderlayMTU, Networks: l.Networks, FastPath: l.Datapath == "bpf", Unwrap: true}
	for _, h := range l.Hosts {
		in.Nodes = append(in.Nodes, model.Node{Name: h.Name, Addr: h.Addr})
	}
	for _, c := range l.Containers {
		in.Endpoints = append(in.Endpoints, model.Endpoint{ID: c.Name, Network: c.Network, Node: c.Host, MAC: c.MAC, IP: c.IP, IP6: c.IP6})
	}
	return in
}

// SyncHost reconciles one host's kernel state with the lab's plan.
func (l *Lab) SyncHost(host Host) ([]reconcile.Op, error) {
	dp, err := linux.Open(host.Netns, nil)
	if err != nil {
		return nil, err
	}
	defer dp.Close()
	if l.Datapath == "bpf" {
		if err := dp.EnableFastPath(); err != nil {
			return nil, err
		}
	}
	want, conflicts := reconcile.Desired(l.StaticInput(host))
	if len(conflicts) > 0 {
		return nil, fmt.Errorf("host %s: %s", host.Name, conflicts[0])
	}
	return reconcile.Sync(dp, want)
}

func (l *Lab) programStatic(cfg Config) error {
	for _, h := range l.Hosts {
		if _, err := l.SyncHost(h); err != nil {
			return fmt.Errorf("program host %s: %w", h.Name, err)
		}
		dp, err := linux.Open(h.Netns, nil)
		if err != nil {
			return err
		}
		want, _ := reconcile.Desired(l.StaticInput(h))
		for _, c := range l.Containers {
			if c.Host != h.Name {
				continue
			}
			n, _ := l.Network(c.Network)
			_, err := reconcile.Plug(dp, want, reconcile.Port{ID: c.Name, Netns: c.Netns, IfName: "eth0", MAC: c.MAC, IP: c.IP, IP6: c.IP6, Network: n})
			if err != nil {
				dp.Close()
				return fmt.Errorf("attach %s: %w", c.Name, err)
			}
		}
		dp.Close()
		if l.Datapath == "bpf" { // the ports exist now: hook them
			if _, err := l.SyncHost(h); err != nil {
				return fmt.Errorf("program host %s: %w", h.Name, err)
			}
		}
		cfg.Log.Info("host programmed", "host", h.Name, "addr", h.Addr)
	}
	return nil
}

// Observe reads what vxnet has programmed on a host.
func (l *Lab) Observe(host string) (datapath.Observed, error) {
	h, ok := l.Host(host)
	if !ok {
		return datapath.Observed{}, fmt.Errorf("no host %q in lab %s", host, l.Name)
	}
	dp, err := linux.Open(h.Netns, nil)
	if err != nil {
		return datapath.Observed{}, err
	}
	defer dp.Close()
	return dp.Observe()
}
