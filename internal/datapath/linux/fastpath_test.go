package linux_test

import (
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/probe"
	"github.com/vxnet/vxnet/internal/reconcile"
	"github.com/vxnet/vxnet/internal/testutil"
)

// fastHost is one host of the fast path test: its namespace and dataplane.
type fastHost struct {
	name, ns, path string
	addr           netip.Addr
	dp             *linux.Dataplane
}

func nsRun(t *testing.T, ns string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	return string(out), err
}

func handleIn(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// bridgeDropIP makes a host's bridges drop every IPv4 frame they forward
// (nft bridge family, forward hook): only the fast path carries IP then.
func bridgeDropIP(t *testing.T, ns string, on bool) {
	t.Helper()
	script := "table bridge vxtest { chain dropip { type filter hook forward priority 0; ether type ip drop; }; }"
	if !on {
		script = "delete table bridge vxtest"
	}
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v %s", ns, err, out)
	}
}

// TestFastPathCarriesUnicast runs two hosts (namespaces joined by an
// underlay veth) with two networks and checks, on the kernel, that the
// fast path carries unicast within a network where the bridge forwards no
// IP at all, that a frame for a MAC of another network reaches nothing,
// that programs taken off by hand come back with the next pass without a
// lost packet, and that the programs outlive the dataplane that loaded them.
func TestFastPathCarriesUnicast(t *testing.T) {
	testutil.RequireRoot(t)
	web := model.Network{Name: "web", VNI: 4301, Subnet: netip.MustParsePrefix("198.19.31.0/24")}
	db := model.Network{Name: "db", VNI: 4302, Subnet: netip.MustParsePrefix("198.19.32.0/24")}
	web.Normalize()
	db.Normalize()
	hosts := []*fastHost{{name: "h1", addr: netip.MustParseAddr("198.18.31.1")}, {name: "h2", addr: netip.MustParseAddr("198.18.31.2")}}
	for _, h := range hosts {
		h.ns, h.path = testutil.Netns(t)
	}
	// The underlay.
	h1 := handleIn(t, hosts[0].path)
	la := netlink.NewLinkAttrs()
	la.Name = "u0"
	peerNS, _ := netns.GetFromPath(hosts[1].path)
	defer peerNS.Close()
	if err := h1.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "u0", PeerNamespace: netlink.NsFd(peerNS)}); err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		nh := handleIn(t, h.path)
		l, err := nh.LinkByName("u0")
		if err != nil {
			t.Fatal(err)
		}
		if err := nh.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: h.addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
		if err := nh.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		if h.dp, err = linux.Open(h.path, nil); err != nil {
			t.Fatal(err)
		}
		h.dp.SetHostFirewallMaxAge(0)
		h.dp.SetFastPathMaxAge(0)
	}
	defer func() {
		for _, h := range hosts {
			h.dp.Close()
		}
	}()
	type ctr struct {
		ep   model.Endpoint
		ns   string
		path string
	}
	mk := func(id string, n model.Network, node, mac string, host byte) *ctr {
		c := &ctr{ep: model.Endpoint{ID: id, Network: n.Name, Node: node, MAC: mac, IP: n.Gateway.Next().Next()}}
		if host == 2 {
			c.ep.IP = c.ep.IP.Next()
		}
		c.ns, c.path = testutil.Netns(t)
		return c
	}
	c1 := mk("c1", web, "h1", "02:31:00:00:00:01", 1)
	c2 := mk("c2", web, "h2", "02:31:00:00:00:02", 2)
	d2 := mk("d2", db, "h2", "02:31:00:00:00:03", 2)
	ctrs := []*ctr{c1, c2, d2}
	nodes := []model.Node{{Name: "h1", Addr: hosts[0].addr}, {Name: "h2", Addr: hosts[1].addr}}
	unwrap := true
	// pass reconciles both hosts and returns the operations it ran.
	pass := func(fast bool) int {
		t.Helper()
		n := 0
		for _, h := range hosts {
			in := reconcile.Input{Node: h.name, Local: h.addr, Port: 4789, Underlay: "u0", UnderlayMTU: 1500, Networks: []model.Network{web, db},
				Nodes: nodes, FastPath: fast, Unwrap: unwrap}
			for _, c := range ctrs {
				in.Endpoints = append(in.Endpoints, c.ep)
			}
			want, _ := reconcile.Desired(in)
			ops, err := reconcile.Sync(h.dp, want)
			if err != nil {
				t.Fatalf("pass on %s: %v", h.name, err)
			}
			n += len(ops)
		}
		return n
	}
	pass(false)
	for _, c := range ctrs {
		h, n := hosts[0], web
		if c.ep.Node == "h2" {
			h = hosts[1]
		}
		if c.ep.Network == "db" {
			n = db
		}
		mtu, _ := model.NetworkMTU(model.Network{}, 1500, false)
		if _, err := h.dp.Attach(datapath.EndpointSpec{ID: c.ep.ID, VNI: n.VNI, Netns: c.path, IfName: "eth0", MAC: c.ep.MAC,
			IP: netip.PrefixFrom(c.ep.IP, 24), Gateway: n.Gateway, MTU: mtu}); err != nil {
			t.Fatal(err)
		}
	}
	pass(false)
	// ping sends count echoes (size bytes, DF) one after another and
	// returns how many went unanswered.
	ping := func(from *ctr, to netip.Addr, count, size int, gap time.Duration) (lost int) {
		for range count {
			if _, err := probe.Ping(from.path, to, size, true, time.Second); err != nil {
				lost++
			}
			time.Sleep(gap)
		}
		return lost
	}
	if lost := ping(c1, c2.ep.IP, 2, 56, 0); lost > 0 {
		t.Fatalf("bridge datapath: c1 cannot reach c2 (%d of 2 lost)", lost)
	}
	// With the bridges forwarding no IP, only the fast path can carry it:
	// first prove that the bridge path stops.
	for _, h := range hosts {
		bridgeDropIP(t, h.ns, true)
	}
	if lost := ping(c1, c2.ep.IP, 2, 56, 0); lost != 2 {
		t.Fatalf("the bridges drop IP and the bridge datapath still carried %d of 2 echoes", 2-lost)
	}
	for _, h := range hosts {
		if err := h.dp.EnableFastPath(); err != nil {
			t.Fatal(err)
		}
	}
	pass(true)
	if n := pass(true); n != 0 {
		t.Fatalf("a second pass with the fast path made %d changes, want 0", n)
	}
	// The program wraps the frames itself (the entries carry the VTEPs)
	// and unwraps them at the underlay: the echoes and their replies
	// cross, and neither host's vxlan device carries a packet meanwhile.
	vxCarried := func() (n uint64) {
		t.Helper()
		for _, h := range hosts {
			l, err := handleIn(t, h.path).LinkByName(datapath.VxlanName(web.VNI))
			if err != nil {
				t.Fatal(err)
			}
			n += l.Attrs().Statistics.TxPackets + l.Attrs().Statistics.RxPackets
		}
		return n
	}
	for _, h := range hosts {
		inTestNS(t, h.dp.Namespace(), func() {
			if ids, _ := tcxIngress(t, "u0"); len(ids) != 1 {
				t.Errorf("%s: programs %v on the underlay, want vxnet's", h.name, ids)
			}
		})
	}
	carriedBefore := vxCarried()
	if lost := ping(c1, c2.ep.IP, 3, 56, 0); lost > 0 {
		t.Fatalf("fast path: c1 cannot reach c2 past bridges that drop IP (%d of 3 lost)", lost)
	}
	if n := vxCarried() - carriedBefore; n != 0 {
		t.Fatalf("the vxlan devices carried %d packets while the program should have wrapped and unwrapped every echo and reply", n)
	}
	// h2's VTEP behind a gateway (h2's second address): the next pass
	// gives h1's entries that next hop, whose neighbour the first frame
	// resolves, and the echoes still cross without the vxlan devices.
	if out, err := nsRun(t, hosts[1].ns, "ip", "addr", "add", "198.18.31.3/24", "dev", "u0"); err != nil {
		t.Fatal(err, out)
	}
	if out, err := nsRun(t, hosts[0].ns, "ip", "route", "add", "198.18.31.2/32", "via", "198.18.31.3", "dev", "u0"); err != nil {
		t.Fatal(err, out)
	}
	if n := pass(true); n == 0 {
		t.Fatal("a pass after h1's route to h2 moved to a gateway changed nothing")
	}
	carriedBefore = vxCarried()
	if lost := ping(c1, c2.ep.IP, 3, 56, 0); lost > 0 {
		t.Fatalf("fast path through a gateway: %d of 3 lost", lost)
	}
	if n := vxCarried() - carriedBefore; n != 0 {
		t.Fatalf("through a gateway the vxlan devices carried %d packets", n)
	}
	if out, _ := nsRun(t, hosts[0].ns, "ip", "neigh", "show", "198.18.31.3", "dev", "u0"); !strings.Contains(out, "lladdr") {
		t.Fatalf("h1 never resolved the gateway the frames should have gone to: %q", out)
	}
	// Frames to a MAC that is not h2's (the gateway's neighbour entry
	// made wrong) reach h2's underlay, which the veth delivers whatever
	// the MAC; the program unwraps only what the host's stack would take
	// (PACKET_HOST), so nothing reaches c2.
	if out, err := nsRun(t, hosts[0].ns, "ip", "neigh", "replace", "198.18.31.3", "lladdr", "02:31:00:00:00:99", "dev", "u0", "nud", "permanent"); err != nil {
		t.Fatal(err, out)
	}
	// c2 counts the echoes from c1 (nft, netdev ingress).
	echoes := exec.Command("ip", "netns", "exec", c2.ns, "nft", "-f", "-")
	echoes.Stdin = strings.NewReader("table netdev vxecho { chain in { type filter hook ingress device eth0 priority 0; ether saddr " + c1.ep.MAC + " icmp type echo-request counter; }; }")
	if out, err := echoes.CombinedOutput(); err != nil {
		t.Fatalf("nft in c2: %v %s", err, out)
	}
	l, err := handleIn(t, hosts[1].path).LinkByName("u0")
	if err != nil {
		t.Fatal(err)
	}
	underBefore := l.Attrs().Statistics.RxPackets
	if lost := ping(c1, c2.ep.IP, 3, 56, 0); lost != 3 {
		t.Fatalf("echoes sent to a MAC that is not h2's were answered (%d of 3)", 3-lost)
	}
	if l, err = handleIn(t, hosts[1].path).LinkByName("u0"); err != nil || l.Attrs().Statistics.RxPackets-underBefore < 3 {
		t.Fatalf("h2's underlay did not receive the 3 echoes: %v", err)
	}
	if out, err := nsRun(t, c2.ns, "nft", "list", "table", "netdev", "vxecho"); err != nil || !strings.Contains(out, "counter packets 0 ") {
		t.Fatalf("c2 received echoes sent to another host's MAC: %v\n%s", err, out)
	}
	if out, err := nsRun(t, hosts[0].ns, "ip", "route", "del", "198.18.31.2/32"); err != nil {
		t.Fatal(err, out)
	}
	pass(true)
	// A host with IPsec policies: what the program would wrap would pass
	// them by, so the next pass hands h1's frames to its vxlan device
	// again (which the host's stack, and the policies, see).
	if out, err := nsRun(t, hosts[0].ns, "ip", "xfrm", "policy", "add", "src", "198.18.31.1", "dst", "198.18.31.2", "dir", "out", "action", "allow"); err != nil {
		t.Fatal(err, out)
	}
	if n := pass(true); n == 0 {
		t.Fatal("a pass on a host with IPsec policies changed nothing")
	}
	sentBefore := vxCarried()
	if lost := ping(c1, c2.ep.IP, 3, 56, 0); lost > 0 {
		t.Fatalf("fast path beside IPsec policies: %d of 3 lost", lost)
	}
	if n := vxCarried() - sentBefore; n < 3 {
		t.Fatalf("with IPsec policies on h1 its vxlan device carried %d packets of 3 echoes", n)
	}
	if out, err := nsRun(t, hosts[0].ns, "ip", "xfrm", "policy", "flush"); err != nil {
		t.Fatal(err, out)
	}
	// Unwrapping off (--fast-unwrap=false): the underlay's program goes,
	// the vxlan devices receive again, the echoes still cross.
	unwrap = false
	pass(true)
	receivedBefore := vxCarried()
	if lost := ping(c1, c2.ep.IP, 3, 56, 0); lost > 0 {
		t.Fatalf("fast path without unwrapping: %d of 3 lost", lost)
	}
	for _, h := range hosts {
		inTestNS(t, h.dp.Namespace(), func() {
			if ids, _ := tcxIngress(t, "u0"); len(ids) != 0 {
				t.Errorf("%s: programs %v on the underlay with unwrapping off", h.name, ids)
			}
		})
	}
	if n := vxCarried() - receivedBefore; n < 6 {
		t.Fatalf("with unwrapping off the vxlan devices carried %d packets of 3 echoes and replies", n)
	}
	unwrap = true
	pass(true)
	// bpf_redirect skips the bridge's size check: the container's MTU must
	// not exceed the vxlan device's.
	ch := handleIn(t, c1.path)
	cl, _ := ch.LinkByName("eth0")
	vl, _ := handleIn(t, hosts[0].path).LinkByName(datapath.VxlanName(web.VNI))
	if cl.Attrs().MTU > vl.Attrs().MTU {
		t.Fatalf("container MTU %d above the vxlan device's %d", cl.Attrs().MTU, vl.Attrs().MTU)
	}
	// Full-size frames cross both redirects.
	if lost := ping(c1, c2.ep.IP, 2, cl.Attrs().MTU-28, 0); lost > 0 {
		t.Fatalf("full-size echoes on the fast path: %d of 2 lost", lost)
	}

	// A frame for a MAC of another network: c1 (web) sends to d2's MAC
	// (db) with everything it needs on its side. Nothing reaches d2.
	for _, h := range hosts {
		bridgeDropIP(t, h.ns, false)
	}
	// d2 counts what arrives from c1's MAC (nft, netdev ingress).
	count := exec.Command("ip", "netns", "exec", d2.ns, "nft", "-f", "-")
	count.Stdin = strings.NewReader("table netdev vxtest { chain in { type filter hook ingress device eth0 priority 0; ether saddr " + c1.ep.MAC + " counter; }; }")
	if out, err := count.CombinedOutput(); err != nil {
		t.Fatalf("nft in d2: %v %s", err, out)
	}
	fake := netip.MustParseAddr("198.19.31.99")
	if out, err := nsRun(t, c1.ns, "ip", "neigh", "replace", fake.String(), "lladdr", d2.ep.MAC, "dev", "eth0", "nud", "permanent"); err != nil {
		t.Fatal(err, out)
	}
	if lost := ping(c1, fake, 3, 56, 0); lost != 3 {
		t.Fatalf("an echo to another network's MAC was answered")
	}
	out, err := nsRun(t, d2.ns, "nft", "list", "table", "netdev", "vxtest")
	if err != nil || !strings.Contains(out, "counter packets 0 ") {
		t.Fatalf("d2 (network db) received frames c1 (network web) sent to its MAC: %v\n%s", err, out)
	}

	// Programs taken off by hand: the next pass puts them back, and a
	// running flow (the bridge carries it meanwhile) loses nothing.
	done := make(chan int, 1)
	go func() { done <- ping(c1, c2.ep.IP, 300, 56, 5*time.Millisecond) }()
	time.Sleep(700 * time.Millisecond)
	for _, h := range hosts {
		for _, dev := range []string{datapath.VxlanName(web.VNI), datapath.HostIfName("c1"), datapath.HostIfName("c2")} {
			if _, err := handleIn(t, h.path).LinkByName(dev); err == nil {
				unhook(t, h.dp.Namespace(), dev)
			}
		}
	}
	time.Sleep(700 * time.Millisecond)
	pass(true)
	if lost := <-done; lost > 0 {
		t.Fatalf("running flow across unhook and re-hook: %d of 300 echoes lost", lost)
	}
	for _, h := range hosts {
		obs, err := h.dp.Observe()
		if err != nil {
			t.Fatal(err)
		}
		for _, hk := range obs.FastPath.Hooks {
			if hk.Stale {
				t.Fatalf("%s: hook %+v still stale after the pass", h.name, hk)
			}
		}
	}

	// The programs outlive the process that loaded them (as after a kill
	// -9 of the agent): with the dataplanes closed, IP still crosses
	// bridges that drop it. A new dataplane adopts the running program
	// and its maps: its first pass changes nothing.
	for _, h := range hosts {
		bridgeDropIP(t, h.ns, true)
		h.dp.Close()
	}
	if lost := ping(c1, c2.ep.IP, 2, 56, 0); lost > 0 {
		t.Fatalf("fast path gone with the dataplane that loaded it (%d of 2 lost)", lost)
	}
	for _, h := range hosts {
		var err error
		if h.dp, err = linux.Open(h.path, nil); err != nil {
			t.Fatal(err)
		}
		h.dp.SetHostFirewallMaxAge(0)
		h.dp.SetFastPathMaxAge(0)
		if err := h.dp.EnableFastPath(); err != nil {
			t.Fatal(err)
		}
	}
	if n := pass(true); n != 0 {
		t.Fatalf("the first pass of new dataplanes over a running fast path made %d changes, want 0", n)
	}
	if lost := ping(c1, c2.ep.IP, 2, 56, 0); lost > 0 {
		t.Fatalf("after the new dataplane's pass: %d of 2 lost", lost)
	}
	// A port someone shapes (a qdisc on its host end, as the CNI
	// bandwidth plugin adds) leaves the fast path both ways, and comes
	// back when the qdisc goes.
	c1If := datapath.HostIfName("c1")
	onFast := func() (hooked, entry bool) {
		t.Helper()
		obs, err := hosts[0].dp.Observe()
		if err != nil {
			t.Fatal(err)
		}
		for _, hk := range obs.FastPath.Hooks {
			hooked = hooked || hk.Dev == c1If && !hk.Stale
		}
		for _, e := range obs.FastPath.Entries {
			entry = entry || e.Dev == c1If
		}
		return hooked, entry
	}
	if out, err := nsRun(t, hosts[0].ns, "tc", "qdisc", "add", "dev", c1If, "root", "tbf", "rate", "1gbit", "burst", "64k", "latency", "50ms"); err != nil {
		t.Fatal(err, out)
	}
	pass(true)
	if hooked, entry := onFast(); hooked || entry {
		t.Fatalf("a shaped port is still on the fast path: hooked %v, entry %v", hooked, entry)
	}
	if out, err := nsRun(t, hosts[0].ns, "tc", "qdisc", "del", "dev", c1If, "root"); err != nil {
		t.Fatal(err, out)
	}
	pass(true)
	if hooked, entry := onFast(); !hooked || !entry {
		t.Fatalf("the port did not come back to the fast path without its qdisc: hooked %v, entry %v", hooked, entry)
	}
	// The bridge datapath takes the programs away, from the underlay
	// too; the bridge then drops IP.
	pass(false)
	if lost := ping(c1, c2.ep.IP, 2, 56, 0); lost != 2 {
		t.Fatalf("programs still carry IP after the bridge datapath's pass (%d of 2 answered)", 2-lost)
	}
	for _, h := range hosts {
		inTestNS(t, h.dp.Namespace(), func() {
			if ids, _ := tcxIngress(t, "u0"); len(ids) != 0 {
				t.Errorf("%s: programs %v left on the underlay after the bridge datapath's pass", h.name, ids)
			}
		})
	}
}
