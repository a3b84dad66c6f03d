package linux

import (
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
	insns := append(asm.Instructions{asm.Mov.Imm(asm.R0, 0)}, fastInstructions(f.hooks, f.macs)...)
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
