package linux

import (
	"os/exec"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/dptest"
	"github.com/vxnet/vxnet/internal/testutil"
)

// olderProgram loads a program as an earlier vxnet release might have
// left it: vxnet's name, other instructions (so another tag), maps of its
// own.
func olderProgram(t *testing.T) *fastPath {
	t.Helper()
	f, err := loadFastPath()
	if err != nil {
		t.Fatal(err)
	}
	insns := append(asm.Instructions{asm.Mov.Imm(asm.R0, 0)}, fastInstructions(f.hooks, f.macs, f.under)...)
	older, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: fastProgName, Type: ebpf.SchedCLS, License: "Dual MIT/GPL", Instructions: insns})
	if err != nil {
		t.Fatal(err)
	}
	f.prog.Close()
	f.prog = older
	if err := f.identify(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.close)
	return f
}

// TestFastPathReplacesAnOlderProgram: an earlier release's program (same
// name, another tag) is not adopted; it is reported stale and replaced in
// place, and a second copy of vxnet's program beside this one's goes.
func TestFastPathReplacesAnOlderProgram(t *testing.T) {
	testutil.RequireRoot(t)
	_, path := testutil.Netns(t)
	d, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.SetFastPathMaxAge(0)
	if err := d.EnsureNetwork(dptest.Spec(7300)); err != nil {
		t.Fatal(err)
	}
	vx, err := d.h.LinkByName(datapath.VxlanName(7300))
	if err != nil {
		t.Fatal(err)
	}
	idx := vx.Attrs().Index
	older := olderProgram(t)
	attach := func(p *ebpf.Program) {
		t.Helper()
		if err := d.inNS(func() error {
			return link.RawAttachProgram(link.RawAttachProgramOptions{Target: idx, Program: p, Attach: ebpf.AttachTCXIngress})
		}); err != nil {
			t.Fatal(err)
		}
	}
	attachedHere := func() []ebpf.ProgramID {
		t.Helper()
		var ids []ebpf.ProgramID
		if err := d.inNS(func() error { ids, err = attached(idx); return err }); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	attach(older.prog)
	if err := d.EnableFastPath(); err != nil {
		t.Fatal(err)
	}
	if d.fast.progID == older.progID {
		t.Fatal("adopted a program with another tag")
	}
	obs, err := d.Observe()
	if err != nil {
		t.Fatal(err)
	}
	if len(obs.FastPath.Hooks) != 1 || !obs.FastPath.Hooks[0].Stale {
		t.Fatalf("the older program is not reported stale: %+v", obs.FastPath.Hooks)
	}
	hook := datapath.FastHook{Dev: vx.Attrs().Name, VNI: 7300, Vxlan: true}
	if err := d.SetFastHook(hook); err != nil {
		t.Fatal(err)
	}
	if got := attachedHere(); !slices.Equal(got, []ebpf.ProgramID{d.fast.progID}) {
		t.Fatalf("programs at %s: %v, want only this dataplane's %d (the older was %d)", vx.Attrs().Name, got, d.fast.progID, older.progID)
	}
	// The older one back beside it (a race of two agents): the next
	// SetFastHook leaves one.
	attach(older.prog)
	if err := d.SetFastHook(hook); err != nil {
		t.Fatal(err)
	}
	if got := attachedHere(); !slices.Equal(got, []ebpf.ProgramID{d.fast.progID}) {
		t.Fatalf("programs at %s after a second copy: %v, want only %d", vx.Attrs().Name, got, d.fast.progID)
	}
}

// TestUnderlaySlot: the program finds the underlay's hook in its slot
// without hashing; the slot follows SetFastHook and DelFastHook, and
// Observe reports a slot that disagrees with the hooks (empty while the
// underlay is hooked, or naming a device that is no underlay) as a stale
// underlay hook, so that the pass mends it.
func TestUnderlaySlot(t *testing.T) {
	testutil.RequireRoot(t)
	ns, path := testutil.Netns(t)
	if out, err := exec.Command("ip", "-n", ns, "link", "add", "u0", "type", "veth", "peer", "name", "u1").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.SetFastPathMaxAge(0)
	if err := d.EnableFastPath(); err != nil {
		t.Fatal(err)
	}
	u0, err := d.h.LinkByName("u0")
	if err != nil {
		t.Fatal(err)
	}
	u1, err := d.h.LinkByName("u1")
	if err != nil {
		t.Fatal(err)
	}
	slot := func() uint32 {
		t.Helper()
		var v uint32
		if err := d.fast.under.Lookup(uint32(0), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	stale := func() []int {
		t.Helper()
		obs, err := d.Observe()
		if err != nil {
			t.Fatal(err)
		}
		var idx []int
		for _, h := range obs.FastPath.Hooks {
			if h.Stale && h.Underlay {
				idx = append(idx, h.Index)
			}
		}
		return idx
	}
	hook := datapath.FastHook{Dev: "u0", Underlay: true}
	if err := d.SetFastHook(hook); err != nil {
		t.Fatal(err)
	}
	if got := slot(); got != uint32(u0.Attrs().Index) {
		t.Fatalf("slot %d after hooking u0 (index %d)", got, u0.Attrs().Index)
	}
	if got := stale(); len(got) != 0 {
		t.Fatalf("stale underlay hooks %v with the slot right", got)
	}
	if err := d.fast.under.Put(uint32(0), uint32(0)); err != nil {
		t.Fatal(err)
	}
	if got := stale(); !slices.Equal(got, []int{u0.Attrs().Index}) {
		t.Fatalf("stale underlay hooks %v with the slot empty, want u0's", got)
	}
	if err := d.fast.under.Put(uint32(0), uint32(u1.Attrs().Index)); err != nil {
		t.Fatal(err)
	}
	if got := stale(); !slices.Contains(got, u1.Attrs().Index) {
		t.Fatalf("stale underlay hooks %v with the slot naming u1, want u1's among them", got)
	}
	if err := d.DelFastHook(datapath.FastHook{Index: u1.Attrs().Index, Underlay: true}); err != nil {
		t.Fatal(err)
	}
	if got := slot(); got != 0 {
		t.Fatalf("slot %d after unhooking the device it named", got)
	}
	if err := d.SetFastHook(hook); err != nil {
		t.Fatal(err)
	}
	if err := d.DelFastHook(hook); err != nil {
		t.Fatal(err)
	}
	if got := slot(); got != 0 {
		t.Fatalf("slot %d after unhooking u0", got)
	}
}
