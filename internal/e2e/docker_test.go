package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/probe"
	"github.com/vxnet/vxnet/internal/testutil"
)

func requireDocker(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	for _, bin := range []string{"dockerd", "docker", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("VXNET_REQUIRE_ROOT") == "1" {
				t.Fatalf("%s is not installed (install docker.io and busybox-static)", bin)
			}
			t.Skipf("skipping: %s is not installed", bin)
		}
	}
}

func startDocker(t *testing.T, l *lab.Lab, host string, extra ...string) *lab.Dockerd {
	t.Helper()
	d, err := l.StartDocker(host, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(d.Dir + "/dockerd.log")
			t.Logf("dockerd log of %s (tail):\n%s", host, tailLines(string(b), 30))
		}
		_ = d.Stop()
	})
	return d
}

// step runs one subtest of a sequence whose later steps use what the
// earlier ones left (containers, networks): the first failure stops the
// sequence, with a clear message, instead of cascading.
func step(t *testing.T, name string, fn func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, fn) {
		t.Fatalf("step %s failed; the steps after it depend on it and are not run", name)
	}
}

func mustDocker(t *testing.T, d *lab.Dockerd, args ...string) string {
	t.Helper()
	out, err := d.Docker(args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// pingFrom runs busybox ping inside a container until it succeeds.
func pingFrom(t *testing.T, d *lab.Dockerd, ctr, dst string, extra ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		args := append([]string{"exec", ctr, "ping", "-c", "1", "-W", "1"}, extra...)
		out, err := d.Docker(append(args, dst)...)
		if err == nil && strings.Contains(out, "1 packets received") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s on %s cannot ping %s: %v %s", ctr, d.Host, dst, err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestDockerClassicSteps replays the classic two-host recipe with Docker's
// own commands on two real dockerds, with vxnet as network and IPAM driver.
func TestDockerClassicSteps(t *testing.T) {
	requireDocker(t)
	l := up(t, 2, 1, 0)
	d1, d2 := startDocker(t, l, "h1"), startDocker(t, l, "h2")
	mustDocker(t, d1, "network", "create", "-d", "vxnet", "--ipam-driver", "vxnet", "--subnet", "172.18.0.0/16", "vxlan-net")
	// Host 2's agent creates the same network in its own dockerd.
	waitDockerNetwork(t, d2, "vxlan-net", true)
	mustDocker(t, d1, "run", "-d", "--name", "c1", "--net", "vxlan-net", "--ip", "172.18.0.11", lab.DockerImage, "sleep", "600")
	mustDocker(t, d2, "run", "-d", "--name", "c2", "--net", "vxlan-net", "--ip", "172.18.0.12", lab.DockerImage, "sleep", "600")
	pingFrom(t, d1, "c1", "172.18.0.12")
	pingFrom(t, d2, "c2", "172.18.0.11")
	mtu := mustDocker(t, d1, "exec", "c1", "cat", "/sys/class/net/eth0/mtu")
	if mtu != "1450" {
		t.Fatalf("container MTU = %s, want 1450", mtu)
	}
	// A full-size packet with DF crosses (busybox ping cannot set DF: send
	// it from the container's namespace directly).
	if _, err := probe.Ping(ctrNetns(t, d1, "c1"), netip.MustParseAddr("172.18.0.12"), 1450-28, true, 2*time.Second); err != nil {
		t.Fatalf("full-size packet with DF: %v", err)
	}

	step(t, "AddressTakenOnOtherHost", func(t *testing.T) {
		out, err := d1.Docker("run", "-d", "--name", "dup", "--net", "vxlan-net", "--ip", "172.18.0.12", lab.DockerImage, "sleep", "600")
		if err == nil || !strings.Contains(out, "address 172.18.0.12 is already in use on network") {
			t.Fatalf("duplicate --ip: err %v, output %q", err, out)
		}
		_, _ = d1.Docker("rm", "-f", "dup")
	})
	step(t, "ErrorsReachDockerCLI", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--subnet", "172.18.5.0/24", "overlap"}, "overlaps"},
			{[]string{"--subnet", "10.77.0.0/24", "-o", "vxnet.vni=0", "badvni"}, "invalid VNI 0"},
			{[]string{"overlap2"}, "needs an explicit --subnet"},
		} {
			args := append([]string{"network", "create", "-d", "vxnet", "--ipam-driver", "vxnet"}, tc.args...)
			out, err := d1.Docker(args...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("docker %v: err %v, output %q, want it to say %q", tc.args, err, out, tc.want)
			}
		}
		n, err := client(l, "h1").Network(dockerNetName(t, l, "172.18.0.0/16"))
		if err != nil {
			t.Fatal(err)
		}
		out, err := d2.Docker("network", "create", "-d", "vxnet", "--ipam-driver", "vxnet", "--subnet", "10.78.0.0/24", "-o", fmt.Sprintf("vxnet.vni=%d", n.VNI), "vnitaken")
		if err == nil || !strings.Contains(out, fmt.Sprintf("VNI %d is already used", n.VNI)) {
			t.Errorf("VNI taken: err %v, output %q", err, out)
		}
	})
	step(t, "DriverOptions", func(t *testing.T) {
		mustDocker(t, d1, "network", "create", "-d", "vxnet", "--ipam-driver", "vxnet", "--subnet", "172.23.0.0/24",
			"-o", "vxnet.vni=4242", "-o", "com.docker.network.driver.mtu=1400", "opts")
		mustDocker(t, d1, "run", "-d", "--name", "o1", "--net", "opts", lab.DockerImage, "sleep", "600")
		if mtu := mustDocker(t, d1, "exec", "o1", "cat", "/sys/class/net/eth0/mtu"); mtu != "1400" {
			t.Fatalf("container MTU = %s, want the 1400 asked for", mtu)
		}
		n, err := client(l, "h1").Network(dockerNetName(t, l, "172.23.0.0/24"))
		if err != nil || n.VNI != 4242 {
			t.Fatalf("network %+v, %v; want VNI 4242", n, err)
		}
		mustDocker(t, d1, "rm", "-f", "o1")
		mustDocker(t, d1, "network", "rm", "opts")
	})
	step(t, "IsolatedFromOtherNetwork", func(t *testing.T) {
		mustDocker(t, d2, "network", "create", "-d", "vxnet", "--ipam-driver", "vxnet", "--subnet", "172.19.0.0/16", "other")
		mustDocker(t, d2, "run", "-d", "--name", "o2", "--net", "other", lab.DockerImage, "sleep", "600")
		ip := mustDocker(t, d2, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "o2")
		// Host 1 has the other network too (its bridge and gateway), and a
		// container of it on host 1 reaches o2: the path exists, so c1's
		// failure below is isolation, not a network that is not there yet.
		waitDockerNetwork(t, d1, "other", true)
		mustDocker(t, d1, "run", "-d", "--name", "o1", "--net", "other", lab.DockerImage, "sleep", "600")
		if out, err := d1.Docker("exec", "o1", "ping", "-c", "1", "-W", "2", ip); err != nil {
			t.Fatalf("positive control: o1 on network other cannot reach o2 (%s): %v %s", ip, err, out)
		}
		if out, err := d1.Docker("exec", "c1", "ping", "-c", "1", "-W", "1", ip); err == nil {
			t.Fatalf("c1 reached %s on another network: %s", ip, out)
		}
		mustDocker(t, d1, "rm", "-f", "o1")
		mustDocker(t, d2, "rm", "-f", "o2")
		mustDocker(t, d2, "network", "rm", "other")
		// Removed on host 2, it goes from host 1's dockerd too.
		waitDockerNetwork(t, d1, "other", false)
	})
	step(t, "VxnetNetworkAppearsInDocker", func(t *testing.T) {
		if _, err := client(l, "h2").CreateNetwork(api.NetworkCreate{Name: "fromcli", Subnet: "172.20.0.0/24"}); err != nil {
			t.Fatal(err)
		}
		waitDockerNetwork(t, d1, "fromcli", true)
		waitDockerNetwork(t, d2, "fromcli", true)
		mustDocker(t, d1, "run", "-d", "--name", "f1", "--net", "fromcli", lab.DockerImage, "sleep", "600")
		// Docker removes its network even when the driver refuses (it only
		// logs the driver's error). The cluster network stays, because a
		// container on host 1 uses it, and host 2's dockerd gets it back.
		mustDocker(t, d2, "network", "rm", "fromcli")
		if _, err := client(l, "h2").Network("fromcli"); err != nil {
			t.Fatalf("cluster network gone although a container uses it: %v", err)
		}
		waitDockerNetwork(t, d2, "fromcli", true)
		pingFrom(t, d1, "f1", "172.20.0.1")
		mustDocker(t, d1, "rm", "-f", "f1")
		if err := client(l, "h2").RemoveNetwork("fromcli", false); err != nil {
			t.Fatal(err)
		}
		waitDockerNetwork(t, d1, "fromcli", false)
		waitDockerNetwork(t, d2, "fromcli", false)
	})
	step(t, "ContainerRestart", func(t *testing.T) {
		mustDocker(t, d2, "restart", "-t", "1", "c2")
		pingFrom(t, d1, "c1", "172.18.0.12")
		mustDocker(t, d2, "stop", "-t", "1", "c2")
		mustDocker(t, d2, "start", "c2")
		pingFrom(t, d1, "c1", "172.18.0.12")
	})
	step(t, "RemoveLeavesNothing", func(t *testing.T) {
		mustDocker(t, d1, "rm", "-f", "c1")
		mustDocker(t, d2, "rm", "-f", "c2")
		mustDocker(t, d1, "network", "rm", "vxlan-net")
		waitDockerNetwork(t, d2, "vxlan-net", false)
		err := waitCond(10*time.Second, func() error {
			for _, h := range l.Hosts {
				obs, err := l.Observe(h.Name)
				if err != nil {
					return err
				}
				obs = withoutHealth(obs)
				if len(obs.Ports) != 0 || len(obs.Networks) != 1 {
					return fmt.Errorf("%s still has %d ports and %d networks", h.Name, len(obs.Ports), len(obs.Networks))
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func waitDockerNetwork(t *testing.T, d *lab.Dockerd, name string, present bool) {
	t.Helper()
	if err := d.WaitNetwork(name, present, 15*time.Second); err != nil {
		t.Fatal(err)
	}
}

func ctrNetns(t *testing.T, d *lab.Dockerd, ctr string) string {
	t.Helper()
	pid := mustDocker(t, d, "inspect", "-f", "{{.State.Pid}}", ctr)
	return "/proc/" + pid + "/ns/net"
}

// TestDockerRestartAndConnect: connect/disconnect, a dockerd restart with
// containers that come back (--restart always), and a dockerd killed -9:
// the cluster view and the datapath follow, nothing stale stays.
func TestDockerRestartAndConnect(t *testing.T) {
	requireDocker(t)
	l := up(t, 3, 1, 0)
	parent := t // daemons restarted in subtests live as long as the test
	// The one dockerd without iptables: a mixed cluster, as hosts are
	// upgraded or configured one by one (every other dockerd runs with its
	// defaults).
	d1, d2, d3 := startDocker(t, l, "h1"), startDocker(t, l, "h2"), startDocker(t, l, "h3", "--iptables=false")
	mustDocker(t, d3, "network", "create", "-d", "vxnet", "--ipam-driver", "vxnet", "--subnet", "172.21.0.0/24", "web")
	waitDockerNetwork(t, d1, "web", true)
	waitDockerNetwork(t, d2, "web", true)
	mustDocker(t, d1, "run", "-d", "--name", "ca", "--net", "web", "--ip", "172.21.0.10", lab.DockerImage, "sleep", "600")
	mustDocker(t, d2, "run", "-d", "--name", "cb", "--restart", "always", "--net", "web", "--ip", "172.21.0.20", lab.DockerImage, "sleep", "600")
	pingFrom(t, d1, "ca", "172.21.0.20")
	// A third host, its address from vxnet's IPAM.
	mustDocker(t, d3, "run", "-d", "--name", "cc", "--net", "web", lab.DockerImage, "sleep", "600")
	ccIP := mustDocker(t, d3, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "cc")
	pingFrom(t, d1, "ca", ccIP)
	pingFrom(t, d3, "cc", "172.21.0.20")
	mustDocker(t, d3, "rm", "-f", "cc")

	endpoints := func() int {
		n, err := client(l, "h1").Network(dockerNetworkName(t, l, "h1", "172.21.0.0/24"))
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for _, c := range n.Endpoints {
			total += c
		}
		return total
	}
	waitEndpoints := func(want int) {
		t.Helper()
		if err := waitCond(15*time.Second, func() error {
			if got := endpoints(); got != want {
				return fmt.Errorf("network has %d endpoints, want %d", got, want)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	step(t, "ConnectDisconnect", func(t *testing.T) {
		mustDocker(t, d2, "network", "create", "-d", "vxnet", "--ipam-driver", "vxnet", "--subnet", "172.22.0.0/24", "web2")
		mustDocker(t, d2, "run", "-d", "--name", "cx", "--net", "web2", lab.DockerImage, "sleep", "600")
		mustDocker(t, d2, "network", "connect", "--ip", "172.21.0.30", "web", "cx")
		waitEndpoints(3)
		pingFrom(t, d1, "ca", "172.21.0.30")
		mustDocker(t, d2, "network", "disconnect", "web", "cx")
		waitEndpoints(2)
		if _, err := d1.Docker("exec", "ca", "ping", "-c", "1", "-W", "1", "172.21.0.30"); err == nil {
			t.Fatal("a disconnected container still answers")
		}
		mustDocker(t, d2, "rm", "-f", "cx")
	})
	step(t, "AgentRestartDuringRun", func(t *testing.T) {
		// Docker calls the plugin while its agent is down (an upgrade, a
		// crash): dockerd retries, the restarted agent answers, and the
		// container comes up with a working address and nothing leaked.
		if err := l.KillAgent("h2", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		type result struct {
			out string
			err error
		}
		done := make(chan result, 1)
		go func() {
			out, err := d2.Docker("run", "-d", "--name", "cr", "--net", "web", lab.DockerImage, "sleep", "600")
			done <- result{out, err}
		}()
		// docker run created the container and now waits for the driver
		// (dockerd retries the plugin while its socket does not answer).
		if err := waitCond(30*time.Second, func() error {
			select {
			case r := <-done:
				return fmt.Errorf("docker run ended while the agent was down (%v): %s", r.err, r.out)
			default:
			}
			out, err := d2.Docker("ps", "-a", "--filter", "name=^cr$", "--format", "{{.State}}")
			if err != nil || strings.TrimSpace(out) != "created" {
				return fmt.Errorf("container cr: %q %v", out, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-done:
			t.Fatalf("docker run ended while the agent was down (%v): %s", r.err, r.out)
		default:
		}
		if err := l.StartAgent("h2"); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatalf("docker run across an agent restart: %v: %s", r.err, r.out)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("docker run still waits 60 s after the agent came back")
		}
		ip := mustDocker(t, d2, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "cr")
		waitEndpoints(3)
		pingFrom(t, d1, "ca", ip)
		mustDocker(t, d2, "rm", "-f", "cr")
		waitEndpoints(2)
	})
	step(t, "DockerdRestart", func(t *testing.T) {
		if err := d2.Kill(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		waitEndpoints(1) // dockerd stopped b on its way down
		d2 = startDocker(parent, l, "h2")
		waitEndpoints(2) // --restart always brought b back, same address
		pingFrom(t, d1, "ca", "172.21.0.20")
	})
	step(t, "DockerdLiveRestore", func(t *testing.T) {
		// A daemon that keeps its containers while it is down.
		if err := d2.Kill(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		d2 = startDocker(parent, l, "h2", "--live-restore")
		waitEndpoints(2)
		if err := d2.Kill(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		// The container outlives its daemon; so do its address and its path.
		if _, err := probe.Ping(ctrNetns(t, d1, "ca"), netip.MustParseAddr("172.21.0.20"), 56, false, 2*time.Second); err != nil {
			t.Fatalf("traffic stopped with dockerd: %v", err)
		}
		if got := endpoints(); got != 2 {
			t.Fatalf("network has %d endpoints while dockerd is down, want 2", got)
		}
		d2 = startDocker(parent, l, "h2", "--live-restore")
		waitEndpoints(2)
		pingFrom(t, d1, "ca", "172.21.0.20")
		obs, err := l.Observe("h2")
		if err != nil {
			t.Fatal(err)
		}
		obs = withoutHealth(obs)
		if len(obs.Ports) != 1 {
			t.Fatalf("h2 has %d container ports after the restarts, want 1: %v", len(obs.Ports), obs.Ports)
		}
	})
}

func dockerNetworkName(t *testing.T, l *lab.Lab, host, subnet string) string {
	t.Helper()
	nets, err := client(l, host).Networks()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nets {
		if n.Subnet.String() == subnet {
			return n.Name
		}
	}
	t.Fatalf("no network with subnet %s on %s", subnet, host)
	return ""
}

func dockerNetName(t *testing.T, l *lab.Lab, subnet string) string {
	t.Helper()
	return dockerNetworkName(t, l, "h1", subnet)
}
