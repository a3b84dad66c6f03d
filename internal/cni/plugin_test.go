package cni

import (
	"errors"
	"net/http"
	"slices"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/model"
)

type fakeAgent struct {
	down     bool
	networks map[string]api.NetworkInfo
	eps      []api.LocalEndpoint
	attached []api.AttachRequest
	detached []api.DetachRequest
}

var errDown = errors.New("dial unix /run/vxnet/vxnet.sock: connect: no such file or directory")

func (f *fakeAgent) Status() (api.Status, error) {
	if f.down {
		return api.Status{}, errDown
	}
	return api.Status{Node: "h1"}, nil
}
func (f *fakeAgent) Network(name string) (api.NetworkInfo, error) {
	n, ok := f.networks[name]
	if !ok {
		return n, &api.StatusError{Code: http.StatusNotFound, Msg: `unknown network "` + name + `" (none exist yet)`}
	}
	return n, nil
}
func (f *fakeAgent) CreateNetwork(r api.NetworkCreate) (api.NetworkInfo, error) {
	n := api.NetworkInfo{Network: model.Network{Name: r.Name}}
	f.networks[r.Name] = n
	return n, nil
}
func (f *fakeAgent) Attach(r api.AttachRequest) (api.Attachment, error) {
	f.attached = append(f.attached, r)
	if r.IP == "10.0.0.1" {
		return api.Attachment{}, &api.StatusError{Code: http.StatusConflict, Msg: "address 10.0.0.1 is the gateway of network web"}
	}
	return api.Attachment{ID: "e", Network: r.Network, Netns: r.Netns, IfName: r.IfName, MAC: "02:00:00:00:00:05", IP: "10.0.0.5/24", Gateway: "10.0.0.1", MTU: 1450}, nil
}
func (f *fakeAgent) Detach(r api.DetachRequest) error {
	f.detached = append(f.detached, r)
	return &api.StatusError{Code: http.StatusNotFound, Msg: "not attached"}
}
func (f *fakeAgent) LocalEndpoints() ([]api.LocalEndpoint, error) { return f.eps, nil }

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
