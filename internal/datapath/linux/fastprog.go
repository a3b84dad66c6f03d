package linux

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// The fast path is one TC program, attached with TCX (kernel 6.6 or
// later) at the ingress of the host end of every local port and of every
// vxlan device, and two hash maps:
//
//	hooks: ifindex -> {vni, kind}     where the program runs, for which network
//	macs:  {vni, mac} -> {ifindex, remote}
//
// A unicast frame whose destination MAC is in its own network's map goes
// straight to its device: a remote MAC (only from a port) to the vxlan
// device (bpf_redirect; the device's FDB picks the VTEP), a local one into
// the container (bpf_redirect_peer). Everything else (broadcast, multicast,
// the gateway, unknown MACs, a device the map does not know) goes on
// unchanged to whatever else runs there (other TCX programs, tc) and the
// bridge. The key holds the VNI, so no frame can leave its network.
//
// The attachments are not tied to the agent (BPF_PROG_ATTACH, not a link):
// they outlive it, so a kill -9 changes nothing on the wire, and a new
// agent adopts the running program and its maps when its own program is
// the same (same tag), or replaces it in place when it is not.

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

// fastProgName names vxnet's program; the kernel reports it back.
const fastProgName = "vxnet_fast"

// fastPath is the loaded (or adopted) program and its maps.
type fastPath struct {
	prog   *ebpf.Program
	progID ebpf.ProgramID
	tag    string
	hooks  *ebpf.Map
	macs   *ebpf.Map
	// The maps as last read (at), kept equal by this dataplane's writes:
	// Observe reads the kernel's maps again only after tcxCache.maxAge.
	hooksSeen map[uint32]hookVal
	macsSeen  map[macKey]macVal
	seenAt    time.Time
}

// readMaps refreshes the mirror of the maps when it is older than maxAge.
func (f *fastPath) readMaps(maxAge time.Duration) error {
	if f.hooksSeen != nil && time.Since(f.seenAt) <= maxAge {
		return nil
	}
	hooks := map[uint32]hookVal{}
	var k uint32
	var v hookVal
	it := f.hooks.Iterate()
	for it.Next(&k, &v) {
		hooks[k] = v
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read the BPF map of hooks: %w", err)
	}
	// The MAC map is read in batches: one syscall per 1,024 entries,
	// not two per entry.
	macs := map[macKey]macVal{}
	keys, vals := make([]macKey, 1024), make([]macVal, 1024)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := f.macs.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			macs[keys[i]] = vals[i]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return fmt.Errorf("read the BPF map of MACs: %w", err)
		}
	}
	f.hooksSeen, f.macsSeen, f.seenAt = hooks, macs, time.Now()
	return nil
}

// forgetMaps drops the mirror (after a failed write: read again).
func (f *fastPath) forgetMaps() { f.hooksSeen, f.macsSeen = nil, nil }

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
		tcxNext    = -1 // TC_ACT_UNSPEC: on to the next program, tc and the bridge
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
		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("pass"),
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
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{Name: fastProgName, Type: ebpf.SchedCLS,
		License: "Dual MIT/GPL", Instructions: fastInstructions(hooks, macs)}, ebpf.ProgramOptions{})
	if err != nil {
		hooks.Close()
		macs.Close()
		return nil, fmt.Errorf("load the TC program (needs BPF with bpf_redirect_peer): %w", err)
	}
	f := &fastPath{prog: prog, hooks: hooks, macs: macs}
	if err := f.identify(); err != nil {
		f.close()
		return nil, err
	}
	return f, nil
}

// identify reads the program's ID and tag.
func (f *fastPath) identify() error {
	info, err := f.prog.Info()
	if err != nil {
		return fmt.Errorf("read the TC program's ID: %w", err)
	}
	f.progID, _ = info.ID()
	f.tag = info.Tag
	return nil
}

// adopt opens the program with this ID and its maps when it is vxnet's
// and its tag is tag; nil otherwise.
func adopt(id ebpf.ProgramID, tag string) *fastPath {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return nil
	}
	info, err := p.Info()
	mapIDs, ok := info.MapIDs()
	if err != nil || info.Name != fastProgName || info.Tag != tag || !ok {
		p.Close()
		return nil
	}
	f := &fastPath{prog: p}
	for _, mid := range mapIDs {
		m, err := ebpf.NewMapFromID(mid)
		if err != nil {
			continue
		}
		mi, err := m.Info()
		switch {
		case err == nil && mi.Name == "vxnet_hooks" && f.hooks == nil:
			f.hooks = m
		case err == nil && mi.Name == "vxnet_macs" && f.macs == nil:
			f.macs = m
		default:
			m.Close()
		}
	}
	if f.hooks == nil || f.macs == nil || f.identify() != nil {
		p.Close()
		if f.hooks != nil {
			f.hooks.Close()
		}
		if f.macs != nil {
			f.macs.Close()
		}
		return nil
	}
	return f
}
