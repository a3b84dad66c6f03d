package bench

import (
	"fmt"
	"os/exec"
	"syscall"
	"time"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/nsutil"
)

// FastPathHosts is the fast path against the bridge datapath on one kind of
// host: "clean" (nothing but vxnet) or "docker" (dockerd with its defaults
// on both hosts: FORWARD DROP, br_netfilter, its chains and conntrack).
// The agents switch datapath (a restart) inside every round, so each round
// measures both, with the recipe, bare VXLAN and the underlay beside them.
type FastPathHosts struct {
	Hosts  string `json:"hosts"`
	BPF    Path   `json:"bpf"`
	Bridge Path   `json:"bridge"`
	Recipe Path   `json:"recipe"`
	Bare   Path   `json:"bare"`
	// Underlay is the hosts' own path (no VXLAN).
	Underlay Path `json:"underlay"`
	// Ratios: medians of the per-round ratios.
	BPFvsBridge1 float64 `json:"bpf_vs_bridge_1"`
	BPFvsBridge4 float64 `json:"bpf_vs_bridge_4"`
	BPFvsRecipe1 float64 `json:"bpf_vs_recipe_1"`
	BPFvsBare1   float64 `json:"bpf_vs_bare_1"`
}

// fastPathPart measures FastPathHosts on clean hosts, then on the same
// hosts with dockerd started on both.
func fastPathPart(c Config) ([]FastPathHosts, error) {
	name := "bfp"
	cfg := labCfg(name, 2, c)
	cfg.Datapath, cfg.NoHealth = "bpf", true
	l, err := lab.Up(cfg)
	if err != nil {
		return nil, err
	}
	defer lab.Down(name)
	paths, err := labPaths(l)
	if err != nil {
		return nil, err
	}
	var out []FastPathHosts
	for _, kind := range []string{"clean", "docker"} {
		if kind == "docker" {
			for _, h := range l.Hosts {
				d, err := l.StartDocker(h.Name)
				if err != nil {
					return out, err
				}
				defer d.Stop()
				// What a user adds by hand for the recipe's bridge on a
				// Docker host (vxnet adds its own rules).
				if err := nsutil.Do(h.Netns, func() error {
					return exec.Command("iptables", "-I", "FORWARD", "1", "-i", "rbr0", "-o", "rbr0", "-j", "ACCEPT").Run()
				}); err != nil {
					return out, fmt.Errorf("recipe rule on %s: %w", h.Name, err)
				}
			}
		}
		tput := map[string]map[int][]float64{}
		rr := map[string][]float64{}
		add := func(path string, streams int, gbps float64) {
			if tput[path] == nil {
				tput[path] = map[int][]float64{}
			}
			tput[path][streams] = append(tput[path][streams], gbps)
		}
		measure := func(path string, e ends, round int) error {
			for _, streams := range []int{1, 4} {
				bps, err := Throughput(e.srv, e.cli, e.dst, 5211, streams, c.Duration)
				if err != nil {
					return fmt.Errorf("%s hosts, %s, %d streams: %w", kind, path, streams, err)
				}
				add(path, streams, bps/1e9)
				c.Log.Info("throughput", "hosts", kind, "round", round+1, "path", path, "streams", streams, "gbps", fmt.Sprintf("%.2f", bps/1e9))
			}
			rtts, err := RequestResponse(e.srv, e.cli, e.dst, 5212, c.RR)
			if err != nil {
				return fmt.Errorf("%s hosts, %s rr: %w", kind, path, err)
			}
			rr[path] = append(rr[path], us(lab.Percentile(rtts, 50)))
			return nil
		}
		rounds := max(1, c.Rounds)
		for round := range rounds {
			for _, p := range Rotate([]string{"bpf", "bridge", "recipe", "bare", "underlay"}, round) {
				e := paths[p]
				if p == "bpf" || p == "bridge" {
					if err := switchDatapath(l, p); err != nil {
						return out, err
					}
					e = paths["vxnet"]
				}
				if err := measure(p, e, round); err != nil {
					return out, err
				}
			}
		}
		path := func(p string) Path {
			return Path{Tput1Gbps: Median(tput[p][1]), Tput4Gbps: Median(tput[p][4]), RRp50us: Median(rr[p])}
		}
		out = append(out, FastPathHosts{Hosts: kind, BPF: path("bpf"), Bridge: path("bridge"), Recipe: path("recipe"), Bare: path("bare"), Underlay: path("underlay"),
			BPFvsBridge1: MedianRatio(tput["bpf"][1], tput["bridge"][1]), BPFvsBridge4: MedianRatio(tput["bpf"][4], tput["bridge"][4]),
			BPFvsRecipe1: MedianRatio(tput["bpf"][1], tput["recipe"][1]), BPFvsBare1: MedianRatio(tput["bpf"][1], tput["bare"][1])})
	}
	return out, nil
}

// switchDatapath restarts the lab's agents with --datapath mode and waits
// until the first two hosts carry the lab's containers on it.
func switchDatapath(l *lab.Lab, mode string) error {
	if l.Datapath == mode {
		return nil
	}
	l.Datapath = mode
	return restartAgents(l, l.Hosts[:2], "datapath "+mode, func(obs datapath.Observed) bool {
		hooked := obs.FastPath != nil && len(obs.FastPath.Hooks) > 0
		return hooked == (mode == "bpf") && len(obs.FDB) > 0
	})
}

// restartAgents restarts every agent of the lab (with its settings as they
// are now) and waits until ready holds for what each of hosts has
// programmed (what names that state) and the lab has converged.
func restartAgents(l *lab.Lab, hosts []lab.Host, what string, ready func(datapath.Observed) bool) error {
	for _, h := range l.Hosts {
		if err := l.KillAgent(h.Name, syscall.SIGTERM); err != nil {
			return err
		}
		if err := l.StartAgent(h.Name); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, h := range hosts {
		for {
			obs, err := l.Observe(h.Name)
			if err == nil && ready(obs) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: %s not in place after 30 s (%v)", h.Name, what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return l.WaitConverged(30 * time.Second)
}
