package bench

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
)

// PathNames lists the datapaths measured between two hosts, in their
// base order: the raw underlay, bare kernel VXLAN (no bridge, veth or
// container), the hand-made recipe and vxnet.
func PathNames() []string { return []string{"underlay", "bare", "recipe", "vxnet"} }

// Config drives one benchmark run.
type Config struct {
	// Binary is the vxnet binary the labs' agents run; Rig the vxnet-bench
	// binary, whose 'synthetic' command runs a synthetic member.
	Binary string
	Rig    string
	// Hosts is the lab size for the datapath and footprint parts (>= 2).
	Hosts int
	// ConvergeHosts are the lab sizes of the control-plane part.
	ConvergeHosts []int
	Samples       int
	// Duration of each throughput measurement.
	Duration time.Duration
	// Tool measures throughput: ToolGo (empty: the same) or ToolIperf3.
	Tool string
	// Rounds of throughput measurements; each round measures every path
	// once, interleaved, and the figures are the medians over rounds.
	Rounds int
	// RR is the number of request/response exchanges per path.
	RR int
	// Endpoints is the number of synthetic remote endpoints of the footprint part.
	Endpoints int
	// FootprintHosts is the larger lab size of the footprint part.
	FootprintHosts int
	// Parts selects what to run: any of PartDatapath, PartControl,
	// PartFootprint; empty runs all.
	Parts []string
	Log   *slog.Logger
}

// The parts of a run.
const (
	PartDatapath  = "datapath"
	PartControl   = "control"
	PartFootprint = "footprint"
	PartHealth    = "health"
	PartFastPath  = "fastpath"
)

// ParseParts checks a list of part names.
func ParseParts(parts []string) ([]string, error) {
	for _, p := range parts {
		switch p {
		case PartDatapath, PartControl, PartFootprint, PartHealth, PartFastPath, PartNotrack, PartEncrypted, PartIPv6:
		default:
			return nil, fmt.Errorf("unknown part %q: want %s, %s, %s, %s, %s, %s, %s or %s", p, PartDatapath, PartFastPath, PartNotrack, PartEncrypted, PartIPv6, PartControl, PartFootprint, PartHealth)
		}
	}
	return parts, nil
}

func (c Config) runs(part string) bool {
	if len(c.Parts) == 0 {
		return true
	}
	return slices.Contains(c.Parts, part)
}

// Path is one datapath's figures.
type Path struct {
	Tput1Gbps float64 `json:"tput_1_gbps"`
	Tput4Gbps float64 `json:"tput_4_gbps"`
	RRp50us   float64 `json:"rr_p50_us"`
	RRp99us   float64 `json:"rr_p99_us"`
}

// ConvergePoint is the control plane at one lab size.
type ConvergePoint struct {
	Hosts           int     `json:"hosts"`
	Samples         int     `json:"samples"`
	P50ms           float64 `json:"converge_p50_ms"`
	P99ms           float64 `json:"converge_p99_ms"`
	NetworkUsableMs float64 `json:"network_usable_ms"`
	FailureWithdrMs float64 `json:"failure_withdrawal_ms"`
}

// Firewalled is vxnet's throughput (1 stream) on hosts whose iptables
// FORWARD policy is DROP (vxnet's accept rules in place), with
// bridge-nf-call-iptables on (as Docker and Kubernetes set it: every
// bridged frame walks iptables) and off, medians of interleaved rounds.
type Firewalled struct {
	BrNetfilterGbps float64 `json:"br_netfilter_gbps"`
	PlainGbps       float64 `json:"plain_gbps"`
	// Ratio is br_netfilter/plain, the median of per-round ratios.
	Ratio float64 `json:"ratio"`
}

// Footprint is an agent's resource use at one lab size.
type Footprint struct {
	Hosts      int     `json:"hosts"`
	Endpoints  int     `json:"remote_endpoints"`
	RSSMB      float64 `json:"rss_mb"`
	IdleCPUPct float64 `json:"idle_cpu_pct"`
	ProgramMs  float64 `json:"program_ms,omitempty"`
	// PassMs is the duration of the agent's last reconcile pass, and
	// PassError its error, if it failed.
	PassMs    float64 `json:"pass_ms"`
	PassError string  `json:"pass_error,omitempty"`
}

// Result is everything one run measured. Throughput ratios are medians of
// the ratios taken within each round (1 stream unless named tput4).
type Result struct {
	// Tool is what measured throughput (ToolGo or ToolIperf3).
	Tool                string          `json:"tool"`
	Paths               map[string]Path `json:"paths"`
	Rounds              int             `json:"rounds,omitempty"`
	TputRatioVsUnderlay float64         `json:"tput_ratio_vs_underlay"`
	TputRatioVsRecipe   float64         `json:"tput_ratio_vs_recipe"`
	Tput4RatioVsRecipe  float64         `json:"tput4_ratio_vs_recipe"`
	// TputRatioVsBare compares vxnet with the bare VXLAN path, the ceiling
	// of any kernel-VXLAN datapath; BareRatioVsUnderlay is that ceiling.
	TputRatioVsBare     float64 `json:"tput_ratio_vs_bare"`
	BareRatioVsUnderlay float64 `json:"bare_ratio_vs_underlay"`
	// Firewalled is vxnet on hosts that drop forwarded traffic (as dockerd
	// leaves them), with bridged frames through iptables or not.
	Firewalled    *Firewalled     `json:"firewalled,omitempty"`
	Converge      []ConvergePoint `json:"converge"`
	ConvergeP99ms float64         `json:"converge_p99_ms"`
	Footprint     []Footprint     `json:"footprint"`
	// Health is the cost of the health probes at the large footprint size.
	Health *HealthCost `json:"health,omitempty"`
	// FastPath is the BPF fast path against the bridge datapath, on clean
	// and on Docker hosts.
	FastPath []FastPathHosts `json:"fastpath,omitempty"`
	// Notrack is members' VXLAN out of conntrack against tracked.
	Notrack *Notrack `json:"notrack,omitempty"`
	// Encrypted is an encrypted network against the underlay, one in
	// clear and the hand-made baseline.
	Encrypted *Encrypted `json:"encrypted,omitempty"`
	// IPv6 is the IPv6 underlay against the IPv4 one, and dual-stack
	// networks against IPv4 ones.
	IPv6 *IPv6 `json:"ipv6,omitempty"`
}

func labCfg(name string, hosts int, c Config) lab.Config {
	return lab.Config{Name: name, Hosts: hosts, Networks: 1, PerHost: 1, Agent: true, Binary: c.Binary, Log: c.Log}
}

// Run builds its own labs, measures, and removes them.
func Run(c Config) (Result, error) {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Tool == "" {
		c.Tool = ToolGo
	}
	res := Result{Tool: c.Tool, Paths: map[string]Path{}}
	if c.runs(PartDatapath) {
		if err := datapathPart(c, &res); err != nil {
			return res, fmt.Errorf("datapath: %w", err)
		}
	}
	if c.runs(PartFastPath) {
		fp, err := fastPathPart(c)
		res.FastPath = fp
		if err != nil {
			return res, fmt.Errorf("fast path: %w", err)
		}
	}
	if c.runs(PartNotrack) {
		nt, err := notrackPart(c)
		if err != nil {
			return res, fmt.Errorf("notrack: %w", err)
		}
		res.Notrack = nt
	}
	if c.runs(PartEncrypted) {
		enc, err := encryptedPart(c)
		if err != nil {
			return res, fmt.Errorf("encrypted: %w", err)
		}
		res.Encrypted = enc
	}
	if c.runs(PartIPv6) {
		r6, err := ipv6Part(c)
		if err != nil {
			return res, fmt.Errorf("ipv6: %w", err)
		}
		res.IPv6 = r6
	}
	for _, n := range c.ConvergeHosts {
		if !c.runs(PartControl) {
			break
		}
		p, err := convergePart(c, n)
		if err != nil {
			return res, fmt.Errorf("control plane at %d hosts: %w", n, err)
		}
		res.Converge = append(res.Converge, p)
		res.ConvergeP99ms = p.P99ms
	}
	for _, n := range []int{c.Hosts, c.FootprintHosts} {
		if !c.runs(PartFootprint) {
			break
		}
		fp, err := footprintPart(c, n)
		if err != nil {
			return res, fmt.Errorf("footprint at %d hosts: %w", n, err)
		}
		res.Footprint = append(res.Footprint, fp...)
	}
	if c.runs(PartHealth) {
		hc, err := healthPart(c, c.FootprintHosts, 20*time.Second)
		if err != nil {
			return res, fmt.Errorf("health probes at %d hosts: %w", c.FootprintHosts, err)
		}
		res.Health = &hc
	}
	return res, nil
}

// ends are a path's two ends: the server's and the client's namespace and
// the server's address.
type ends struct {
	srv, cli string
	dst      netip.Addr
}

// labPaths builds the recipe and bare VXLAN beside a lab's containers and
// returns every path between its first two hosts, by name (PathNames).
func labPaths(l *lab.Lab) (map[string]ends, error) {
	r, err := l.BuildRecipe()
	if err != nil {
		return nil, err
	}
	bare, err := l.BuildBareVXLAN()
	if err != nil {
		return nil, err
	}
	var v1, v2 lab.Container
	for _, ct := range l.Containers {
		switch ct.Host {
		case l.Hosts[0].Name:
			v1 = ct
		case l.Hosts[1].Name:
			v2 = ct
		}
	}
	return map[string]ends{
		"underlay": {l.Hosts[1].Netns, l.Hosts[0].Netns, l.Hosts[1].Addr},
		"bare":     {bare.Netns[1], bare.Netns[0], bare.IP[1]},
		"recipe":   {r.Containers[1].Netns, r.Containers[0].Netns, r.Containers[1].IP},
		"vxnet":    {v2.Netns, v1.Netns, v2.IP},
	}, nil
}

func datapathPart(c Config, res *Result) error {
	name := "bdp"
	l, err := lab.Up(labCfg(name, c.Hosts, c))
	if err != nil {
		return err
	}
	defer lab.Down(name)
	paths, err := labPaths(l)
	if err != nil {
		return err
	}
	for _, p := range PathNames() {
		e := paths[p]
		if _, err := RequestResponse(e.srv, e.cli, e.dst, 5201, 10); err != nil { // warm ARP and caches
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	out := map[string]Path{}
	// Interleave the paths for each metric so drift on a shared machine
	// hits all of them alike.
	for _, p := range PathNames() {
		e := paths[p]
		rtts, err := RequestResponse(e.srv, e.cli, e.dst, 5202, c.RR)
		if err != nil {
			return fmt.Errorf("%s rr: %w", p, err)
		}
		pr := out[p]
		pr.RRp50us, pr.RRp99us = us(lab.Percentile(rtts, 50)), us(lab.Percentile(rtts, 99))
		out[p] = pr
	}
	rounds := max(1, c.Rounds)
	tput := map[int]map[string][]float64{1: {}, 4: {}} // streams -> path -> Gb/s per round
	for round := 0; round < rounds; round++ {
		for _, streams := range []int{1, 4} {
			for _, p := range Rotate(PathNames(), round) {
				e := paths[p]
				bps, err := c.throughput(e.srv, e.cli, e.dst, 5203, streams)
				if err != nil {
					return fmt.Errorf("%s throughput: %w", p, err)
				}
				tput[streams][p] = append(tput[streams][p], bps/1e9)
				c.Log.Info("throughput", "round", round+1, "path", p, "streams", streams, "gbps", fmt.Sprintf("%.2f", bps/1e9))
			}
		}
	}
	for _, p := range PathNames() {
		pr := out[p]
		pr.Tput1Gbps, pr.Tput4Gbps = Median(tput[1][p]), Median(tput[4][p])
		out[p] = pr
	}
	res.Paths, res.Rounds = out, rounds
	if res.Firewalled, err = firewalled(c, l, paths["vxnet"].srv, paths["vxnet"].cli, paths["vxnet"].dst, rounds); err != nil {
		return err
	}
	one := tput[1]
	res.TputRatioVsUnderlay = MedianRatio(one["vxnet"], one["underlay"])
	res.TputRatioVsRecipe = MedianRatio(one["vxnet"], one["recipe"])
	res.Tput4RatioVsRecipe = MedianRatio(tput[4]["vxnet"], tput[4]["recipe"])
	res.TputRatioVsBare = MedianRatio(one["vxnet"], one["bare"])
	res.BareRatioVsUnderlay = MedianRatio(one["bare"], one["underlay"])
	return nil
}

// firewalled turns the lab's first two hosts into firewalled hosts and
// measures vxnet with bridged frames through iptables and without.
func firewalled(c Config, l *lab.Lab, srv, cli string, dst netip.Addr, rounds int) (*Firewalled, error) {
	set := func(args ...string) error {
		for _, h := range l.Hosts[:2] {
			if err := nsutil.Do(h.Netns, func() error { return exec.Command(args[0], args[1:]...).Run() }); err != nil {
				return fmt.Errorf("%v on %s: %w", args, h.Name, err)
			}
		}
		return nil
	}
	if err := set("iptables", "-P", "FORWARD", "DROP"); err != nil {
		return nil, err
	}
	brnf := func(on bool) error {
		v := map[bool]string{true: "1", false: "0"}[on]
		return set("sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables="+v)
	}
	defer brnf(true)
	var on, off []float64
	for round := 0; round < rounds; round++ {
		for _, mode := range Rotate([]string{"on", "off"}, round) {
			if err := brnf(mode == "on"); err != nil {
				return nil, err
			}
			bps, err := c.throughput(srv, cli, dst, 5204, 1)
			if err != nil {
				return nil, fmt.Errorf("firewalled host, br_netfilter %s: %w", mode, err)
			}
			if mode == "on" {
				on = append(on, bps/1e9)
			} else {
				off = append(off, bps/1e9)
			}
			c.Log.Info("throughput", "round", round+1, "path", "vxnet on a firewalled host", "br_netfilter", mode, "gbps", fmt.Sprintf("%.2f", bps/1e9))
		}
	}
	return &Firewalled{BrNetfilterGbps: Median(on), PlainGbps: Median(off), Ratio: MedianRatio(on, off)}, nil
}

func convergePart(c Config, hosts int) (ConvergePoint, error) {
	name := fmt.Sprintf("bcv%d", hosts)
	l, err := lab.Up(labCfg(name, hosts, c))
	if err != nil {
		return ConvergePoint{}, err
	}
	defer lab.Down(name)
	pt := ConvergePoint{Hosts: hosts}
	samples, err := l.MeasureConvergence(c.Samples, lab.APIAttach)
	if err != nil {
		return pt, err
	}
	var reply []time.Duration
	for _, s := range samples {
		reply = append(reply, s.FirstReply)
	}
	pt.Samples = len(samples)
	pt.P50ms, pt.P99ms = ms(lab.Percentile(reply, 50)), ms(lab.Percentile(reply, 99))

	// Network create to usable: its bridge exists on every host. The create
	// call itself waits a moment to detect concurrent creations, so the
	// hosts are watched while it runs.
	start := time.Now()
	nw := model.Network{Name: "usable", VNI: 777, Subnet: netip.MustParsePrefix("198.19.200.0/24")}
	created := make(chan error, 1)
	go func() {
		_, err := api.NewClient(l.Hosts[0].Socket).CreateNetwork(api.NetworkCreate{Name: nw.Name, Subnet: nw.Subnet.String(), VNI: nw.VNI})
		created <- err
	}()
	for _, h := range l.Hosts {
		if err := lab.WaitLink(h.Netns, datapath.BridgeName(nw.VNI), true, 30*time.Second); err != nil {
			return pt, fmt.Errorf("network usable on %s: %w", h.Name, err)
		}
	}
	pt.NetworkUsableMs = ms(time.Since(start))
	if err := <-created; err != nil {
		return pt, err
	}

	// Failure of the last host to withdrawal of its endpoints on the first.
	// First its endpoints must be there: a member that flapped just before
	// would otherwise read as withdrawn at once.
	last := l.Hosts[len(l.Hosts)-1]
	for deadline := time.Now().Add(30 * time.Second); !lab.HasVTEP(l.Hosts[0].Netns, last.Addr); {
		if time.Now().After(deadline) {
			return pt, fmt.Errorf("%s's endpoints never programmed on %s (%s)", last.Name, l.Hosts[0].Name, memberView(l.Hosts[0]))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := lab.SetLinkState(nsutil.Path(l.Switch), last.Name, false); err != nil {
		return pt, err
	}
	start = time.Now()
	deadline := start.Add(60 * time.Second)
	for lab.HasVTEP(l.Hosts[0].Netns, last.Addr) {
		if time.Now().After(deadline) {
			return pt, fmt.Errorf("%s never withdrawn", last.Name)
		}
		time.Sleep(10 * time.Millisecond)
	}
	pt.FailureWithdrMs = ms(time.Since(start))
	c.Log.Info("control plane", "hosts", hosts, "p99_ms", pt.P99ms, "usable_ms", pt.NetworkUsableMs, "withdrawal_ms", pt.FailureWithdrMs)
	return pt, nil
}

func footprintPart(c Config, hosts int) ([]Footprint, error) {
	name := fmt.Sprintf("bfp%d", hosts)
	cfg := labCfg(name, hosts, c)
	// The agent's default probe interval (as the synthetic member's), not
	// the lab's shorter one: this part measures cost, not failure
	// detection, and 33 processes programming 10,000 entries each on a
	// few cores would otherwise miss probes and flap.
	cfg.ProbeInterval = time.Second
	l, err := lab.Up(cfg)
	if err != nil {
		return nil, err
	}
	defer lab.Down(name)
	h1 := l.Hosts[0]
	time.Sleep(2 * time.Second) // settle
	rss, cpu, err := usage(h1.PID, 5*time.Second)
	if err != nil {
		return nil, err
	}
	out := []Footprint{{Hosts: hosts, RSSMB: rss, IdleCPUPct: cpu}}
	out[0].PassMs, out[0].PassError = lastPass(h1)
	if c.Endpoints == 0 || hosts != c.FootprintHosts {
		return out, nil
	}
	nw := model.Network{Name: "many", VNI: 888, Subnet: netip.MustParsePrefix("198.19.128.0/17")}
	nw.Normalize()
	if _, err := api.NewClient(h1.Socket).CreateNetwork(api.NetworkCreate{Name: nw.Name, Subnet: nw.Subnet.String(), VNI: nw.VNI}); err != nil {
		return nil, err
	}
	if err := lab.WaitLink(h1.Netns, datapath.VxlanName(nw.VNI), true, 30*time.Second); err != nil {
		return nil, err
	}
	sh, err := l.AddSyntheticHost(250)
	if err != nil {
		return nil, err
	}
	// The synthetic member runs as its own process inside its namespace, so
	// every connection it opens starts there.
	syn := exec.Command(c.Rig, "synthetic", "--name", sh.Name, "--addr", sh.Addr.String(),
		"--join", h1.Addr.String(), "--key-file", l.KeyFile(), "--network", nw.Name,
		"--first", "198.19.160.0", "--count", strconv.Itoa(c.Endpoints))
	syn.Stderr = os.Stderr
	start := time.Now()
	if err := nsutil.Do(sh.Netns, syn.Start); err != nil {
		return nil, fmt.Errorf("start synthetic member: %w", err)
	}
	defer func() { _ = syn.Process.Kill(); _ = syn.Wait() }()
	deadline := start.Add(2 * time.Minute)
	for {
		n, err := lab.NeighCount(h1.Netns, datapath.VxlanName(nw.VNI))
		if err != nil {
			return nil, err
		}
		if n >= c.Endpoints {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("only %d of %d endpoints programmed on %s (%s)", n, c.Endpoints, h1.Name, memberView(h1))
		}
		time.Sleep(20 * time.Millisecond)
	}
	prog := time.Since(start)
	time.Sleep(2 * time.Second)
	rss, cpu, err = usage(h1.PID, 5*time.Second)
	if err != nil {
		return nil, err
	}
	fp := Footprint{Hosts: hosts, Endpoints: c.Endpoints, RSSMB: rss, IdleCPUPct: cpu, ProgramMs: ms(prog)}
	fp.PassMs, fp.PassError = lastPass(h1)
	out = append(out, fp)
	return out, nil
}

// memberView summarises how host h sees the cluster, for errors.
func memberView(h lab.Host) string {
	s, err := api.NewClient(h.Socket).Status()
	if err != nil {
		return fmt.Sprintf("status of %s: %v", h.Name, err)
	}
	return MemberSummary(h.Name, s)
}

// MemberSummary counts the members host sees in each state and names the
// ones not alive (at most five).
func MemberSummary(host string, s api.Status) string {
	count := map[string]int{}
	var down []string
	for _, m := range s.Members {
		count[m.State]++
		if m.State != "alive" && len(down) < 5 {
			down = append(down, m.Name+" "+m.State)
		}
	}
	out := fmt.Sprintf("%s sees %d members alive", host, count["alive"])
	if len(down) > 0 {
		out += ", not alive: " + strings.Join(down, ", ")
	}
	if s.SyncError != "" {
		out += "; last pass failed: " + s.SyncError
	}
	return out
}

func lastPass(h lab.Host) (float64, string) {
	s, err := api.NewClient(h.Socket).Status()
	if err != nil {
		return 0, fmt.Sprintf("status of %s: %v", h.Name, err)
	}
	return ms(s.LastSyncDuration), s.SyncError
}
