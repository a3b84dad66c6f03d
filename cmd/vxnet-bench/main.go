// Command vxnet-bench holds vxnet's benchmark and simulation rigs: labs
// of real agents measured end to end (converge, bench, scale) and
// replication at scale in one process (sim). It is not shipped: the
// measurements and the commands that made them are in docs/BENCHMARKS.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vxnet/vxnet/internal/bench"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/sim"
)

type globals struct {
	verbose bool
	binary  string
}

func (g *globals) logger() *slog.Logger {
	level := slog.LevelInfo
	if g.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// vxnet is the vxnet binary the labs run: --vxnet, else vxnet beside this
// binary, else on PATH.
func (g *globals) vxnet() (string, error) {
	if g.binary != "" {
		return g.binary, nil
	}
	if self, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(self), "vxnet"); isFile(p) {
			return p, nil
		}
	}
	p, err := exec.LookPath("vxnet")
	if err != nil {
		return "", fmt.Errorf("no vxnet binary beside this one or on PATH: give --vxnet (go build -o bin/ ./cmd/...)")
	}
	return p, nil
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func main() {
	g := &globals{}
	root := &cobra.Command{
		Use:           "vxnet-bench",
		Short:         "vxnet's benchmarks and simulations (labs of real agents, replication at scale)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "debug logging")
	root.PersistentFlags().StringVar(&g.binary, "vxnet", "", "the vxnet binary the labs run (default: vxnet beside this binary, else on PATH)")
	root.AddCommand(newConvergeCmd(g), newBenchCmd(g), newSyntheticCmd(), newScaleCmd(g), newSimCmd(g))
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "vxnet-bench:", err)
		os.Exit(1)
	}
}

func newConvergeCmd(g *globals) *cobra.Command {
	var hosts, samples, etcd int
	var asJSON, noHealth, encrypted bool
	var via, plugin, datapathMode string
	cmd := &cobra.Command{
		Use:   "converge",
		Short: "Benchmark: time from attach on one host to first reply from another, with real agents",
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := g.vxnet()
			if err != nil {
				return err
			}
			name := "cv"
			cfg := lab.Config{Name: name, Hosts: hosts, Networks: 1, PerHost: 1, Agent: true, Binary: exe, Log: g.logger(), NoHealth: noHealth, Etcd: etcd, Datapath: datapathMode}
			if encrypted {
				cfg.Encrypted = []int{1}
			}
			l, err := lab.Up(cfg)
			if err != nil {
				return err
			}
			defer lab.Down(name)
			attach := lab.APIAttach
			switch via {
			case "api":
			case "cni":
				if plugin == "" {
					plugin = filepath.Join(filepath.Dir(exe), "vxnet-cni")
				}
				attach = lab.CNIAttach(plugin)
			case "docker":
				// A dockerd on every host but the first; each agent puts the
				// lab's network into its dockerd.
				ds := map[string]*lab.Dockerd{}
				defer func() {
					for _, d := range ds {
						_ = d.Stop()
					}
				}()
				for _, h := range l.Hosts[1:] {
					d, err := l.StartDocker(h.Name)
					if err != nil {
						return err
					}
					ds[h.Name] = d
					for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
						if out, err := d.Docker("network", "ls", "--format", "{{.Name}}"); err == nil && strings.Contains(out, l.Networks[0].Name) {
							break
						}
						if time.Now().After(deadline) {
							return fmt.Errorf("network %s never reached the dockerd of %s", l.Networks[0].Name, h.Name)
						}
					}
				}
				attach = lab.DockerAttach(ds)
			default:
				return fmt.Errorf("invalid --via %q: want api or cni", via)
			}
			res, err := l.MeasureConvergence(samples, attach)
			if err != nil {
				return err
			}
			var call, prog, reply []time.Duration
			for _, s := range res {
				call, prog, reply = append(call, s.Call), append(prog, s.Programmed), append(reply, s.FirstReply)
			}
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			out := map[string]any{"hosts": hosts, "samples": len(res), "via": via, "encrypted": encrypted,
				"call_p50_ms": ms(lab.Percentile(call, 50)), "call_p99_ms": ms(lab.Percentile(call, 99)),
				"programmed_p50_ms": ms(lab.Percentile(prog, 50)), "programmed_p99_ms": ms(lab.Percentile(prog, 99)),
				"converge_p50_ms": ms(lab.Percentile(reply, 50)), "converge_p99_ms": ms(lab.Percentile(reply, 99))}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "hosts=%d encrypted=%v samples=%d  attach call p50=%.1fms p99=%.1fms  attach->programmed on peer p50=%.1fms p99=%.1fms  attach->first reply p50=%.1fms p99=%.1fms\n",
				hosts, encrypted, len(res), out["call_p50_ms"], out["call_p99_ms"], out["programmed_p50_ms"], out["programmed_p99_ms"], out["converge_p50_ms"], out["converge_p99_ms"])
			return nil
		},
	}
	cmd.Flags().IntVar(&hosts, "hosts", 3, "number of hosts")
	cmd.Flags().IntVar(&samples, "samples", 50, "number of attaches to time")
	cmd.Flags().BoolVar(&noHealth, "no-health", false, "run the agents without health probes")
	cmd.Flags().BoolVar(&encrypted, "encrypted", false, "make the lab's network encrypted (routed through WireGuard between the hosts)")
	cmd.Flags().StringVar(&datapathMode, "datapath", "", "the agents' --datapath: bridge, bpf or auto (default: the agent's, auto)")
	cmd.Flags().IntVar(&etcd, "etcd", 0, "run an etcd cluster of this many members and the agents with --store etcd://")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&via, "via", "api", "front door of the attach: api ('vxnet attach'), cni (the vxnet-cni plugin, ADD and DEL) or docker ('docker run --net' on the host's dockerd)")
	cmd.Flags().StringVar(&plugin, "cni-plugin", "", "the vxnet-cni binary for --via cni (default: vxnet-cni beside the vxnet binary)")
	return cmd
}

func newBenchCmd(g *globals) *cobra.Command {
	c := bench.Config{}
	var asJSON bool
	var svg string
	var convergeHosts []int
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmark datapath (vs raw underlay and the hand-made recipe), control plane and footprint in labs of its own",
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			if os.Geteuid() != 0 {
				return errors.New("the benchmark builds labs of network namespaces: run it as root")
			}
			if c.Binary, err = g.vxnet(); err != nil {
				return err
			}
			if c.Rig, err = os.Executable(); err != nil {
				return err
			}
			c.Log, c.ConvergeHosts = g.logger(), convergeHosts
			if c.Hosts < 2 {
				return fmt.Errorf("invalid --hosts %d: the datapath part needs at least 2", c.Hosts)
			}
			if c.Parts, err = bench.ParseParts(c.Parts); err != nil {
				return err
			}
			if c.Tool, err = bench.ParseTool(c.Tool); err != nil {
				return err
			}
			res, err := bench.Run(c)
			if err != nil {
				return err
			}
			if svg != "" {
				if err := os.WriteFile(svg, []byte(bench.ConvergenceSVG(res.Converge)), 0o644); err != nil {
					return err
				}
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), res)
			}
			bench.PrintTable(cmd.OutOrStdout(), res)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&c.Hosts, "hosts", 2, "hosts of the datapath lab (and the small footprint lab)")
	f.IntSliceVar(&convergeHosts, "converge-hosts", []int{2, 8, 32}, "lab sizes of the control-plane part")
	f.IntVar(&c.Samples, "samples", 50, "attaches timed per lab size")
	f.DurationVar(&c.Duration, "time", 3*time.Second, "duration of each throughput measurement")
	f.StringVar(&c.Tool, "tool", bench.ToolGo, "what measures throughput: go (a client and server in this process) or iperf3 (whole seconds of --time)")
	f.IntVar(&c.Rounds, "rounds", 5, "interleaved rounds of throughput measurements (figures are medians)")
	f.IntVar(&c.RR, "rr", 5000, "request/response exchanges per path")
	f.IntVar(&c.Endpoints, "endpoints", 5000, "synthetic remote endpoints of the footprint part")
	f.IntVar(&c.FootprintHosts, "footprint-hosts", 32, "lab size of the large footprint part")
	f.StringSliceVar(&c.Parts, "parts", nil, "run only these parts: datapath, fastpath, notrack, encrypted, ipv6, control, footprint, health (default all)")
	f.BoolVar(&asJSON, "json", false, "print one JSON object")
	f.StringVar(&svg, "svg", "", "write a plot of convergence against hosts to this file")
	return cmd
}

// newSyntheticCmd is the benchmark's synthetic member: it joins a lab
// cluster from the namespace it was started in, announces endpoints in
// bulk, and stays until killed.
func newSyntheticCmd() *cobra.Command {
	var name, addr, join, keyFile, network, first string
	var count int
	cmd := &cobra.Command{
		Use:    "synthetic",
		Short:  "Benchmark helper: a member without datapath that announces many endpoints",
		Hidden: true, // started by the scale and footprint parts
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := netip.ParseAddr(addr)
			if err != nil {
				return fmt.Errorf("invalid --addr %q", addr)
			}
			f, err := netip.ParseAddr(first)
			if err != nil {
				return fmt.Errorf("invalid --first %q", first)
			}
			s, err := lab.JoinSynthetic(name, a, keyFile, strings.Split(join, ","))
			if err != nil {
				return err
			}
			defer s.Stop()
			var nw model.Network
			for i := 0; ; i++ {
				if n, ok := s.State.Network(network); ok {
					nw = n
					break
				}
				if i > 3000 {
					return fmt.Errorf("network %q not learnt from the cluster", network)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := s.Announce(nw, f, count); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			<-ctx.Done()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "synthetic", "member name")
	f.StringVar(&addr, "addr", "", "member address (in this namespace)")
	f.StringVar(&join, "join", "", "a member to join")
	f.StringVar(&keyFile, "key-file", "", "cluster key file")
	f.StringVar(&network, "network", "", "network of the endpoints")
	f.StringVar(&first, "first", "", "first endpoint address")
	f.IntVar(&count, "count", 1000, "number of endpoints")
	return cmd
}

// newScaleCmd runs the real-process scale part at several sizes.
func newScaleCmd(g *globals) *cobra.Command {
	var members []int
	var endpoints, samples int
	var binary string
	var asJSON, oneSeed bool
	var rate float64
	cmd := &cobra.Command{
		Use:   "scale",
		Short: "Benchmark: two agents and many synthetic members (real gossip processes, each in its own namespace)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if binary == "" {
				var err error
				if binary, err = g.vxnet(); err != nil {
					return err
				}
			}
			rig, err := os.Executable()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if !asJSON {
				fmt.Fprintf(out, "%7s %10s %11s %12s %12s %12s %11s %11s %12s %9s\n", "members", "joined", "programmed", "attach p50", "attach p99", "attach max", "call p50", "withdrawn", "false deaths", "agent RSS")
			}
			var all []bench.ScaleResult
			for _, n := range members {
				r, err := bench.Scale(bench.Config{Binary: binary, Rig: rig, Log: g.logger()}, n, endpoints, samples, oneSeed, rate)
				if err != nil {
					return fmt.Errorf("%d members: %w", n, err)
				}
				all = append(all, r)
				if !asJSON {
					fmt.Fprintf(out, "%7d %8.1f s %9.1f s %9.1f ms %9.1f ms %9.1f ms %8.1f ms %9.1f s %12d %6.0f MB\n", r.Members, r.JoinedMs/1000, r.ProgrammedMs/1000,
						r.AttachP50Ms, r.AttachP99Ms, r.AttachMaxMs, r.AttachCallMs, r.WithdrawnMs/1000, r.FalseDeaths, r.AgentRSSMB)
				}
			}
			if asJSON {
				return printJSON(out, all)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntSliceVar(&members, "members", []int{50, 100}, "synthetic member counts (at most 240)")
	f.IntVar(&endpoints, "endpoints", 10, "endpoints each synthetic member announces")
	f.IntVar(&samples, "samples", 50, "attach samples")
	f.StringVar(&binary, "binary", "", "vxnet binary for the agents (default: --vxnet)")
	f.Float64Var(&rate, "start-rate", 0, "members started per second (0: all at once)")
	f.BoolVar(&oneSeed, "one-seed", false, "members join through h1 alone (binaries before 2026-11 take one address)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// newSimCmd runs the replication simulation at several cluster sizes.
func newSimCmd(g *globals) *cobra.Command {
	var members []int
	var probe, window time.Duration
	var asJSON, useModel bool
	var endpoints int
	var svg string
	var churn float64
	var seed uint64
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Benchmark: many members in one process, over memberlist's in-memory transport or (--model) a model of it in virtual time",
		Long: `Without --model: real memberlist instances over an in-memory transport, real
gossip and state code, no datapath; two cores carry a few hundred.

With --model: vxnet's dissemination (the real Spreader, state, codec and
memberlist's transmit queue) for every member in virtual time, over a model
of memberlist's gossip rounds, probes, push/pull and joins; 1,000 members
fit. It does not model CPU contention, so false deaths are not measured.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if useModel {
				return runModel(out, members, endpoints, churn, window, seed, asJSON, svg)
			}
			var all []sim.Result
			if !asJSON {
				fmt.Fprintf(out, "%7s %12s %14s %14s %14s %12s %10s %12s %14s %9s\n", "members", "cold start", "change p50", "change p99", "change max", "B/member/s", "msg/m/s", "false deaths", "heap/member", "dropped")
			}
			for _, n := range members {
				// memberlist warns per dropped packet: thousands a second
				// when a large cluster overloads the machine.
				log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
				if g.verbose {
					log = g.logger()
				}
				r, err := sim.Run(sim.Config{Members: n, ProbeInterval: probe, Window: window, Log: log})
				if err != nil {
					return fmt.Errorf("%d members: %w", n, err)
				}
				all = append(all, r)
				if !asJSON {
					fmt.Fprintf(out, "%7d %9.0f ms %11.1f ms %11.1f ms %11.1f ms %12.0f %10.1f %12d %11.0f KB %9d\n", r.Members, r.ColdStartMs,
						r.ConvergeP50Ms, r.ConvergeP99Ms, r.ConvergeMaxMs, r.BytesPerMemberSec, r.MsgsPerMemberSec, r.FalseDeaths, r.HeapKBPer, r.Dropped)
				}
			}
			if asJSON {
				return printJSON(out, all)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntSliceVar(&members, "members", []int{10, 30, 100}, "cluster sizes")
	f.DurationVar(&probe, "probe-interval", time.Second, "the members' failure detection interval")
	f.DurationVar(&window, "window", 10*time.Second, "steady-state measurement window")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	f.BoolVar(&useModel, "model", false, "run the discrete-event model instead of memberlist instances")
	f.IntVar(&endpoints, "endpoints", 10, "endpoints each member attaches after joining (--model)")
	f.Float64Var(&churn, "churn", 0.05, "fraction of members restarted in the churn window (--model; negative: none)")
	f.Uint64Var(&seed, "seed", 1, "random seed (--model)")
	f.StringVar(&svg, "svg", "", "write a plot of one change's spread against the member count to this file (--model)")
	return cmd
}

func runModel(out io.Writer, members []int, endpoints int, churn float64, window time.Duration, seed uint64, asJSON bool, svg string) error {
	var all []sim.ModelResult
	if !asJSON {
		fmt.Fprintf(out, "%7s %11s %12s %12s %12s %12s %12s %12s %12s %12s %12s %8s\n", "members", "cold start", "drained", "change p50", "change p99", "change max",
			"steady B/s", "churn B/s", "churn max", "rejoin max", "heap/member", "wall")
	}
	for _, n := range members {
		// The window defaults to 10 s for the in-process run; the model
		// measures over 30 s unless told.
		w := window
		if w == 10*time.Second {
			w = 30 * time.Second
		}
		r, err := sim.RunModel(sim.ModelConfig{Members: n, Endpoints: endpoints, Churn: churn, Window: w, Seed: seed})
		if err != nil {
			return fmt.Errorf("%d members: %w", n, err)
		}
		all = append(all, r)
		if !asJSON {
			fmt.Fprintf(out, "%7d %8.1f s %9.1f s %9.1f ms %9.1f ms %9.1f ms %12.0f %12.0f %9.1f ms %9.0f ms %9.0f KB %6.0f s\n", r.Members, r.ColdStartMs/1000, r.DrainedMs/1000,
				r.ConvergeP50Ms, r.ConvergeP99Ms, r.ConvergeMaxMs, r.SteadyBytesPerSec, r.ChurnBytesPerSec, r.ChurnConvergeMaxMs, r.RejoinMaxMs, r.HeapKBPer, r.WallS)
		}
	}
	if svg != "" {
		p := bench.Plot{XLabel: "members (modelled)", YLabel: "one change to every member (ms)", LogX: true,
			Target: 1000, TargetLabel: "target: 99% of members in 1 s"}
		p50 := bench.Series{Name: "p50", Color: "#2b6cb0"}
		p99 := bench.Series{Name: "p99", Color: "#c53030"}
		mx := bench.Series{Name: "max", Color: "#555555"}
		for _, r := range all {
			p.X = append(p.X, float64(r.Members))
			p50.Y, p99.Y, mx.Y = append(p50.Y, r.ConvergeP50Ms), append(p99.Y, r.ConvergeP99Ms), append(mx.Y, r.ConvergeMaxMs)
		}
		p.Series = []bench.Series{p50, p99, mx}
		if err := os.WriteFile(svg, []byte(p.SVG()), 0o644); err != nil {
			return err
		}
	}
	if asJSON {
		return printJSON(out, all)
	}
	return nil
}
