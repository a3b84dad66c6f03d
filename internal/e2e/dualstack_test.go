package e2e

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/doctor"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/lab/labtest"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/probe"
	"github.com/vxnet/vxnet/internal/testutil"
)

// TestDualStack: three hosts, two dual-stack networks, real agents. Every
// container gets an IPv6 address of its network that is usable at once
// (not tentative; no router advertisements taken); every container reaches
// every other of its network by IPv4 and by IPv6 and no container of the
// other network by either, on hosts that forward IPv6 (so isolation is
// vxnet's doing, not a host that routes nothing); DF pings at the container
// MTU cross in both families and one byte more is refused; containers that
// forget their neighbours resolve each other anew with no Neighbour
// Discovery inside VXLAN on the underlay (captured) while their IPv6 pings
// cross it; the anycast gateway answers IPv6 on every host; two IPv6-only
// networks each carry their containers across hosts and are isolated from
// each other; a container's name answers AAAA with its IPv6 address, asked
// at the IPv4 or the IPv6 gateway, on an IPv6-only network too; the live
// page (a real browser) shows the endpoints' IPv6 addresses.
func TestDualStack(t *testing.T) {
	l := upCfg(t, lab.Config{Hosts: 3, Networks: 2, PerHost: 1, IPv6: true})
	for _, h := range l.Hosts {
		writeSysctl(t, h.Netns, "/proc/sys/net/ipv6/conf/all/forwarding", "1")
	}
	nets := map[string]model.Network{}
	for _, n := range l.Networks {
		nets[n.Name] = n
	}
	step(t, "Addresses", func(t *testing.T) {
		for _, c := range l.Containers {
			if n := nets[c.Network]; !n.Subnet6.Contains(c.IP6) || c.IP6 == n.Gateway6 {
				t.Fatalf("%s has IPv6 address %s; want one of %s", c.Name, c.IP6, n.Subnet6)
			}
			usableAtOnce(t, c)
		}
	})
	step(t, "Matrix", func(t *testing.T) {
		m := l.Matrix(time.Second)
		if !lab.MatrixOK(m) {
			var b strings.Builder
			l.PrintMatrix(&b, m)
			t.Fatalf("reachability by IPv4 and IPv6:\n%s", b.String())
		}
	})
	a, b := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h2-n1-c1")
	step(t, "MTU", func(t *testing.T) {
		mtu := lab.UnderlayMTU - model.OverheadIPv4
		dfAtMTU(t, a.Netns, b.IP, mtu)
		if _, err := probe.Ping(a.Netns, b.IP6, mtu-48, true, 2*time.Second); err != nil {
			t.Fatalf("a %d-byte IPv6 packet (the container MTU) did not cross: %v", mtu, err)
		}
		if r, err := probe.Ping(a.Netns, b.IP6, mtu-47, true, time.Second); err == nil || !r.TooBig {
			t.Fatalf("an IPv6 packet one byte over the MTU: err=%v tooBig=%v; want it refused as too big", err, r.TooBig)
		}
	})
	step(t, "NoNeighbourDiscoveryOnTheUnderlay", func(t *testing.T) {
		sw := nsutil.Path(l.Switch)
		capture, err := probe.StartCapture(sw, lab.VXLANPort)
		if err != nil {
			t.Fatal(err)
		}
		pings := 0
		for _, c := range l.Containers {
			forgetNeighbours(t, c)
		}
		for _, c := range l.Containers {
			for _, o := range l.Containers {
				if o.Host == c.Host || o.Network != c.Network {
					continue
				}
				if _, err := probe.Ping(c.Netns, o.IP6, 56, false, 2*time.Second); err != nil {
					t.Fatalf("%s -> %s after forgetting its neighbours: %v", c.Name, o.Name, err)
				}
				pings++
			}
		}
		// Each echo and its reply crossed in VXLAN (wait until the capture
		// has read them all: frames are read in order, so whatever
		// Neighbour Discovery went before them is counted by then);
		// nothing of ND did.
		err = waitCond(5*time.Second, func() error {
			if n := capture.Stats().InnerIPv6; n < int64(2*pings) {
				return fmt.Errorf("%d IPv6 frames in VXLAN on the underlay, want at least %d for %d pings", n, 2*pings, pings)
			}
			return nil
		})
		st := capture.Stop()
		if err != nil || st.InnerND != 0 {
			t.Fatalf("%v; %d of %d IPv6 frames in VXLAN are Neighbour Discovery (want 0)", err, st.InnerND, st.InnerIPv6)
		}
		t.Logf("%d pings: %d IPv6 frames in VXLAN, %d neighbour solicitations or advertisements", pings, st.InnerIPv6, st.InnerND)
	})
	step(t, "Trace", func(t *testing.T) {
		h1, _ := l.Host("h1")
		h2, _ := l.Host("h2")
		traceSeesUnderlay(t, l, api.TraceRequest{Src: a.ID, Dst: b.IP6.String()}, h1.Addr, h2.Addr)
	})
	step(t, "Gateway", func(t *testing.T) {
		for _, c := range l.Containers {
			if _, err := probe.Ping(c.Netns, nets[c.Network].Gateway6, 56, false, 2*time.Second); err != nil {
				t.Fatalf("%s: the IPv6 gateway %s does not answer: %v", c.Name, nets[c.Network].Gateway6, err)
			}
		}
	})
	step(t, "IPv6Only", func(t *testing.T) {
		// Two IPv6-only networks: each reaches across hosts (a DF packet at
		// the MTU too), neither reaches the other, on hosts that forward.
		a, ips := ipv6Only(t, l, "six1", "fd00:61::/64", "h1", "h2")
		b, ips2 := ipv6Only(t, l, "six2", "fd00:62::/64", "h1", "h3")
		pingUntil(t, a[0], ips[1], 5*time.Second)
		pingUntil(t, b[1], ips2[0], 5*time.Second)
		mtu := lab.UnderlayMTU - model.OverheadIPv4
		if _, err := probe.Ping(a[0], ips[1], mtu-48, true, 2*time.Second); err != nil {
			t.Fatalf("a %d-byte IPv6 packet (the container MTU) did not cross: %v", mtu, err)
		}
		// The IPv6 gateway answers on the IPv6-only network (so the host
		// routes for it), yet nothing crosses to the other network.
		pingUntil(t, a[0], netip.MustParseAddr("fd00:61::1"), 5*time.Second)
		// Names work there: asked at the IPv6 gateway, answered from h1.
		if err := waitCond(10*time.Second, func() error {
			return askName(a[0], netip.MustParseAddr("fd00:61::1"), "six1-h2.", dns.TypeAAAA, ips[1].String())
		}); err != nil {
			t.Fatal(err)
		}
		for _, dst := range ips2 {
			if _, err := probe.Ping(a[0], dst, 56, false, time.Second); err == nil {
				t.Fatalf("six1 reached %s on six2", dst)
			}
		}
		if _, err := client(l, "h1").Attach(api.AttachRequest{Network: "six1", Netns: newContainer(t, l, "six1-v4"), IP: "10.0.0.5"}); err == nil ||
			!strings.Contains(err.Error(), "network six1 is IPv6-only: no IPv4 address (10.0.0.5) can be given on it; give --ip6") {
			t.Fatalf("an IPv4 address on an IPv6-only network: %v", err)
		}
		// What the agent wrote for them reads back as written: a pass
		// with nothing to do comes.
		waitQuietPass(t, l, "h1")
	})
	step(t, "Names", func(t *testing.T) {
		ns := newContainer(t, l, "named6")
		att, err := client(l, "h1").Attach(api.AttachRequest{Network: "net1", Netns: ns, Name: "web6", IP6: "fd00:198:19:1::66"})
		if err != nil {
			t.Fatal(err)
		}
		if att.IP6 != "fd00:198:19:1::66/64" {
			t.Fatalf("attachment %+v: want the static IPv6 address", att)
		}
		usableAtOnce(t, lab.Container{Name: "named6", Netns: ns, IP6: netip.MustParseAddr("fd00:198:19:1::66")}) // right after the attach
		pingUntil(t, b.Netns, netip.MustParseAddr("fd00:198:19:1::66"), 5*time.Second)
		// Asked at either gateway (the IPv6 one's queries are redirected
		// the same way), both records answer.
		if err := waitCond(10*time.Second, func() error {
			for _, gw := range []netip.Addr{nets["net1"].Gateway, nets["net1"].Gateway6} {
				for _, q := range []struct {
					qtype uint16
					want  string
				}{{dns.TypeAAAA, "fd00:198:19:1::66"}, {dns.TypeA, strings.Split(att.IP, "/")[0]}} {
					if err := askName(b.Netns, gw, "web6.", q.qtype, q.want); err != nil {
						return fmt.Errorf("%s: %w", b.Name, err)
					}
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})
	step(t, "Page", func(t *testing.T) {
		// The live page, in a real browser: endpoint rows show both
		// addresses of a dual-stack endpoint, the IPv6 one alone of an
		// IPv6-only endpoint.
		h1, _ := l.Host("h1")
		page := fmt.Sprintf("http://%s/", netip.AddrPortFrom(h1.Addr, lab.MetricsPort))
		if err := waitCond(20*time.Second, func() error {
			dom := browse(t, h1.Netns, "--dump-dom", page)
			for _, want := range []string{"<td>198.19.1.", ", fd00:198:19:1:", "<td>fd00:61::"} {
				if !strings.Contains(dom, want) {
					return fmt.Errorf("the page lacks %s; its DOM:\n%s", want, tailLines(dom, 40))
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})
}

// ipv6Only creates an IPv6-only network and attaches a container to it on
// each of hosts; it returns the containers' namespaces and addresses.
func ipv6Only(t *testing.T, l *lab.Lab, name, subnet6 string, hosts ...string) (nss []string, ips []netip.Addr) {
	t.Helper()
	return ipv6OnlyNet(t, l, api.NetworkCreate{Name: name, Subnet6: subnet6}, hosts...)
}

// ipv6OnlyNet is ipv6Only for any network c describes (an encrypted one).
func ipv6OnlyNet(t *testing.T, l *lab.Lab, c api.NetworkCreate, hosts ...string) (nss []string, ips []netip.Addr) {
	t.Helper()
	name, subnet6 := c.Name, c.Subnet6
	n, err := client(l, hosts[0]).CreateNetwork(c)
	if err != nil {
		t.Fatal(err)
	}
	if n.Subnet.IsValid() || n.Gateway.IsValid() || n.Subnet6.String() != subnet6 {
		t.Fatalf("network %+v: want IPv6 only", n.Network)
	}
	for _, h := range hosts {
		ns := newContainer(t, l, name+"-"+h)
		att, err := client(l, h).Attach(api.AttachRequest{Network: name, Netns: ns, Name: name + "-" + h})
		if err != nil {
			t.Fatal(err)
		}
		p, err := netip.ParsePrefix(att.IP6)
		if err != nil || att.IP != "" || att.Gateway != "" {
			t.Fatalf("attachment %+v: want an IPv6 address alone", att)
		}
		// Right after the attach: duplicate address detection would still
		// hold the addresses tentative for a second.
		usableAtOnce(t, lab.Container{Name: name + "-" + h, Netns: ns, IP6: p.Addr()})
		nss, ips = append(nss, ns), append(ips, p.Addr())
	}
	return nss, ips
}

// askName asks the resolver at server, from the container at ns, for one
// record of name: the only answer must be want.
func askName(ns string, server netip.Addr, name string, qtype uint16, want string) error {
	var r *dns.Msg
	err := nsutil.Do(ns, func() error {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		var err error
		r, _, err = (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, netip.AddrPortFrom(server, 53).String())
		return err
	})
	if err != nil || len(r.Answer) != 1 || !strings.HasSuffix(r.Answer[0].String(), "\t"+want) {
		return fmt.Errorf("%s %s asked at %s: %v %v; want %s", name, dns.TypeToString[qtype], server, r, err, want)
	}
	return nil
}

// usableAtOnce checks a container's IPv6 addresses need no duplicate
// address detection and that it takes no router advertisements. The
// address vxnet adds is never tentative; the link-local one the kernel
// adds leaves its tentative state from a work queue even without
// detection, so the check waits for that and then reads the container's
// count of sent neighbour solicitations: detection sends one before it
// ends, nothing else in a fresh container does. Only a check right after
// the attach can see detection at work (it ends within seconds).
func usableAtOnce(t *testing.T, c lab.Container) {
	t.Helper()
	h, eth := containerEth(t, c)
	var bad error // what no wait mends
	err := waitCond(5*time.Second, func() error {
		addrs, err := h.AddrList(eth, netlink.FAMILY_V6)
		if err != nil {
			return err
		}
		found := false
		for _, a := range addrs {
			ours := a.IP.Equal(c.IP6.AsSlice())
			found = found || ours
			if a.Flags&unix.IFA_F_DADFAILED != 0 || (ours && a.Flags&unix.IFA_F_TENTATIVE != 0) {
				bad = fmt.Errorf("address %s is tentative or failed DAD (flags %#x)", a.IPNet, a.Flags)
				return nil
			}
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				return fmt.Errorf("address %s is still tentative (flags %#x)", a.IPNet, a.Flags)
			}
		}
		if !found {
			bad = fmt.Errorf("eth0 lacks %s: %v", c.IP6, addrs)
		}
		return nil
	})
	if err = cmp.Or(bad, err); err != nil {
		t.Errorf("%s: %v", c.Name, err)
		return
	}
	err = nsutil.Do(c.Netns, func() error {
		got, err := os.ReadFile("/proc/sys/net/ipv6/conf/eth0/accept_ra")
		if err == nil && strings.TrimSpace(string(got)) != "0" {
			err = fmt.Errorf("accept_ra is %s", got)
		}
		if err != nil {
			return err
		}
		// thread-self: /proc/self/net is the process's namespace.
		snmp, err := os.ReadFile("/proc/thread-self/net/dev_snmp6/eth0")
		if err != nil {
			return err
		}
		if n := snmpCounter(string(snmp), "Icmp6OutNeighborSolicits"); n != 0 {
			return fmt.Errorf("eth0 sent %d neighbour solicitations before any traffic: duplicate address detection ran", n)
		}
		return nil
	})
	if err != nil {
		t.Errorf("%s: %v", c.Name, err)
	}
}

// snmpCounter reads one counter from /proc/net/snmp6-style text (name,
// spaces, value per line); -1 if absent.
func snmpCounter(text, name string) int64 {
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == name {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// containerEth opens a netlink handle in a lab container (closed when the
// test ends) and finds its eth0.
func containerEth(t *testing.T, c lab.Container) (*netlink.Handle, netlink.Link) {
	t.Helper()
	h, err := nsutil.Handle(c.Netns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatalf("%s: %v", c.Name, err)
	}
	return h, eth
}

// forgetNeighbours deletes a container's IPv6 neighbour entries, so its
// next packets resolve their neighbours anew.
func forgetNeighbours(t *testing.T, c lab.Container) {
	t.Helper()
	h, eth := containerEth(t, c)
	ns, err := h.NeighList(eth.Attrs().Index, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if err := h.NeighDel(&n); err != nil {
			t.Fatalf("%s: forget %s: %v", c.Name, n.IP, err)
		}
	}
}

// writeSysctl sets a sysctl inside the namespace at path.
func writeSysctl(t *testing.T, path, file, value string) {
	t.Helper()
	if err := nsutil.Do(path, func() error { return os.WriteFile(file, []byte(value), 0o644) }); err != nil {
		t.Fatalf("%s in %s: %v", file, path, err)
	}
}

// TestDockerDualStack: `docker network create --ipv6` with an IPv4 and an
// IPv6 subnet through vxnet's IPAM on real dockerds with their defaults
// (the CLI on PATH, /usr/local/bin/docker 28.x): the other host's dockerd
// gets the network dual-stack; containers on two hosts reach each other by
// IPv6 address (a static --ip6 and an allocated one) and by name (AAAA,
// ping -6), a DF packet at the container MTU crosses in IPv6, and the
// cluster's records hold both addresses; a container reaches an outside
// machine over IPv6 as its host, and `docker run -p` answers at the host's
// IPv6 address.
func TestDockerDualStack(t *testing.T) {
	requireDocker(t)
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 1, IPv6: true, Outside: true})
	out := *l.Outside
	serveTCP(t, out.Netns, "[::]:80", "outside")
	d1, d2 := startDocker(t, l, "h1"), startDocker(t, l, "h2")
	mustDocker(t, d1, "network", "create", "-d", "vxnet", "--ipam-driver", "vxnet", "--ipv6",
		"--subnet", "172.29.0.0/24", "--subnet", "fd00:29::/64", "dual")
	waitDockerNetwork(t, d2, "dual", true)
	if got := mustDocker(t, d2, "network", "inspect", "-f", "{{.EnableIPv6}} {{range .IPAM.Config}}{{.Subnet}} {{end}}", "dual"); got != "true 172.29.0.0/24 fd00:29::/64" {
		t.Fatalf("h2's dockerd has the network as %q; want it dual-stack", got)
	}
	mustDocker(t, d1, "run", "-d", "--name", "c1", "--net", "dual", "--ip6", "fd00:29::11", lab.DockerImage, "sleep", "600")
	mustDocker(t, d2, "run", "-d", "--name", "c2", "--net", "dual", lab.DockerImage, "sleep", "600")
	c2IP6 := mustDocker(t, d2, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}", "c2")
	if a, err := netip.ParseAddr(c2IP6); err != nil || !netip.MustParsePrefix("fd00:29::/64").Contains(a) {
		t.Fatalf("c2's IPv6 address %q: want one of fd00:29::/64", c2IP6)
	}
	pingFrom(t, d1, "c1", c2IP6)
	pingFrom(t, d2, "c2", "fd00:29::11")
	pingFrom(t, d1, "c1", "c2", "-6")
	pingFrom(t, d2, "c2", "c1", "-6")
	n, err := client(l, "h1").Network(dockerNetName(t, l, "172.29.0.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := probe.Ping(ctrNetns(t, d1, "c1"), netip.MustParseAddr(c2IP6), n.EffectiveMTU-48, true, 2*time.Second); err != nil {
		t.Fatalf("a full-size IPv6 packet with DF did not cross: %v", err)
	}
	s, err := client(l, "h2").StatusWithEndpoints()
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, e := range s.Endpoints {
		if e.IP6.String() == "fd00:29::11" || e.IP6.String() == c2IP6 {
			found++
		}
	}
	if found != 2 {
		t.Fatalf("h2's endpoints %+v: want c1 and c2 with their IPv6 addresses", s.Endpoints)
	}
	got := retryDocker(t, d1, "hello from outside", "exec", "c1", "sh", "-c", "nc "+lab.OutsideAddr6.String()+" 80 </dev/null")
	if h1 := l.Hosts[0]; !strings.Contains(got, "you are "+h1.Addr6.String()) {
		t.Errorf("over IPv6 the outside saw: %s; want %s's IPv6 address", got, h1.Name)
	}
	mustDocker(t, d1, "run", "-d", "--name", "web", "--net", "dual", "-p", "8080:80", lab.DockerImage,
		"sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && httpd -f -p 80 -h /www")
	hostPort := netip.AddrPortFrom(l.Hosts[0].Addr6, 8080).String()
	if err := waitCond(10*time.Second, func() error {
		got, err := dialHTTP(out.Netns, hostPort)
		if err == nil && !strings.Contains(got, "hello-from-web") {
			err = fmt.Errorf("answer %q", got)
		}
		return err
	}); err != nil {
		t.Fatalf("from the outside at %s: %v", hostPort, err)
	}
}

// TestDualStackEgressAndPorts: a dual-stack network on hosts with an IPv6
// address on their underlay, whose ip6tables FORWARD drops (as ufw leaves
// it) with bridged frames passing ip6tables: containers reach each other
// over IPv6 across a dropping host (vxnet's ip6tables rules), reach an
// outside machine over IPv6 as their host (masqueraded), and a published
// port answers at the host's IPv6 address. The doctor says IPv6 is
// forwarded, and names vxnet's ip6tables jump when it is removed. Flushing
// vxnet's ip6tables rules stops IPv6 egress (negative control) until the
// agent puts them back (jump and rules).
func TestDualStackEgressAndPorts(t *testing.T) {
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 1, PerHost: 1, IPv6: true, Outside: true})
	h1, _ := l.Host("h1")
	out := *l.Outside
	c1, c2 := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h2-n1-c1")
	for _, h := range l.Hosts {
		inNS(t, h.Netns, "ip6tables", "-P", "FORWARD", "DROP")
		inNS(t, h.Netns, "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-ip6tables=1")
	}
	parent := t
	step(t, "Overlay", func(t *testing.T) {
		pingUntil(t, c1.Netns, c2.IP6, 5*time.Second)
		serveTCP(parent, c2.Netns, "[::]:7000", "c2")
		// Between containers nothing is NATed.
		dialUntil(t, c1.Netns, netip.AddrPortFrom(c2.IP6, 7000).String(), "hello from c2, you are "+c1.IP6.String(), 5*time.Second)
	})
	step(t, "Egress", func(t *testing.T) {
		serveTCP(parent, out.Netns, "[::]:80", "outside")
		dialUntil(t, c1.Netns, netip.AddrPortFrom(lab.OutsideAddr6, 80).String(), "hello from outside, you are "+h1.Addr6.String(), 10*time.Second)
		rules := inNS(t, h1.Netns, "ip6tables-save")
		if !strings.Contains(rules, "-A VXNET-POSTROUTING -s fd00:198:19:1::/64 ! -o vxbr4097") {
			t.Fatalf("h1's ip6tables:\n%s", rules)
		}
	})
	step(t, "PublishedPort", func(t *testing.T) {
		ns := newContainer(t, l, "web6")
		web, err := client(l, "h1").Attach(api.AttachRequest{Network: "net1", Netns: ns, Publish: []string{"8080:80"}})
		if err != nil || web.IP6 == "" {
			t.Fatalf("attach %+v: %v", web, err)
		}
		serveTCP(parent, ns, "[::]:80", "web6")
		dialUntil(t, out.Netns, netip.AddrPortFrom(h1.Addr6, 8080).String(), "hello from web6, you are "+out.Addr6.String(), 10*time.Second)
	})
	step(t, "Doctor", func(t *testing.T) {
		out, _ := doctorIn(t, h1.Netns, "--socket", h1.Socket)
		if f := out["forwarding-ipv6"]; f.Level != doctor.OK || !strings.Contains(f.Evidence, "IPv6 of net1 is forwarded") {
			t.Fatalf("doctor forwarding-ipv6 with vxnet's rules: %+v", f)
		}
		inNS(t, h1.Netns, "ip6tables", "-D", "FORWARD", "-j", "VXNET-FORWARD")
		out, _ = doctorIn(t, h1.Netns, "--socket", h1.Socket)
		if f := out["forwarding-ipv6"]; f.Level != doctor.Fail || !strings.Contains(f.Evidence, "vxnet's VXNET-FORWARD rules are missing there: IPv6 of net1 is dropped") {
			t.Fatalf("doctor forwarding-ipv6 with vxnet's jump removed: %+v", f)
		}
	})
	step(t, "FlushedRulesComeBack", func(t *testing.T) {
		inNS(t, h1.Netns, "ip6tables", "-F", "VXNET-FORWARD")
		target := netip.AddrPortFrom(lab.OutsideAddr6, 80).String()
		if got, err := dialTCP(c1.Netns, target, time.Second); err == nil {
			t.Fatalf("IPv6 egress crossed a dropping host with vxnet's ip6tables rules flushed: %q", got)
		}
		dialUntil(t, c1.Netns, target, "hello from outside, you are "+h1.Addr6.String(), 20*time.Second)
	})
}

// TestCNIDualStack: the real vxnet-cni through libcni (spec 1.1.0) on a
// dual-stack network: ADD with a static IPv6 address through the "ips"
// capability (as podman's --ip6 gives it) returns both addresses with
// their gateways and default routes, the container reaches another host's
// container by IPv6, CHECK finds both addresses, DEL removes the endpoint.
func TestCNIDualStack(t *testing.T) {
	testutil.RequireRoot(t)
	dir := cniPlugins(t)
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 1, PerHost: 1, IPv6: true})
	h1 := l.Hosts[0]
	remote := labtest.Container(t, l, "h2-n1-c1")
	rt := newRuntime(t, h1, dir)
	list, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"net1","plugins":[{"type":"vxnet","socket":%q,"capabilities":{"aliases":true,"ips":true}}]}`, h1.Socket)))
	if err != nil {
		t.Fatal(err)
	}
	ns := newContainer(t, l, "cni6")
	rc := rtConf("cni6", ns)
	rc.CapabilityArgs = map[string]any{"ips": []string{"fd00:198:19:1::77/64"}}
	res, err := rt.add(list, rc)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	var got []string
	for _, ip := range res.IPs {
		got = append(got, ip.Address.String()+" via "+ip.Gateway.String())
	}
	for _, r := range res.Routes {
		got = append(got, r.Dst.String()+" via "+r.GW.String())
	}
	if len(got) != 4 || !strings.HasPrefix(got[0], "198.19.1.") || got[1] != "fd00:198:19:1::77/64 via fd00:198:19:1::1" ||
		got[2] != "0.0.0.0/0 via 198.19.1.1" || got[3] != "::/0 via fd00:198:19:1::1" {
		t.Fatalf("result %q", got)
	}
	pingUntil(t, ns, remote.IP6, 5*time.Second)
	if err := rt.do(func() error { return rt.cni.CheckNetworkList(context.Background(), list, rc) }); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	inNS(t, ns, "ip", "-6", "addr", "del", "fd00:198:19:1::77/64", "dev", "eth0")
	err = rt.do(func() error { return rt.cni.CheckNetworkList(context.Background(), list, rc) })
	if err == nil || !strings.Contains(err.Error(), "vxnet: interface eth0 lacks its address fd00:198:19:1::77") {
		t.Fatalf("CHECK without the IPv6 address: %v", err)
	}
	if err := rt.do(func() error { return rt.cni.DelNetworkList(context.Background(), list, rc) }); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if eps, _ := api.NewClient(h1.Socket).LocalEndpoints(); len(eps) != 1 { // the lab's own container
		t.Fatalf("endpoints after DEL: %+v", eps)
	}
}

// traceSeesUnderlay traces r from h1 and checks the probe made the round
// trip and was seen in VXLAN on both hosts' underlay devices, between
// their addresses from and to, with an ICMPv6 probe when r asks for one
// (an IPv6 DST).
func traceSeesUnderlay(t *testing.T, l *lab.Lab, r api.TraceRequest, from, to netip.Addr) {
	t.Helper()
	res, err := client(l, "h1").Trace(r)
	if err != nil {
		t.Fatal(err)
	}
	want6 := strings.Contains(r.Dst, ":")
	seen := 0
	for _, h := range res.Hops {
		if h.Point == "underlay" && h.Dir == "request" && h.Seen && strings.Contains(h.Detail, from.String()) && strings.Contains(h.Detail, to.String()) {
			seen++
		}
	}
	if !res.Replied || res.IPv6 != want6 || seen != 2 {
		t.Fatalf("trace %+v: replied %v, IPv6 %v (want %v), request seen in VXLAN from %s to %s on %d underlays (want 2): %+v", r, res.Replied, res.IPv6, want6, from, to, seen, res.Hops)
	}
}

// TestEncryptedDualStack: a dual-stack encrypted network beside a clear
// one: every pair reaches as the matrix expects by IPv4 and IPv6; the
// encrypted network's containers reach each other by IPv6 through the
// WireGuard devices at its MTU (DF; one byte more refused); nothing with its
// VNI crosses the underlay in VXLAN; h1's bridge answers Neighbour
// Discovery for h2's container (a proxy entry, read back). An IPv6-only
// encrypted network beside them does the same, and its names answer.
func TestEncryptedDualStack(t *testing.T) {
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 2, PerHost: 1, IPv6: true, Encrypted: []int{2}})
	enc := l.Networks[1]
	capt, err := probe.StartCapture(nsutil.Path(l.Switch), lab.VXLANPort)
	if err != nil {
		t.Fatal(err)
	}
	defer capt.Stop()
	if m := l.Matrix(time.Second); !lab.MatrixOK(m) {
		var b strings.Builder
		l.PrintMatrix(&b, m)
		t.Fatalf("reachability by IPv4 and IPv6:\n%s", b.String())
	}
	a, b := labtest.Container(t, l, "h1-n2-c1"), labtest.Container(t, l, "h2-n2-c1")
	mtu := lab.UnderlayMTU - model.WireGuardOverheadIPv4
	if _, err := probe.Ping(a.Netns, b.IP6, mtu-48, true, 2*time.Second); err != nil {
		t.Fatalf("a %d-byte IPv6 packet (the encrypted network's MTU) did not cross: %v", mtu, err)
	}
	if r, err := probe.Ping(a.Netns, b.IP6, mtu-47, true, time.Second); err == nil || !r.TooBig {
		t.Fatalf("an IPv6 packet one byte over the MTU: err=%v tooBig=%v; want it refused as too big", err, r.TooBig)
	}
	if st := capt.Stats(); st.VNIs[enc.VNI] != 0 {
		t.Fatalf("VXLAN with the encrypted network's VNI crossed the underlay %d times", st.VNIs[enc.VNI])
	}
	o, err := l.Observe("h1")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(o.Neigh, datapath.Neigh{VNI: enc.VNI, IP: b.IP6, Proxy: true}) {
		t.Fatalf("h1 has no proxy entry for %s on its bridge: %v", b.IP6, o.Neigh)
	}
	traceSeesTunnel(t, l, api.TraceRequest{Src: a.ID, Dst: b.IP6.String()})
	// An IPv6-only encrypted network: routed through the same tunnels, at
	// the same MTU, named; never VXLAN on the underlay; and the hosts read
	// their firewalls back as written (a pass with nothing to do comes).
	nss, ips := ipv6OnlyNet(t, l, api.NetworkCreate{Name: "sixenc", Subnet6: "fd00:63::/64", Encrypted: true}, "h1", "h2")
	pingUntil(t, nss[0], ips[1], 5*time.Second)
	if _, err := probe.Ping(nss[0], ips[1], mtu-48, true, 2*time.Second); err != nil {
		t.Fatalf("a %d-byte IPv6 packet did not cross the IPv6-only encrypted network: %v", mtu, err)
	}
	if err := waitCond(10*time.Second, func() error {
		return askName(nss[1], netip.MustParseAddr("fd00:63::1"), "sixenc-h1.", dns.TypeAAAA, ips[0].String())
	}); err != nil {
		t.Fatal(err)
	}
	info, err := client(l, "h1").Network("sixenc")
	if err != nil {
		t.Fatal(err)
	}
	if st := capt.Stats(); st.VNIs[info.VNI] != 0 {
		t.Fatalf("VXLAN with the IPv6-only encrypted network's VNI crossed the underlay %d times", st.VNIs[info.VNI])
	}
	traceSeesTunnel(t, l, api.TraceRequest{Src: "sixenc-h1", Dst: ips[1].String()})
	waitQuietPass(t, l, "h1")
	waitQuietPass(t, l, "h2")
}

// traceSeesTunnel traces r from h1 through an encrypted network: the
// probe made the round trip, ICMPv6 when r's DST is an IPv6 address, and
// both hosts' tunnel devices saw the request.
func traceSeesTunnel(t *testing.T, l *lab.Lab, r api.TraceRequest) {
	t.Helper()
	res, err := client(l, "h1").Trace(r)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, h := range res.Hops {
		if h.Point == "tunnel" && h.Dir == "request" && h.Seen {
			seen++
		}
	}
	if !res.Replied || res.IPv6 != strings.Contains(r.Dst, ":") || seen != 2 {
		t.Fatalf("trace %+v: replied %v, IPv6 %v, request seen on %d tunnel devices (want 2): %+v", r, res.Replied, res.IPv6, seen, res.Hops)
	}
}
