package e2e

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"

	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/lab/labtest"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/probe"
)

// TestEncryptedNetwork: net1 in clear and net2 encrypted on two hosts.
//   - On the underlay switch, a payload's marker crosses in clear on net1
//     (the control) and never on net2, and no VXLAN of net2's VNI appears.
//   - The container MTU leaves room for WireGuard: DF at the MTU passes, one
//     byte more is refused at the sender.
//   - A member's hand-made clear VXLAN with net2's VNI and a container's
//     MAC and IP is dropped (counted) and never delivered; the same frame
//     with net1's VNI is delivered.
//   - kill -9 of an agent under a ping flow every 10 ms: nothing lost, and
//     the restarted agent adopts the running tunnel (same process, no
//     kernel change).
//   - A host whose key is lost comes back with a new one: its containers
//     are reached again from the other host within 10 s, no restart there.
func TestEncryptedNetwork(t *testing.T) {
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 2, PerHost: 1, Encrypted: []int{2}})
	clear1, clear2 := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h2-n1-c1")
	enc1, enc2 := labtest.Container(t, l, "h1-n2-c1"), labtest.Container(t, l, "h2-n2-c1")
	net1, _ := l.Network(clear1.Network)
	net2, _ := l.Network(enc1.Network)
	h1, _ := l.Host("h1")
	h2, _ := l.Host("h2")
	pingUntil(t, enc1.Netns, enc2.IP, 10*time.Second)
	pingUntil(t, clear1.Netns, clear2.IP, 10*time.Second)

	t.Run("NothingInClear", func(t *testing.T) {
		markClear, markSecret := []byte("vxnet-marker-clear-7f3a"), []byte("vxnet-marker-secret-9c1d")
		capt, err := probe.StartCaptureMarkers(nsutil.Path(l.Switch), lab.VXLANPort, markClear, markSecret)
		if err != nil {
			t.Fatal(err)
		}
		deliver(t, clear1, clear2, markClear)
		deliver(t, enc1, enc2, markSecret)
		st := capt.Stop()
		if st.Markers[0] == 0 || st.VNIs[net1.VNI] == 0 {
			t.Fatalf("the capture saw net1's marker %d times and its VNI %d times: it does not see the underlay", st.Markers[0], st.VNIs[net1.VNI])
		}
		if st.Markers[1] != 0 || st.VNIs[net2.VNI] != 0 {
			t.Fatalf("the encrypted network crossed in clear: its marker %d times, VXLAN with its VNI %d %d times", st.Markers[1], net2.VNI, st.VNIs[net2.VNI])
		}
	})

	t.Run("MTU", func(t *testing.T) {
		mtu := lab.UnderlayMTU - model.WireGuardOverheadIPv4
		n, err := client(l, "h1").Network(net2.Name)
		if err != nil {
			t.Fatal(err)
		}
		if n.EffectiveMTU != mtu || !n.Encrypted {
			t.Fatalf("net2 on h1: MTU %d encrypted %v, want %d (the underlay's less WireGuard's overhead) and encrypted", n.EffectiveMTU, n.Encrypted, mtu)
		}
		if _, err := probe.Ping(enc1.Netns, enc2.IP, mtu-28, true, 2*time.Second); err != nil {
			t.Fatalf("a %d-byte packet with DF (the container MTU) did not cross: %v", mtu, err)
		}
		r, err := probe.Ping(enc1.Netns, enc2.IP, mtu-27, true, time.Second)
		if err == nil || !r.TooBig {
			t.Fatalf("a packet one byte over the MTU with DF: err=%v tooBig=%v; want it refused as too big", err, r.TooBig)
		}
	})

	t.Run("ClearFramesDropped", func(t *testing.T) {
		inject := func(vni uint32, to lab.Container, port uint16) {
			t.Helper()
			mac, _ := model.ParseMAC(to.MAC)
			frame := probe.VXLANFrame(vni, mac, []byte{0x02, 0x66, 0, 0, 0, 1}, enc1.IP, to.IP, port, []byte("injected in clear"))
			for range 5 {
				if err := probe.SendUDP(h1.Netns, netip.AddrPortFrom(h2.Addr, lab.VXLANPort), frame); err != nil {
					t.Fatal(err)
				}
			}
		}
		encL, err := probe.ListenUDP(enc2.Netns, 9999)
		if err != nil {
			t.Fatal(err)
		}
		defer encL.Close()
		before := ruleCounter(t, h2.Netns, "vxnet-clear:")
		inject(net2.VNI, enc2, 9999)
		if err := waitCond(5*time.Second, func() error {
			if n := ruleCounter(t, h2.Netns, "vxnet-clear:") - before; n < 5 {
				return fmt.Errorf("the clear-frame rule dropped %d of 5", n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		_ = encL.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		buf := make([]byte, 64)
		if n, _, err := encL.ReadFrom(buf); err == nil {
			t.Fatalf("a clear frame with the encrypted network's VNI reached the container: %q", buf[:n])
		}
		// Control: the same frame on net1 from the same member arrives.
		clearL, err := probe.ListenUDP(clear2.Netns, 9998)
		if err != nil {
			t.Fatal(err)
		}
		defer clearL.Close()
		inject(net1.VNI, clear2, 9998)
		_ = clearL.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, _, err := clearL.ReadFrom(buf); err != nil {
			t.Fatalf("the control frame on net1 was not delivered: %v", err)
		}
	})

	t.Run("Kill9", func(t *testing.T) {
		pid := tunnelPID(t, h1)
		flow := startPingFlow(enc1.Netns, enc2.IP)
		progress(t, flow, "before the kill")
		if err := l.KillAgent("h1", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		progress(t, flow, "with h1's agent dead")
		if err := l.StartAgent("h1"); err != nil {
			t.Fatal(err)
		}
		waitQuietPass(t, l, "h1")
		progress(t, flow, "after h1's agent restarted")
		if sent, lost := flow.stop(); lost != 0 {
			t.Fatalf("lost %d of %d echo replies across kill -9 and restart of h1's agent", lost, sent)
		}
		if got := tunnelPID(t, h1); got != pid {
			t.Fatalf("the tunnel device's process changed from %d to %d: it was restarted, not adopted", pid, got)
		}
		s, err := client(l, "h1").Status()
		if err != nil {
			t.Fatal(err)
		}
		if s.KernelOps != 0 || s.SyncError != "" {
			t.Fatalf("the restarted agent changed the kernel %d times (err %q): the tunnel was not adopted as it was", s.KernelOps, s.SyncError)
		}
		if s.Tunnel == nil || !s.Tunnel.Userspace || len(s.Tunnel.Peers) != 1 || s.Tunnel.Peers[0].LastHandshake.IsZero() {
			t.Fatalf("h1's status shows the tunnel %+v, want a userspace device with one peer that shook hands", s.Tunnel)
		}
	})

	t.Run("NewKey", func(t *testing.T) {
		old := publishedKey(t, l, "h1", "h2")
		if err := l.KillAgent("h2", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(h2.Dir, "state", "tunnel.key")); err != nil {
			t.Fatal(err)
		}
		if err := l.StartAgent("h2"); err != nil {
			t.Fatal(err)
		}
		started := time.Now()
		// Once h1 knows the new key (the old one has been replaced in
		// h2's device by then), the containers must be reached again.
		if err := waitCond(10*time.Second, func() error {
			if k := publishedKey(t, l, "h1", "h2"); k == old || k == "" {
				return fmt.Errorf("h1 knows h2's key as %q (was %q): no new key", k, old)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		pingUntil(t, enc1.Netns, enc2.IP, 10*time.Second-time.Since(started))
		t.Logf("h2's containers reached again %s after its agent restarted with a new key", time.Since(started).Round(time.Millisecond))
	})
}

// deliver sends UDP payloads holding marker from one container to another
// until one arrives.
func deliver(t *testing.T, from, to lab.Container, marker []byte) {
	t.Helper()
	pc, err := probe.ListenUDP(to.Netns, 7777)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	payload := append(append([]byte("payload "), marker...), " end"...)
	buf := make([]byte, 256)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if err := probe.SendUDP(from.Netns, netip.AddrPortFrom(to.IP, 7777), payload); err != nil {
			t.Fatal(err)
		}
		_ = pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, _, err := pc.ReadFrom(buf); err == nil && bytes.Contains(buf[:n], marker) {
			return
		}
	}
	t.Fatalf("no payload from %s reached %s", from.Name, to.Name)
}

// progress waits until a ping flow has sent 50 more pings.
func progress(t *testing.T, f *pingFlow, what string) {
	t.Helper()
	at := f.sent.Load()
	if err := waitCond(10*time.Second, func() error {
		if n := f.sent.Load() - at; n < 50 {
			return fmt.Errorf("the flow sent %d pings %s", n, what)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// tunnelPID reads the process ID of a host's userspace tunnel device.
func tunnelPID(t *testing.T, h lab.Host) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.Dir, "state", "tunnel.pid"))
	if err != nil {
		t.Fatalf("the tunnel device's pid file of %s: %v", h.Name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// publishedKey is node's tunnel key as host's agent knows it.
func publishedKey(t *testing.T, l *lab.Lab, host, node string) string {
	t.Helper()
	s, err := client(l, host).Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range s.Nodes {
		if n.Name == node && n.Tunnel != nil {
			return n.Tunnel.Key
		}
	}
	return ""
}

// ruleCounter reads the packet counter of the rule tagged with prefix in
// vxnet's input chain in the host namespace at netnsPath.
func ruleCounter(t *testing.T, netnsPath, prefix string) uint64 {
	t.Helper()
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := c.ListTableOfFamily(linux.FirewallTable, nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("vxnet's table: %v", err)
	}
	ch, err := c.ListChain(tbl, "input")
	if err != nil {
		t.Fatalf("vxnet's input chain: %v", err)
	}
	rules, err := c.GetRules(tbl, ch)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if !strings.HasPrefix(string(r.UserData), prefix) {
			continue
		}
		for _, e := range r.Exprs {
			if cnt, ok := e.(*expr.Counter); ok {
				return cnt.Packets
			}
		}
	}
	t.Fatalf("no %s rule with a counter in vxnet's input chain", prefix)
	return 0
}
