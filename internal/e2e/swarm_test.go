package e2e

import (
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/lab"
)

// TestSwarmBeside: Docker Swarm's overlay and vxnet on the same two
// dockerd hosts, Swarm as it comes (gossip on 7946, VXLAN on 4789) and
// vxnet with its defaults (gossip on 7947, VXLAN on 4789 too): both
// networks carry traffic at once, by address and by name, and neither
// network reaches the other.
func TestSwarmBeside(t *testing.T) {
	requireDocker(t)
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 1})
	h1, h2 := l.Hosts[0], l.Hosts[1]
	// The lab's own network has VNI 4097, which Swarm's first overlay
	// takes too (it allocates from 4096 up); vxnet's own picks stay clear.
	if err := client(l, "h1").RemoveNetwork("net1", true); err != nil {
		t.Fatal(err)
	}
	d1, d2 := startDocker(t, l, "h1"), startDocker(t, l, "h2")
	mustDocker(t, d1, "swarm", "init", "--advertise-addr", h1.Addr.String(), "--listen-addr", netip.AddrPortFrom(h1.Addr, 2377).String())
	token := mustDocker(t, d1, "swarm", "join-token", "-q", "worker")
	mustDocker(t, d2, "swarm", "join", "--token", token, "--advertise-addr", h2.Addr.String(),
		"--listen-addr", netip.AddrPortFrom(h2.Addr, 2377).String(), netip.AddrPortFrom(h1.Addr, 2377).String())
	t.Cleanup(func() {
		_, _ = d2.Docker("swarm", "leave", "--force")
		_, _ = d1.Docker("swarm", "leave", "--force")
	})
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(d1.Dir + "/dockerd.log")
			t.Logf("dockerd log of h1:\n%s", tailLines(string(b), 80))
		}
	})
	mustDocker(t, d1, "network", "create", "-d", "overlay", "--attachable", "--subnet", "10.99.0.0/24", "ov")
	mustDocker(t, d1, "network", "create", "-d", "vxnet", "--ipam-driver", "vxnet", "--subnet", "10.98.0.0/24", "vx")
	waitDockerNetwork(t, d2, "vx", true)
	for _, c := range []struct {
		d         *lab.Dockerd
		name, net string
	}{{d1, "s1", "ov"}, {d2, "s2", "ov"}, {d1, "v1", "vx"}, {d2, "v2", "vx"}} {
		runSwarmAware(t, c.d, c.name, c.net)
	}
	ip := func(d *lab.Dockerd, c string) string {
		return mustDocker(t, d, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", c)
	}
	s1IP, v1IP := ip(d1, "s1"), ip(d1, "v1")
	// Both at once: by address, then by name, across the hosts.
	pingFrom(t, d2, "s2", s1IP)
	pingFrom(t, d2, "v2", v1IP)
	pingFrom(t, d2, "s2", "s1")
	pingFrom(t, d2, "v2", "v1")
	pingFrom(t, d1, "s1", "s2")
	pingFrom(t, d1, "v1", "v2")
	// Each is its own network: no name of the other resolves, no address
	// of the other answers.
	for _, c := range []struct {
		d        *lab.Dockerd
		ctr, dst string
	}{{d2, "v2", s1IP}, {d2, "s2", v1IP}, {d2, "v2", "s1"}} {
		if out, err := c.d.Docker("exec", c.ctr, "ping", "-c", "1", "-W", "1", c.dst); err == nil && strings.Contains(out, "1 packets received") {
			t.Errorf("%s reached %s across the two overlays", c.ctr, c.dst)
		}
	}
	// Swarm holds 7946 and vxnet 7947 on each host; both keep working.
	for _, h := range l.Hosts {
		ss := inNS(t, h.Netns, "ss", "-Hlntp")
		if !strings.Contains(ss, h.Addr.String()+":7946") || !strings.Contains(ss, h.Addr.String()+":7947") {
			t.Errorf("%s listens on:\n%s\nwant Swarm's 7946 and vxnet's 7947", h.Name, ss)
		}
	}
	pingFrom(t, d2, "s2", "s1")
	pingFrom(t, d2, "v2", "v1")
}

// runSwarmAware starts a container on network net. Right after 'swarm
// init' dockerd 20.10 may refuse the first attachment to an overlay with
// "Could not attach to network ingress ... not manually attachable" while
// it still sets up its ingress network: that refusal (Swarm's, not
// vxnet's) is retried a few times, anything else fails the test.
func runSwarmAware(t *testing.T, d *lab.Dockerd, name, net string) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		out, err := d.Docker("run", "-d", "--name", name, "--net", net, lab.DockerImage, "sleep", "600")
		if err == nil {
			return
		}
		if attempt == 5 || !strings.Contains(out, "not manually attachable") {
			t.Fatal(err)
		}
		t.Logf("Swarm was not ready for %s (attempt %d): %s", name, attempt, strings.TrimSpace(out))
		_, _ = d.Docker("rm", "-f", name)
		time.Sleep(time.Second)
	}
}
