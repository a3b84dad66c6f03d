package reconcile_test

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/fake"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/reconcile"
)

// TestPlug: a port takes its network's MTU as the target has it (not one
// of its own), and a network the target does not program is refused with
// a conflict, before anything is plugged.
func TestPlug(t *testing.T) {
	n := model.Network{Name: "web", VNI: 4097, Subnet: netip.MustParsePrefix("10.1.0.0/24")}
	n.Normalize()
	want := reconcile.Target{Networks: map[uint32]datapath.NetworkSpec{4097: {VNI: 4097, Name: "web", MTU: 1400}}}
	dp := &recorder{Dataplane: fake.New()}
	p := reconcile.Port{ID: "c1", Netns: "/run/netns/c1", IfName: "eth0", MAC: "02:00:00:00:00:01", IP: netip.MustParseAddr("10.1.0.5"), Network: n}
	if _, err := reconcile.Plug(dp, want, p); err != nil {
		t.Fatal(err)
	}
	spec, ok := dp.attached("c1")
	if !ok || spec.MTU != 1400 || spec.IP != netip.MustParsePrefix("10.1.0.5/24") || spec.Gateway != n.Gateway || spec.VNI != 4097 {
		t.Fatalf("plugged %+v (%v)", spec, ok)
	}
	other := p
	other.ID, other.Network = "c2", model.Network{Name: "db", VNI: 4098}
	if _, err := reconcile.Plug(dp, want, other); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("a network the host does not program: %v", err)
	}
	if _, ok := dp.attached("c2"); ok {
		t.Fatal("a port of a network the host does not program was plugged")
	}
}

// recorder keeps what was asked of Attach.
type recorder struct {
	datapath.Dataplane
	specs []datapath.EndpointSpec
}

func (r *recorder) Attach(e datapath.EndpointSpec) (datapath.Port, error) {
	r.specs = append(r.specs, e)
	return datapath.Port{ID: e.ID, VNI: e.VNI}, nil
}

func (r *recorder) attached(id string) (datapath.EndpointSpec, bool) {
	for _, s := range r.specs {
		if s.ID == id {
			return s, true
		}
	}
	return datapath.EndpointSpec{}, false
}

// TestForeignVNILeftOut: a network whose VNI a device vxnet did not make
// uses on this host's VXLAN port is not programmed here (no device, no
// place in the firewall's VNIs) and is named as a problem; the same VNI on
// another port is no collision.
func TestForeignVNILeftOut(t *testing.T) {
	in := input()
	in.Foreign = []model.ForeignVXLAN{{Dev: "hand0", VNI: web.VNI, Port: 4789}, {Dev: "flannel.1", VNI: db.VNI, Port: 8472}}
	want, problems := reconcile.Desired(in)
	if _, ok := want.Networks[web.VNI]; ok {
		t.Fatal("the network that collides is programmed")
	}
	if _, ok := want.Networks[db.VNI]; !ok {
		t.Fatal("a network whose VNI is used on another port is left out")
	}
	if slices.Contains(want.Firewall.Isolate, web.VNI) {
		t.Fatalf("the firewall guards the foreign device's VNI: %v", want.Firewall.Isolate)
	}
	if len(problems) != 1 || problems[0].Kind != "foreign-vni" || !strings.Contains(problems[0].String(), "VNI 4097 is used here by device hand0") {
		t.Fatalf("problems %v", problems)
	}
}
