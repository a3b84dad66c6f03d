package lab_test

import (
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/lab/labtest"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/probe"
	"github.com/vxnet/vxnet/internal/testutil"
)

func labName() string { return testutil.LabName("t") }

func up(t *testing.T, cfg lab.Config) *lab.Lab {
	t.Helper()
	testutil.RequireRoot(t)
	if cfg.Name == "" {
		cfg.Name = labName()
	}
	// VXNET_E2E_DATAPATH=bpf programs the fast path beside the bridges
	// (scripts/test.sh runs these tests on both datapaths).
	if cfg.Datapath == "" && os.Getenv("VXNET_E2E_DATAPATH") == "bpf" {
		cfg.Datapath = "bpf"
	}
	l, err := lab.Up(cfg)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if err := lab.Down(cfg.Name); err != nil {
			t.Errorf("lab down: %v", err)
		}
		if left, _ := nsutil.List(lab.Prefix(cfg.Name)); len(left) > 0 {
			t.Errorf("lab down left namespaces: %v", left)
		}
	})
	return l
}

func handle(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	h, err := nsutil.Handle(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func TestLabDatapath(t *testing.T) {
	l := up(t, lab.Config{Hosts: 3, Networks: 2, PerHost: 1})
	sw := l.Switch
	capture, err := probe.StartCapture(nsutil.Path(sw), lab.VXLANPort)
	if err != nil {
		t.Fatal(err)
	}
	m := l.Matrix(time.Second)
	stats := capture.Stop()
	if !lab.MatrixOK(m) {
		var sb strings.Builder
		l.PrintMatrix(&sb, m)
		t.Fatalf("reachability matrix:\n%s", sb.String())
	}
	if stats.VXLAN == 0 {
		t.Fatalf("no VXLAN frame seen on the underlay while containers pinged across hosts")
	}
	if stats.InnerARP != 0 {
		t.Fatalf("%d ARP frames crossed the tunnel; ARP must be answered locally", stats.InnerARP)
	}
	// On the fast path every host runs the program on its vxlan devices,
	// container ports and underlay (a dataplane without it sees them as
	// another's).
	for _, h := range l.Hosts {
		obs, err := l.Observe(h.Name)
		if err != nil {
			t.Fatal(err)
		}
		hooks := 0
		if obs.FastPath != nil {
			hooks = len(obs.FastPath.Hooks)
		}
		want := 0
		if l.Datapath == "bpf" {
			want = 2*len(l.Networks) + 1 // per network its vxlan device and one container; the underlay
		}
		if hooks != want {
			t.Fatalf("%s: %d devices run the fast path, want %d (datapath %q)", h.Name, hooks, want, l.Datapath)
		}
	}

	a, b := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h2-n1-c1")
	t.Run("FullSizeWithDF", func(t *testing.T) {
		mtu := model.DeriveMTU(lab.UnderlayMTU, false)
		if _, err := probe.Ping(a.Netns, b.IP, mtu-28, true, 2*time.Second); err != nil {
			t.Fatalf("a %d-byte packet with DF (the container MTU) did not cross: %v", mtu, err)
		}
		r, err := probe.Ping(a.Netns, b.IP, mtu-27, true, time.Second)
		if err == nil || !r.TooBig {
			t.Fatalf("a packet one byte over the MTU with DF: err=%v tooBig=%v; want it refused as too big", err, r.TooBig)
		}
	})
	t.Run("AnycastGateway", func(t *testing.T) {
		for _, c := range l.Containers {
			n, _ := l.Network(c.Network)
			if _, err := probe.Ping(c.Netns, n.Gateway, 56, false, time.Second); err != nil {
				t.Errorf("%s cannot reach its gateway %s: %v", c.Name, n.Gateway, err)
				continue
			}
			neighs, err := handle(t, c.Netns).NeighList(0, netlink.FAMILY_V4)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, nb := range neighs {
				if nb.IP.Equal(n.Gateway.AsSlice()) {
					found = true
					if got, want := nb.HardwareAddr.String(), model.GatewayMAC(n.VNI).String(); got != want {
						t.Errorf("%s sees gateway MAC %s, want %s", c.Name, got, want)
					}
				}
			}
			if !found {
				t.Errorf("%s has no neighbour entry for its gateway", c.Name)
			}
		}
		for _, n := range l.Networks {
			seen := map[string]bool{}
			for _, h := range l.Hosts {
				obs, err := l.Observe(h.Name)
				if err != nil {
					t.Fatal(err)
				}
				seen[obs.Networks[n.VNI].GatewayMAC+" "+obs.Networks[n.VNI].Gateway.String()] = true
			}
			if len(seen) != 1 {
				t.Errorf("network %s: gateway differs between hosts: %v", n.Name, seen)
			}
		}
	})
	t.Run("NoBroadcastWithoutFlood", func(t *testing.T) {
		pc, err := probe.ListenUDP(b.Netns, 9999)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		n, _ := l.Network(a.Network)
		if err := probe.SendUDP(a.Netns, netip.AddrPortFrom(model.LastAddr(n.Subnet), 9999), []byte("hello")); err != nil {
			t.Fatal(err)
		}
		_ = pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		buf := make([]byte, 64)
		if _, _, err := pc.ReadFrom(buf); err == nil {
			t.Fatal("a broadcast crossed hosts although flooding is off")
		}
	})
	t.Run("IsolationWithForwarding", func(t *testing.T) {
		// Hosts forward IP; only vxnet's rule keeps net2 out of net1.
		other := labtest.Container(t, l, "h1-n2-c1")
		if _, err := probe.Ping(other.Netns, b.IP, 56, false, 500*time.Millisecond); err == nil {
			t.Fatal("a container of net2 reached net1 through the host")
		}
		dp, err := linux.Open(l.Hosts[0].Netns, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer dp.Close()
		if err := dp.RemoveFirewall(); err != nil {
			t.Fatal(err)
		}
		if _, err := probe.Ping(other.Netns, a.IP, 56, false, time.Second); err != nil {
			t.Fatalf("without the isolation rule routing between networks should work (proving the rule matters): %v", err)
		}
		ops, err := l.SyncHost(l.Hosts[0])
		if err != nil || len(ops) != 1 || ops[0].Kind.String() != "ensure-firewall" {
			t.Fatalf("resync: %v, %v; want the isolation rule restored", ops, err)
		}
		if _, err := probe.Ping(other.Netns, a.IP, 56, false, 500*time.Millisecond); err == nil {
			t.Fatal("isolation not restored")
		}
	})
	t.Run("ReapplyIsNoop", func(t *testing.T) {
		for _, h := range l.Hosts {
			ops, err := l.SyncHost(h)
			if err != nil || len(ops) != 0 {
				t.Fatalf("host %s: second pass ran %v (err %v), want nothing", h.Name, ops, err)
			}
		}
	})
	t.Run("StaleStateRemoved", func(t *testing.T) {
		h := l.Hosts[0]
		hh := handle(t, h.Netns)
		vx, err := hh.LinkByName(datapath.VxlanName(l.Networks[0].VNI))
		if err != nil {
			t.Fatal(err)
		}
		mac, _ := model.ParseMAC("02:ee:00:00:00:01")
		if err := hh.NeighAppend(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: 7 /* AF_BRIDGE */, Flags: netlink.NTF_SELF,
			State: netlink.NUD_PERMANENT, HardwareAddr: mac, IP: []byte{198, 18, 0, 77}}); err != nil {
			t.Fatal(err)
		}
		if err := hh.NeighSet(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			HardwareAddr: mac, IP: []byte{198, 19, 1, 200}}); err != nil {
			t.Fatal(err)
		}
		// A leftover network of a crashed run (owned by vxnet) and a
		// bridge vxnet did not create.
		dp, err := linux.Open(h.Netns, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer dp.Close()
		left := datapath.NetworkSpec{Name: "gone", VNI: 999, Port: 4789, Local: h.Addr, MTU: 1450, GatewayMAC: model.GatewayMAC(999).String(),
			Gateway: netip.MustParsePrefix("198.19.99.1/24")}
		if err := dp.EnsureNetwork(left); err != nil {
			t.Fatal(err)
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = datapath.BridgeName(998)
		if err := hh.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			t.Fatal(err)
		}
		ops, err := l.SyncHost(h)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, op := range ops {
			got = append(got, op.Kind.String())
		}
		if want := "del-neigh,del-fdb,delete-network"; strings.Join(got, ",") != want {
			t.Fatalf("ops = %v, want %s", ops, want)
		}
		if _, err := hh.LinkByName(datapath.BridgeName(998)); err != nil {
			t.Fatalf("the bridge vxnet did not create was touched: %v", err)
		}
		if ops, _ := l.SyncHost(h); len(ops) != 0 {
			t.Fatalf("not converged: %v", ops)
		}
		if _, err := probe.Ping(a.Netns, b.IP, 56, false, time.Second); err != nil {
			t.Fatalf("traffic broken after cleanup: %v", err)
		}
	})
}

func TestLabFlood(t *testing.T) {
	l := up(t, lab.Config{Hosts: 2, Networks: 1, PerHost: 1, Flood: true})
	a, b := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h2-n1-c1")
	pc, err := probe.ListenUDP(b.Netns, 9999)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	n := l.Networks[0]
	if err := probe.SendUDP(a.Netns, netip.AddrPortFrom(model.LastAddr(n.Subnet), 9999), []byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	k, _, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:k]) != "hello" {
		t.Fatalf("broadcast with flooding on: got %q, %v", buf[:k], err)
	}
	if !lab.MatrixOK(l.Matrix(time.Second)) {
		t.Fatal("matrix failed with flooding on")
	}
}

func TestDownAfterCrash(t *testing.T) {
	testutil.RequireRoot(t)
	name := labName()
	l, err := lab.Up(lab.Config{Name: name, Hosts: 2, Networks: 1, PerHost: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lab.Down(name) }) // whatever the test below leaves
	// A process left running in a host namespace, and no state file: as if
	// 'lab up' had been killed.
	var cmd *exec.Cmd
	if err := nsutil.Do(l.Hosts[0].Netns, func() error {
		cmd = exec.Command("sleep", "60")
		return cmd.Start()
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	if err := os.Remove(lab.StateDir + "/" + name + ".json"); err != nil {
		t.Fatal(err)
	}
	if err := lab.Down(name); err != nil {
		t.Fatalf("down: %v", err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("a process in a lab namespace survived lab down")
	}
	if left, _ := nsutil.List(lab.Prefix(name)); len(left) != 0 {
		t.Fatalf("namespaces left: %v", left)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  lab.Config
		want string
	}{
		{lab.Config{Name: "Bad-Name", Hosts: 1, Networks: 1}, `invalid lab name "Bad-Name"`},
		{lab.Config{Name: "ok", Hosts: 0, Networks: 1}, "invalid host count 0"},
		{lab.Config{Name: "ok", Hosts: 2, Networks: 0}, "invalid network count 0"},
		{lab.Config{Name: "ok", Hosts: 100, Networks: 1, PerHost: 3}, "invalid containers per host 3"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	if err := (lab.Config{Name: "ok", Hosts: 3, Networks: 2, PerHost: 1}).Validate(); err != nil {
		t.Errorf("valid config refused: %v", err)
	}
}

// TestRecipe: the hand-made baseline carries traffic next to vxnet, and
// vxnet leaves its unmarked devices alone.
func TestRecipe(t *testing.T) {
	l := up(t, lab.Config{Hosts: 2, Networks: 1, PerHost: 1})
	r, err := l.BuildRecipe()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := probe.Ping(r.Containers[0].Netns, r.Containers[1].IP, 1450-28, true, 3*time.Second); err != nil {
		t.Fatalf("recipe path: %v", err)
	}
	for _, h := range l.Hosts {
		if ops, err := l.SyncHost(h); err != nil || len(ops) != 0 {
			t.Fatalf("vxnet wants to change %s after the recipe was added: %v %v", h.Name, ops, err)
		}
	}
	if !lab.MatrixOK(l.Matrix(time.Second)) {
		t.Fatal("vxnet matrix broken by the recipe")
	}
	// The bare VXLAN path (the benchmark's ceiling for VXLAN datapaths) too: full-size packets
	// cross it, and vxnet leaves it alone.
	b, err := l.BuildBareVXLAN()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := probe.Ping(b.Netns[0], b.IP[1], 1450-28, true, 3*time.Second); err != nil {
		t.Fatalf("bare vxlan path: %v", err)
	}
	for _, h := range l.Hosts {
		if ops, err := l.SyncHost(h); err != nil || len(ops) != 0 {
			t.Fatalf("vxnet wants to change %s after the bare path was added: %v %v", h.Name, ops, err)
		}
	}
}

// TestRogueVXLANDropped: a namespace on the underlay that is not a member
// crafts VXLAN frames with the right VNI, inner MAC and IP for a container;
// nothing reaches it. Without vxnet's firewall the same frame does (so the
// test can tell), and members' traffic still flows.
func TestRogueVXLANDropped(t *testing.T) {
	l := up(t, lab.Config{Hosts: 2, Networks: 1, PerHost: 1})
	victim := labtest.Container(t, l, "h2-n1-c1")
	h2, _ := l.Host("h2")
	nw := l.Networks[0]
	rogue, err := l.AddSyntheticHost(99) // on the switch, not a member
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := model.ParseMAC(victim.MAC)
	frame := probe.VXLANFrame(nw.VNI, mac, []byte{0x02, 0x66, 0, 0, 0, 1}, netip.MustParseAddr("198.19.1.99"), victim.IP, 9999, []byte("injected"))
	inject := func() (string, bool) {
		t.Helper()
		pc, err := probe.ListenUDP(victim.Netns, 9999)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		for i := 0; i < 3; i++ {
			if err := probe.SendUDP(rogue.Netns, netip.AddrPortFrom(h2.Addr, lab.VXLANPort), frame); err != nil {
				t.Fatal(err)
			}
		}
		_ = pc.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
		buf := make([]byte, 64)
		n, _, err := pc.ReadFrom(buf)
		return string(buf[:max(n, 0)]), err == nil
	}
	if got, ok := inject(); ok {
		t.Fatalf("a frame from a non-member reached the container: %q", got)
	}
	if !lab.MatrixOK(l.Matrix(time.Second)) {
		t.Fatal("members' traffic blocked")
	}
	dp, err := linux.Open(h2.Netns, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	if err := dp.RemoveFirewall(); err != nil {
		t.Fatal(err)
	}
	if got, ok := inject(); !ok || got != "injected" {
		t.Fatalf("without the firewall the crafted frame should arrive (else this test proves nothing): %q %v", got, ok)
	}
	if _, err := l.SyncHost(h2); err != nil {
		t.Fatal(err)
	}
	if got, ok := inject(); ok {
		t.Fatalf("firewall not restored by the next pass: %q arrived", got)
	}
}
