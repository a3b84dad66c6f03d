package bench

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
)

// ScaleResult is one run of the real-process scale part: a lab of two
// agents and many synthetic members (real gossip, no datapath), each a
// process in its own namespace, joined through the agents.
type ScaleResult struct {
	Members   int `json:"members"`
	Endpoints int `json:"endpoints_per_member"`
	// Joined is from the first synthetic start to h1 seeing every member alive.
	JoinedMs float64 `json:"joined_ms"`
	// Programmed is from the first start to every synthetic endpoint in
	// h1's kernel.
	ProgrammedMs float64 `json:"programmed_ms"`
	// Attach on h2 to the endpoint in h1's kernel, over samples.
	AttachP50Ms  float64 `json:"attach_programmed_p50_ms"`
	AttachP99Ms  float64 `json:"attach_programmed_p99_ms"`
	AttachMaxMs  float64 `json:"attach_programmed_max_ms"`
	AttachCallMs float64 `json:"attach_call_p50_ms"`
	// Withdrawn is from killing one member to its endpoints leaving h1's kernel.
	WithdrawnMs float64 `json:"withdrawn_ms"`
	// FalseDeaths counts members h1 saw failed at the end that were alive.
	FalseDeaths int     `json:"false_deaths"`
	AgentRSSMB  float64 `json:"agent_rss_mb"`
}

// Scale runs the scale part with members synthetic members announcing
// endpoints each, started rate a second (0: all at once).
func Scale(c Config, members, endpoints, samples int, old bool, rate float64) (ScaleResult, error) {
	res := ScaleResult{Members: members, Endpoints: endpoints}
	if members < 1 || members > 240 {
		return res, fmt.Errorf("invalid member count %d: want 1-240 (one lab subnet)", members)
	}
	if endpoints < 1 || endpoints > 64 {
		return res, fmt.Errorf("invalid endpoint count %d per member: want 1-64", endpoints)
	}
	name := "bsc"
	cfg := labCfg(name, 2, c)
	cfg.ProbeInterval = time.Second
	cfg.NoHealth = true
	l, err := lab.Up(cfg)
	if err != nil {
		return res, err
	}
	defer lab.Down(name)
	h1 := l.Hosts[0]
	nw := model.Network{Name: "many", VNI: 888, Subnet: netip.MustParsePrefix("198.19.128.0/17")}
	nw.Normalize()
	if _, err := api.NewClient(h1.Socket).CreateNetwork(api.NetworkCreate{Name: nw.Name, Subnet: nw.Subnet.String(), VNI: nw.VNI}); err != nil {
		return res, err
	}
	if err := lab.WaitLink(h1.Netns, datapath.VxlanName(nw.VNI), true, 30*time.Second); err != nil {
		return res, err
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}()
	// Through both agents (older binaries take one address: h1 alone).
	join := h1.Addr.String() + "," + l.Hosts[1].Addr.String()
	if old {
		join = h1.Addr.String()
	}
	var shs []lab.Host
	for i := range members {
		sh, err := l.AddSyntheticHost(10 + i)
		if err != nil {
			return res, err
		}
		shs = append(shs, sh)
	}
	// The lab's hosts share one kernel: 100 members resolving each other
	// dynamically overflow its neighbour table (gc_thresh3), which real
	// hosts, each with a table of their own, never see.
	if err := l.StaticNeighbours(shs); err != nil {
		return res, err
	}
	start := time.Now()
	for i, sh := range shs {
		if rate > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))))
		}
		// 64 addresses per member from 198.19.129.0 on.
		base := 129<<8 + i*64
		first := netip.AddrFrom4([4]byte{198, 19, byte(base >> 8), byte(base)})
		p := exec.Command(c.Rig, "synthetic", "--name", sh.Name, "--addr", sh.Addr.String(),
			"--join", join, "--key-file", l.KeyFile(), "--network", nw.Name,
			"--first", first.String(), "--count", strconv.Itoa(endpoints))
		p.Stderr = os.Stderr
		if err := nsutil.Do(sh.Netns, p.Start); err != nil {
			return res, fmt.Errorf("start synthetic member %s: %w", sh.Name, err)
		}
		procs = append(procs, p)
	}
	cl := api.NewClient(h1.Socket)
	deadline := start.Add(5 * time.Minute)
	for res.JoinedMs == 0 || res.ProgrammedMs == 0 {
		if time.Now().After(deadline) {
			n, _ := lab.NeighCount(h1.Netns, datapath.VxlanName(nw.VNI))
			return res, fmt.Errorf("after 5 min: %d of %d endpoints programmed on %s (%s)", n, members*endpoints, h1.Name, memberView(h1))
		}
		if res.JoinedMs == 0 {
			if s, err := cl.Status(); err == nil && aliveCount(s) == members+2 {
				res.JoinedMs = ms(time.Since(start))
			}
		}
		if res.ProgrammedMs == 0 {
			if n, err := lab.NeighCount(h1.Netns, datapath.VxlanName(nw.VNI)); err == nil && n >= members*endpoints {
				res.ProgrammedMs = ms(time.Since(start))
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(5 * time.Second) // settle
	if rss, _, err := usage(h1.PID, time.Second); err == nil {
		res.AgentRSSMB = rss
	}

	// Attach on h2, programmed on h1.
	var prog, call []time.Duration
	sam, err := l.MeasureConvergence(samples, lab.APIAttach)
	if err != nil {
		return res, fmt.Errorf("attach samples: %w", err)
	}
	for _, s := range sam {
		prog = append(prog, s.Programmed)
		call = append(call, s.Call)
	}
	slices.Sort(prog)
	slices.Sort(call)
	res.AttachP50Ms, res.AttachP99Ms, res.AttachMaxMs = ms(lab.Percentile(prog, 50)), ms(lab.Percentile(prog, 99)), ms(prog[len(prog)-1])
	res.AttachCallMs = ms(lab.Percentile(call, 50))

	// False deaths at the end, then one member killed.
	if s, err := cl.Status(); err == nil {
		res.FalseDeaths = members + 2 - aliveCount(s)
	}
	before, err := lab.NeighCount(h1.Netns, datapath.VxlanName(nw.VNI))
	if err != nil {
		return res, err
	}
	victim := procs[len(procs)-1]
	killed := time.Now()
	_ = victim.Process.Signal(syscall.SIGKILL)
	for {
		n, err := lab.NeighCount(h1.Netns, datapath.VxlanName(nw.VNI))
		if err != nil {
			return res, err
		}
		if n <= before-endpoints {
			res.WithdrawnMs = ms(time.Since(killed))
			break
		}
		if time.Since(killed) > 2*time.Minute {
			return res, fmt.Errorf("a killed member's endpoints still programmed after 2 min")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return res, nil
}

func aliveCount(s api.Status) int {
	n := 0
	for _, m := range s.Members {
		if m.State == "alive" {
			n++
		}
	}
	return n
}
