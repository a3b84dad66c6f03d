package bench

import (
	"fmt"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
)

// HealthCost is what the health probes cost one agent at one lab size:
// its CPU with and without them (two labs of the same size, one after the
// other, the agents' default 1 s interval), and the bytes its health
// endpoint sends and receives per peer per second (VXLAN on the wire:
// inner bytes counted on the health vxlan device plus 50 per frame).
type HealthCost struct {
	Hosts           int     `json:"hosts"`
	CPUPctWith      float64 `json:"cpu_pct_with"`
	CPUPctWithout   float64 `json:"cpu_pct_without"`
	BytesPerPeerSec float64 `json:"bytes_per_peer_per_s"`
	PeersOK         int     `json:"peers_ok"`
}

// healthPart measures HealthCost at hosts hosts over window.
func healthPart(c Config, hosts int, window time.Duration) (HealthCost, error) {
	hc := HealthCost{Hosts: hosts}
	for _, with := range []bool{true, false} {
		name := fmt.Sprintf("bh%d", hosts)
		cfg := labCfg(name, hosts, c)
		cfg.ProbeInterval, cfg.NoHealth = time.Second, !with
		l, err := lab.Up(cfg)
		if err != nil {
			return hc, err
		}
		h1 := l.Hosts[0]
		if with {
			if hc.PeersOK, err = waitHealthy(h1, hosts-1, time.Minute); err != nil {
				_ = lab.Down(name)
				return hc, err
			}
		} else {
			time.Sleep(5 * time.Second) // settle as long as the other lab did at least
		}
		b0, f0, err := healthBytes(h1)
		if err != nil && with {
			_ = lab.Down(name)
			return hc, err
		}
		_, cpu, err := usage(h1.PID, window)
		if err != nil {
			_ = lab.Down(name)
			return hc, err
		}
		b1, f1, _ := healthBytes(h1)
		if with {
			hc.CPUPctWith = cpu
			hc.BytesPerPeerSec = (float64(b1-b0) + 50*float64(f1-f0)) / float64(hosts-1) / window.Seconds()
		} else {
			hc.CPUPctWithout = cpu
		}
		if err := lab.Down(name); err != nil {
			return hc, err
		}
	}
	return hc, nil
}

// waitHealthy waits until h's agent has an ok verdict on every one of
// peers peers, and returns how many are ok.
func waitHealthy(h lab.Host, peers int, timeout time.Duration) (int, error) {
	c := api.NewClient(h.Socket)
	deadline := time.Now().Add(timeout)
	for {
		hv, err := c.Health(false)
		ok := 0
		for _, p := range hv.Peers {
			if p.State == health.OK {
				ok++
			}
		}
		if err == nil && ok == peers {
			return ok, nil
		}
		if time.Now().After(deadline) {
			return ok, fmt.Errorf("%s has %d of %d peers ok after %s: %+v (%v)", h.Name, ok, peers, timeout, hv.Peers, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// healthBytes returns the bytes and frames through h's health vxlan device
// (both directions).
func healthBytes(h lab.Host) (bytes, frames uint64, err error) {
	nh, err := nsutil.Handle(h.Netns)
	if err != nil {
		return 0, 0, err
	}
	defer nh.Close()
	link, err := nh.LinkByName(datapath.VxlanName(model.HealthVNI))
	if err != nil {
		return 0, 0, fmt.Errorf("health vxlan device of %s: %w", h.Name, err)
	}
	st := link.Attrs().Statistics
	if st == nil {
		return 0, 0, fmt.Errorf("no statistics for %s", link.Attrs().Name)
	}
	return st.RxBytes + st.TxBytes, st.RxPackets + st.TxPackets, nil
}
