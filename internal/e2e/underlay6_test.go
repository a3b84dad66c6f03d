package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/doctor"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/lab/labtest"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/probe"
)

// TestIPv6UnderlayAllowList: two members whose underlay is IPv6 alone
// carry a network (containers ping across, the health probes pass, the
// tunnel's remote is the peer's IPv6 address). A stranger on that underlay
// sends hand-made VXLAN with the network's VNI and a container's MAC and IP
// to a member: nothing reaches the container. The same frame from the
// other member does (the control: the frame is deliverable, so the drop is
// the allow-list's).
func TestIPv6UnderlayAllowList(t *testing.T) {
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 1, PerHost: 1, Underlay6: true})
	h1, _ := l.Host("h1")
	h2, _ := l.Host("h2")
	if !h1.Addr.Is6() || !h2.Addr.Is6() {
		t.Fatalf("hosts %s and %s: want an IPv6 underlay", h1.Addr, h2.Addr)
	}
	a, victim := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h2-n1-c1")
	pingUntil(t, a.Netns, victim.IP, 5*time.Second)
	o, err := l.Observe("h2")
	if err != nil {
		t.Fatal(err)
	}
	overH1 := false
	for _, f := range o.FDB {
		overH1 = overH1 || (f.MAC == a.MAC && f.VTEP == h1.Addr)
	}
	if !overH1 {
		t.Fatalf("h2 does not reach %s (%s) at h1's IPv6 address %s: %+v", a.Name, a.MAC, h1.Addr, o.FDB)
	}
	// A trace follows the probe into VXLAN over IPv6 and out on h2.
	traceSeesUnderlay(t, l, api.TraceRequest{Src: a.ID, Dst: victim.ID}, h1.Addr, h2.Addr)

	stranger, err := l.AddSyntheticHost(99) // on the switch, not a member
	if err != nil {
		t.Fatal(err)
	}
	if !stranger.Addr.Is6() {
		t.Fatalf("stranger %s: want an IPv6 address", stranger.Addr)
	}
	nw := l.Networks[0]
	mac, _ := model.ParseMAC(victim.MAC)
	frame := probe.VXLANFrame(nw.VNI, mac, []byte{0x02, 0x66, 0, 0, 0, 1}, netip.MustParseAddr("198.19.1.99"), victim.IP, 9999, []byte("injected"))
	send := func(fromNetns string) {
		t.Helper()
		for i := 0; i < 5; i++ {
			if err := probe.SendUDP(fromNetns, netip.AddrPortFrom(h2.Addr, lab.VXLANPort), frame); err != nil {
				t.Fatal(err)
			}
		}
	}
	pc, err := probe.ListenUDP(victim.Netns, 9999)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	buf := make([]byte, 64)
	// The stranger's five frames: the allow-list's IPv6 rule counts five
	// drops (the event that proves they were judged), and the container's
	// socket holds nothing.
	before := ingressDrops(t, h2.Netns, true)
	send(stranger.Netns)
	if err := waitCond(5*time.Second, func() error {
		if n := ingressDrops(t, h2.Netns, true) - before; n < 5 {
			return fmt.Errorf("the IPv6 VXLAN allow-list of h2 dropped %d of the stranger's 5 frames", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, _, err := pc.ReadFrom(buf); err == nil {
		t.Fatalf("VXLAN over IPv6 from a non-member (%s) reached the container: %q", stranger.Addr, buf[:n])
	}
	// The control: the same frame from member h1 is delivered, and not
	// counted as a drop.
	before = ingressDrops(t, h2.Netns, true)
	send(h1.Netns)
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _, err := pc.ReadFrom(buf); err != nil || string(buf[:n]) != "injected" {
		t.Fatalf("the hand-made frame from member h1 did not arrive (%q, %v): the test could not tell a drop", buf[:max(n, 0)], err)
	}
	if n := ingressDrops(t, h2.Netns, true) - before; n != 0 {
		t.Fatalf("the allow-list dropped %d frames of member h1", n)
	}
}

// ingressDrops reads the packet counter of vxnet's VXLAN allow-list rule
// (IPv6 or IPv4) in the host namespace at netnsPath.
func ingressDrops(t *testing.T, netnsPath string, v6 bool) uint64 {
	t.Helper()
	if v6 {
		return ruleCounter(t, netnsPath, "vxnet-vxlan6:")
	}
	return ruleCounter(t, netnsPath, "vxnet-vxlan:")
}

// TestIPv6UnderlayPaths: members reached at two IPv6 addresses each (the
// second on the same link) pick, per peer, the address that answers, and
// send VXLAN from the address the route picks (devices with local "::").
// VXLAN to their first addresses dropped on the switch (gossip passes):
// the health probes move the pair to their second addresses and
// containers reach each other again.
func TestIPv6UnderlayPaths(t *testing.T) {
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 1, PerHost: 1, Underlay6: true})
	for i := range l.Hosts {
		h := &l.Hosts[i]
		second := h.Addr.As16()
		second[13] = 1 // 2001:2::1:N beside 2001:2::N, on the same /64
		h.Public = netip.AddrFrom16(second)
		inNS(t, h.Netns, "ip", "addr", "add", h.Public.String()+"/64", "dev", "eth0", "nodad")
		if err := l.KillAgent(h.Name, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := l.StartAgent(h.Name); err != nil {
			t.Fatal(err)
		}
	}
	first := func(_, to lab.Host) netip.Addr { return to.Addr }
	waitPaths(t, l, first, 20*time.Second)
	o, err := l.Observe("h1")
	if err != nil {
		t.Fatal(err)
	}
	nw := l.Networks[0]
	if got := o.Networks[nw.VNI].Local; got != netip.IPv6Unspecified() {
		t.Fatalf("h1's vxlan device has local address %v, want :: (the route's source)", got)
	}
	c1, c2 := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h2-n1-c1")
	pingUntil(t, c1.Netns, c2.IP, 10*time.Second)

	h1, _ := l.Host("h1")
	h2, _ := l.Host("h2")
	sw := nsutil.Path(l.Switch)
	inNS(t, sw, "nft", "add table bridge e2evxlan6")
	inNS(t, sw, "nft", "add chain bridge e2evxlan6 block { type filter hook forward priority 0; }")
	// To the first addresses, from either (the route picks the source).
	inNS(t, sw, "nft", fmt.Sprintf("add rule bridge e2evxlan6 block ip6 daddr { %s, %s } udp dport %d drop", h1.Addr, h2.Addr, lab.VXLANPort))
	defer inNS(t, sw, "nft", "delete table bridge e2evxlan6")
	waitPaths(t, l, func(_, to lab.Host) netip.Addr { return to.Public }, 30*time.Second)
	pingUntil(t, c1.Netns, c2.IP, 10*time.Second)
	pingUntil(t, c2.Netns, c1.IP, 10*time.Second)
}

// TestIPv6UnderlayUFW: hosts over an IPv6 underlay whose ip6tables INPUT
// drops (ufw's defaults): the members find each other and carry a network
// (vxnet's openings in ip6tables). The negative control: h1's openings
// there taken out (its agent stopped), h2's VXLAN no longer reaches h1's
// container; the restarted agent puts them back.
func TestIPv6UnderlayUFW(t *testing.T) {
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 1, PerHost: 1, Underlay6: true, HostFirewall: lab.FirewallUFW})
	h1 := l.Hosts[0]
	if got := inNS(t, h1.Netns, "ip6tables-save", "-t", "filter"); !strings.Contains(got, ":INPUT DROP") || !strings.Contains(got, "-A INPUT -j VXNET-OPEN") {
		t.Fatalf("h1's ip6tables: want ufw's INPUT drop and vxnet's jump:\n%s", got)
	}
	c1, c2 := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h2-n1-c1")
	pingUntil(t, c1.Netns, c2.IP, 10*time.Second)
	pingUntil(t, c2.Netns, c1.IP, 5*time.Second)
	if err := l.KillAgent("h1", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	inNS(t, h1.Netns, "ip6tables", "-F", "VXNET-OPEN")
	if _, err := probe.Ping(c2.Netns, c1.IP, 56, false, time.Second); err == nil {
		t.Fatal("VXLAN over IPv6 from h2 crossed h1's ufw without vxnet's openings in ip6tables")
	}
	hostFiltersAre(t, h1, doctor.Fail, "ip6tables filter INPUT (policy DROP)")
	if err := l.StartAgent("h1"); err != nil {
		t.Fatal(err)
	}
	pingUntil(t, c2.Netns, c1.IP, 15*time.Second)
	hostFiltersAre(t, h1, doctor.OK, "")
}
