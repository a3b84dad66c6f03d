package bench

import (
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/probe"
)

// PartIPv6 measures IPv6.
const PartIPv6 = "ipv6"

// IPv6Paths are the paths of the IPv6 part, in their base order: each
// underlay alone, then a container's IPv4 and IPv6 over each underlay.
func IPv6Paths() []string {
	return []string{"underlay4", "underlay6", "v4-over-4", "v6-over-4", "v4-over-6", "v6-over-6"}
}

// IPv6 is vxnet over an IPv6 underlay against an IPv4 one, and dual-stack
// networks against IPv4 ones, from one run: two labs of two hosts with
// dual-stack networks, one on an IPv4 underlay and one on an IPv6
// underlay, measured interleaved.
type IPv6 struct {
	// Gbps is one stream's throughput per path (IPv6Paths), medians.
	Gbps map[string]float64 `json:"gbps"`
	// Underlay6VsUnderlay4 is vxnet's IPv4 traffic over the IPv6
	// underlay against over the IPv4 one (median of per-round ratios);
	// Inner6VsInner4 a container's IPv6 against its IPv4, both over the
	// IPv4 underlay.
	Underlay6VsUnderlay4 float64 `json:"underlay6_vs_underlay4"`
	Inner6VsInner4       float64 `json:"inner6_vs_inner4"`
	// Attach (medians, ms): a new container on host 1 attached to an
	// IPv4 network, against one attached to a dual-stack network,
	// alternating: the attach call, and from its start to the first reply
	// of a container of the network on host 2 (IPv4; on dual stack IPv6
	// too). The first reply is bimodal: when host 2's container asks for
	// the new one's address before host 2 has its record, the proxy has
	// no answer and the container asks again a second later; Slow counts
	// those samples (over 500 ms).
	Samples           int     `json:"samples"`
	CallV4Ms          float64 `json:"call_v4_ms"`
	CallDualMs        float64 `json:"call_dual_ms"`
	AttachV4Ms        float64 `json:"attach_v4_ms"`
	AttachDualV4Ms    float64 `json:"attach_dual_v4_ms"`
	AttachDualV6Ms    float64 `json:"attach_dual_v6_ms"`
	SlowV4            int     `json:"slow_v4"`
	SlowDual          int     `json:"slow_dual"`
	CallDualVsV4      float64 `json:"call_dual_vs_v4"` // median of per-sample ratios
	AttachSampleError string  `json:"attach_error,omitempty"`
}

func ipv6Part(c Config) (*IPv6, error) {
	cfg4 := labCfg("b6a", 2, c)
	cfg4.NoHealth, cfg4.IPv6 = true, true
	l4, err := lab.Up(cfg4)
	if err != nil {
		return nil, err
	}
	defer lab.Down(cfg4.Name)
	cfg6 := labCfg("b6b", 2, c)
	cfg6.NoHealth, cfg6.IPv6, cfg6.Underlay6 = true, true, true
	l6, err := lab.Up(cfg6)
	if err != nil {
		return nil, err
	}
	defer lab.Down(cfg6.Name)
	two := func(l *lab.Lab) (a, b lab.Container) {
		for _, ct := range l.Containers {
			if ct.Host == l.Hosts[0].Name {
				a = ct
			} else if ct.Host == l.Hosts[1].Name {
				b = ct
			}
		}
		return a, b
	}
	a4, b4 := two(l4)
	a6, b6 := two(l6)
	paths := map[string]ends{
		"underlay4": {l4.Hosts[1].Netns, l4.Hosts[0].Netns, l4.Hosts[1].Addr},
		"underlay6": {l6.Hosts[1].Netns, l6.Hosts[0].Netns, l6.Hosts[1].Addr},
		"v4-over-4": {b4.Netns, a4.Netns, b4.IP},
		"v6-over-4": {b4.Netns, a4.Netns, b4.IP6},
		"v4-over-6": {b6.Netns, a6.Netns, b6.IP},
		"v6-over-6": {b6.Netns, a6.Netns, b6.IP6},
	}
	for _, p := range IPv6Paths() {
		e := paths[p]
		if _, err := RequestResponse(e.srv, e.cli, e.dst, 5231, 10); err != nil { // warm neighbours and caches
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	got := map[string][]float64{}
	for round := range max(1, c.Rounds) {
		for _, p := range Rotate(IPv6Paths(), round) {
			e := paths[p]
			bps, err := c.throughput(e.srv, e.cli, e.dst, 5232, 1)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			got[p] = append(got[p], bps/1e9)
			c.Log.Info("ipv6", "round", round+1, "path", p, "gbps", fmt.Sprintf("%.2f", bps/1e9))
		}
	}
	res := &IPv6{Gbps: map[string]float64{}, Underlay6VsUnderlay4: MedianRatio(got["v4-over-6"], got["v4-over-4"]),
		Inner6VsInner4: MedianRatio(got["v6-over-4"], got["v4-over-4"])}
	for p, xs := range got {
		res.Gbps[p] = Median(xs)
	}
	if err := attachSamples(c, l4, b4, res); err != nil {
		res.AttachSampleError = err.Error()
	}
	return res, nil
}

// attachSamples times attach to first reply on an IPv4 network against
// the lab's dual-stack one, alternating.
func attachSamples(c Config, l *lab.Lab, remote lab.Container, res *IPv6) error {
	h1, h2 := l.Hosts[0], l.Hosts[1]
	if _, err := api.NewClient(h1.Socket).CreateNetwork(api.NetworkCreate{Name: "v4only", Subnet: "198.19.60.0/24"}); err != nil {
		return err
	}
	peerNS, err := nsutil.Create(l.Prefix + "v4peer")
	if err != nil {
		return err
	}
	peer, err := api.NewClient(h2.Socket).Attach(api.AttachRequest{Network: "v4only", Netns: peerNS})
	if err != nil {
		return err
	}
	peerIP := netip.MustParsePrefix(peer.IP).Addr()
	samples := max(10, c.Samples/2)
	var v4, d4, d6, c4, cd []float64
	for i := range samples {
		for _, kind := range Rotate([]string{"v4", "dual"}, i) {
			name := fmt.Sprintf("%sa%s%d", l.Prefix, kind, i)
			ns, err := nsutil.Create(name)
			if err != nil {
				return err
			}
			network, dst4, dst6 := "v4only", peerIP, netip.Addr{}
			if kind == "dual" {
				network, dst4, dst6 = remote.Network, remote.IP, remote.IP6
			}
			start := time.Now()
			if _, err := api.NewClient(h1.Socket).Attach(api.AttachRequest{Network: network, Netns: ns}); err != nil {
				return err
			}
			call := time.Since(start)
			t4, err := firstReply(ns, dst4, start)
			if err != nil {
				return err
			}
			if kind == "v4" {
				v4, c4 = append(v4, ms(t4)), append(c4, ms(call))
				if t4 > 500*time.Millisecond {
					res.SlowV4++
				}
			} else {
				t6, err := firstReply(ns, dst6, start)
				if err != nil {
					return err
				}
				d4, d6, cd = append(d4, ms(t4)), append(d6, ms(t6)), append(cd, ms(call))
				if t4 > 500*time.Millisecond || t6 > 500*time.Millisecond {
					res.SlowDual++
				}
			}
			_ = api.NewClient(h1.Socket).Detach(api.DetachRequest{Network: network, Netns: ns})
			_ = nsutil.Delete(name)
		}
	}
	res.Samples, res.AttachV4Ms, res.AttachDualV4Ms, res.AttachDualV6Ms = samples, Median(v4), Median(d4), Median(d6)
	res.CallV4Ms, res.CallDualMs, res.CallDualVsV4 = Median(c4), Median(cd), MedianRatio(cd, c4)
	return nil
}

// firstReply pings dst from ns until it answers (within 5 s) and returns
// the time since start.
func firstReply(ns string, dst netip.Addr, start time.Time) (time.Duration, error) {
	for time.Since(start) < 5*time.Second {
		if _, err := probe.Ping(ns, dst, 56, false, 10*time.Millisecond); err == nil {
			return time.Since(start), nil
		}
	}
	return 0, fmt.Errorf("no reply from %s within 5 s of the attach", dst)
}

func printIPv6(w io.Writer, r *IPv6) {
	fmt.Fprintln(w, "IPv6 (host 1 -> host 2, dual-stack networks; a lab on an IPv4 underlay and one on an IPv6 underlay, interleaved)")
	for _, p := range IPv6Paths() {
		fmt.Fprintf(w, "  %-10s %7.2f Gb/s\n", p, r.Gbps[p])
	}
	fmt.Fprintf(w, "  1 stream: over the IPv6 underlay / over the IPv4 underlay %.3f; a container's IPv6 / its IPv4 %.3f\n", r.Underlay6VsUnderlay4, r.Inner6VsInner4)
	if r.AttachSampleError != "" {
		fmt.Fprintf(w, "  attach to first reply: %s\n", r.AttachSampleError)
		return
	}
	fmt.Fprintf(w, "  attach call (%d each, medians): IPv4 network %.1f ms, dual-stack network %.1f ms: ratio %.2f\n", r.Samples, r.CallV4Ms, r.CallDualMs, r.CallDualVsV4)
	fmt.Fprintf(w, "  attach to first reply (medians): IPv4 network %.1f ms (%d of %d over 500 ms); dual-stack network %.1f ms IPv4, %.1f ms IPv6 (%d over 500 ms)\n",
		r.AttachV4Ms, r.SlowV4, r.Samples, r.AttachDualV4Ms, r.AttachDualV6Ms, r.SlowDual)
}
