package linux_test

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/testutil"
)

// nft runs nft in the namespace.
func nft(t *testing.T, path string, args ...string) string {
	t.Helper()
	var out []byte
	err := nsutil.Do(path, func() error {
		var err error
		out, err = exec.Command("nft", args...).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("nft %v: %v %s", args, err, out)
	}
	return string(out)
}

// chainRules returns the rule lines of one chain of `nft list ruleset`.
func chainRules(ruleset, table, chain string) []string {
	var out []string
	inTable, inChain := false, false
	for _, l := range strings.Split(ruleset, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "table "):
			inTable = l == "table "+table+" {"
		case strings.HasPrefix(l, "chain "):
			inChain = inTable && l == "chain "+chain+" {"
		case l == "}":
			if inChain {
				inChain = false
			}
		case inChain && l != "" && !strings.HasPrefix(l, "type "):
			out = append(out, l)
		}
	}
	return out
}

// vxnet's openings go to the head of the input and forward chains of a
// host's own nftables table (and into iptables' INPUT), follow the members,
// are noticed gone when the owner reloads the ruleset, and leave with
// every rule of the owner's still there.
func TestOpeningsNativeNftables(t *testing.T) {
	testutil.RequireRoot(t)
	_, path := testutil.Netns(t)
	nft(t, path, "-f", "testdata/nftables-drop.conf")
	owner := nft(t, path, "list", "ruleset")
	dp := freshDataplane(t, path)
	o := datapath.Openings{VXLANPort: 4789, GossipPort: 7946, DNSPort: 53533,
		VTEPs: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::2")}}
	if err := dp.EnsureOpenings(o); err != nil {
		t.Fatal(err)
	}
	rs := nft(t, path, "list", "ruleset")
	in, fwd := chainRules(rs, "inet filter", "input"), chainRules(rs, "inet filter", "forward")
	wantIn := []string{"192.0.2.1", "2001:db8::2", "tcp dport 7946", "udp dport 7946", `iifname "vxbr*" tcp dport 53533`, `iifname "vxbr*" udp dport 53533`}
	if len(in) < len(wantIn)+6 {
		t.Fatalf("input chain:\n%s", strings.Join(in, "\n"))
	}
	for i, w := range wantIn {
		if !strings.Contains(in[i], w) || !strings.Contains(in[i], "accept") || !strings.Contains(in[i], `comment "vxnet-open:`) {
			t.Errorf("input rule %d %q, want %q, accept and vxnet's tag", i, in[i], w)
		}
	}
	if !strings.Contains(in[0], "192.0.2.2") || !strings.Contains(in[0], "udp dport 4789") {
		t.Errorf("VXLAN rule %q lacks a member or the port", in[0])
	}
	if strings.Join(in[len(wantIn):], "\n") != strings.Join(chainRules(owner, "inet filter", "input"), "\n") {
		t.Errorf("the owner's input rules changed:\n%s", strings.Join(in, "\n"))
	}
	for i, w := range []string{`iifname "vxbr*" counter`, `oifname "vxbr*" ct state established,related`, `oifname "vxbr*" ct status dnat`} {
		if len(fwd) != 3 || !strings.Contains(fwd[i], w) {
			t.Errorf("forward chain:\n%s\nwant rule %d: %s", strings.Join(fwd, "\n"), i, w)
		}
	}
	if out := chainRules(rs, "inet filter", "output"); len(out) != 0 {
		t.Errorf("output chain got rules: %v", out)
	}
	ipt := save(t, path, "iptables-nft")
	for _, w := range []string{"-A INPUT -j VXNET-OPEN", `-A VXNET-OPEN -s 192.0.2.1/32 -p udp -m udp --dport 4789`, `-A VXNET-OPEN -p tcp -m tcp --dport 7946`} {
		if !strings.Contains(ipt, w) {
			t.Errorf("iptables lacks %q:\n%s", w, ipt)
		}
	}
	obs, err := dp.Observe()
	if err != nil {
		t.Fatal(err)
	}
	if obs.Openings == nil || !obs.Openings.Equal(o) || len(obs.Openings.Chains) != 4 {
		t.Fatalf("observed %+v, want %+v in 4 chains (iptables', ip6tables', nftables' input and forward)", obs.Openings, o)
	}

	// A member leaves: its address goes, in one replacement.
	o.VTEPs = o.VTEPs[1:]
	if err := dp.EnsureOpenings(o); err != nil {
		t.Fatal(err)
	}
	rs = nft(t, path, "list", "ruleset")
	if in := chainRules(rs, "inet filter", "input"); strings.Contains(in[0], "192.0.2.1,") || strings.Contains(rs, "192.0.2.1 ") || strings.Count(rs, "vxnet-open:vxlan4") != 1 {
		t.Errorf("after the member left:\n%s", rs)
	}

	// The owner reloads the ruleset: vxnet sees its openings gone.
	nft(t, path, "delete", "table", "inet", "filter")
	nft(t, path, "-f", "testdata/nftables-drop.conf")
	if obs, err = dp.Observe(); err != nil {
		t.Fatal(err)
	}
	if obs.Openings == nil || obs.Openings.Equal(o) {
		t.Fatalf("after a reload observed %+v, want incomplete", obs.Openings)
	}
	if err := dp.EnsureOpenings(o); err != nil {
		t.Fatal(err)
	}
	// A new dataplane (a restarted agent) reads the same openings back.
	if got := openingsAfresh(t, path); got == nil || !got.Equal(o) {
		t.Fatalf("a new dataplane observed %+v; want %+v", got, o)
	}
	if err := dp.RemoveOpenings(); err != nil {
		t.Fatal(err)
	}
	if rs := nft(t, path, "list", "ruleset"); strings.Contains(rs, "vxnet") || strings.Contains(rs, "VXNET") ||
		strings.Join(chainRules(rs, "inet filter", "input"), "\n") != strings.Join(chainRules(owner, "inet filter", "input"), "\n") {
		t.Errorf("after removal:\n%s", rs)
	}
	if obs, err = dp.Observe(); err != nil || obs.Openings != nil {
		t.Errorf("after removal observed %+v, %v", obs.Openings, err)
	}
	if v6 := save(t, path, "ip6tables-nft"); strings.Contains(v6, "VXNET") {
		t.Errorf("ip6tables after removal:\n%s", v6)
	}
}

// Members reached over IPv6 on a host whose ip6tables INPUT drops (as ufw
// leaves it): VXNET-OPEN goes into ip6tables too (their VXLAN, gossip and
// WireGuard); it is read back, noticed gone when flushed, follows the
// members, and leaves with the openings.
func TestOpeningsIPv6(t *testing.T) {
	testutil.RequireRoot(t)
	_, path := testutil.Netns(t)
	runIn(t, path, "ip6tables-nft", "-P", "INPUT", "DROP")
	dp := freshDataplane(t, path)
	o := datapath.Openings{VXLANPort: 4789, GossipPort: 7947, TunnelPort: 51871, TunnelDev: "vxwgtest",
		VTEPs: []netip.Addr{netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8::3")}}
	if err := dp.EnsureOpenings(o); err != nil {
		t.Fatal(err)
	}
	v6 := save(t, path, "ip6tables-nft")
	for _, w := range []string{"-A INPUT -j VXNET-OPEN", "-A VXNET-OPEN -s 2001:db8::2/128 -p udp -m udp --dport 4789", "-A VXNET-OPEN -s 2001:db8::3/128 -p udp -m udp --dport 4789",
		"-A VXNET-OPEN -p tcp -m tcp --dport 7947", "-A VXNET-OPEN -p udp -m udp --dport 7947", "-A VXNET-OPEN -p udp -m udp --dport 51871"} {
		if !strings.Contains(v6, w) {
			t.Errorf("ip6tables lacks %q:\n%s", w, v6)
		}
	}
	if got := openingsAfresh(t, path); got == nil || !got.Equal(o) || len(got.Chains) != 2 {
		t.Fatalf("a new dataplane observed %+v; want %+v in iptables and ip6tables", got, o)
	}
	runIn(t, path, "ip6tables-nft", "-F", "VXNET-OPEN")
	if obs, err := dp.Observe(); err != nil || obs.Openings == nil || !obs.Openings.Incomplete {
		t.Fatalf("after flushing ip6tables' VXNET-OPEN: %+v %v; want incomplete", obs.Openings, err)
	}
	// Members reached over IPv4 alone: ip6tables keeps the ports (gossip
	// and VXLAN over IPv6 come from no one), no member.
	o4 := datapath.Openings{VXLANPort: 4789, GossipPort: 7947, VTEPs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}}
	if err := dp.EnsureOpenings(o4); err != nil {
		t.Fatal(err)
	}
	if v6 := save(t, path, "ip6tables-nft"); strings.Contains(v6, "-s ") || !strings.Contains(v6, "-A VXNET-OPEN -p tcp -m tcp --dport 7947") {
		t.Errorf("ip6tables with no member over IPv6:\n%s", v6)
	}
	if obs, err := dp.Observe(); err != nil || obs.Openings == nil || !obs.Openings.Equal(o4) {
		t.Fatalf("observed %+v %v; want %+v", obs.Openings, err, o4)
	}
	if err := dp.RemoveOpenings(); err != nil {
		t.Fatal(err)
	}
	if v6 := save(t, path, "ip6tables-nft"); strings.Contains(v6, "VXNET") {
		t.Errorf("ip6tables after removal:\n%s", v6)
	}
}

// On a host with iptables alone (no other nftables table), a new
// dataplane reads the openings back from VXNET-OPEN (iptables' and
// ip6tables').
func TestOpeningsIptablesOnly(t *testing.T) {
	testutil.RequireRoot(t)
	_, path := testutil.Netns(t)
	dp, err := linux.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	o := datapath.Openings{VXLANPort: 4790, GossipPort: 7950, VTEPs: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.7")}}
	if err := dp.EnsureOpenings(o); err != nil {
		t.Fatal(err)
	}
	if got := openingsAfresh(t, path); got == nil || !got.Equal(o) || len(got.Chains) != 2 {
		t.Fatalf("observed %+v; want %+v in iptables and ip6tables alone", got, o)
	}
}

// openingsAfresh is what a new dataplane (a restarted agent) observes of
// the openings in the namespace at path.
func openingsAfresh(t *testing.T, path string) *datapath.Openings {
	t.Helper()
	dp, err := linux.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	obs, err := dp.Observe()
	if err != nil {
		t.Fatal(err)
	}
	return obs.Openings
}

// A firewall reloaded (its table made anew) is reported at once, so the
// agent puts its openings back without waiting for a resync.
func TestWatchRuleset(t *testing.T) {
	testutil.RequireRoot(t)
	_, path := testutil.Netns(t)
	dp, err := linux.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan struct{}, 64)
	done := make(chan error, 1)
	go func() { done <- dp.WatchRuleset(ctx, func() { events <- struct{}{} }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watch: %v", err)
		}
	}()
	deadline := time.After(10 * time.Second)
	for {
		// Load until the monitor has subscribed (the first load may
		// come before it), as a reload does.
		nft(t, path, "-f", "testdata/nftables-drop.conf")
		select {
		case <-events:
			return
		case <-time.After(200 * time.Millisecond):
			nft(t, path, "delete", "table", "inet", "filter")
		case <-deadline:
			t.Fatal("no event for the owner's ruleset")
		}
	}
}
