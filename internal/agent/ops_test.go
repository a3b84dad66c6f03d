package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/api"
)

func TestParseNetwork(t *testing.T) {
	for _, tc := range []struct {
		req  api.NetworkCreate
		want string
	}{
		{api.NetworkCreate{Name: "web", Subnet: "172.18.0.0/16"}, ""},
		{api.NetworkCreate{Name: "web", Subnet: "172.18.0.0/16", VNI: 100, Gateway: "172.18.0.254", Subnet6: "fd00:18::/64"}, ""},
		{api.NetworkCreate{Name: "web"}, "--subnet is required"},
		{api.NetworkCreate{Name: "web", Subnet: "172.18.0.1/16"}, "did you mean 172.18.0.0/16?"},
		{api.NetworkCreate{Name: "", Subnet: "172.18.0.0/16"}, `invalid network name ""`},
		{api.NetworkCreate{Name: "web", Subnet: "172.18.0.0/16", Gateway: "x"}, `invalid gateway "x"`},
		{api.NetworkCreate{Name: "web", Subnet: "172.18.0.0/16", VNI: 1 << 24}, "invalid VNI 16777216"},
		{api.NetworkCreate{Name: "web", Subnet: "172.18.0.0/16", MTU: 50}, "invalid MTU 50"},
	} {
		n, err := parseNetwork(tc.req)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: err = %v, want %q", tc.req, err, tc.want)
			continue
		}
		if err == nil && (n.VNI == 0 || !n.Gateway.IsValid()) {
			t.Errorf("%+v: defaults not filled: %+v", tc.req, n)
		}
	}
}

func TestDeriveVNI(t *testing.T) {
	seen := map[uint32]string{}
	for _, name := range []string{"web", "db", "api", "cache", "net1", "net2"} {
		v := DeriveVNI(name)
		if v < 4096 || v > 1<<24-1 {
			t.Fatalf("DeriveVNI(%s) = %d out of range", name, v)
		}
		if o, dup := seen[v]; dup {
			t.Fatalf("DeriveVNI(%s) = DeriveVNI(%s)", name, o)
		}
		seen[v] = name
		if DeriveVNI(name) != v {
			t.Fatal("DeriveVNI is not stable")
		}
	}
}

func TestDecodeRequest(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"network":"web","netns":"/run/netns/x"}`, ""},
		{`{"network":"web","netns":"/run/netns/x","evil":true}`, `unknown field "evil"`},
		{`{"network":"web"} {"x":1}`, "data after the JSON object"},
		{`{"network":`, "malformed request"},
		{`[]`, "malformed request"},
	} {
		var r api.AttachRequest
		err := DecodeRequest(strings.NewReader(tc.in), &r)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: err = %v, want %q", tc.in, err, tc.want)
		}
	}
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"name":"web","subnet":"172.18.0.0/16","vni":100}`))
	f.Add([]byte(`{"network":"web","netns":"1234","ip":"172.18.0.11","mac":"02:42:ac:12:00:0b"}`))
	f.Add([]byte(`{"name":"x","subnet":"10.0.0.0/8","gateway":"10.0.0.1","subnet6":"fd00::/64","mtu":1400,"flood":true}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		var nc api.NetworkCreate
		if DecodeRequest(strings.NewReader(string(in)), &nc) == nil {
			if n, err := parseNetwork(nc); err == nil {
				if err := n.Validate(); err != nil {
					t.Fatalf("parseNetwork accepted an invalid network: %v", err)
				}
			}
		}
		var ar api.AttachRequest
		_ = DecodeRequest(strings.NewReader(string(in)), &ar)
	})
}

func TestListenSocketPermissions(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := listenSocket(filepath.Join(open, "vxnet.sock")); err == nil || !strings.Contains(err.Error(), "is world-writable (mode 777)") {
		t.Fatalf("world-writable directory: err = %v", err)
	}
	path := filepath.Join(dir, "run", "vxnet.sock")
	ln, err := listenSocket(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if _, err := listenSocket(path); err == nil || !strings.Contains(err.Error(), "in use by another agent") {
		t.Fatalf("second agent on the same socket: err = %v", err)
	}
}
