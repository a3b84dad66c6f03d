package agent

import (
	"fmt"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/model"
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
		if v < model.AutoVNIMin || v >= model.MaxVNI {
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

func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"name":"web","subnet":"172.18.0.0/16","vni":100}`))
	f.Add([]byte(`{"network":"web","netns":"1234","ip":"172.18.0.11","mac":"02:42:ac:12:00:0b"}`))
	f.Add([]byte(`{"name":"x","subnet":"10.0.0.0/8","gateway":"10.0.0.1","subnet6":"fd00::/64","mtu":1400,"flood":true}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		var nc api.NetworkCreate
		if api.DecodeRequest(strings.NewReader(string(in)), &nc) == nil {
			if n, err := parseNetwork(nc); err == nil {
				if err := n.Validate(); err != nil {
					t.Fatalf("parseNetwork accepted an invalid network: %v", err)
				}
			}
		}
		var ar api.AttachRequest
		_ = api.DecodeRequest(strings.NewReader(string(in)), &ar)
	})
}

// TestForeignVXLANDevices: a member reports the VXLAN devices vxnet did
// not make on its host (after a pass); a network with one's VNI is
// refused on any member, naming that host and device; a collision that
// appears later is a conflict in status.
func TestForeignVXLANDevices(t *testing.T) {
	_, h1, h2 := joinedPair(t)
	h2.dp.ForeignVXLAN = []model.ForeignVXLAN{{Dev: "hand0", VNI: 4096, Port: 4789}}
	if err := h2.sync(); err != nil {
		t.Fatal(err)
	}
	_, err := h1.CreateNetwork(api.NetworkCreate{Name: "web", Subnet: "10.20.0.0/16", VNI: 4096})
	wantErr(t, err, model.ErrConflict, "VNI 4096 is used by device hand0 on h2 (VXLAN port 4789, made outside vxnet): pick another --vni, or omit it")
	mustCreate(t, h1, "db", "10.30.0.0/16")
	db, _ := h1.state.Network("db")
	h2.dp.ForeignVXLAN = append(h2.dp.ForeignVXLAN, model.ForeignVXLAN{Dev: "late0", VNI: db.VNI, Port: 4789})
	if err := h2.sync(); err != nil {
		t.Fatal(err)
	}
	if err := h1.sync(); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range h1.Status(false).Conflicts {
		found = found || strings.Contains(c, fmt.Sprintf("network db (VNI %d) collides with device late0 on h2", db.VNI))
	}
	if !found {
		t.Fatalf("conflicts %q lack the late collision", h1.Status(false).Conflicts)
	}
}
