package bench

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/testutil"
)

func TestParsers(t *testing.T) {
	cpu, err := ParseStatCPU("1234 (vxnet agent) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 12 0")
	if err != nil || cpu != 175 {
		t.Fatalf("ParseStatCPU = %d, %v; want 175", cpu, err)
	}
	if _, err := ParseStatCPU("garbage"); err == nil {
		t.Fatal("garbage stat accepted")
	}
	rss, err := ParseRSS("Name:\tvxnet\nVmRSS:\t   23456 kB\nThreads: 9\n")
	if err != nil || rss != 23456 {
		t.Fatalf("ParseRSS = %d, %v", rss, err)
	}
	if _, err := ParseRSS("Name: x\n"); err == nil {
		t.Fatal("status without VmRSS accepted")
	}
	if Ratio(3, 0) != 0 || Ratio(3, 2) != 1.5 {
		t.Fatal("Ratio")
	}
	for _, tc := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{4}, 4}, {[]float64{9, 1, 5}, 5}, {[]float64{8, 2, 4, 6}, 5}} {
		if got := Median(tc.in); got != tc.want {
			t.Errorf("Median(%v) = %v; want %v", tc.in, got, tc.want)
		}
	}
	for r, want := range []string{"a b c", "b c a", "c a b", "a b c"} {
		if got := strings.Join(Rotate([]string{"a", "b", "c"}, r), " "); got != want {
			t.Errorf("Rotate(a b c, %d) = %s; want %s", r, got, want)
		}
	}
	if Rotate(nil, 3) != nil {
		t.Error("Rotate(nil) not nil")
	}
	// Ratios are taken within each round, then the median: a round where
	// the machine was slow for every path does not skew the ratio.
	if got := MedianRatio([]float64{8, 4, 9}, []float64{10, 5, 10}); got != 0.8 {
		t.Errorf("MedianRatio = %v; want 0.8", got)
	}
	if got := MedianRatio([]float64{8, 4}, []float64{10}); got != 0.8 {
		t.Errorf("MedianRatio with uneven rounds = %v; want 0.8 (first round only)", got)
	}
}

func TestReport(t *testing.T) {
	r := Result{Paths: map[string]Path{"underlay": {Tput1Gbps: 10}, "bare": {Tput1Gbps: 9.1}, "recipe": {Tput1Gbps: 8}, "vxnet": {Tput1Gbps: 8.8, RRp50us: 42}},
		Rounds: 3, TputRatioVsRecipe: 1.1, TputRatioVsBare: 0.967, Converge: []ConvergePoint{{Hosts: 2, P50ms: 5, P99ms: 9}, {Hosts: 8, P50ms: 20, P99ms: 40}}}
	var b bytes.Buffer
	PrintTable(&b, r)
	for _, want := range []string{"vxnet        8.80 Gb/s", "bare         9.10 Gb/s", "42.0 us", "vxnet/recipe 1.100", "vxnet/bare 0.967", "medians of 3", "20.0 ms", "40.0 ms"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	svg := ConvergenceSVG(r.Converge)
	if !strings.HasPrefix(svg, "<svg") || strings.Count(svg, "<circle") != 4 || !strings.Contains(svg, ">8</text>") ||
		!strings.Contains(svg, "target p99 at 32 hosts: 300 ms") {
		t.Fatalf("svg:\n%s", svg)
	}
}

func TestParts(t *testing.T) {
	for _, tc := range []struct {
		parts []string
		err   string
		runs  map[string]bool
	}{
		{nil, "", map[string]bool{PartDatapath: true, PartControl: true, PartFootprint: true}},
		{[]string{"footprint"}, "", map[string]bool{PartFootprint: true}},
		{[]string{"datapath", "control"}, "", map[string]bool{PartDatapath: true, PartControl: true}},
		{[]string{"control", "speed"}, `unknown part "speed": want datapath, fastpath, notrack, encrypted, ipv6, control, footprint or health`, nil},
	} {
		parts, err := ParseParts(tc.parts)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("ParseParts(%q) error = %v; want %q", tc.parts, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("ParseParts(%q): %v", tc.parts, err)
		}
		c := Config{Parts: parts}
		for _, p := range []string{PartDatapath, PartControl, PartFootprint} {
			if c.runs(p) != tc.runs[p] {
				t.Errorf("parts %q: runs(%s) = %v", tc.parts, p, c.runs(p))
			}
		}
	}
	// A table of one part shows that part only.
	var b bytes.Buffer
	PrintTable(&b, Result{Footprint: []Footprint{{Hosts: 32, Endpoints: 5000, RSSMB: 30, ProgramMs: 1500, PassError: "list links: EBUSY"}}})
	if s := b.String(); strings.Contains(s, "DATAPATH") || strings.Contains(s, "CONTROL") || !strings.Contains(s, "1500 ms") ||
		!strings.Contains(s, "that pass failed: list links: EBUSY") {
		t.Fatalf("footprint-only table:\n%s", s)
	}
}

func TestMemberSummary(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    api.Status
		want string
	}{
		{"all alive", api.Status{Members: []cluster.Member{{Name: "h1", State: "alive"}, {Name: "h2", State: "alive"}}},
			"h1 sees 2 members alive"},
		{"one failed and a failing pass", api.Status{Members: []cluster.Member{{Name: "h1", State: "alive"}, {Name: "syn", State: "failed"}},
			SyncError: "list links: EBUSY"},
			"h1 sees 1 members alive, not alive: syn failed; last pass failed: list links: EBUSY"},
	} {
		if got := MemberSummary("h1", tc.s); got != tc.want {
			t.Errorf("%s: MemberSummary = %q; want %q", tc.name, got, tc.want)
		}
	}
}

// TestMeasurementsAcrossNamespaces runs the real measuring code over a veth
// between two namespaces.
func TestMeasurementsAcrossNamespaces(t *testing.T) {
	_, a := testutil.Netns(t)
	_, b := testutil.Netns(t)
	na, err := netns.GetFromPath(a)
	if err != nil {
		t.Fatal(err)
	}
	defer na.Close()
	nb, err := netns.GetFromPath(b)
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	ha, err := netlink.NewHandleAt(na)
	if err != nil {
		t.Fatal(err)
	}
	defer ha.Close()
	hb, err := netlink.NewHandleAt(nb)
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Close()
	if err := ha.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "va"}, PeerName: "vb", PeerNamespace: netlink.NsFd(nb)}); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		h    *netlink.Handle
		name string
		ip   string
	}{{ha, "va", "198.18.9.1"}, {hb, "vb", "198.18.9.2"}} {
		l, err := x.h.LinkByName(x.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := x.h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(x.ip), Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
		if err := x.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	dst := netip.MustParseAddr("198.18.9.2")
	rtts, err := RequestResponse(b, a, dst, 7001, 200)
	if err != nil || len(rtts) != 200 {
		t.Fatalf("rr: %d samples, %v", len(rtts), err)
	}
	for _, streams := range []int{1, 3} {
		bps, err := Throughput(b, a, dst, 7002, streams, 400*time.Millisecond)
		if err != nil || bps <= 0 {
			t.Fatalf("throughput with %d streams: %v bps, %v", streams, bps, err)
		}
	}
	if _, err := Throughput(b, a, netip.MustParseAddr("198.18.9.3"), 7003, 1, 100*time.Millisecond); err == nil {
		t.Fatal("throughput to an address nobody has succeeded")
	}
	// iperf3 (the tests' dependencies install it), over the same veth.
	for _, streams := range []int{1, 2} {
		bps, err := Iperf3(b, a, dst, 7004, streams, time.Second)
		if err != nil || bps <= 0 {
			t.Fatalf("iperf3 with %d streams: %v bps, %v", streams, bps, err)
		}
	}
	if _, err := Iperf3(b, a, netip.MustParseAddr("198.18.9.3"), 7005, 1, time.Second); err == nil {
		t.Fatal("iperf3 to an address nobody has succeeded")
	}
}

func TestIperf3Report(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     float64
		err      string
	}{
		{"received", `{"start":{},"end":{"sum_sent":{"bits_per_second":9.9e9},"sum_received":{"bits_per_second":9.5e9}}}`, 9.5e9, ""},
		{"iperf3's own error", `{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}`, 0, "unable to connect to server"},
		{"nothing received", `{"end":{"sum_received":{"bits_per_second":0}}}`, 0, "no data received"},
		{"not JSON", "iperf3: error - unable to connect", 0, "not an iperf3 JSON report"},
		{"empty", "", 0, "not an iperf3 JSON report (0 bytes)"},
	} {
		got, err := parseIperf3([]byte(tc.in))
		if tc.err == "" && (err != nil || got != tc.want) {
			t.Errorf("%s: parseIperf3 = %v, %v; want %v", tc.name, got, err, tc.want)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: parseIperf3 error %v; want one containing %q", tc.name, err, tc.err)
		}
	}
}

func TestParseTool(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"", ToolGo, ""},
		{"go", ToolGo, ""},
		{"netperf", "", `invalid --tool "netperf": want go or iperf3`},
	} {
		got, err := ParseTool(tc.in)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && err.Error() != tc.err) {
			t.Errorf("ParseTool(%q) = %q, %v; want %q, %q", tc.in, got, err, tc.want, tc.err)
		}
	}
}
