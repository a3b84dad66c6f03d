package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/lab"
)

// TestContainerdCNI: containers started by containerd's own CLI with
// `ctr run --cni` on two lab hosts (a containerd per host, ctr's CNI
// directory holding vxnet's conflist) get addresses on a vxnet network and
// reach each other across the hosts, and a Docker container and a podman
// container on the same network (on h2, beside containerd) reach them and
// each other; `ctr task kill` and `delete` leave no endpoint or veth
// behind.
func TestContainerdCNI(t *testing.T) {
	requireDocker(t)
	for _, bin := range []string{"containerd", "ctr", "podman"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed (containerd comes with docker.io; podman is its own package)", bin)
		}
	}
	dir := cniPlugins(t)
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 1})
	if _, err := client(l, "h1").CreateNetwork(api.NetworkCreate{Name: "web", Subnet: "172.28.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	ctrs := map[string]*lab.Containerd{}
	for _, h := range l.Hosts {
		c, err := l.StartContainerd(h.Name, dir, stdPlugins)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				b, _ := os.ReadFile(c.Dir + "/containerd.log")
				t.Logf("containerd log of %s (tail):\n%s", h.Name, tailLines(string(b), 20))
			}
			_ = c.Stop()
		})
		conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"web","plugins":[{"type":"vxnet","socket":%q}]}`, h.Socket)
		if err := c.AddNetwork("web", []byte(conf)); err != nil {
			t.Fatal(err)
		}
		id := "ctr-" + h.Name
		if out, err := c.Ctr("run", "-d", "--cni", "--cgroup", "/"+c.Cgroups+"/"+id, "--rootfs", c.Rootfs, id, "/bin/sleep", "600"); err != nil {
			t.Fatalf("ctr run --cni on %s: %v\n%s", h.Name, err, out)
		}
		ctrs[h.Name] = c
	}
	// Their addresses, as the cluster knows them (attached through CNI).
	ips := map[string]string{}
	if err := waitCond(10*time.Second, func() error {
		out, err := vxnetCLI(t, "endpoints", "--network", "web", "--json", "--socket", l.Hosts[0].Socket)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		rows := parseRows(t, out)
		for _, r := range rows {
			if r.From != api.FromCNI {
				return fmt.Errorf("row %+v not from cni", r)
			}
			ips[r.Host] = r.IP
		}
		if len(ips) != 2 {
			return fmt.Errorf("endpoints %+v, want one per host", rows)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ping := func(c *lab.Containerd, id, dst string) {
		t.Helper()
		if err := waitCond(10*time.Second, func() error {
			out, err := c.Ctr("tasks", "exec", "--exec-id", fmt.Sprintf("p%d", time.Now().UnixNano()), id, "/bin/ping", "-c", "1", "-W", "1", dst)
			if err != nil || !strings.Contains(out, "1 packets received") {
				return fmt.Errorf("%v %s", err, out)
			}
			return nil
		}); err != nil {
			t.Fatalf("%s on %s cannot ping %s: %v", id, c.Host, dst, err)
		}
	}
	ping(ctrs["h1"], "ctr-h1", ips["h2"])
	ping(ctrs["h2"], "ctr-h2", ips["h1"])
	// A Docker container on the same network, on h2.
	d2 := startDocker(t, l, "h2")
	waitDockerNetwork(t, d2, "web", true)
	mustDocker(t, d2, "run", "-d", "--name", "dc", "--net", "web", lab.DockerImage, "sleep", "600")
	pingFrom(t, d2, "dc", ips["h1"])
	// And a podman container, on h2 beside containerd: both run vxnet-cni.
	p2 := startPodman(t, l, "h2", dir)
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"web","plugins":[{"type":"vxnet","socket":%q}]}`, l.Hosts[1].Socket)
	if err := p2.AddNetwork("web", []byte(conf)); err != nil {
		t.Fatal(err)
	}
	mustPodman(t, p2, "run", "-d", "--name", "pc", "--network", "web", "localhost/vxbox", "sleep", "600")
	pip := mustPodman(t, p2, "inspect", "-f", `{{(index .NetworkSettings.Networks "web").IPAddress}}`, "pc")
	retryPodman(t, p2, "1 packets received", "exec", "pc", "ping", "-c", "1", "-W", "1", ips["h1"])
	ping(ctrs["h1"], "ctr-h1", pip)
	pingFrom(t, d2, "dc", pip)
	// Gone with its task: no endpoint, no veth.
	c1 := ctrs["h1"]
	for _, args := range [][]string{{"tasks", "kill", "-s", "SIGKILL", "ctr-h1"}, {"tasks", "delete", "-f", "ctr-h1"}, {"containers", "delete", "ctr-h1"}} {
		if out, err := c1.Ctr(args...); err != nil {
			t.Fatalf("ctr %v: %v\n%s", args, err, out)
		}
	}
	h1 := l.Hosts[0]
	if err := waitCond(15*time.Second, func() error {
		n, err := client(l, "h1").Network("web")
		if err != nil {
			return err
		}
		if n.Endpoints["h1"] != 0 {
			return fmt.Errorf("h1 still has %d endpoints on web", n.Endpoints["h1"])
		}
		health := datapath.HostIfName("h1.health")
		for _, f := range strings.Fields(inNS(t, h1.Netns, "ip", "-o", "link", "show", "type", "veth")) {
			if name, _, _ := strings.Cut(f, "@"); strings.HasPrefix(name, "vxv") && name != health {
				return fmt.Errorf("h1 keeps veth %s", name)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func parseRows(t *testing.T, out string) []api.EndpointRow {
	t.Helper()
	var rows []api.EndpointRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return rows
}
