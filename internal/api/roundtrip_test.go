package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vxnet/vxnet/internal/model"
)

// recorder is a Backend that records what reached it and answers with
// fixed values, or with err when set.
type recorder struct {
	mu   sync.Mutex
	got  []string
	err  error
	nets []NetworkInfo
}

func (r *recorder) saw(format string, args ...any) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, fmt.Sprintf(format, args...))
	return r.err
}

func (r *recorder) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.got) == 0 {
		return ""
	}
	return r.got[len(r.got)-1]
}

func (r *recorder) Status(withEndpoints bool) Status {
	_ = r.saw("status %v", withEndpoints)
	return Status{Node: "h1", Version: "v1", Format: 1}
}
func (r *recorder) Networks() []NetworkInfo { _ = r.saw("networks"); return r.nets }
func (r *recorder) Network(name string) (NetworkInfo, error) {
	return NetworkInfo{Network: model.Network{Name: name, VNI: 4097}}, r.saw("network %s", name)
}
func (r *recorder) CreateNetwork(c NetworkCreate) (NetworkInfo, error) {
	return NetworkInfo{Network: model.Network{Name: c.Name, VNI: c.VNI}}, r.saw("create %s %s %d", c.Name, c.Subnet, c.VNI)
}
func (r *recorder) RemoveNetwork(name string, force bool) error {
	return r.saw("remove %s %v", name, force)
}
func (r *recorder) Attach(a AttachRequest) (Attachment, error) {
	return Attachment{ID: "e1", Network: a.Network, Netns: a.Netns, IP: "10.0.0.2/24"}, r.saw("attach %s %s %s", a.Network, a.Netns, a.IP)
}
func (r *recorder) Detach(d DetachRequest) error {
	return r.saw("detach %s %s %s", d.Network, d.Netns, d.ContainerID)
}
func (r *recorder) LocalEndpoints() []LocalEndpoint {
	_ = r.saw("endpoints")
	return []LocalEndpoint{{ID: "e1", Network: "web"}}
}
func (r *recorder) Keyring() Keyring {
	_ = r.saw("keyring")
	return Keyring{Primary: "ab", Keys: []string{"ab"}}
}
func (r *recorder) KeyOp(k KeyRequest) (Keyring, error) {
	return Keyring{Primary: "cd"}, r.saw("key %s %s", k.Op, k.Key)
}
func (r *recorder) Health(all bool) Health {
	_ = r.saw("health %v", all)
	return Health{HealthReport: HealthReport{Node: "h1", Enabled: true}}
}
func (r *recorder) Trace(t TraceRequest) (TraceResult, error) {
	return TraceResult{Src: t.Src, Dst: t.Dst, Replied: true}, r.saw("trace %s %s", t.Src, t.Dst)
}

// serve runs the API server on a socket of its own over b.
func serve(t *testing.T, b Backend) *Client {
	t.Helper()
	path := filepath.Join(t.TempDir(), "api.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(b)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return NewClient(path)
}

// TestClientServerRoundTrip: every call of the client reaches the backend
// through the server with its arguments (names escaped in paths, query
// flags), and the backend's answer comes back decoded.
func TestClientServerRoundTrip(t *testing.T) {
	b := &recorder{nets: []NetworkInfo{{Network: model.Network{Name: "web"}}}}
	c := serve(t, b)
	for _, tc := range []struct {
		call func() (any, error)
		want string // what the backend saw
		ok   func(any) bool
	}{
		{func() (any, error) { return c.Status() }, "status false", func(v any) bool { return v.(Status).Node == "h1" }},
		{func() (any, error) { return c.StatusWithEndpoints() }, "status true", nil},
		{func() (any, error) { return c.Networks() }, "networks", func(v any) bool { return len(v.([]NetworkInfo)) == 1 }},
		{func() (any, error) { return c.Network("a b/c") }, "network a b/c", func(v any) bool { return v.(NetworkInfo).Name == "a b/c" }},
		{func() (any, error) {
			return c.CreateNetwork(NetworkCreate{Name: "web", Subnet: "10.1.0.0/16", VNI: 7})
		}, "create web 10.1.0.0/16 7", func(v any) bool { return v.(NetworkInfo).VNI == 7 }},
		{func() (any, error) { return nil, c.RemoveNetwork("web", true) }, "remove web true", nil},
		{func() (any, error) { return nil, c.RemoveNetwork("web", false) }, "remove web false", nil},
		{func() (any, error) {
			return c.Attach(AttachRequest{Network: "web", Netns: "/run/netns/x", IP: "10.1.0.9"})
		}, "attach web /run/netns/x 10.1.0.9", func(v any) bool { return v.(Attachment).ID == "e1" }},
		{func() (any, error) { return nil, c.Detach(DetachRequest{Network: "web", ContainerID: "abc"}) }, "detach web  abc", nil},
		{func() (any, error) { return c.LocalEndpoints() }, "endpoints", func(v any) bool { return len(v.([]LocalEndpoint)) == 1 }},
		{func() (any, error) { return c.Keyring() }, "keyring", func(v any) bool { return v.(Keyring).Primary == "ab" }},
		{func() (any, error) { return c.KeyOp("use", "a2V5") }, "key use a2V5", func(v any) bool { return v.(Keyring).Primary == "cd" }},
		{func() (any, error) { return c.Health(true) }, "health true", func(v any) bool { return v.(Health).Node == "h1" }},
		{func() (any, error) { return c.Health(false) }, "health false", nil},
		{func() (any, error) {
			return c.Trace(TraceRequest{Src: "10.1.0.2", Dst: "10.1.0.3"})
		}, "trace 10.1.0.2 10.1.0.3", func(v any) bool { return v.(TraceResult).Replied }},
	} {
		v, err := tc.call()
		if err != nil {
			t.Errorf("%s: %v", tc.want, err)
			continue
		}
		if got := b.last(); got != tc.want {
			t.Errorf("the backend saw %q, want %q", got, tc.want)
		}
		if tc.ok != nil && !tc.ok(v) {
			t.Errorf("%s: answer %+v", tc.want, v)
		}
	}
}

// TestErrorKindsOverTheSocket: a backend error's kind becomes its HTTP
// status (400, 404, 409, else 500) and comes back from the client as the
// same kind with the backend's message; a request the server cannot decode
// is a 400 naming what is wrong.
func TestErrorKindsOverTheSocket(t *testing.T) {
	b := &recorder{}
	c := serve(t, b)
	for _, tc := range []struct {
		err  error
		code int
		kind error
	}{
		{model.Errorf(model.ErrInvalid, "invalid VNI 0: must be between 1 and 16777215"), http.StatusBadRequest, model.ErrInvalid},
		{model.Errorf(model.ErrNotFound, "unknown network %q", "db"), http.StatusNotFound, model.ErrNotFound},
		{model.Errorf(model.ErrConflict, "address 10.0.0.2 is in use by %s", "c1"), http.StatusConflict, model.ErrConflict},
		{errors.New("disk on fire"), http.StatusInternalServerError, nil},
	} {
		b.err = tc.err
		_, err := c.CreateNetwork(NetworkCreate{Name: "web", Subnet: "10.0.0.0/24"})
		var se *StatusError
		if !errors.As(err, &se) || se.Code != tc.code || err.Error() != tc.err.Error() {
			t.Errorf("backend error %q came back as %v (%T)", tc.err, err, err)
			continue
		}
		for _, k := range []error{model.ErrInvalid, model.ErrNotFound, model.ErrConflict} {
			if errors.Is(err, k) != (k == tc.kind) {
				t.Errorf("%q: errors.Is(%v) = %v", tc.err, k, errors.Is(err, k))
			}
		}
	}
	b.err = nil
	// Bad bodies never reach the backend.
	n := len(b.got)
	for _, body := range []string{`{"name":`, `{"name":"web"} {"x":1}`, `{"name":"web","bogus":1}`} {
		code, answer := rawPost(t, c.Socket, "/v1/networks", body)
		if code != http.StatusBadRequest || !strings.Contains(answer, "malformed request") {
			t.Errorf("body %s: %d %s", body, code, answer)
		}
	}
	if len(b.got) != n {
		t.Errorf("malformed requests reached the backend: %v", b.got[n:])
	}
	// An agent that is not there: the error names the socket and the fix.
	gone := NewClient(filepath.Join(t.TempDir(), "none.sock"))
	if _, err := gone.Status(); err == nil || !strings.Contains(err.Error(), "is 'vxnet agent' running?") {
		t.Errorf("no agent: %v", err)
	}
}

// rawPost sends body as it is (no JSON encoding) and returns the answer.
func rawPost(t *testing.T, socket, path, body string) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	resp, err := hc.Post("http://unix"+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
