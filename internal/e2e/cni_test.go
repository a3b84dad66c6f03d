package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/lab/labtest"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/testutil"
)

// Debian's containernetworking-plugins, for chaining.
const stdPlugins = "/usr/lib/cni"

// cniPlugins builds vxnet-cni as "vxnet" into a directory.
func cniPlugins(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "vxnet"), "github.com/vxnet/vxnet/cmd/vxnet-cni").CombinedOutput()
	if err != nil {
		t.Fatalf("build vxnet-cni: %v %s", err, out)
	}
	return dir
}

// runtime drives the real plugin binary through libcni, as a runtime on
// host h does (plugins run in the host's namespace).
type runtime struct {
	t    *testing.T
	host lab.Host
	cni  *libcni.CNIConfig
}

func newRuntime(t *testing.T, h lab.Host, pluginDir string) *runtime {
	return &runtime{t: t, host: h, cni: libcni.NewCNIConfigWithCacheDir([]string{pluginDir, stdPlugins}, t.TempDir(), nil)}
}

func (r *runtime) do(fn func() error) error {
	return nsutil.Do(r.host.Netns, fn)
}

func (r *runtime) add(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (*current.Result, error) {
	var res types.Result
	err := r.do(func() error {
		var err error
		res, err = r.cni.AddNetworkList(context.Background(), list, rt)
		return err
	})
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

func confList(t *testing.T, version, socket string, chain ...string) *libcni.NetworkConfigList {
	t.Helper()
	plugins := []string{fmt.Sprintf(`{"type":"vxnet","socket":%q,"capabilities":{"aliases":true}}`, socket)}
	plugins = append(plugins, chain...)
	list, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":%q,"name":"net1","plugins":[%s]}`, version, strings.Join(plugins, ","))))
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func rtConf(id, netns string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAME", id}}}
}

func cniCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// TestCNI drives the real vxnet-cni binary through libcni, for spec 1.0.0
// and 1.1.0: ADD (an address from vxnet's IPAM, traffic to another host,
// the name for cluster DNS), CHECK (and a missing interface found), ADD
// again after the runtime lost its bookkeeping (same address, no leak),
// DEL (and again, and with the namespace gone), GC, STATUS (and with the
// agent away), bad configuration and CNI_ARGS; and chained with the
// standard portmap plugin, -p style.
func TestCNI(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat(filepath.Join(stdPlugins, "portmap")); err != nil {
		t.Fatalf("containernetworking-plugins is not installed (%v)", err)
	}
	dir := cniPlugins(t)
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 1, PerHost: 1, Outside: true})
	h1, h2 := l.Hosts[0], l.Hosts[1]
	remote := labtest.Container(t, l, "h2-n1-c1")
	rt := newRuntime(t, h1, dir)
	for _, version := range []string{"1.0.0", "1.1.0"} {
		t.Run(version, func(t *testing.T) {
			list := confList(t, version, h1.Socket)
			id := "ctr-" + strings.ReplaceAll(version, ".", "")
			ns := newContainer(t, l, id)
			res, err := rt.add(list, rtConf(id, ns))
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if len(res.IPs) != 1 || len(res.Interfaces) != 2 || res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != ns ||
				*res.IPs[0].Interface != 1 || !strings.HasPrefix(res.Interfaces[0].Name, "vxv") || res.Interfaces[0].Sandbox != "" ||
				res.IPs[0].Gateway.String() != "198.19.1.1" || !netip.MustParsePrefix("198.19.1.0/24").Contains(netip.MustParseAddr(res.IPs[0].Address.IP.String())) {
				t.Fatalf("result %+v", res)
			}
			ip := netip.MustParseAddr(res.IPs[0].Address.IP.String())
			pingUntil(t, ns, remote.IP, 5*time.Second)
			// The name is the cluster's, on the other host too.
			if err := waitCond(5*time.Second, func() error {
				s, err := api.NewClient(h2.Socket).StatusWithEndpoints()
				if err != nil {
					return err
				}
				for _, e := range s.Endpoints {
					if e.IP == ip && e.Name == id {
						return nil
					}
				}
				return fmt.Errorf("h2 does not know %s as %s", ip, id)
			}); err != nil {
				t.Fatal(err)
			}
			if err := rt.do(func() error { return rt.cni.CheckNetworkList(context.Background(), list, rtConf(id, ns)) }); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			// A remote endpoint missing on this host: CHECK says so (the
			// agent puts it back on its next pass).
			inNS(t, h1.Netns, "ip", "neigh", "del", remote.IP.String(), "dev", "vxlan4097")
			err = rt.do(func() error { return rt.cni.CheckNetworkList(context.Background(), list, rtConf(id, ns)) })
			if err == nil || !strings.Contains(err.Error(), "vxnet: network net1 has 1 remote endpoints, 0 programmed on this host") {
				t.Fatalf("CHECK with a remote endpoint missing: %v", err)
			}
			inNS(t, h1.Netns, "ip", "neigh", "replace", remote.IP.String(), "lladdr", remote.MAC, "dev", "vxlan4097", "nud", "permanent")
			// Someone deletes the interface: CHECK says so; ADD again (the
			// runtime lost its bookkeeping) gives it back with the same
			// address.
			inNS(t, ns, "ip", "link", "del", "eth0")
			err = rt.do(func() error { return rt.cni.CheckNetworkList(context.Background(), list, rtConf(id, ns)) })
			if err == nil || !strings.Contains(err.Error(), "vxnet: interface eth0 is missing in "+ns) {
				t.Fatalf("CHECK without the interface: %v", err)
			}
			again := newRuntime(t, h1, dir)
			res2, err := again.add(list, rtConf(id, ns))
			if err != nil {
				t.Fatalf("ADD again: %v", err)
			}
			if got := res2.IPs[0].Address.IP.String(); got != ip.String() {
				t.Fatalf("ADD again gave %s, want the same %s", got, ip)
			}
			pingUntil(t, ns, remote.IP, 5*time.Second)
			// DEL, DEL again, DEL with the namespace gone.
			for range 2 {
				if err := rt.do(func() error { return rt.cni.DelNetworkList(context.Background(), list, rtConf(id, ns)) }); err != nil {
					t.Fatalf("DEL: %v", err)
				}
			}
			if eps, _ := api.NewClient(h1.Socket).LocalEndpoints(); len(eps) != 1 { // the lab's own container
				t.Fatalf("endpoints after DEL: %+v", eps)
			}
			if _, err := rt.add(list, rtConf(id, ns)); err != nil {
				t.Fatal(err)
			}
			if err := nsutil.Delete(l.Prefix + id); err != nil {
				t.Fatal(err)
			}
			if err := rt.do(func() error { return rt.cni.DelNetworkList(context.Background(), list, rtConf(id, ns)) }); err != nil {
				t.Fatalf("DEL with the namespace gone: %v", err)
			}
		})
	}
	t.Run("GCAndStatus", func(t *testing.T) {
		list := confList(t, "1.1.0", h1.Socket)
		a, b := newContainer(t, l, "gca"), newContainer(t, l, "gcb")
		for id, ns := range map[string]string{"gca": a, "gcb": b} {
			if _, err := rt.add(list, rtConf(id, ns)); err != nil {
				t.Fatal(err)
			}
		}
		if err := rt.do(func() error {
			return rt.cni.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "gca", IfName: "eth0"}}})
		}); err != nil {
			t.Fatalf("GC: %v", err)
		}
		var ids []string
		eps, _ := api.NewClient(h1.Socket).LocalEndpoints()
		for _, e := range eps {
			ids = append(ids, e.ContainerID)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []string{"", "gca"}) { // the lab's own container has no container ID
			t.Errorf("after GC the endpoints belong to %q, want gca's and the lab's", ids)
		}
		if err := rt.do(func() error { return rt.cni.GetStatusNetworkList(context.Background(), list) }); err != nil {
			t.Errorf("STATUS: %v", err)
		}
		away := confList(t, "1.1.0", filepath.Join(t.TempDir(), "no.sock"))
		err := rt.do(func() error { return rt.cni.GetStatusNetworkList(context.Background(), away) })
		if cniCode(err) != 50 || !strings.Contains(err.Error(), "vxnet: the agent does not answer") {
			t.Errorf("STATUS with no agent: %v (code %d), want code 50", err, cniCode(err))
		}
		if err := rt.do(func() error { return rt.cni.DelNetworkList(context.Background(), list, rtConf("gca", a)) }); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("BadInput", func(t *testing.T) {
		ns := newContainer(t, l, "bad")
		bad, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"net1","plugins":[{"type":"vxnet","socket":%q,"network":"Bad Name"}]}`, h1.Socket)))
		if err != nil {
			t.Fatal(err)
		}
		_, err = rt.add(bad, rtConf("b1", ns))
		if cniCode(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), `vxnet: invalid network name "Bad Name"`) {
			t.Errorf("bad network name: %v (code %d)", err, cniCode(err))
		}
		list := confList(t, "1.0.0", h1.Socket)
		args := &libcni.RuntimeConf{ContainerID: "b2", NetNS: ns, IfName: "eth0", Args: [][2]string{{"FOO", "bar"}}}
		_, err = rt.add(list, args)
		if cniCode(err) != types.ErrInvalidEnvironmentVariables || !strings.Contains(err.Error(), "vxnet: CNI_ARGS") {
			t.Errorf("unknown CNI_ARGS without IgnoreUnknown: %v (code %d)", err, cniCode(err))
		}
		missing, _ := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"nope","plugins":[{"type":"vxnet","socket":%q}]}`, h1.Socket)))
		_, err = rt.add(missing, rtConf("b3", ns))
		if err == nil || !strings.Contains(err.Error(), `unknown network "nope" (known: net1); give "subnet" in the network configuration to create it`) {
			t.Errorf("unknown network without subnet: %v", err)
		}
		// With a subnet the network is made on the fly, for every host.
		made, _ := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"made","plugins":[{"type":"vxnet","socket":%q,"subnet":"198.19.60.0/24"}]}`, h1.Socket)))
		if _, err := rt.add(made, rtConf("b4", ns)); err != nil {
			t.Fatalf("ADD creating the network: %v", err)
		}
		if _, err := api.NewClient(h2.Socket).Network("made"); err != nil {
			t.Errorf("h2 does not know the network made by ADD: %v", err)
		}
		_ = rt.do(func() error { return rt.cni.DelNetworkList(context.Background(), made, rtConf("b4", ns)) })
	})
	t.Run("Chained", func(t *testing.T) {
		list := confList(t, "1.0.0", h1.Socket, `{"type":"portmap","capabilities":{"portMappings":true},"snat":true}`,
			`{"type":"tuning","sysctl":{"net.ipv4.conf.eth0.rp_filter":"2"}}`,
			`{"type":"firewall","backend":"iptables"}`,
			`{"type":"bandwidth","ingressRate":1000000000,"ingressBurst":100000000,"egressRate":1000000000,"egressBurst":100000000}`)
		ns := newContainer(t, l, "pm")
		r := rtConf("pm", ns)
		r.CapabilityArgs = map[string]interface{}{"portMappings": []map[string]interface{}{{"hostPort": 8090, "containerPort": 80, "protocol": "tcp"}}}
		if _, err := rt.add(list, r); err != nil {
			t.Fatalf("ADD with portmap: %v", err)
		}
		if got := strings.TrimSpace(inNS(t, ns, "cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter")); got != "2" {
			t.Errorf("tuning did not set rp_filter: %s", got)
		}
		serveTCP(t, ns, ":80", "pm")
		dialUntil(t, l.Outside.Netns, netip.AddrPortFrom(h1.Addr, 8090).String(), "hello from pm, you are "+l.Outside.Addr.String(), 5*time.Second)
		if err := rt.do(func() error { return rt.cni.DelNetworkList(context.Background(), list, r) }); err != nil {
			t.Fatalf("DEL with portmap: %v", err)
		}
		if got, err := dialTCP(l.Outside.Netns, netip.AddrPortFrom(h1.Addr, 8090).String(), time.Second); err == nil {
			t.Errorf("the port still answers after DEL: %q", got)
		}
	})
}
