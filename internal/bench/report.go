package bench

import (
	"fmt"
	"io"
	"strings"
)

// PrintTable writes a result as text tables.
func PrintTable(w io.Writer, r Result) {
	if len(r.Paths) > 0 {
		printPaths(w, r)
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
	const w, h, left, bottom, top, right = 480, 300, 60, 40, 20, 20
	maxX, maxY := 1, float64(ConvergeTargetMs)
	for _, p := range points {
		maxX = max(maxX, p.Hosts)
		maxY = max(maxY, p.P99ms)
	}
	maxY *= 1.15
	x := func(v int) float64 { return left + float64(v)/float64(maxX)*(w-left-right) }
	y := func(v float64) float64 { return h - bottom - v/maxY*(h-top-bottom) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, h-bottom, w-right, h-bottom)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, top, left, h-bottom)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">hosts</text>`+"\n", (w+left)/2, h-8)
	fmt.Fprintf(&b, `<text x="14" y="%d" transform="rotate(-90 14 %d)" text-anchor="middle">attach to first reply (ms)</text>`+"\n", h/2, h/2)
	for i := 0; i <= 4; i++ {
		v := maxY * float64(i) / 4
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%.0f</text>`+"\n", left-6, y(v)+4, v)
	}
	for _, series := range []struct {
		name, color string
		val         func(ConvergePoint) float64
	}{{"p50", "#2b6cb0", func(p ConvergePoint) float64 { return p.P50ms }}, {"p99", "#c53030", func(p ConvergePoint) float64 { return p.P99ms }}} {
		var pts []string
		for _, p := range points {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(p.Hosts), y(series.val(p))))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", series.color, strings.Join(pts, " "))
		for _, p := range points {
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", x(p.Hosts), y(series.val(p)), series.color)
		}
	}
	for _, p := range points {
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x(p.Hosts), h-bottom+16, p.Hosts)
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#555" stroke-dasharray="6 4"/>`+"\n", left, y(ConvergeTargetMs), w-right, y(ConvergeTargetMs))
	fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#555">target p99 at 32 hosts: %d ms</text>`+"\n", w-right, y(ConvergeTargetMs)-4, ConvergeTargetMs)
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#2b6cb0">p50</text><text x="%d" y="%d" fill="#c53030">p99</text>`+"\n", left+10, top+12, left+50, top+12)
	b.WriteString("</svg>\n")
	return b.String()
}
