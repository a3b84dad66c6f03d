package docker

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/model"
)

type fakeBackend struct {
	created   []Network
	eps       []Endpoint
	published map[string][]model.PortMap
}

func (f *fakeBackend) RequestPool(subnet string, v6 bool) (string, error) {
	if subnet == "" {
		return "", errors.New("vxnet's IPAM needs an explicit --subnet")
	}
	return subnet, nil
}
func (f *fakeBackend) ReleasePool(string) error { return nil }
func (f *fakeBackend) RequestAddress(pool, address string, gateway bool) (string, error) {
	if gateway {
		return "10.0.0.1/24", nil
	}
	return "10.0.0.7/24", nil
}
func (f *fakeBackend) ReleaseAddress(string, string) error { return nil }
func (f *fakeBackend) CreateNetwork(n Network) error       { f.created = append(f.created, n); return nil }
func (f *fakeBackend) DeleteNetwork(string) error          { return nil }
func (f *fakeBackend) CreateEndpoint(e Endpoint) (string, error) {
	f.eps = append(f.eps, e)
	return "02:7e:0a:00:00:07", nil
}
func (f *fakeBackend) DeleteEndpoint(string, string) error { return nil }
func (f *fakeBackend) Join(string, string, string) (Joined, error) {
	return Joined{SrcName: "vxc1", Gateway: "10.0.0.1"}, nil
}
func (f *fakeBackend) Leave(string, string) error { return nil }
func (f *fakeBackend) Publish(_, ep string, ports []model.PortMap) error {
	if f.published == nil {
		f.published = map[string][]model.PortMap{}
	}
	f.published[ep] = ports
	return nil
}

func call(t *testing.T, s *Server, path, body string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	s.srv.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(body)))
	if ct := rec.Header().Get("Content-Type"); ct != ContentType {
		t.Errorf("%s: content type %q", path, ct)
	}
	return rec.Code, strings.TrimSpace(rec.Body.String())
}

func TestPluginProtocol(t *testing.T) {
	fb := &fakeBackend{}
	s := NewServer(fb, nil)
	for _, tc := range []struct{ path, body, want string }{
		{"/Plugin.Activate", ``, `{"Implements":["NetworkDriver","IpamDriver"]}`},
		{"/NetworkDriver.GetCapabilities", ``, `{"ConnectivityScope":"global","Scope":"local"}`},
		{"/IpamDriver.RequestPool", `{"Pool":"10.0.0.0/24"}`, `{"Data":{},"Pool":"10.0.0.0/24","PoolID":"10.0.0.0/24"}`},
		{"/IpamDriver.RequestAddress", `{"PoolID":"10.0.0.0/24","Options":{"RequestAddressType":"com.docker.network.gateway"}}`, `{"Address":"10.0.0.1/24","Data":{}}`},
		{"/NetworkDriver.CreateEndpoint", `{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"10.0.0.7/24"}}`, `{"Interface":{"MacAddress":"02:7e:0a:00:00:07"}}`},
		// Docker chose the MAC: the driver must not answer one.
		{"/NetworkDriver.CreateEndpoint", `{"NetworkID":"n","EndpointID":"e2","Interface":{"Address":"10.0.0.8/24","MacAddress":"02:42:0a:00:00:08"}}`, `{}`},
		{"/NetworkDriver.Join", `{"NetworkID":"n","EndpointID":"e","SandboxKey":"/x"}`, `{"Gateway":"10.0.0.1","InterfaceName":{"DstPrefix":"eth","SrcName":"vxc1"}}`},
		{"/NetworkDriver.DiscoverNew", `{}`, `{}`},
		{"/NetworkDriver.ProgramExternalConnectivity", `{"NetworkID":"n","EndpointID":"e","Options":{"com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80}],"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080},{"Proto":17,"IP":"","Port":53,"HostIP":"0.0.0.0","HostPort":5353,"HostPortEnd":5353}]}}`, `{}`},
		{"/NetworkDriver.RevokeExternalConnectivity", `{"NetworkID":"n","EndpointID":"e2"}`, `{}`},
		{"/NetworkDriver.CreateNetwork", `{"NetworkID":"n","IPv4Data":[{"Pool":"10.1.0.0/24","Gateway":"10.1.0.1/24"}],"Options":{"com.docker.network.internal":true,"com.docker.network.generic":{"vxnet.flood":"true"}}}`, `{}`},
	} {
		code, got := call(t, s, tc.path, tc.body)
		if code != 200 || got != tc.want {
			t.Errorf("%s: %d %s, want %s", tc.path, code, got, tc.want)
		}
	}
	for _, tc := range []struct{ path, body, want string }{
		{"/IpamDriver.RequestPool", `{"Pool":""}`, `{"Err":"vxnet's IPAM needs an explicit --subnet"}`},
		{"/NetworkDriver.CreateEndpoint", `{"NetworkID":"n","EndpointID":"e"}`, `vxnet needs an IPv4 address`},
		{"/NetworkDriver.CreateNetwork", `{"NetworkID":"n","IPv4Data":[{"Pool":"10.1.0.0/24"}],"Options":{"com.docker.network.generic":{"vxnet.vni":"0"}}}`, `invalid VNI 0`},
		{"/NetworkDriver.Join", `not json`, `malformed plugin request`},
		{"/NetworkDriver.ProgramExternalConnectivity", `{"NetworkID":"n","EndpointID":"e","Options":{"com.docker.network.portmap":[{"Proto":6,"Port":80,"HostPort":0}]}}`,
			`published port 80/tcp: vxnet needs an explicit host port (-p HOSTPORT:80)`},
		{"/NetworkDriver.ProgramExternalConnectivity", `{"NetworkID":"n","EndpointID":"e","Options":{"com.docker.network.portmap":[{"Proto":6,"Port":80,"HostPort":8000,"HostPortEnd":8010}]}}`,
			`published port 80/tcp: host port ranges (8000-8010) are not supported by vxnet: publish one host port`},
		{"/NetworkDriver.ProgramExternalConnectivity", `{"NetworkID":"n","EndpointID":"e","Options":{"com.docker.network.portmap":[{"Proto":132,"Port":80,"HostPort":80}]}}`,
			`published port 80: protocol 132 is not supported by vxnet (tcp and udp are)`},
		{"/NetworkDriver.ProgramExternalConnectivity", `{"NetworkID":"n","EndpointID":"e","Options":{"com.docker.network.portmap":[{"Proto":6,"Port":80,"HostIP":"127.0.0.1","HostPort":8080}]}}`,
			`published port 80/tcp: binding to one host address (127.0.0.1) is not supported by vxnet: publish on all (-p 8080:80)`},
	} {
		code, got := call(t, s, tc.path, tc.body)
		if code != http.StatusBadRequest || !strings.Contains(got, tc.want) || !strings.HasPrefix(got, `{"Err":`) {
			t.Errorf("%s: %d %s, want an Err containing %q", tc.path, code, got, tc.want)
		}
	}
	if len(fb.created) != 1 || !fb.created[0].Internal || !fb.created[0].Flood || len(fb.eps) != 2 || fb.eps[1].MAC != "02:42:0a:00:00:08" {
		t.Errorf("backend saw created=%+v eps=%v", fb.created, fb.eps)
	}
	want := map[string][]model.PortMap{"e": {{Proto: "tcp", HostPort: 8080, Port: 80}, {Proto: "udp", HostPort: 5353, Port: 53}}, "e2": nil}
	if fmt.Sprint(fb.published) != fmt.Sprint(want) {
		t.Errorf("published %v, want %v", fb.published, want)
	}
}
