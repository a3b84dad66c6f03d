package e2e

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/doctor"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/lab/labtest"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/probe"
)

// hostFiltersAre checks the doctor's host-filters finding on host h: its
// level, and evidence naming want.
func hostFiltersAre(t *testing.T, h lab.Host, level doctor.Level, want string) {
	t.Helper()
	found, _ := doctorIn(t, h.Netns, "--socket", h.Socket)
	if f := found["host-filters"]; f.Level != level || !strings.Contains(f.Evidence, want) {
		t.Errorf("doctor's host-filters on %s: %+v; want %s naming %q", h.Name, f, level, want)
	}
}

// ruleHandle reads "# handle N" off a line of `nft -a list ruleset`.
var ruleHandle = regexp.MustCompile(`# handle (\d+)$`)

// closeOpenings takes vxnet's openings out of a host's filters by hand
// (its agent stopped), leaving everything else.
// ingressPrograms returns the programs at dev's TCX ingress on host h.
func ingressPrograms(t *testing.T, h lab.Host, dev string) (ids []ebpf.ProgramID, idx int) {
	t.Helper()
	err := nsutil.Do(h.Netns, func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		idx = l.Attrs().Index
		q, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		for _, ap := range q.Programs {
			ids = append(ids, ap.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the programs at %s's %s: %v", h.Name, dev, err)
	}
	return ids, idx
}

// detachIngress takes every program off dev's TCX ingress on host h, as
// someone with bpftool would.
func detachIngress(t *testing.T, h lab.Host, dev string) {
	t.Helper()
	ids, idx := ingressPrograms(t, h, dev)
	err := nsutil.Do(h.Netns, func() error {
		for _, id := range ids {
			p, err := ebpf.NewProgramFromID(id)
			if err != nil {
				return err
			}
			err = link.RawDetachProgram(link.RawDetachProgramOptions{Target: idx, Program: p, Attach: ebpf.AttachTCXIngress})
			p.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("detach the programs at %s's %s: %v", h.Name, dev, err)
	}
}

func closeOpenings(t *testing.T, h lab.Host) {
	t.Helper()
	var table, chain string
	for _, l := range strings.Split(inNS(t, h.Netns, "nft", "-a", "list", "ruleset"), "\n") {
		l = strings.TrimSpace(l)
		f := strings.Fields(l)
		switch {
		case len(f) >= 3 && f[0] == "table":
			table = f[1] + " " + f[2]
		case len(f) >= 2 && f[0] == "chain":
			chain = f[1]
		case strings.Contains(l, `comment "vxnet-open:`):
			m := ruleHandle.FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("no handle in %q", l)
			}
			args := append([]string{"delete", "rule"}, strings.Fields(table)...)
			inNS(t, h.Netns, "nft", append(args, chain, "handle", m[1])...)
		}
	}
	inNS(t, h.Netns, "iptables", "-F", "VXNET-OPEN")
}

// TestHostFirewallMatrix: on hosts that already have a firewall of each
// common kind (ufw's iptables defaults, a native nftables table that drops
// input and forward, a real firewalld), vxnet's members find each other and
// its containers work: across hosts, out (egress), in (-p) and by name.
// The negative control: the same hosts with vxnet's openings taken out
// drop its traffic; the restarted agent puts them back (and, under
// firewalld, after a reload that wiped them).
func TestHostFirewallMatrix(t *testing.T) {
	for _, kind := range lab.HostFirewalls {
		t.Run(kind, func(t *testing.T) {
			l := upCfg(t, lab.Config{Hosts: 2, Networks: 1, PerHost: 1, Outside: true, HostFirewall: kind})
			h1, out := l.Hosts[0], *l.Outside
			c1, c2 := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h2-n1-c1")
			pingUntil(t, c1.Netns, c2.IP, 10*time.Second)
			pingUntil(t, c2.Netns, c1.IP, 5*time.Second)
			serveTCP(t, out.Netns, ":80", "outside")
			outside := netip.AddrPortFrom(out.Addr, 80).String()
			dialUntil(t, c1.Netns, outside, "hello from outside, you are "+h1.Addr.String(), 5*time.Second)
			ns := newContainer(t, l, "web")
			web, err := client(l, "h1").Attach(api.AttachRequest{Network: "net1", Netns: ns, Publish: []string{"8080:80"}, Name: "web"})
			if err != nil {
				t.Fatal(err)
			}
			serveTCP(t, ns, ":80", "web")
			published := netip.AddrPortFrom(h1.Addr, 8080).String()
			dialUntil(t, out.Netns, published, "hello from web, you are "+out.Addr.String(), 5*time.Second)
			webIP := netip.MustParsePrefix(web.IP).Addr()
			if err := waitCond(5*time.Second, func() error {
				return nsutil.Do(c2.Netns, func() error {
					m := new(dns.Msg)
					m.SetQuestion("web.", dns.TypeA)
					r, _, err := (&dns.Client{Timeout: time.Second}).Exchange(m, netip.AddrPortFrom(out.Addr, 53).String())
					if err != nil {
						return err
					}
					if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != webIP.String() {
						return fmt.Errorf("answer %v, want %s", r.Answer, webIP)
					}
					return nil
				})
			}); err != nil {
				t.Fatalf("name web from c2 on h2: %v", err)
			}

			// Negative control: the same firewall without vxnet's openings.
			fast := onFastPath(t, l, "h1")
			if err := l.KillAgent("h1", syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			closeOpenings(t, h1)
			if fast {
				// The fast path unwraps unicast between members'
				// containers at the underlay, before the host's firewall
				// (its program outlives the agent): that still crosses.
				// Without the program the firewall decides.
				if _, err := probe.Ping(c2.Netns, c1.IP, 56, false, time.Second); err != nil {
					t.Fatalf("the fast path's unwrapping depends on h1's %s firewall: %v", kind, err)
				}
				detachIngress(t, h1, "eth0")
			}
			if _, err := probe.Ping(c2.Netns, c1.IP, 56, false, time.Second); err == nil {
				t.Fatalf("VXLAN from h2 crossed h1's %s firewall without vxnet's openings", kind)
			}
			// Forwarding: ufw's FORWARD is iptables', where vxnet's own
			// chains stay; firewalld forwards within its default zone and
			// accepts destination-NATed connections itself.
			if kind == lab.FirewallNftables {
				if got, err := dialTCP(out.Netns, published, time.Second); err == nil {
					t.Fatalf("the published port answered through h1's %s firewall without vxnet's openings: %q", kind, got)
				}
				if got, err := dialTCP(c1.Netns, outside, time.Second); err == nil {
					t.Fatalf("c1 reached the outside through h1's %s firewall without vxnet's openings: %q", kind, got)
				}
			}
			// The doctor names the chain that drops and what it drops.
			blocker := map[string]string{lab.FirewallUFW: "iptables filter INPUT (policy DROP)",
				lab.FirewallNftables:  `table inet filter chain input (hook input) drops VXLAN from the members, gossip and containers' name queries: "policy drop"`,
				lab.FirewallFirewalld: `table inet firewalld chain filter_INPUT (hook input) drops VXLAN from the members, gossip and containers' name queries: "reject with icmpx admin-prohibited"`}[kind]
			hostFiltersAre(t, h1, doctor.Fail, blocker)
			if err := l.StartAgent("h1"); err != nil {
				t.Fatal(err)
			}
			pingUntil(t, c2.Netns, c1.IP, 15*time.Second)
			hostFiltersAre(t, h1, doctor.OK, "")
			dialUntil(t, out.Netns, published, "hello from web, you are "+out.Addr.String(), 5*time.Second)

			if kind == lab.FirewallFirewalld {
				// A reload rebuilds firewalld's table without vxnet's rules;
				// the agent notices and puts them back.
				if err := l.FirewallCmd(h1, "--reload"); err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				if err := waitCond(20*time.Second, func() error {
					if !strings.Contains(inNS(t, h1.Netns, "nft", "list", "table", "inet", "firewalld"), `comment "vxnet-open:vxlan4`) {
						return fmt.Errorf("vxnet's openings are not back in firewalld's table")
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				pingUntil(t, c2.Netns, c1.IP, 5*time.Second)
				t.Logf("openings back %s after firewall-cmd --reload", time.Since(start).Round(100*time.Millisecond))
			}
		})
	}
}
