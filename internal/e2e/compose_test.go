package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/lab"
)

// compose runs Debian's docker-compose (1.29) on a lab dockerd with the
// repository's example project and the lab's image.
func compose(t *testing.T, d *lab.Dockerd, profile string, args ...string) (string, error) {
	t.Helper()
	file, err := filepath.Abs(filepath.Join("..", "..", "examples", "compose", "docker-compose.yml")) // tests run in their package's directory
	if err != nil {
		t.Fatal(err)
	}
	c := exec.Command("docker-compose", append([]string{"-p", "demo", "-f", file}, args...)...)
	c.Env = append(os.Environ(), "DOCKER_HOST=unix://"+d.Socket, "COMPOSE_PROFILES="+profile, "IMAGE="+lab.DockerImage)
	out, err := c.CombinedOutput()
	return string(out), err
}

// TestComposeAcrossHosts: the example Compose project (examples/compose),
// its services on two real dockerds on one external vxnet network: the
// client on host 2 reaches web on host 1 by its service name, web's port
// answers at host 1's address from outside, and `down` on both hosts leaves
// no endpoint, port or rule.
func TestComposeAcrossHosts(t *testing.T) {
	requireDocker(t)
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Fatal("docker-compose is not installed (apt-get install docker-compose)")
	}
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 1, Outside: true})
	h1, out := l.Hosts[0], *l.Outside
	d1, d2 := startDocker(t, l, "h1"), startDocker(t, l, "h2")
	mustDocker(t, d1, "network", "create", "-d", "vxnet", "--ipam-driver", "vxnet", "--subnet", "172.28.0.0/24", "appnet")
	waitDockerNetwork(t, d2, "appnet", true)
	for _, s := range []struct {
		d       *lab.Dockerd
		profile string
	}{{d1, "host1"}, {d2, "host2"}} {
		if o, err := compose(t, s.d, s.profile, "up", "-d"); err != nil {
			t.Fatalf("docker-compose up on %s: %v\n%s", s.d.Host, err, o)
		}
	}
	t.Cleanup(func() {
		_, _ = compose(t, d2, "host2", "down")
		_, _ = compose(t, d1, "host1", "down")
	})
	// The client's own loop reaches web by name, across the hosts.
	if err := waitCond(20*time.Second, func() error {
		logs, _ := compose(t, d2, "host2", "logs", "client")
		if !strings.Contains(logs, "hello from web") {
			return fmt.Errorf("the client has not reached web yet:\n%s", tailLines(logs, 5))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	retryDocker(t, d2, "hello from web", "exec", "demo_client_1", "wget", "-qO-", "http://web/")
	// web's published port, from another machine.
	published := netip.AddrPortFrom(h1.Addr, 8080).String()
	if err := waitCond(10*time.Second, func() error {
		got, err := dialHTTP(out.Netns, published)
		if err != nil || !strings.Contains(got, "hello from web") {
			return fmt.Errorf("GET http://%s/: %q %v", published, got, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct {
		d       *lab.Dockerd
		profile string
	}{{d2, "host2"}, {d1, "host1"}} {
		if o, err := compose(t, s.d, s.profile, "down"); err != nil {
			t.Fatalf("docker-compose down on %s: %v\n%s", s.d.Host, err, o)
		}
	}
	// Nothing left: no endpoint in the cluster, no veth, no published port.
	if err := waitCond(10*time.Second, func() error {
		o, err := vxnetCLI(t, "endpoints", "--socket", h1.Socket)
		if err != nil || strings.Count(o, "\n") != 1 {
			return fmt.Errorf("endpoints left: %v\n%s", err, o)
		}
		for _, h := range l.Hosts {
			health := datapath.HostIfName(h.Name + ".health") // the agent's own
			for _, f := range strings.Fields(inNS(t, h.Netns, "ip", "-o", "link", "show", "type", "veth")) {
				if name, _, _ := strings.Cut(f, "@"); strings.HasPrefix(name, "vxv") && name != health {
					return fmt.Errorf("%s keeps veth %s", h.Name, name)
				}
			}
		}
		if strings.Contains(vxnetRules(t, h1), "--dport 8080") {
			return fmt.Errorf("h1 keeps the DNAT of port 8080")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
