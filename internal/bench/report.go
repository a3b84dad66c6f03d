package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// PrintTable writes a result as text tables.
func PrintTable(w io.Writer, r Result) {
	if r.Tool != "" {
		fmt.Fprintf(w, "throughput measured with: %s\n", map[string]string{ToolGo: "Go's client and server in vxnet-bench", ToolIperf3: "iperf3"}[r.Tool])
	}
	if len(r.Paths) > 0 {
		printPaths(w, r)
	}
	if len(r.FastPath) > 0 {
		printFastPath(w, r)
	}
	if n := r.Notrack; n != nil {
		fmt.Fprintln(w, "NOTRACK (host 1 -> host 2; agents restarted with --notrack on or off within each round)")
		fmt.Fprintf(w, "  1 stream: %.2f Gb/s untracked, %.2f Gb/s tracked: ratio %.3f\n", n.OnGbps, n.OffGbps, n.Ratio)
		fmt.Fprintf(w, "  conntrack entries on host 1 after %d short connections: %.0f untracked, %.0f tracked\n", n.Conns, n.OnEntries, n.OffEntries)
	}
	if e := r.Encrypted; e != nil {
		printEncrypted(w, e)
	}
	if r.IPv6 != nil {
		printIPv6(w, r.IPv6)
	}
	if len(r.Converge) > 0 {
		printConverge(w, r)
	}
	if len(r.Footprint) > 0 {
		printFootprint(w, r)
	}
	if h := r.Health; h != nil {
		fmt.Fprintf(w, "HEALTH PROBES (agent of host 1, %d hosts, 1 s interval, %d peers ok)\n", h.Hosts, h.PeersOK)
		fmt.Fprintf(w, "  CPU %.2f%% with probes, %.2f%% without; %.0f bytes per peer per second on the wire (both directions)\n",
			h.CPUPctWith, h.CPUPctWithout, h.BytesPerPeerSec)
	}
}

func printFastPath(w io.Writer, r Result) {
	fmt.Fprintln(w, "FAST PATH (host 1 -> host 2; agents restarted with --datapath bpf or bridge within each round)")
	for _, h := range r.FastPath {
		fmt.Fprintf(w, "  %s hosts:\n", h.Hosts)
		fmt.Fprintf(w, "    %-13s %12s %12s %11s\n", "path", "1 stream", "4 streams", "rr p50")
		for _, p := range []struct {
			name string
			x    Path
		}{{"bpf", h.BPF}, {"bridge", h.Bridge}, {"recipe", h.Recipe}, {"bare", h.Bare}, {"underlay", h.Underlay}} {
			fmt.Fprintf(w, "    %-13s %7.2f Gb/s %7.2f Gb/s %8.1f us\n", p.name, p.x.Tput1Gbps, p.x.Tput4Gbps, p.x.RRp50us)
		}
		for _, p := range []struct {
			name string
			x    *Path
		}{{"docker bpf", h.DockerBPF}, {"docker bridge", h.DockerBridge}} {
			if p.x != nil {
				fmt.Fprintf(w, "    %-13s %7.2f Gb/s %7.2f Gb/s %8.1f us\n", p.name, p.x.Tput1Gbps, p.x.Tput4Gbps, p.x.RRp50us)
			}
		}
		fmt.Fprintf(w, "    bpf/bridge %.3f (4 streams %.3f)   bpf/recipe %.3f   bpf/bare %.3f\n", h.BPFvsBridge1, h.BPFvsBridge4, h.BPFvsRecipe1, h.BPFvsBare1)
		if h.DockerBPF != nil {
			fmt.Fprintf(w, "    docker run containers / API-attached, fast path, 1 stream: %.3f\n", h.DockerVsAPI1)
		}
	}
}

func printPaths(w io.Writer, r Result) {
	fmt.Fprintln(w, "DATAPATH (host 1 -> host 2)")
	fmt.Fprintf(w, "  %-9s %12s %12s %11s %11s\n", "path", "1 stream", "4 streams", "rr p50", "rr p99")
	for _, p := range PathNames() {
		x := r.Paths[p]
		fmt.Fprintf(w, "  %-9s %7.2f Gb/s %7.2f Gb/s %8.1f us %8.1f us\n", p, x.Tput1Gbps, x.Tput4Gbps, x.RRp50us, x.RRp99us)
	}
	fmt.Fprintf(w, "  medians of %d interleaved rounds; ratios (1 stream unless said):\n", r.Rounds)
	fmt.Fprintf(w, "  vxnet/underlay %.3f   vxnet/recipe %.3f   vxnet/recipe (4 streams) %.3f\n",
		r.TputRatioVsUnderlay, r.TputRatioVsRecipe, r.Tput4RatioVsRecipe)
	fmt.Fprintf(w, "  vxnet/bare %.3f   bare/underlay %.3f (bare = kernel VXLAN alone, the ceiling of any VXLAN datapath)\n",
		r.TputRatioVsBare, r.BareRatioVsUnderlay)
	if f := r.Firewalled; f != nil {
		fmt.Fprintf(w, "  vxnet on hosts with FORWARD DROP: %.2f Gb/s with bridged frames through iptables (br_netfilter), %.2f Gb/s without: ratio %.3f\n",
			f.BrNetfilterGbps, f.PlainGbps, f.Ratio)
	}
}

func printConverge(w io.Writer, r Result) {
	fmt.Fprintln(w, "CONTROL PLANE")
	fmt.Fprintf(w, "  %5s %8s %14s %14s %16s %18s\n", "hosts", "samples", "converge p50", "converge p99", "network usable", "failure withdrawn")
	for _, c := range r.Converge {
		fmt.Fprintf(w, "  %5d %8d %11.1f ms %11.1f ms %13.1f ms %15.1f ms\n", c.Hosts, c.Samples, c.P50ms, c.P99ms, c.NetworkUsableMs, c.FailureWithdrMs)
	}
}

func printFootprint(w io.Writer, r Result) {
	fmt.Fprintln(w, "FOOTPRINT (agent of host 1)")
	fmt.Fprintf(w, "  %5s %17s %9s %9s %14s %10s\n", "hosts", "remote endpoints", "RSS", "idle CPU", "programmed in", "pass")
	for _, f := range r.Footprint {
		prog := "-"
		if f.ProgramMs > 0 {
			prog = fmt.Sprintf("%.0f ms", f.ProgramMs)
		}
		fmt.Fprintf(w, "  %5d %17d %6.1f MB %8.2f%% %14s %7.1f ms\n", f.Hosts, f.Endpoints, f.RSSMB, f.IdleCPUPct, prog, f.PassMs)
		if f.PassError != "" {
			fmt.Fprintf(w, "        that pass failed: %s\n", f.PassError)
		}
	}
}

// ConvergeTargetMs is the target for converge p99 at 32 hosts,
// drawn on the plot.
const ConvergeTargetMs = 300

// ConvergenceSVG plots converge p50 and p99 against the number of hosts,
// with the target as a dashed line.
func ConvergenceSVG(points []ConvergePoint) string {
	p := Plot{XLabel: "hosts", YLabel: "attach to first reply (ms)", Target: ConvergeTargetMs,
		TargetLabel: fmt.Sprintf("target p99 at 32 hosts: %d ms", ConvergeTargetMs)}
	p50 := Series{Name: "p50", Color: "#2b6cb0"}
	p99 := Series{Name: "p99", Color: "#c53030"}
	for _, c := range points {
		p.X = append(p.X, float64(c.Hosts))
		p50.Y = append(p50.Y, c.P50ms)
		p99.Y = append(p99.Y, c.P99ms)
	}
	p.Series = []Series{p50, p99}
	return p.SVG()
}

// Plot is a line plot of series over shared x values, with an optional
// target drawn as a dashed line.
type Plot struct {
	XLabel, YLabel string
	X              []float64
	LogX           bool
	Series         []Series
	Target         float64
	TargetLabel    string
}

// Series is one line of a Plot.
type Series struct {
	Name, Color string
	Y           []float64
}

// SVG draws the plot.
func (p Plot) SVG() string {
	const w, h, left, bottom, top, right = 480, 300, 60, 40, 20, 20
	minX, maxX, maxY := math.Inf(1), 1.0, p.Target
	for i, v := range p.X {
		minX, maxX = min(minX, v), max(maxX, v)
		for _, s := range p.Series {
			if i < len(s.Y) {
				maxY = max(maxY, s.Y[i])
			}
		}
	}
	maxY *= 1.15
	x := func(v float64) float64 { return left + v/maxX*(w-left-right) }
	if p.LogX && minX > 0 && maxX > minX {
		x = func(v float64) float64 {
			return left + 10 + (math.Log(v)-math.Log(minX))/(math.Log(maxX)-math.Log(minX))*(w-left-right-20)
		}
	}
	y := func(v float64) float64 { return h - bottom - v/maxY*(h-top-bottom) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, h-bottom, w-right, h-bottom)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, top, left, h-bottom)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", (w+left)/2, h-8, p.XLabel)
	fmt.Fprintf(&b, `<text x="14" y="%d" transform="rotate(-90 14 %d)" text-anchor="middle">%s</text>`+"\n", h/2, h/2, p.YLabel)
	for i := 0; i <= 4; i++ {
		v := maxY * float64(i) / 4
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%.0f</text>`+"\n", left-6, y(v)+4, v)
	}
	for k, s := range p.Series {
		var pts []string
		for i, v := range s.Y {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(p.X[i]), y(v)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", s.Color, strings.Join(pts, " "))
		for i, v := range s.Y {
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", x(p.X[i]), y(v), s.Color)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="%s">%s</text>`+"\n", left+10+50*k, top+12, s.Color, s.Name)
	}
	for _, v := range p.X {
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%g</text>`+"\n", x(v), h-bottom+16, v)
	}
	if p.Target > 0 {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#555" stroke-dasharray="6 4"/>`+"\n", left, y(p.Target), w-right, y(p.Target))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#555">%s</text>`+"\n", w-right, y(p.Target)-4, p.TargetLabel)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func printEncrypted(w io.Writer, e *Encrypted) {
	dev := "kernel WireGuard"
	if e.Userspace {
		dev = "userspace WireGuard (wireguard-go in vxnet)"
	}
	fmt.Fprintf(w, "ENCRYPTED NETWORK (host 1 -> host 2, %s)\n", dev)
	fmt.Fprintf(w, "  %-10s %12s %12s %14s\n", "path", "1 stream", "4 streams", "CPU s per GB")
	for _, p := range EncryptedPaths() {
		pr, ok := e.Paths[p]
		if !ok {
			continue
		}
		cpu := "-"
		if v, ok := e.CPUPerGB[p]; ok {
			cpu = fmt.Sprintf("%.1f", v)
		}
		fmt.Fprintf(w, "  %-10s %7.2f Gb/s %7.2f Gb/s %14s\n", p, pr.Tput1Gbps, pr.Tput4Gbps, cpu)
	}
	fmt.Fprintf(w, "  1 stream: encrypted / underlay %.3f, encrypted / clear %.3f, encrypted / tunnel alone %.3f", e.VsUnderlay, e.VsClear, e.VsTunnel)
	if e.VsBaseline > 0 {
		fmt.Fprintf(w, ", encrypted / hand-made baseline %.2f", e.VsBaseline)
	}
	fmt.Fprintln(w)
	if e.Baseline != "" {
		fmt.Fprintf(w, "  no baseline: %s\n", e.Baseline)
	}
}
