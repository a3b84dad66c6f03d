package e2e

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/lab"
)

func startPodman(t *testing.T, l *lab.Lab, host, pluginDir string) *lab.Podman {
	t.Helper()
	p, err := l.StartPodman(host, pluginDir, stdPlugins)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop() })
	return p
}

func mustPodman(t *testing.T, p *lab.Podman, args ...string) string {
	t.Helper()
	out, err := p.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// retryPodman runs a podman command until its output holds want.
func retryPodman(t *testing.T, p *lab.Podman, want string, args ...string) string {
	t.Helper()
	var out string
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		out, err = p.Run(args...)
		if err == nil && strings.Contains(out, want) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("podman %v on %s: %v\n%s\nwant it to say %q", args, p.Host, err, out, want)
		}
	}
}

// TestPodman: podman (CNI backend, Debian's) on two lab hosts, each with
// its own agent and vxnet-cni chained with the standard portmap: containers
// on both hosts reach each other by address and by name, -p publishes
// through portmap at the host's address, 'podman rm -f' leaves no endpoint
// anywhere, a second network is isolated, containers of a dual-stack
// network (one given --ip6) reach each other by IPv6, and a podman
// container and a Docker container on one vxnet network reach each other.
func TestPodman(t *testing.T) {
	requireDocker(t)
	if _, err := exec.LookPath("podman"); err != nil {
		t.Fatalf("podman is not installed (%v)", err)
	}
	dir := cniPlugins(t)
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 1, Outside: true})
	serveDNS(t, l.Outside.Netns, l.Outside.Addr)
	for _, n := range []struct{ name, subnet string }{{"web", "172.28.0.0/24"}, {"other", "172.29.0.0/24"}} {
		if _, err := client(l, "h1").CreateNetwork(api.NetworkCreate{Name: n.name, Subnet: n.subnet}); err != nil {
			t.Fatal(err)
		}
	}
	pods := map[string]*lab.Podman{}
	for _, h := range l.Hosts {
		p := startPodman(t, l, h.Name, dir)
		for _, n := range []string{"web", "other"} {
			conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[{"type":"vxnet","socket":%q,"capabilities":{"aliases":true}},
{"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}`, n, h.Socket)
			if err := p.AddNetwork(n, []byte(conf)); err != nil {
				t.Fatal(err)
			}
		}
		pods[h.Name] = p
	}
	p1, p2 := pods["h1"], pods["h2"]
	run := func(p *lab.Podman, name, network string, extra ...string) string {
		args := append([]string{"run", "-d", "--name", name, "--network", network, "--dns", l.Outside.Addr.String(), "--dns-search", "."}, extra...)
		mustPodman(t, p, append(args, "localhost/vxbox", "sleep", "600")...)
		return mustPodman(t, p, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+network+"\").IPAddress}}", name)
	}
	ip1 := run(p1, "pc1", "web")
	ip2 := run(p2, "pc2", "web")
	step(t, "ByAddressAndName", func(t *testing.T) {
		retryPodman(t, p1, "1 packets received", "exec", "pc1", "ping", "-c", "1", "-W", "1", ip2)
		retryPodman(t, p2, "1 packets received", "exec", "pc2", "ping", "-c", "1", "-W", "1", ip1)
		retryPodman(t, p2, "1 packets received", "exec", "pc2", "ping", "-c", "1", "-W", "1", "pc1")
		retryPodman(t, p1, ip2, "exec", "pc1", "nslookup", "pc2.web")
	})
	step(t, "PublishThroughPortmap", func(t *testing.T) {
		mustPodman(t, p1, "run", "-d", "--name", "web1", "--network", "web", "-p", "8080:80", "localhost/vxbox",
			"sh", "-c", "mkdir -p /www && echo hello-from-podman > /www/index.html && httpd -f -p 80 -h /www")
		h1 := l.Hosts[0]
		if err := waitCond(10*time.Second, func() error {
			got, err := dialHTTP(l.Hosts[1].Netns, fmt.Sprintf("%s:8080", h1.Addr))
			if err != nil || !strings.Contains(got, "hello-from-podman") {
				return fmt.Errorf("%q %v", got, err)
			}
			return nil
		}); err != nil {
			t.Fatalf("-p 8080:80 from host 2: %v", err)
		}
		retryPodman(t, p2, "hello-from-podman", "exec", "pc2", "wget", "-q", "-O", "-", fmt.Sprintf("http://%s:8080/", h1.Addr))
	})
	step(t, "RmLeavesNoEndpoint", func(t *testing.T) {
		mustPodman(t, p1, "rm", "-f", "-t", "0", "web1")
		for _, h := range l.Hosts {
			if err := waitCond(10*time.Second, func() error {
				n, err := client(l, h.Name).Network("web")
				if err != nil {
					return err
				}
				if total := n.Endpoints["h1"] + n.Endpoints["h2"]; total != 2 {
					return fmt.Errorf("%s counts %d endpoints on web, want 2 (pc1, pc2)", h.Name, total)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
	})
	step(t, "IsolatedFromOtherNetwork", func(t *testing.T) {
		ipo := run(p2, "po2", "other")
		run(p1, "po1", "other")
		retryPodman(t, p1, "1 packets received", "exec", "po1", "ping", "-c", "1", "-W", "1", ipo) // positive control
		if out, err := p1.Run("exec", "pc1", "ping", "-c", "1", "-W", "1", ipo); err == nil {
			t.Fatalf("pc1 on web reached %s on other: %s", ipo, out)
		}
	})
	step(t, "DualStack", func(t *testing.T) {
		// A dual-stack network; podman's --ip6 reaches the plugin through
		// the "ips" capability.
		if _, err := client(l, "h1").CreateNetwork(api.NetworkCreate{Name: "web6", Subnet: "172.30.0.0/24", Subnet6: "fd00:30::/64"}); err != nil {
			t.Fatal(err)
		}
		for _, h := range l.Hosts {
			conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"web6","plugins":[{"type":"vxnet","socket":%q,"capabilities":{"aliases":true,"ips":true}}]}`, h.Socket)
			if err := pods[h.Name].AddNetwork("web6", []byte(conf)); err != nil {
				t.Fatal(err)
			}
		}
		mustPodman(t, p1, "run", "-d", "--name", "p61", "--network", "web6", "--ip6", "fd00:30::61", "localhost/vxbox", "sleep", "600")
		mustPodman(t, p2, "run", "-d", "--name", "p62", "--network", "web6", "localhost/vxbox", "sleep", "600")
		ip6 := mustPodman(t, p2, "inspect", "-f", "{{(index .NetworkSettings.Networks \"web6\").GlobalIPv6Address}}", "p62")
		if a, err := netip.ParseAddr(ip6); err != nil || !netip.MustParsePrefix("fd00:30::/64").Contains(a) {
			t.Fatalf("p62's IPv6 address %q: want one of fd00:30::/64", ip6)
		}
		retryPodman(t, p1, "1 packets received", "exec", "p61", "ping", "-c", "1", "-W", "1", ip6)
		retryPodman(t, p2, "1 packets received", "exec", "p62", "ping", "-c", "1", "-W", "1", "fd00:30::61")
	})
	step(t, "WithDocker", func(t *testing.T) {
		d2 := startDocker(t, l, "h2")
		// The agent puts the cluster's networks into a dockerd that starts,
		// and the user may create it too: whoever comes first, h2's dockerd
		// then has vxnet's web on the cluster's subnet.
		if _, err := d2.Docker("network", "create", "-d", "vxnet", "--ipam-driver", "vxnet", "--subnet", "172.28.0.0/24", "web"); err != nil &&
			!strings.Contains(err.Error(), "already exists") {
			t.Fatal(err)
		}
		if got := mustDocker(t, d2, "network", "inspect", "-f", "{{.Driver}} {{range .IPAM.Config}}{{.Subnet}}{{end}}", "web"); got != "vxnet 172.28.0.0/24" {
			t.Fatalf("h2's dockerd has web as %q, want vxnet 172.28.0.0/24", got)
		}
		mustDocker(t, d2, "run", "-d", "--name", "dc", "--net", "web", lab.DockerImage, "sleep", "600")
		dcIP := mustDocker(t, d2, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "dc")
		retryPodman(t, p1, "1 packets received", "exec", "pc1", "ping", "-c", "1", "-W", "1", dcIP)
		pingFrom(t, d2, "dc", ip1)
	})
}
