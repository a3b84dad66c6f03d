package cluster

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/model"
)

// TestForeignVNIs: the VXLAN devices members report are found by port and
// VNI; an explicit VNI one uses is refused naming the host and device, a
// derived one moves on to the next free VNI (wrapping, short of the health
// network's, to AutoVNIMin); networks
// that collide are described.
func TestForeignVNIs(t *testing.T) {
	s := NewState("h1")
	for _, n := range []NodeInfo{
		{Name: "h2", Foreign: []model.ForeignVXLAN{{Dev: "hand0", VNI: 4096, Port: 4789}, {Dev: "hand1", VNI: 4097, Port: 4789}, {Dev: "flannel.1", VNI: 1, Port: 8472}}},
		{Name: "h3", Foreign: []model.ForeignVXLAN{{Dev: "top", VNI: model.MaxVNI - 1, Port: 4789}, {Dev: "low", VNI: model.AutoVNIMin, Port: 4789}}},
	} {
		if _, err := s.Put(NodeKey(n.Name), n); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		vni      uint32
		explicit bool
		want     uint32
		err      string
	}{
		{4098, true, 4098, ""},
		{4096, true, 0, "VNI 4096 is used by device hand0 on h2 (VXLAN port 4789, made outside vxnet)"},
		{4096, false, 4098, ""},
		{model.MaxVNI - 1, false, model.AutoVNIMin + 1, ""}, // wraps past the health network's and AutoVNIMin
		{1, true, 1, ""},                                    // flannel's VNI, but on another port
	} {
		got, err := s.AvoidForeign(4789, tc.vni, tc.explicit)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("VNI %d: %v, want %q", tc.vni, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("VNI %d (explicit %v): %d %v, want %d", tc.vni, tc.explicit, got, err, tc.want)
		}
	}
	n := model.Network{Name: "web", VNI: 4097, Subnet: netip.MustParsePrefix("10.1.0.0/24")}
	n.Normalize()
	if _, err := s.Put(NetworkKey(n.Name), n); err != nil {
		t.Fatal(err)
	}
	c := s.ForeignCollisions(4789)
	if len(c) != 1 || !strings.Contains(c[0], "network web (VNI 4097) collides with device hand1 on h2") {
		t.Fatalf("collisions %q", c)
	}
	if c := s.ForeignCollisions(4790); len(c) != 0 {
		t.Fatalf("collisions on another port: %q", c)
	}
	a := NodeInfo{Name: "h2", Version: "v", Format: 1, Foreign: []model.ForeignVXLAN{{Dev: "x", VNI: 5, Port: 4789}}}
	b := a
	b.Foreign = []model.ForeignVXLAN{{Dev: "x", VNI: 6, Port: 4789}}
	if !a.Same(a) || a.Same(b) {
		t.Fatal("NodeInfo.Same")
	}
}

// A network is found by its name, or by its Docker name when only one
// network has it.
func TestNetworkNamed(t *testing.T) {
	s := NewState("h1")
	for _, n := range []model.Network{
		{Name: "docker-87f7d59df9fe", VNI: 7, Subnet: netip.MustParsePrefix("10.1.0.0/24"), DockerName: "appnet"},
		{Name: "web", VNI: 8, Subnet: netip.MustParsePrefix("10.2.0.0/24")},
		{Name: "docker-aaaaaaaaaaaa", VNI: 9, Subnet: netip.MustParsePrefix("10.3.0.0/24"), DockerName: "twice"},
		{Name: "docker-bbbbbbbbbbbb", VNI: 10, Subnet: netip.MustParsePrefix("10.4.0.0/24"), DockerName: "twice"},
	} {
		n.Normalize()
		if _, err := s.Put(NetworkKey(n.Name), n); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ name, want string }{
		{"appnet", "docker-87f7d59df9fe"}, {"docker-87f7d59df9fe", "docker-87f7d59df9fe"}, {"web", "web"},
		{"twice", ""}, {"nope", ""},
	} {
		n, ok := s.NetworkNamed(tc.name)
		if n.Name != tc.want || ok != (tc.want != "") {
			t.Errorf("%s: %q %v, want %q", tc.name, n.Name, ok, tc.want)
		}
	}
}
