package bench

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
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
	// DockerBPF and DockerBridge (docker hosts only) are containers made
	// by 'docker run --net' through vxnet's driver, on either datapath:
	// what a Docker user gets, beside the containers attached through the
	// API (BPF, Bridge) on the same hosts.
	DockerBPF    *Path `json:"docker_bpf,omitempty"`
	DockerBridge *Path `json:"docker_bridge,omitempty"`
	// Ratios: medians of the per-round ratios.
	BPFvsBridge1 float64 `json:"bpf_vs_bridge_1"`
	BPFvsBridge4 float64 `json:"bpf_vs_bridge_4"`
	BPFvsRecipe1 float64 `json:"bpf_vs_recipe_1"`
	BPFvsBare1   float64 `json:"bpf_vs_bare_1"`
	// DockerVsAPI1 is Docker's containers against the API's on the fast
	// path, one stream (1: the same).
	DockerVsAPI1 float64 `json:"docker_vs_api_1,omitempty"`
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
		var dockerEnds *ends
		if kind == "docker" {
			ds := map[string]*lab.Dockerd{}
			for _, h := range l.Hosts {
				d, err := l.StartDocker(h.Name)
				if err != nil {
					return out, err
				}
				defer d.Stop()
				ds[h.Name] = d
				// What a user adds by hand for the recipe's bridge on a
				// Docker host (vxnet adds its own rules).
				if err := nsutil.Do(h.Netns, func() error {
					return exec.Command("iptables", "-I", "FORWARD", "1", "-i", "rbr0", "-o", "rbr0", "-j", "ACCEPT").Run()
				}); err != nil {
					return out, fmt.Errorf("recipe rule on %s: %w", h.Name, err)
				}
			}
			e, err := dockerContainers(l, ds)
			if err != nil {
				return out, err
			}
			dockerEnds = &e
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
				bps, err := c.throughput(e.srv, e.cli, e.dst, 5211, streams)
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
					if dockerEnds != nil { // Docker's containers on the same datapath
						if err := measure("docker-"+p, *dockerEnds, round); err != nil {
							return out, err
						}
					}
				}
				if err := measure(p, e, round); err != nil {
					return out, err
				}
			}
		}
		path := func(p string) Path {
			return Path{Tput1Gbps: Median(tput[p][1]), Tput4Gbps: Median(tput[p][4]), RRp50us: Median(rr[p])}
		}
		fh := FastPathHosts{Hosts: kind, BPF: path("bpf"), Bridge: path("bridge"), Recipe: path("recipe"), Bare: path("bare"), Underlay: path("underlay"),
			BPFvsBridge1: MedianRatio(tput["bpf"][1], tput["bridge"][1]), BPFvsBridge4: MedianRatio(tput["bpf"][4], tput["bridge"][4]),
			BPFvsRecipe1: MedianRatio(tput["bpf"][1], tput["recipe"][1]), BPFvsBare1: MedianRatio(tput["bpf"][1], tput["bare"][1])}
		if dockerEnds != nil {
			db, dbr := path("docker-bpf"), path("docker-bridge")
			fh.DockerBPF, fh.DockerBridge = &db, &dbr
			fh.DockerVsAPI1 = MedianRatio(tput["docker-bpf"][1], tput["bpf"][1])
		}
		out = append(out, fh)
	}
	return out, nil
}

// dockerContainers starts a container with 'docker run --net' on the lab's
// first network on each of its first two hosts (once the agents have put
// the network into their dockerds), adds them to the lab's containers, and
// returns them as a path: the measurements run in their network namespaces.
func dockerContainers(l *lab.Lab, ds map[string]*lab.Dockerd) (ends, error) {
	network := l.Networks[0].Name
	var nss [2]string
	var dst netip.Addr
	for i, h := range l.Hosts[:2] {
		d := ds[h.Name]
		if err := d.WaitNetwork(network, true, 30*time.Second); err != nil {
			return ends{}, err
		}
		name := "bench-" + h.Name
		if _, err := d.Docker("run", "-d", "--name", name, "--net", network, lab.DockerImage, "sleep", "86400"); err != nil {
			return ends{}, err
		}
		out, err := d.Docker("inspect", "-f", "{{.State.Pid}} {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
		f := strings.Fields(out)
		if err != nil || len(f) != 2 {
			return ends{}, fmt.Errorf("pid and address of %s on %s: %q %v", name, h.Name, out, err)
		}
		nss[i] = "/proc/" + f[0] + "/ns/net"
		if dst, err = netip.ParseAddr(f[1]); err != nil {
			return ends{}, fmt.Errorf("address of %s on %s: %w", name, h.Name, err)
		}
		// One of the lab's containers from now on (the agents' restarts
		// wait until every host sees it).
		l.Containers = append(l.Containers, lab.Container{Name: name, Host: h.Name, Network: network, Netns: nss[i], IP: dst})
	}
	return ends{srv: nss[1], cli: nss[0], dst: dst}, nil
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
