package linux

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/datapath"
)

// The fast path is one TC program, attached (clsact ingress, direct
// action) to the host end of every local port and to every vxlan device,
// and two hash maps:
//
//	hooks: ifindex -> {vni, kind}     where the program runs, for which network
//	macs:  {vni, mac} -> {ifindex, remote}
//
// A unicast frame whose destination MAC is in its own network's map goes
// straight to its device: a remote MAC (only from a port) to the vxlan
// device (bpf_redirect; the device's FDB picks the VTEP), a local one into
// the container (bpf_redirect_peer). Everything else (broadcast, multicast,
// the gateway, unknown MACs, a device the map does not know) passes to the
// bridge unchanged. The key holds the VNI, so no frame can leave its
// network. The programs are cls_bpf filters: they outlive the agent (a
// kill -9 changes nothing on the wire) and a new agent replaces them in
// place.

// fastFilterName names vxnet's filter; the kernel reports it back.
const fastFilterName = "vxnet_fast"

// fastPrio is the filter's priority and handle on clsact ingress.
const (
	fastPrio   = 0xc000
	fastHandle = 0xc000
)

// Map sizes. The maps are not preallocated: they cost what they hold.
const (
	fastMaxHooks = 8192
	fastMaxMACs  = 65536
)

// hookVal is a hooks map value.
type hookVal struct {
	VNI  uint32
	Kind uint32 // 0: a port, 1: a vxlan device
}

// macKey is a macs map key.
type macKey struct {
	VNI uint32
	MAC [6]byte
	Pad [2]byte
}

// macVal is a macs map value.
type macVal struct {
	Ifindex uint32
	Remote  uint32
}

// fastPath is the loaded program and its maps.
type fastPath struct {
	prog   *ebpf.Program
	progID ebpf.ProgramID
	hooks  *ebpf.Map
	macs   *ebpf.Map
}

func (f *fastPath) close() {
	f.prog.Close()
	f.hooks.Close()
	f.macs.Close()
}

// fastInstructions is the program (about 40 instructions).
func fastInstructions(hooks, macs *ebpf.Map) asm.Instructions {
	const (
		skbIfindex = 40 // offsetof(struct __sk_buff, ifindex)
		skbData    = 76
		skbDataEnd = 80
	)
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		// The destination MAC: bytes 0-3 in R7, 4-5 in R8.
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 6),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R7, asm.R2, 0, asm.Word),
		asm.LoadMem(asm.R8, asm.R2, 4, asm.Half),
		// Group bit (the first octet's lowest): broadcast and multicast
		// go to the bridge.
		asm.JSet.Imm(asm.R7, 1, "pass"),
		// Which network is this device in?
		asm.LoadMem(asm.R1, asm.R6, skbIfindex, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R1, asm.Word),
		asm.LoadMapPtr(asm.R1, hooks.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word), // vni
		asm.LoadMem(asm.R9, asm.R0, 4, asm.Word), // kind
		// Key {vni, mac, 0} at fp-16.
		asm.StoreMem(asm.RFP, -16, asm.R1, asm.Word),
		asm.StoreMem(asm.RFP, -12, asm.R7, asm.Word),
		asm.StoreMem(asm.RFP, -8, asm.R8, asm.Half),
		asm.StoreImm(asm.RFP, -6, 0, asm.Half),
		asm.LoadMapPtr(asm.R1, macs.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -16),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word), // ifindex
		asm.LoadMem(asm.R2, asm.R0, 4, asm.Word), // remote
		// Never back out of the device it came in by.
		asm.LoadMem(asm.R3, asm.R6, skbIfindex, asm.Word),
		asm.JEq.Reg(asm.R1, asm.R3, "pass"),
		asm.JEq.Imm(asm.R2, 0, "local"),
		// A remote MAC: only from a port, out through the vxlan device.
		asm.JNE.Imm(asm.R9, 0, "pass"),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirect.Call(),
		asm.Return(),
		// A local MAC: into the container's namespace.
		asm.Mov.Imm(asm.R2, 0).WithSymbol("local"),
		asm.FnRedirectPeer.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("pass"), // TC_ACT_OK
		asm.Return(),
	}
}

// loadFastPath creates the maps and loads the program; its error says what
// this kernel lacks.
func loadFastPath() (*fastPath, error) {
	hooks, err := ebpf.NewMap(&ebpf.MapSpec{Name: "vxnet_hooks", Type: ebpf.Hash, KeySize: 4, ValueSize: 8,
		MaxEntries: fastMaxHooks, Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		return nil, fmt.Errorf("create the BPF hash map of hooks: %w", err)
	}
	macs, err := ebpf.NewMap(&ebpf.MapSpec{Name: "vxnet_macs", Type: ebpf.Hash, KeySize: 12, ValueSize: 8,
		MaxEntries: fastMaxMACs, Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		hooks.Close()
		return nil, fmt.Errorf("create the BPF hash map of MACs: %w", err)
	}
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{Name: fastFilterName, Type: ebpf.SchedCLS,
		License: "Dual MIT/GPL", Instructions: fastInstructions(hooks, macs)}, ebpf.ProgramOptions{})
	if err != nil {
		hooks.Close()
		macs.Close()
		return nil, fmt.Errorf("load the TC program (needs BPF with bpf_redirect_peer, kernel 5.10 or later): %w", err)
	}
	info, err := prog.Info()
	if err != nil {
		prog.Close()
		hooks.Close()
		macs.Close()
		return nil, fmt.Errorf("read the TC program's ID: %w", err)
	}
	id, _ := info.ID()
	return &fastPath{prog: prog, progID: id, hooks: hooks, macs: macs}, nil
}

// EnableFastPath loads the fast path's program; from then on Observe
// reports its hooks and entries and the Set/Del methods program them. The
// error says why this kernel cannot run it.
func (d *Dataplane) EnableFastPath() error {
	if d.fast != nil {
		return nil
	}
	f, err := loadFastPath()
	if err != nil {
		return err
	}
	d.fast = f
	return nil
}

// FastPath reports whether the fast path is loaded.
func (d *Dataplane) FastPath() bool { return d.fast != nil }

// errNoFastPath is the error of a fast-path write while it is not loaded.
var errNoFastPath = errors.New("the BPF fast path is not loaded (datapath bridge)")

func clsactOf(idx int) *netlink.Clsact {
	return &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0),
		Parent: netlink.HANDLE_CLSACT}}
}

// fastFilters returns vxnet's ingress filters on the device at idx.
func (d *Dataplane) fastFilters(idx int) ([]*netlink.BpfFilter, error) {
	fs, err := d.h.FilterList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: idx}}, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) { // no clsact qdisc
			return nil, nil
		}
		return nil, err
	}
	var out []*netlink.BpfFilter
	for _, f := range fs {
		if b, ok := f.(*netlink.BpfFilter); ok && b.Name == fastFilterName {
			out = append(out, b)
		}
	}
	return out, nil
}

// observeFast reads the hooks (the devices whose ingress runs this
// agent's program, with the network the map gives them) and the MAC
// entries. A device running another agent's program (before a restart)
// or none is not hooked; entries pointing at a device that is gone
// report an empty Dev.
func (d *Dataplane) observeFast(byIndex map[int]netlink.Link, owned map[int]ownedLink) (*datapath.FastPath, error) {
	fp := &datapath.FastPath{}
	hooked := map[int]bool{}
	stale := map[int]bool{}
	for idx, o := range owned {
		if o.kind != "vxlan" && o.kind != "ep" {
			continue
		}
		fs, err := d.fastFilters(idx)
		if err != nil {
			return nil, fmt.Errorf("list filters of %s: %w", o.link.Attrs().Name, err)
		}
		for _, f := range fs {
			if d.fast != nil && f.Id == int(d.fast.progID) {
				hooked[idx] = true
			} else {
				stale[idx] = true
			}
		}
	}
	if d.fast == nil {
		// Nothing is programmed; filters left by a fast-path agent are
		// reported so that the pass removes them.
		if len(stale) == 0 {
			return nil, nil
		}
		for idx := range stale {
			fp.Hooks = append(fp.Hooks, datapath.FastHook{Dev: byIndex[idx].Attrs().Name, Index: idx, Stale: true})
		}
		return fp, nil
	}
	var k uint32
	var v hookVal
	it := d.fast.hooks.Iterate()
	for it.Next(&k, &v) {
		l, ok := byIndex[int(k)]
		h := datapath.FastHook{VNI: v.VNI, Vxlan: v.Kind == 1, Index: int(k)}
		if ok {
			h.Dev = l.Attrs().Name
		}
		h.Stale = !hooked[int(k)]
		delete(stale, int(k))
		fp.Hooks = append(fp.Hooks, h)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read the BPF map of hooks: %w", err)
	}
	for idx := range stale {
		fp.Hooks = append(fp.Hooks, datapath.FastHook{Dev: byIndex[idx].Attrs().Name, Index: idx, Stale: true})
	}
	slices.SortFunc(fp.Hooks, func(a, b datapath.FastHook) int { return cmp.Compare(a.Index, b.Index) })
	var mk macKey
	var mv macVal
	mit := d.fast.macs.Iterate()
	for mit.Next(&mk, &mv) {
		e := datapath.FastEntry{VNI: mk.VNI, MAC: net.HardwareAddr(mk.MAC[:]).String(), Remote: mv.Remote == 1}
		if l, ok := byIndex[int(mv.Ifindex)]; ok {
			e.Dev = l.Attrs().Name
		}
		fp.Entries = append(fp.Entries, e)
	}
	if err := mit.Err(); err != nil {
		return nil, fmt.Errorf("read the BPF map of MACs: %w", err)
	}
	slices.SortFunc(fp.Entries, func(a, b datapath.FastEntry) int { return a.Key().Compare(b.Key()) })
	return fp, nil
}

// SetFastHook runs the program at the ingress of h.Dev for network h.VNI,
// replacing any filter of vxnet's there (a previous agent's).
func (d *Dataplane) SetFastHook(h datapath.FastHook) error {
	if d.fast == nil {
		return errNoFastPath
	}
	l, err := d.h.LinkByName(h.Dev)
	if err != nil {
		return fmt.Errorf("hook %s: %w", h.Dev, err)
	}
	if _, ok := parseOwned(l); !ok {
		return &datapath.NotOwnedError{Device: h.Dev}
	}
	idx := l.Attrs().Index
	kind := uint32(0)
	if h.Vxlan {
		kind = 1
	}
	if err := d.fast.hooks.Put(uint32(idx), hookVal{VNI: h.VNI, Kind: kind}); err != nil {
		return fmt.Errorf("hook %s: write the BPF map: %w", h.Dev, err)
	}
	if err := d.h.QdiscReplace(clsactOf(idx)); err != nil {
		return fmt.Errorf("hook %s: add the clsact qdisc: %w", h.Dev, err)
	}
	f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: netlink.HANDLE_MIN_INGRESS,
		Handle: fastHandle, Priority: fastPrio, Protocol: unix.ETH_P_ALL}, Fd: d.fast.prog.FD(),
		Name: fastFilterName, DirectAction: true}
	if err := d.h.FilterReplace(f); err != nil {
		return fmt.Errorf("hook %s: attach the TC program: %w", h.Dev, err)
	}
	d.changed("set fast hook", "dev", h.Dev, "vni", h.VNI)
	return nil
}

// DelFastHook takes the program off a device (by h.Index when set, else
// by name) and forgets the device; an absent one is no error.
func (d *Dataplane) DelFastHook(h datapath.FastHook) error {
	idx := h.Index
	if idx == 0 {
		l, err := d.h.LinkByName(h.Dev)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return nil
			}
			return fmt.Errorf("unhook %s: %w", h.Dev, err)
		}
		idx = l.Attrs().Index
	}
	fs, err := d.fastFilters(idx)
	if err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("unhook %s: %w", h.Dev, err)
	}
	for _, f := range fs {
		if err := d.h.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unhook %s: %w", h.Dev, err)
		}
	}
	if d.fast != nil {
		if err := d.fast.hooks.Delete(uint32(idx)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("unhook %s: write the BPF map: %w", h.Dev, err)
		}
	}
	d.changed("deleted fast hook", "dev", h.Dev)
	return nil
}

func fastKey(vni uint32, mac string) (macKey, error) {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return macKey{}, fmt.Errorf("invalid MAC %q: want six octets such as 02:42:ac:11:00:02", mac)
	}
	k := macKey{VNI: vni}
	copy(k.MAC[:], hw)
	return k, nil
}

// SetFastEntry adds or replaces a MAC entry.
func (d *Dataplane) SetFastEntry(e datapath.FastEntry) error {
	if d.fast == nil {
		return errNoFastPath
	}
	k, err := fastKey(e.VNI, e.MAC)
	if err != nil {
		return fmt.Errorf("%s: %w", e, err)
	}
	l, err := d.h.LinkByName(e.Dev)
	if err != nil {
		return fmt.Errorf("%s: %w", e, err)
	}
	v := macVal{Ifindex: uint32(l.Attrs().Index)}
	if e.Remote {
		v.Remote = 1
	}
	if err := d.fast.macs.Put(k, v); err != nil {
		return fmt.Errorf("%s: write the BPF map: %w", e, err)
	}
	d.changed("set fast entry", "entry", e.String())
	return nil
}

// DelFastEntry removes a MAC entry; an absent one is no error.
func (d *Dataplane) DelFastEntry(e datapath.FastEntry) error {
	if d.fast == nil {
		return nil
	}
	k, err := fastKey(e.VNI, e.MAC)
	if err != nil {
		return fmt.Errorf("%s: %w", e, err)
	}
	if err := d.fast.macs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("%s: write the BPF map: %w", e, err)
	}
	d.changed("deleted fast entry", "entry", e.String())
	return nil
}

// forgetFast drops the map entries that point at a device about to go
// away, so that a reused ifindex never inherits them.
func (d *Dataplane) forgetFast(idx int) {
	if d.fast == nil {
		return
	}
	_ = d.fast.hooks.Delete(uint32(idx))
	var k macKey
	var v macVal
	var drop []macKey
	it := d.fast.macs.Iterate()
	for it.Next(&k, &v) {
		if int(v.Ifindex) == idx {
			drop = append(drop, k)
		}
	}
	for _, k := range drop {
		_ = d.fast.macs.Delete(k)
	}
}

// bridgeStatic is the static entry on the bridge (master) for a MAC behind
// the port at idx: the bridge does not learn from frames the fast path
// carries, so it is told.
func bridgeStatic(idx int, mac net.HardwareAddr) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_MASTER,
		State: netlink.NUD_NOARP, HardwareAddr: mac}
}
