package e2e

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/doctor"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/lab/labtest"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/probe"
	"github.com/vxnet/vxnet/internal/testutil"
	"github.com/vxnet/vxnet/internal/tunnel"
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
		dfAtMTU(t, enc1.Netns, enc2.IP, mtu)
	})

	t.Run("Trace", func(t *testing.T) {
		// vxnet trace follows the probe through both hosts' WireGuard
		// devices, where it is clear (on the underlay it is ciphertext).
		res, err := client(l, "h1").Trace(api.TraceRequest{Src: enc1.IP.String(), Dst: enc2.IP.String()})
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, h := range res.Hops {
			if h.Seen {
				seen[h.Host+" "+h.Point+" "+h.Dir] = true
			}
		}
		for _, want := range []string{"h1 tunnel request", "h2 tunnel request", "h2 tunnel reply", "h1 tunnel reply", "h2 destination veth request"} {
			if !seen[want] {
				t.Fatalf("trace %+v: not seen at %s", res, want)
			}
		}
		if !res.Replied {
			t.Fatalf("trace %+v: no reply", res)
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
		// The reply came through a session with the new key: h1's device
		// knows h2 by it and has shaken hands with it.
		if p := onlyPeer(t, h1); p.PublicKey.String() != publishedKey(t, l, "h1", "h2") || p.LastHandshakeTime.Before(started) {
			t.Fatalf("h1's peer is %s, last handshake %v: want h2's new key, shaken hands since the restart", p.PublicKey, p.LastHandshakeTime)
		}
	})

	t.Run("RotateNodeKey", func(t *testing.T) {
		// 'vxnet key rotate-node' on h1: no restart anywhere, h2 uses the
		// new key and the containers talk again within seconds.
		old := publishedKey(t, l, "h2", "h1")
		k, err := client(l, "h1").KeyOp(api.OpRotateNode, "")
		if err != nil {
			t.Fatal(err)
		}
		if k.NodeKey == "" || k.NodeKey == old {
			t.Fatalf("rotate-node answered %+v (old key %s)", k, old)
		}
		start := time.Now()
		if err := waitCond(10*time.Second, func() error {
			if got := publishedKey(t, l, "h2", "h1"); got != k.NodeKey {
				return fmt.Errorf("h2 knows h1's key as %s, not the new %s", got, k.NodeKey)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// The containers talk through a session with the new key: h2's
		// device knows h1 by it and has shaken hands with it (a session of
		// the old key may carry the first pings: wait for the new one).
		if err := waitCond(10*time.Second, func() error {
			if _, err := probe.Ping(enc1.Netns, enc2.IP, 56, false, 300*time.Millisecond); err != nil {
				return err
			}
			if p := onlyPeer(t, h2); p.PublicKey.String() != k.NodeKey || p.LastHandshakeTime.Before(start) {
				return fmt.Errorf("h2's peer is %s, last handshake %v: want h1's new key %s, shaken hands since the rotation", p.PublicKey, p.LastHandshakeTime, k.NodeKey)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		pingUntil(t, enc2.Netns, enc1.IP, time.Second)
		t.Logf("reached again through a session of the new key %s after h1's key was rotated", time.Since(start).Round(time.Millisecond))
	})

	t.Run("StolenKeyWithoutClusterKey", func(t *testing.T) {
		stolenKeyCannotShakeHands(t, l, enc1, enc2)
	})

	t.Run("ClusterKeyRotation", func(t *testing.T) {
		// The rotation as TestKeyRotation does it, under a ping flow: not
		// a reply lost, and the pairs' pre-shared keys follow the new
		// primary key on both hosts.
		old, err := os.ReadFile(l.KeyFile())
		if err != nil {
			t.Fatal(err)
		}
		newKey := "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="
		nk, _ := base64.StdEncoding.DecodeString(newKey)
		pingUntil(t, enc1.Netns, enc2.IP, 10*time.Second)
		flow := startPingFlow(enc1.Netns, enc2.IP)
		for _, op := range []string{"install", "use"} {
			for _, h := range l.Hosts {
				if _, err := client(l, h.Name).KeyOp(op, newKey); err != nil {
					t.Fatalf("%s on %s: %v", op, h.Name, err)
				}
			}
			progress(t, flow, "after key "+op)
		}
		for _, h := range l.Hosts {
			if _, err := client(l, h.Name).KeyOp("remove", strings.TrimSpace(string(old))); err != nil {
				t.Fatal(err)
			}
		}
		k1, k2 := publishedKey(t, l, "h2", "h1"), publishedKey(t, l, "h1", "h2")
		want := tunnel.PSK(nk, k1, k2)
		for _, h := range []lab.Host{h1, h2} {
			if err := waitCond(10*time.Second, func() error {
				if got := onlyPeer(t, h).PresharedKey; got != want {
					return fmt.Errorf("%s's peer has another pre-shared key than the new cluster key's", h.Name)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		progress(t, flow, "after the old key went")
		if sent, lost := flow.stop(); lost != 0 {
			t.Fatalf("lost %d of %d echo replies during the cluster key rotation", lost, sent)
		}
		// A new session shakes hands with the new pre-shared key: h2's
		// tunnel process ends, its agent starts another at once.
		if err := syscall.Kill(tunnelPID(t, h2), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		pingUntil(t, enc1.Netns, enc2.IP, 15*time.Second)
	})

	t.Run("TunnelPortBlocked", func(t *testing.T) {
		// The underlay switch drops WireGuard's port (a firewall on the
		// path; one on h2 would get vxnet's openings) while VXLAN and
		// gossip pass: h1's
		// health view has h2's overlay path ok and its encrypted path
		// unreachable, and doctor on h1 names the port and both
		// addresses. Unblocked, the path is ok again.
		encPath := func(want health.Verdict) error {
			h, err := client(l, "h1").Health(false)
			if err != nil {
				return err
			}
			var overlay, tun health.Verdict
			for _, p := range h.Peers {
				if p.Node == "h2" {
					overlay = p.State
				}
			}
			for _, p := range h.TunnelPeers {
				if p.Node == "h2" {
					tun = p.State
				}
			}
			if overlay != health.OK || tun != want {
				return fmt.Errorf("h1's view of h2: overlay %q, encrypted path %q; want ok and %q", overlay, tun, want)
			}
			return nil
		}
		if err := waitCond(20*time.Second, func() error { return encPath(health.OK) }); err != nil {
			t.Fatal(err)
		}
		sw := nsutil.Path(l.Switch)
		inNS(t, sw, "nft", "add table bridge e2eblock")
		inNS(t, sw, "nft", "add chain bridge e2eblock block { type filter hook forward priority 0; }")
		inNS(t, sw, "nft", "add rule bridge e2eblock block udp dport 51830 drop")
		if err := waitCond(20*time.Second, func() error { return encPath(health.Unreachable) }); err != nil {
			t.Fatal(err)
		}
		out, err := doctorIn(t, h1.Netns, "--socket", h1.Socket)
		f := out["overlay-paths"]
		for _, want := range []string{"the encrypted networks' path to h2 (198.18.0.2) is unreachable", "while the overlay in clear (VXLAN) reaches it"} {
			if err == nil || f.Level != doctor.Fail || !strings.Contains(f.Evidence, want) {
				t.Fatalf("doctor with WireGuard blocked: %v\n%+v\nwant the evidence to say %q", err, f, want)
			}
		}
		if want := "let UDP 51830 (WireGuard, this host 198.18.0.1) and UDP 51830 (WireGuard, h2 (198.18.0.2))"; !strings.Contains(f.Fix, want) {
			t.Fatalf("doctor's fix %q: want it to say %q", f.Fix, want)
		}
		inNS(t, sw, "nft", "delete table bridge e2eblock")
		if err := waitCond(30*time.Second, func() error { return encPath(health.OK) }); err != nil {
			t.Fatal(err)
		}
	})
}

// dfAtMTU: a packet of mtu bytes with DF crosses from ns to dst, one byte
// more is refused at the sender as too big.
func dfAtMTU(t *testing.T, ns string, dst netip.Addr, mtu int) {
	t.Helper()
	if _, err := probe.Ping(ns, dst, mtu-28, true, 2*time.Second); err != nil {
		t.Fatalf("a %d-byte packet with DF (the container MTU) did not cross: %v", mtu, err)
	}
	if r, err := probe.Ping(ns, dst, mtu-27, true, time.Second); err == nil || !r.TooBig {
		t.Fatalf("a packet one byte over the MTU with DF: err=%v tooBig=%v; want it refused as too big", err, r.TooBig)
	}
}

// onlyPeer is the one peer of host h's tunnel device, as WireGuard has it.
func onlyPeer(t *testing.T, h lab.Host) wgtypes.Peer {
	t.Helper()
	var peer wgtypes.Peer
	err := nsutil.Do(h.Netns, func() error {
		c, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer c.Close()
		d, err := c.Device(datapath.TunnelName(h.Name))
		if err != nil || len(d.Peers) != 1 {
			return fmt.Errorf("tunnel of %s: %v (%+v)", h.Name, err, d)
		}
		peer = d.Peers[0]
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return peer
}

// stolenKeyCannotShakeHands: a machine on the underlay that holds h1's
// private key (its state file, stolen) and knows h2's public key and port
// (its node record), but not the cluster key, sends handshake after
// handshake to h2 as h1: none completes, and its packets for h2's
// container go nowhere. With the pre-shared key derived from the cluster
// key, the same machine completes one at once: the cluster key is what
// kept it out.
func stolenKeyCannotShakeHands(t *testing.T, l *lab.Lab, enc1, enc2 lab.Container) {
	h1, _ := l.Host("h1")
	h2, _ := l.Host("h2")
	thief, err := l.AddSyntheticHost(99)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(h1.Dir, "state", tunnel.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	stolen, err := wgtypes.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	h2Key, err := wgtypes.ParseKey(publishedKey(t, l, "h1", "h2"))
	if err != nil {
		t.Fatal(err)
	}
	const dev = "vxwgthief"
	cmd := exec.Command("nsenter", "--net="+thief.Netns, testutil.Binary(t), "tunnel-device", "--dev", dev, "--mtu", "1440")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	configure := func(psk wgtypes.Key) {
		t.Helper()
		err := nsutil.Do(thief.Netns, func() error {
			var link netlink.Link
			if err := waitCond(5*time.Second, func() (err error) { link, err = netlink.LinkByName(dev); return err }); err != nil {
				return err
			}
			c, err := wgctrl.New()
			if err != nil {
				return err
			}
			defer c.Close()
			port, ka := model.DefaultTunnelPort, time.Second
			if err := c.ConfigureDevice(dev, wgtypes.Config{PrivateKey: &stolen, ListenPort: &port, ReplacePeers: true, Peers: []wgtypes.PeerConfig{{
				PublicKey: h2Key, PresharedKey: &psk, Endpoint: &net.UDPAddr{IP: h2.Addr.AsSlice(), Port: model.DefaultTunnelPort},
				PersistentKeepaliveInterval: &ka, AllowedIPs: []net.IPNet{{IP: enc2.IP.AsSlice(), Mask: net.CIDRMask(32, 32)}}}}}); err != nil {
				return err
			}
			if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: &net.IPNet{IP: enc1.IP.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(link); err != nil {
				return err
			}
			return netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: enc2.IP.AsSlice(), Mask: net.CIDRMask(32, 32)}})
		})
		if err != nil {
			t.Fatalf("the thief's device: %v", err)
		}
	}
	peer := func() wgtypes.Peer {
		t.Helper()
		var p wgtypes.Peer
		err := nsutil.Do(thief.Netns, func() error {
			c, err := wgctrl.New()
			if err != nil {
				return err
			}
			defer c.Close()
			d, err := c.Device(dev)
			if err != nil || len(d.Peers) != 1 {
				return fmt.Errorf("the thief's device: %v (%+v)", err, d)
			}
			p = d.Peers[0]
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	configure(wgtypes.Key{}) // no cluster key: no pre-shared key
	const initiation = 148   // bytes of a handshake initiation
	if err := waitCond(20*time.Second, func() error {
		if p := peer(); p.TransmitBytes < 3*initiation {
			return fmt.Errorf("the thief sent %d bytes, not three handshake initiations yet", p.TransmitBytes)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if p := peer(); !p.LastHandshakeTime.IsZero() || p.ReceiveBytes != 0 {
		t.Fatalf("a handshake without the cluster key completed: last %v, %d bytes received", p.LastHandshakeTime, p.ReceiveBytes)
	}
	if _, err := probe.Ping(thief.Netns, enc2.IP, 56, false, time.Second); err == nil {
		t.Fatal("the thief reached h2's container without the cluster key")
	}
	// Control: with the pair's pre-shared key, the same stolen key is let in.
	clusterKey, err := os.ReadFile(l.KeyFile())
	if err != nil {
		t.Fatal(err)
	}
	ck, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(clusterKey)))
	if err != nil {
		t.Fatal(err)
	}
	configure(wgtypes.Key(tunnel.PSK(ck, stolen.PublicKey().String(), h2Key.String())))
	if err := waitCond(10*time.Second, func() error {
		if p := peer(); p.LastHandshakeTime.IsZero() {
			return errors.New("no handshake with the cluster's pre-shared key either: the test proves nothing")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// That handshake took h1's place at h2 (a stolen key with the cluster
	// key is h1): once the thief is gone, h2's agent puts h1's address
	// back and h1 shakes hands again.
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	start := time.Now()
	pingUntil(t, enc1.Netns, enc2.IP, 40*time.Second)
	t.Logf("h1 and h2 talk again %s after the thief left", time.Since(start).Round(time.Second))
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
func tunnelPID(t *testing.T, h lab.Host) int { return stateInt(t, h, "tunnel.pid") }

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

// TestDockerEncrypted: dockerds with their defaults (FORWARD policy DROP,
// br_netfilter, their own NAT) on two hosts; Docker's own spelling, -o
// encrypted, makes an encrypted vxnet network on both; containers on
// the two hosts reach each other by address and by name, at the
// encrypted MTU, and the network's VNI never appears on the underlay.
// The docker CLI is the one on PATH (/usr/local/bin/docker, 28.x, when
// present).
func TestDockerEncrypted(t *testing.T) {
	requireDocker(t)
	l := up(t, 2, 1, 0)
	d1, d2 := startDocker(t, l, "h1"), startDocker(t, l, "h2")
	mustDocker(t, d1, "network", "create", "-d", "vxnet", "--ipam-driver", "vxnet", "--subnet", "172.28.0.0/24", "-o", "encrypted", "secretnet")
	waitDockerNetwork(t, d2, "secretnet", true)
	n, err := client(l, "h2").Network(dockerNetName(t, l, "172.28.0.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	if !n.Encrypted || n.EffectiveMTU != lab.UnderlayMTU-model.WireGuardOverheadIPv4 {
		t.Fatalf("h2 sees the network as %+v: want encrypted, MTU %d", n, lab.UnderlayMTU-model.WireGuardOverheadIPv4)
	}
	capt, err := probe.StartCaptureMarkers(nsutil.Path(l.Switch), lab.VXLANPort)
	if err != nil {
		t.Fatal(err)
	}
	defer capt.Stop()
	mustDocker(t, d1, "run", "-d", "--name", "c1", "--net", "secretnet", lab.DockerImage, "sleep", "600")
	mustDocker(t, d2, "run", "-d", "--name", "c2", "--net", "secretnet", lab.DockerImage, "sleep", "600")
	c2IP := mustDocker(t, d2, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "c2")
	pingFrom(t, d1, "c1", c2IP)
	pingFrom(t, d1, "c1", "c2")
	pingFrom(t, d2, "c2", "c1")
	if mtu := mustDocker(t, d1, "exec", "c1", "cat", "/sys/class/net/eth0/mtu"); mtu != fmt.Sprint(n.EffectiveMTU) {
		t.Fatalf("container MTU = %s, want %d", mtu, n.EffectiveMTU)
	}
	if _, err := probe.Ping(ctrNetns(t, d1, "c1"), netip.MustParseAddr(c2IP), n.EffectiveMTU-28, true, 2*time.Second); err != nil {
		t.Fatalf("a full-size packet with DF did not cross: %v", err)
	}
	if st := capt.Stats(); st.VNIs[n.VNI] != 0 {
		t.Fatalf("VXLAN with the encrypted network's VNI crossed the underlay %d times", st.VNIs[n.VNI])
	}
}

// TestEncryptedIPv6Underlay: hosts that reach each other over IPv6 alone
// carry an encrypted network (WireGuard over IPv6), at the underlay's MTU
// less WireGuard's 80 bytes.
func TestEncryptedIPv6Underlay(t *testing.T) {
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 1, PerHost: 1, Underlay6: true, Encrypted: []int{1}})
	a, b := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h2-n1-c1")
	pingUntil(t, a.Netns, b.IP, 10*time.Second)
	dfAtMTU(t, a.Netns, b.IP, lab.UnderlayMTU-model.WireGuardOverheadIPv6)
	s, err := client(l, "h1").Status()
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := l.Host("h2")
	if s.Tunnel == nil || len(s.Tunnel.Peers) != 1 || s.Tunnel.Peers[0].Endpoint.Addr() != h2.Addr {
		t.Fatalf("h1's tunnel %+v: want h2's IPv6 address as its peer's endpoint", s.Tunnel)
	}
}
