package e2e

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/doctor"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/lab/labtest"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/paths"
	"github.com/vxnet/vxnet/internal/probe"
	"github.com/vxnet/vxnet/internal/testutil"
)

// TestTwoSites: four hosts on two sites, each site behind a router that
// gives its hosts public addresses by 1:1 NAT; every agent advertises its
// private and its public address (the private first).
//   - One cluster: each pair inside a site uses private addresses, each
//     pair across uses public ones (from status), and every container
//     reaches every other, in clear (net1) and encrypted (net2).
//   - A capture on site A's WAN link sees VXLAN and WireGuard but never a
//     private address.
//   - status, health, doctor and the live page show the paths and why.
//   - Site A's private switch cut between h1 and h2: the pair moves to the
//     public path (hairpin through the router) within 10 s and a ping flow
//     between them resumes; mended: it moves back.
//   - VXLAN alone dropped on the private switch between h1 and h2 (gossip
//     passes): the health probes move the pair to its public path.
func TestTwoSites(t *testing.T) {
	l := upCfg(t, lab.Config{Hosts: 4, Networks: 2, PerHost: 1, Sites: true, Encrypted: []int{2}})
	want := func(from, to lab.Host) netip.Addr {
		if from.Site == to.Site {
			return to.Addr
		}
		return to.Public
	}
	waitPaths(t, l, want, 20*time.Second)

	t.Run("EveryContainerReachesEveryOther", func(t *testing.T) {
		capt, err := probe.StartCaptureOn(nsutil.Path(lab.SiteRouter(l.Prefix, 1)), "wan", lab.VXLANPort)
		if err != nil {
			t.Fatal(err)
		}
		for _, net := range []string{"n1", "n2"} {
			for _, a := range l.Hosts {
				for _, b := range l.Hosts {
					if a.Name == b.Name {
						continue
					}
					src := labtest.Container(t, l, a.Name+"-"+net+"-c1")
					dst := labtest.Container(t, l, b.Name+"-"+net+"-c1")
					pingUntil(t, src.Netns, dst.IP, 10*time.Second)
				}
			}
		}
		st := capt.Stop()
		if st.VXLAN == 0 {
			t.Fatal("no VXLAN crossed site A's WAN link: the capture does not see the WAN")
		}
		for a, n := range st.Addrs {
			if !lab.PublicNet.Contains(a) {
				t.Errorf("address %s appeared %d times on the WAN (only public addresses %s may)", a, n, lab.PublicNet)
			}
		}
	})

	t.Run("StatusHealthDoctorPage", func(t *testing.T) {
		h1, _ := l.Host("h1")
		h3Public := lab.PublicAddr(3)
		// The doctor reads every member's published view: wait until h3's
		// and h4's say they do not reach h1's private address.
		if err := waitCond(20*time.Second, func() error {
			out, _ := doctorIn(t, h1.Netns, "--socket", h1.Socket)
			f := out["addresses"]
			if f.Level != doctor.OK || !strings.Contains(f.Evidence, "h3 at 198.18.100.13 (answers; 198.18.2.13 does not)") ||
				!strings.Contains(f.Evidence, "h2 at 198.18.1.12 (its first address, answers)") ||
				!strings.Contains(f.Evidence, "this host's 198.18.1.11 does not answer from h3, h4") {
				return fmt.Errorf("doctor on h1: %+v", f)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		var text []byte
		err := nsutil.Do(h1.Netns, func() (err error) {
			text, err = exec.Command(testutil.Binary(t), "status", "--socket", h1.Socket).Output()
			return err
		})
		if err != nil || !strings.Contains(string(text), "PATHS (this host is reached at 198.18.1.11, 198.18.100.11, preferred first)") {
			t.Errorf("status on h1: %v\n%s", err, text)
		}
		hv, err := client(l, "h1").Health(false)
		if err != nil || hv.Via["h3"] != h3Public || hv.Via["h2"] != netip.MustParseAddr("198.18.1.12") {
			t.Errorf("health on h1: via %v, %v", hv.Via, err)
		}
		page := fmt.Sprintf("http://%s/", netip.AddrPortFrom(h1.Addr, lab.MetricsPort))
		if err := waitCond(20*time.Second, func() error {
			dom := browse(t, h1.Netns, "--dump-dom", page)
			if want := `<td title="answers; 198.18.2.13 does not">198.18.100.13</td>`; !strings.Contains(dom, want) {
				return fmt.Errorf("the page lacks %s; its DOM:\n%s", want, tailLines(dom, 40))
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("PrivateSwitchCut", func(t *testing.T) {
		c1, c2 := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h2-n1-c1")
		flow := startPingFlow(c1.Netns, c2.IP)
		stopped := false
		defer func() {
			if !stopped {
				flow.stop()
			}
		}()
		cut := time.Now()
		if err := l.CutSite("h1", "h2", true); err != nil {
			t.Fatal(err)
		}
		waitPaths(t, l, publicBetween(want, "h1", "h2"), 10*time.Second)
		moved := time.Since(cut)
		// The flow itself resumes: five more of its pings answered.
		answered := func() int64 { return flow.sent.Load() - flow.lost.Load() }
		before := answered()
		if err := waitCond(10*time.Second-moved, func() error {
			if answered() < before+5 {
				return fmt.Errorf("the ping flow h1 -> h2 has not resumed: %d sent, %d lost", flow.sent.Load(), flow.lost.Load())
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("cut: h1 and h2 on their public addresses %s after the cut, the flow answered again %s after it", moved.Round(time.Millisecond), time.Since(cut).Round(time.Millisecond))
		if err := l.CutSite("h1", "h2", false); err != nil {
			t.Fatal(err)
		}
		waitPaths(t, l, want, 10*time.Second)
		pingUntil(t, c1.Netns, c2.IP, 5*time.Second)
		sent, lost := flow.stop()
		stopped = true
		t.Logf("mended: back on private addresses; flow %d pings, %d lost in all", sent, lost)
	})

	// Last: the pair stays off its private path for a minute after.
	t.Run("VXLANBlockedOnPrivatePath", func(t *testing.T) { vxlanBlockedPrivately(t, l, want) })
}

// vxlanBlockedPrivately: a firewall on site A's private switch drops VXLAN
// between h1 and h2 and lets gossip through. The path probes still answer
// there, the health probes through VXLAN do not: the pair moves to its
// public path (and says why), and its containers reach each other again.
func vxlanBlockedPrivately(t *testing.T, l *lab.Lab, want func(from, to lab.Host) netip.Addr) {
	sw := nsutil.Path(l.Switch)
	inNS(t, sw, "nft", "add table bridge e2evxlan")
	inNS(t, sw, "nft", "add chain bridge e2evxlan block { type filter hook forward priority 0; }")
	inNS(t, sw, "nft", fmt.Sprintf("add rule bridge e2evxlan block ip saddr { 198.18.1.11, 198.18.1.12 } ip daddr { 198.18.1.11, 198.18.1.12 } udp dport %d drop", lab.VXLANPort))
	defer inNS(t, sw, "nft", "delete table bridge e2evxlan")
	c1, c2 := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h2-n1-c1")
	blocked := time.Now()
	waitPaths(t, l, publicBetween(want, "h1", "h2"), 30*time.Second)
	movedAfter := time.Since(blocked)
	pingUntil(t, c1.Netns, c2.IP, 10*time.Second)
	s, err := client(l, "h1").Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range s.Paths {
		if p.Peer == "h2" && !strings.Contains(p.Reason, "198.18.1.12 is kept off until") {
			t.Errorf("h1's reason for h2's public address: %q", p.Reason)
		}
	}
	t.Logf("VXLAN blocked on the private switch: h1 and h2 on their public addresses %s after, replies again %s after",
		movedAfter.Round(time.Millisecond), time.Since(blocked).Round(time.Millisecond))
}

// publicBetween is want, except that hosts a and b reach each other at
// their public addresses.
func publicBetween(want func(from, to lab.Host) netip.Addr, a, b string) func(from, to lab.Host) netip.Addr {
	return func(from, to lab.Host) netip.Addr {
		if (from.Name == a && to.Name == b) || (from.Name == b && to.Name == a) {
			return to.Public
		}
		return want(from, to)
	}
}

// waitPaths waits until every host uses, for every other, the address want
// says, and fails naming the first pair that does not.
func waitPaths(t *testing.T, l *lab.Lab, want func(from, to lab.Host) netip.Addr, timeout time.Duration) {
	t.Helper()
	err := waitCond(timeout, func() error {
		for _, from := range l.Hosts {
			s, err := client(l, from.Name).Status()
			if err != nil {
				return err
			}
			got := map[string]paths.Path{}
			for _, p := range s.Paths {
				got[p.Peer] = p
			}
			for _, to := range l.Hosts {
				if to.Name == from.Name {
					continue
				}
				if p := got[to.Name]; p.Addr != want(from, to) {
					return fmt.Errorf("%s reaches %s at %v (%s), want %s", from.Name, to.Name, p.Addr, p.Reason, want(from, to))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestMasqueradedHost: a fifth host behind a router that masquerades and
// lets nothing in, with --no-inbound, beside the two sites.
//   - It joins and stays a member: every other member's probes of it
//     succeed (through the mappings its own probes keep open in its NAT).
//   - Its container on the encrypted network reaches every other host's,
//     and is reached from each; the others' WireGuard found it at its
//     router's public address.
//   - Its tunnel's health probes pass to every peer.
//   - A container on the clear network is refused there, saying why.
func TestMasqueradedHost(t *testing.T) {
	l := upCfg(t, lab.Config{Hosts: 4, Masqueraded: 1, Networks: 2, PerHost: 1, Sites: true, Encrypted: []int{2}})
	t0 := time.Now()
	if err := waitCond(30*time.Second, func() error {
		for _, h := range l.Hosts[:4] {
			s, err := client(l, h.Name).Status()
			if err != nil {
				return err
			}
			for _, m := range s.Members {
				if m.Name == "h5" && (m.State != "alive" || !m.LastContact.After(t0)) {
					return fmt.Errorf("%s: h5 is %s, last probed %s", h.Name, m.State, m.LastContact)
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	c5 := labtest.Container(t, l, "h5-n2-c1")
	for _, h := range l.Hosts[:4] {
		c := labtest.Container(t, l, h.Name+"-n2-c1")
		pingUntil(t, c5.Netns, c.IP, 10*time.Second)
		pingUntil(t, c.Netns, c5.IP, 10*time.Second)
	}
	s, err := client(l, "h1").Status()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, n := range s.Nodes {
		if n.Tunnel != nil {
			names[n.Tunnel.Key] = n.Name
		}
	}
	found := false
	for _, p := range s.Tunnel.Peers {
		if names[p.Key] == "h5" {
			found = true
			if p.Endpoint.Addr() != lab.MasqueradeAddr {
				t.Errorf("h1's WireGuard has h5 at %s, want its router's public address %s", p.Endpoint, lab.MasqueradeAddr)
			}
		}
	}
	if !found {
		t.Errorf("h1's WireGuard has no peer h5: %+v", s.Tunnel.Peers)
	}
	for _, p := range s.Paths {
		if p.Peer == "h5" && (p.Addr != lab.MasqueradeAddr || !strings.Contains(p.Reason, "it accepts no inbound traffic: reached through its NAT's mapping 198.18.100.3:")) {
			t.Errorf("h1's path to h5: %s (%s)", p.Addr, p.Reason)
		}
	}

	if err := waitCond(20*time.Second, func() error {
		hv, err := client(l, "h5").Health(false)
		if err != nil {
			return err
		}
		ok := 0
		for _, p := range hv.TunnelPeers {
			if p.State == "ok" {
				ok++
			}
		}
		if ok != 4 {
			return fmt.Errorf("h5's tunnel probes pass to %d of 4 peers: %+v", ok, hv.TunnelPeers)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	_, err = client(l, "h5").Attach(api.AttachRequest{Network: "net1", Netns: newContainer(t, l, "h5-n1-x")})
	wantStatusError(t, err, 400, "clear VXLAN cannot cross a masquerading NAT")
}
