package reconcile_test

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/fake"
	"github.com/vxnet/vxnet/internal/reconcile"
)

func TestDesiredFastPath(t *testing.T) {
	a := ep("a", "web", "h1", "02:00:00:00:00:01", "198.19.1.2")
	b := ep("b", "web", "h2", "02:00:00:00:00:02", "198.19.1.3")
	bDup := ep("c", "web", "h3", "02:00:00:00:00:02", "198.19.1.9") // same MAC as b: b keeps it
	entries := []string{"fast vni 4097 02:00:00:00:00:01 -> " + datapath.HostIfName("a"), "fast vni 4097 02:00:00:00:00:02 -> vxlan4097 (vtep 198.18.0.2)"}
	ports := []string{"vxlan4097 vni 4097", "vxlan4098 vni 4098", datapath.HostIfName("a") + " vni 4097"}
	tests := []struct {
		name           string
		fast, unwrap   bool
		underlay       string
		hooks, entries []string
	}{
		{"bridge datapath: nothing of the fast path", false, true, "eth0", nil, nil},
		{"bpf: a hook per vxlan device and local port, an entry per MAC with the remote's VTEP", true, true, "", ports, entries},
		{"bpf with an underlay device: it is hooked too, for every network", true, true, "eth0", append(ports, "eth0 underlay"), entries},
		{"bpf, unwrapping off (--fast-unwrap=false): the underlay is not hooked", true, false, "eth0", ports, entries},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := input(a, b, bDup)
			in.FastPath, in.Underlay, in.Unwrap = tt.fast, tt.underlay, tt.unwrap
			want, _ := reconcile.Desired(in)
			var hooks, entries []string
			for _, h := range want.FastHooks {
				if h.Underlay {
					hooks = append(hooks, h.Dev+" underlay")
					continue
				}
				hooks = append(hooks, h.Dev+" vni "+strconv.Itoa(int(h.VNI)))
			}
			for _, e := range want.FastEntries {
				entries = append(entries, e.String())
			}
			slices.Sort(hooks)
			slices.Sort(entries)
			wh := slices.Clone(tt.hooks)
			slices.Sort(wh)
			if !slices.Equal(hooks, wh) || !slices.Equal(entries, tt.entries) {
				t.Fatalf("hooks %q entries %q, want %q %q", hooks, entries, wh, tt.entries)
			}
		})
	}
}

func kinds(ops []reconcile.Op) []string {
	var out []string
	for _, op := range ops {
		out = append(out, op.String())
	}
	return out
}

func indexOf(ops []reconcile.Op, prefix string) int {
	for i, op := range ops {
		if strings.HasPrefix(op.String(), prefix) {
			return i
		}
	}
	return -1
}

// TestPlanFastPath follows a fast path through a host's life on the fake:
// ordering, a port hooked only once it exists, a hook taken off by hand
// put back, the switch to the bridge datapath clearing what is left.
func TestPlanFastPath(t *testing.T) {
	dp := fake.New()
	dp.EnableFastPath()
	a := ep("a", "web", "h1", "02:00:00:00:00:01", "198.19.1.2")
	b := ep("b", "web", "h2", "02:00:00:00:00:02", "198.19.1.3")
	in := input(a, b)
	in.FastPath = true
	want, _ := reconcile.Desired(in)
	ops, err := reconcile.Sync(dp, want)
	if err != nil {
		t.Fatal(err)
	}
	// The remote MAC's FDB entry goes in before the fast path sends frames
	// to the vxlan device for it; the port (not attached yet) is not hooked.
	if fdb, fe := indexOf(ops, "set-fdb fdb vni 4097 02:00:00:00:00:02"), indexOf(ops, "set-fast-entry fast vni 4097 02:00:00:00:00:02"); fdb < 0 || fe < fdb {
		t.Fatalf("set-fdb at %d, set-fast-entry at %d, want the FDB first: %q", fdb, fe, kinds(ops))
	}
	if i := indexOf(ops, "set-fast-hook "+datapath.HostIfName("a")); i >= 0 {
		t.Fatalf("hooked a port that does not exist: %q", kinds(ops))
	}
	if _, err := dp.Attach(datapath.EndpointSpec{ID: "a", VNI: 4097, MAC: a.MAC}); err != nil {
		t.Fatal(err)
	}
	ops, err = reconcile.Sync(dp, want)
	if err != nil {
		t.Fatal(err)
	}
	if len(ops) != 2 || indexOf(ops, "set-fast-entry fast vni 4097 02:00:00:00:00:01") != 0 || indexOf(ops, "set-fast-hook "+datapath.HostIfName("a")) != 1 {
		t.Fatalf("after attach: %q, want the port's entry then its hook", kinds(ops))
	}
	if ops, _ := reconcile.Sync(dp, want); len(ops) != 0 {
		t.Fatalf("converged pass ran %q", kinds(ops))
	}
	dp.UnhookByHand("vxlan4097")
	if ops, _ := reconcile.Sync(dp, want); len(ops) != 1 || ops[0].Kind != reconcile.SetFastHook || ops[0].Hook.Dev != "vxlan4097" {
		t.Fatalf("after a hook was taken off by hand: %q, want it set again", kinds(ops))
	}
	// b leaves: its entry goes before its FDB entry.
	in = input(a)
	in.FastPath = true
	want, _ = reconcile.Desired(in)
	ops, err = reconcile.Sync(dp, want)
	if err != nil {
		t.Fatal(err)
	}
	if fe, fdb := indexOf(ops, "del-fast-entry fast vni 4097 02:00:00:00:00:02"), indexOf(ops, "del-fdb fdb vni 4097 02:00:00:00:00:02"); fe < 0 || fdb < fe {
		t.Fatalf("del-fast-entry at %d, del-fdb at %d, want the fast entry first: %q", fe, fdb, kinds(ops))
	}
	// The bridge datapath wants none of it.
	in.FastPath = false
	want, _ = reconcile.Desired(in)
	if _, err := reconcile.Sync(dp, want); err != nil {
		t.Fatal(err)
	}
	obs, _ := dp.Observe()
	if len(obs.FastPath.Hooks)+len(obs.FastPath.Entries) != 0 {
		t.Fatalf("bridge datapath left %+v", obs.FastPath)
	}
	// A network that goes takes its fast path state with its devices.
	in.FastPath = true
	want, _ = reconcile.Desired(in)
	if _, err := reconcile.Sync(dp, want); err != nil {
		t.Fatal(err)
	}
	in.Networks = in.Networks[:1] // db goes
	want, _ = reconcile.Desired(in)
	ops, _ = reconcile.Sync(dp, want)
	if i := indexOf(ops, "del-fast-hook vxlan4098"); i >= 0 {
		t.Fatalf("unhooked a device that goes anyway: %q", kinds(ops))
	}
	obs, _ = dp.Observe()
	for _, h := range obs.FastPath.Hooks {
		if h.VNI == 4098 {
			t.Fatalf("hook of a deleted network left: %+v", h)
		}
	}
}

// TestPlanFastPathShapedPort: a port someone shapes (a qdisc on its host
// end) leaves the fast path both ways, so the shaping holds.
func TestPlanFastPathShapedPort(t *testing.T) {
	dp := fake.New()
	dp.EnableFastPath()
	a := ep("a", "web", "h1", "02:00:00:00:00:01", "198.19.1.2")
	in := input(a)
	in.FastPath = true
	want, _ := reconcile.Desired(in)
	if _, err := reconcile.Sync(dp, want); err != nil {
		t.Fatal(err)
	}
	if _, err := dp.Attach(datapath.EndpointSpec{ID: "a", VNI: 4097, MAC: a.MAC}); err != nil {
		t.Fatal(err)
	}
	if _, err := reconcile.Sync(dp, want); err != nil {
		t.Fatal(err)
	}
	have, _ := dp.Observe()
	have.Ports[0].Shaped = true
	ops := reconcile.Plan(want, have)
	dev := datapath.HostIfName("a")
	if len(ops) != 2 || indexOf(ops, "del-fast-hook "+dev) < 0 || indexOf(ops, "del-fast-entry fast vni 4097 02:00:00:00:00:01") < 0 {
		t.Fatalf("shaped port: %q, want its hook and entry removed", kinds(ops))
	}
}
