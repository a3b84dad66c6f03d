package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/lab/labtest"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/probe"
)

// handTunnel makes the hand-made recipe's VXLAN device in the host at
// netnsPath: VNI 4096 on port 4789 to remote, with addr on it.
func handTunnel(t *testing.T, netnsPath string, local, remote netip.Addr, addr string) {
	t.Helper()
	h, err := nsutil.Handle(netnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = "hand0", 1450
	vx := &netlink.Vxlan{LinkAttrs: attrs, VxlanId: 4096, Port: lab.VXLANPort, SrcAddr: net.IP(local.AsSlice()),
		Group: net.IP(remote.AsSlice()), VtepDevIndex: eth.Attrs().Index}
	if err := h.LinkAdd(vx); err != nil {
		t.Fatalf("hand-made vxlan in %s: %v", netnsPath, err)
	}
	a, err := netlink.ParseAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(vx, a); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(vx); err != nil {
		t.Fatal(err)
	}
}

// TestForeignVXLANLeftAlone: a host runs vxnet and, on the same port, a
// hand-made VXLAN tunnel (VNI 4096) to a third host that is no member.
// vxnet guards only its own VNIs: the tunnel carries a ping flow without a
// loss while the agent restarts and after it stops; a frame with a vxnet
// VNI from the same third host is still dropped (counted by the rule) and
// never reaches a container. h2 tells the cluster of the tunnel's device:
// a network with its VNI is refused on h1, naming h2 and the device.
func TestForeignVXLANLeftAlone(t *testing.T) {
	l := up(t, 2, 1, 1)
	h2, _ := l.Host("h2")
	third, err := l.AddSyntheticHost(99)
	if err != nil {
		t.Fatal(err)
	}
	handTunnel(t, h2.Netns, h2.Addr, third.Addr, "10.99.0.2/24")
	handTunnel(t, third.Netns, third.Addr, h2.Addr, "10.99.0.3/24")
	tunnelPeer := netip.MustParseAddr("10.99.0.2")
	pingUntil(t, third.Netns, tunnelPeer, 5*time.Second)
	// h2 reports the tunnel's device to the cluster; once h1 knows it, a
	// network with its VNI is refused there, naming h2 and the device.
	if err := waitCond(20*time.Second, func() error {
		s, err := client(l, "h1").Status()
		if err != nil {
			return err
		}
		for _, n := range s.Nodes {
			if n.Name == "h2" && slices.Contains(n.Foreign, model.ForeignVXLAN{Dev: "hand0", VNI: 4096, Port: lab.VXLANPort}) {
				return nil
			}
		}
		return fmt.Errorf("h1 does not know h2's hand0 yet: %+v", s.Nodes)
	}); err != nil {
		t.Fatal(err)
	}
	_, err = client(l, "h1").CreateNetwork(api.NetworkCreate{Name: "clash", Subnet: "10.98.0.0/24", VNI: 4096})
	wantStatusError(t, err, 409, "VNI 4096 is used by device hand0 on h2 (VXLAN port 4789, made outside vxnet)")
	flow := startPingFlow(third.Netns, tunnelPeer)
	progress := func(what string) {
		t.Helper()
		at := flow.sent.Load()
		if err := waitCond(10*time.Second, func() error {
			if n := flow.sent.Load() - at; n < 50 {
				return fmt.Errorf("the tunnel's flow sent %d pings %s", n, what)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	progress("with vxnet running")
	if err := l.KillAgent("h2", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent("h2"); err != nil {
		t.Fatal(err)
	}
	waitQuietPass(t, l, "h2") // the restarted agent has rebuilt what it wanted
	progress("after vxnet restarted")
	if err := l.KillAgent("h2", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	progress("with vxnet stopped")
	if sent, lost := flow.stop(); lost != 0 {
		t.Fatalf("the hand-made tunnel lost %d of %d pings while vxnet ran, restarted and stopped", lost, sent)
	}
	if err := l.StartAgent("h2"); err != nil {
		t.Fatal(err)
	}
	waitQuietPass(t, l, "h2")

	// The third host spoofs vxnet's VNI: dropped, counted, never delivered.
	victim := labtest.Container(t, l, "h2-n1-c1")
	mac, _ := model.ParseMAC(victim.MAC)
	frame := probe.VXLANFrame(l.Networks[0].VNI, mac, []byte{0x02, 0x66, 0, 0, 0, 1}, netip.MustParseAddr("198.19.1.99"), victim.IP, 9999, []byte("injected"))
	pc, err := probe.ListenUDP(victim.Netns, 9999)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	before := ingressDrops(t, h2.Netns, false)
	for range 5 {
		if err := probe.SendUDP(third.Netns, netip.AddrPortFrom(h2.Addr, lab.VXLANPort), frame); err != nil {
			t.Fatal(err)
		}
	}
	if err := waitCond(5*time.Second, func() error {
		if n := ingressDrops(t, h2.Netns, false) - before; n < 5 {
			return fmt.Errorf("vxnet's rule dropped %d of the 5 spoofed frames", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 64)
	if n, _, err := pc.ReadFrom(buf); err == nil {
		t.Fatalf("a spoofed frame with vxnet's VNI reached the container: %q", buf[:n])
	}
}
