package cni

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/model"
)

// fakeAgent keeps networks and endpoints as the agent does: creating a
// network that exists is a conflict, a detach finds its endpoint by
// container ID and interface (or by namespace) and removes it, and one it
// cannot find is "not found".
type fakeAgent struct {
	mu       sync.Mutex
	down     bool
	networks map[string]api.NetworkInfo
	eps      []api.LocalEndpoint
	attached []api.AttachRequest
	detached []api.DetachRequest
	// beforeCreate runs inside CreateNetwork before it looks: another ADD
	// creating the same network at that moment.
	beforeCreate func()
}

var errDown = errors.New("dial unix /run/vxnet/vxnet.sock: connect: no such file or directory")

func (f *fakeAgent) Status() (api.Status, error) {
	if f.down {
		return api.Status{}, errDown
	}
	return api.Status{Node: "h1"}, nil
}
func (f *fakeAgent) Network(name string) (api.NetworkInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.networks[name]
	if !ok {
		return n, &api.StatusError{Code: http.StatusNotFound, Msg: `unknown network "` + name + `" (none exist yet)`}
	}
	return n, nil
}
func (f *fakeAgent) CreateNetwork(r api.NetworkCreate) (api.NetworkInfo, error) {
	if f.beforeCreate != nil {
		f.beforeCreate()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.networks[r.Name]; ok {
		return api.NetworkInfo{}, &api.StatusError{Code: http.StatusConflict, Msg: "network " + r.Name + " exists"}
	}
	n := api.NetworkInfo{Network: model.Network{Name: r.Name}}
	f.networks[r.Name] = n
	return n, nil
}
func (f *fakeAgent) Attach(r api.AttachRequest) (api.Attachment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attached = append(f.attached, r)
	if r.IP == "10.0.0.1" {
		return api.Attachment{}, &api.StatusError{Code: http.StatusConflict, Msg: "address 10.0.0.1 is the gateway of network web"}
	}
	f.eps = append(f.eps, api.LocalEndpoint{ID: r.ContainerID + "." + r.IfName, Network: r.Network, Netns: r.Netns, IfName: r.IfName, ContainerID: r.ContainerID})
	return api.Attachment{ID: "e", Network: r.Network, Netns: r.Netns, IfName: r.IfName, MAC: "02:00:00:00:00:05", IP: "10.0.0.5/24", Gateway: "10.0.0.1", MTU: 1450}, nil
}
func (f *fakeAgent) Detach(r api.DetachRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.detached = append(f.detached, r)
	for i, e := range f.eps {
		byID := r.ContainerID != "" && e.ContainerID == r.ContainerID && (r.IfName == "" || e.IfName == r.IfName)
		byNetns := r.ContainerID == "" && r.Netns != "" && e.Netns == r.Netns
		if e.Network == r.Network && (byID || byNetns) {
			f.eps = slices.Delete(f.eps, i, i+1)
			return nil
		}
	}
	return &api.StatusError{Code: http.StatusNotFound, Msg: "not attached"}
}
func (f *fakeAgent) LocalEndpoints() ([]api.LocalEndpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.eps), nil
}

func plugin(f *fakeAgent) Plugin { return Plugin{Dial: func(string) Agent { return f }} }

func code(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

func TestAddArgsAndErrors(t *testing.T) {
	f := &fakeAgent{networks: map[string]api.NetworkInfo{"web": {Network: model.Network{Name: "web"}}}}
	p := plugin(f)
	conf := []byte(`{"cniVersion":"1.0.0","name":"web","type":"vxnet","runtimeConfig":{"aliases":{"web":["db","bad.alias","pod1"]}}}`)
	err := p.Add(&skel.CmdArgs{ContainerID: "c1", Netns: "/run/netns/x", IfName: "eth1", StdinData: conf,
		Args: "IgnoreUnknown=1;K8S_POD_NAME=pod1;IP=10.0.0.7;MAC=02:00:00:00:00:07"})
	if err != nil {
		t.Fatal(err)
	}
	want := api.AttachRequest{Network: "web", Netns: "/run/netns/x", IfName: "eth1", ContainerID: "c1", IP: "10.0.0.7", MAC: "02:00:00:00:00:07",
		Name: "pod1", Aliases: []string{"db"}}
	if got := f.attached[0]; got.Name != want.Name || !slices.Equal(got.Aliases, want.Aliases) || got.IP != want.IP || got.MAC != want.MAC ||
		got.ContainerID != want.ContainerID || got.IfName != want.IfName || got.Netns != want.Netns {
		t.Errorf("attach %+v, want %+v", got, want)
	}
	for _, tc := range []struct {
		name string
		conf string
		args string
		code uint
		msg  string
	}{
		{"malformed", `{`, "", types.ErrDecodingFailure, "vxnet: malformed network configuration: unexpected end of JSON input"},
		{"bad network", `{"cniVersion":"1.0.0","name":"web","network":"Bad Name"}`, "", types.ErrInvalidNetworkConfig, `vxnet: invalid network name "Bad Name": want 1-63 characters of letters, digits, '_', '.', '-', starting with a letter or digit`},
		{"unknown arg", `{"cniVersion":"1.0.0","name":"web"}`, "FOO=1", types.ErrInvalidEnvironmentVariables, "vxnet: CNI_ARGS: ARGS: unknown args [\"FOO=1\"]"},
		{"taken", `{"cniVersion":"1.0.0","name":"web"}`, "IP=10.0.0.1", types.ErrTryAgainLater, "vxnet: address 10.0.0.1 is the gateway of network web"},
		{"encryption differs", `{"cniVersion":"1.0.0","name":"web","encrypted":true}`, "", types.ErrInvalidNetworkConfig, `vxnet: network web is not encrypted, the configuration says "encrypted": true`},
		{"no network", `{"cniVersion":"1.0.0","name":"db"}`, "", types.ErrInternal, `vxnet: unknown network "db" (none exist yet); give "subnet" in the network configuration to create it, or create it with 'vxnet network create'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := p.Add(&skel.CmdArgs{ContainerID: "c2", Netns: "/run/netns/y", IfName: "eth0", StdinData: []byte(tc.conf), Args: tc.args})
			var te *types.Error
			if !errors.As(err, &te) || te.Code != tc.code || te.Msg != tc.msg {
				t.Errorf("err %#v, want code %d %q", err, tc.code, tc.msg)
			}
		})
	}
	f.down = true
	err = p.Status(&skel.CmdArgs{StdinData: conf})
	if code(err) != ErrPluginNotAvailable {
		t.Errorf("status with the agent down: %v", err)
	}
}

func TestDelAndGC(t *testing.T) {
	f := &fakeAgent{eps: []api.LocalEndpoint{
		{ContainerID: "keep", IfName: "eth0", Network: "web"},
		{ContainerID: "drop", IfName: "eth0", Network: "web"},
		{ContainerID: "other", IfName: "eth0", Network: "db"},
		{IfName: "eth0", Network: "web"}, // attached by vxnet attach: not the runtime's
	}}
	p := plugin(f)
	if err := p.Del(&skel.CmdArgs{ContainerID: "gone", IfName: "eth0", StdinData: []byte(`{"cniVersion":"1.0.0","name":"web"}`)}); err != nil {
		t.Errorf("DEL of something gone: %v", err)
	}
	conf := []byte(`{"cniVersion":"1.1.0","name":"web","cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]}`)
	if err := p.GC(&skel.CmdArgs{StdinData: conf}); err != nil {
		t.Fatal(err)
	}
	if len(f.detached) != 2 || f.detached[1].ContainerID != "drop" {
		t.Errorf("detached %+v, want gone (DEL) then drop (GC) only", f.detached)
	}
}

// TestDelWithoutNamespace: a runtime may call DEL without a namespace (the
// container is gone); the plugin detaches by container ID and interface,
// so the endpoint ADD made is removed, and a second DEL is no error.
func TestDelWithoutNamespace(t *testing.T) {
	f := &fakeAgent{networks: map[string]api.NetworkInfo{"web": {Network: model.Network{Name: "web"}}}}
	p := plugin(f)
	conf := []byte(`{"cniVersion":"1.0.0","name":"web","type":"vxnet"}`)
	if err := p.Add(&skel.CmdArgs{ContainerID: "c1", Netns: "/run/netns/c1", IfName: "eth0", StdinData: conf}); err != nil {
		t.Fatal(err)
	}
	if err := p.Add(&skel.CmdArgs{ContainerID: "c2", Netns: "/run/netns/c2", IfName: "eth0", StdinData: conf}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := p.Del(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: conf}); err != nil {
			t.Fatalf("DEL %d: %v", i+1, err)
		}
	}
	eps, _ := f.LocalEndpoints()
	if len(eps) != 1 || eps[0].ContainerID != "c2" {
		t.Fatalf("after DEL of c1 the agent keeps %+v, want c2 alone", eps)
	}
}

// TestAddRacesCreate: two ADDs of a configuration with a subnet find no
// network, and both create it; the one that loses (a conflict) uses the
// network the other made, and both containers are attached.
func TestAddRacesCreate(t *testing.T) {
	f := &fakeAgent{networks: map[string]api.NetworkInfo{}}
	p := plugin(f)
	conf := []byte(`{"cniVersion":"1.0.0","name":"web","type":"vxnet","subnet":"10.9.0.0/24"}`)
	other := sync.OnceFunc(func() { // the other ADD's create lands first
		f.mu.Lock()
		f.networks["web"] = api.NetworkInfo{Network: model.Network{Name: "web"}}
		f.mu.Unlock()
	})
	f.beforeCreate = other
	if err := p.Add(&skel.CmdArgs{ContainerID: "c1", Netns: "/run/netns/c1", IfName: "eth0", StdinData: conf}); err != nil {
		t.Fatalf("the ADD that lost the create: %v", err)
	}
	if err := p.Add(&skel.CmdArgs{ContainerID: "c2", Netns: "/run/netns/c2", IfName: "eth0", StdinData: conf}); err != nil {
		t.Fatal(err)
	}
	if len(f.attached) != 2 || f.attached[0].Network != "web" || f.attached[1].Network != "web" {
		t.Fatalf("attached %+v", f.attached)
	}
}

func TestStaticIPs(t *testing.T) {
	for _, tc := range []struct {
		arg      string
		caps     []string
		ip, ip6  string
		errorMsg string
	}{
		{"", nil, "", "", ""},
		{"10.0.0.7", nil, "10.0.0.7", "", ""},
		{"10.0.0.7,fd00::7", nil, "10.0.0.7", "fd00::7", ""},
		{"", []string{"10.0.0.7/24", "fd00::7/64"}, "10.0.0.7", "fd00::7", ""},
		{"fd00::7", []string{"fd00::7/64"}, "", "fd00::7", ""},
		{"10.0.0.7,10.0.0.8", nil, "", "", "two static addresses of one family (10.0.0.7 and 10.0.0.8)"},
		{"banana", nil, "", "", `invalid static address "banana"`},
	} {
		ip, ip6, err := staticIPs(tc.arg, tc.caps)
		if tc.errorMsg != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errorMsg) || code(err) != types.ErrInvalidEnvironmentVariables {
				t.Errorf("%q %v: err %v, want %q", tc.arg, tc.caps, err, tc.errorMsg)
			}
			continue
		}
		if err != nil || ip != tc.ip || ip6 != tc.ip6 {
			t.Errorf("%q %v: %q %q %v, want %q %q", tc.arg, tc.caps, ip, ip6, err, tc.ip, tc.ip6)
		}
	}
}

// TestResultDualStack: a dual-stack attachment's result holds both
// addresses on the container's interface, each with its default route.
func TestResultDualStack(t *testing.T) {
	res, err := result(api.Attachment{HostIf: "vxv1", IfName: "eth0", Netns: "/run/netns/x", MAC: "02:00:00:00:00:05", MTU: 1450,
		IP: "10.0.0.5/24", Gateway: "10.0.0.1", IP6: "fd00::5/64", Gateway6: "fd00::1"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ip := range res.IPs {
		got = append(got, fmt.Sprintf("%s via %s on %d", ip.Address.String(), ip.Gateway, *ip.Interface))
	}
	for _, r := range res.Routes {
		got = append(got, fmt.Sprintf("route %s via %s", r.Dst.String(), r.GW))
	}
	want := []string{"10.0.0.5/24 via 10.0.0.1 on 1", "fd00::5/64 via fd00::1 on 1", "route 0.0.0.0/0 via 10.0.0.1", "route ::/0 via fd00::1"}
	if !slices.Equal(got, want) {
		t.Fatalf("result %q, want %q", got, want)
	}
}
