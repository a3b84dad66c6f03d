package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// The fast path is one TC program, attached with TCX (kernel 6.6 or
// later) at the ingress of the host end of every local port, of every
// vxlan device and of the underlay device, two hash maps and an array of
// one slot:
//
//	hooks: ifindex -> {vni, kind}     where the program runs, for which network
//	macs:  {vni, mac} -> {ifindex, remote, vtep, local, port, underlay, next hop}
//	under: 0 -> ifindex               the underlay device's hook, found without
//	                                  hashing (the host's own traffic crosses it)
//
// A unicast frame whose destination MAC is in its own network's map goes
// straight to its device: a local one into the container
// (bpf_redirect_peer); a remote one (only from a port) is wrapped by the
// program itself when its entry has the tunnel's addresses (an IPv4 or
// IPv6 frame, VXLAN over IPv4: outer IPv4, UDP and VXLAN headers pushed with
// bpf_skb_adjust_room, which keeps the frame's segmentation offload, then
// bpf_redirect_neigh out of the underlay device), else handed to the vxlan
// device (bpf_redirect; its FDB picks the VTEP). Wrapping in the program
// skips the vxlan device's transmit path and the host's netfilter on the
// outer packet (OUTPUT and POSTROUTING: vxnet's own rule there only skips
// conntrack for VXLAN; Docker's NAT chains never match it). Everything
// else (broadcast, multicast, the gateway, unknown MACs, ARP, a device the
// map does not know) goes on unchanged to whatever else runs there (other
// TCX programs, tc) and the bridge. The key holds the VNI, so no frame can
// leave its network. At the underlay device the program unwraps what a
// member's VTEP sends from one of its MACs to a local one
// (unwrapInstructions) and hands the frame into the container, past the
// host's netfilter, UDP socket and vxlan device; all else goes on to them.
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
	Kind uint32 // hookPort, hookVxlan or hookUnderlay
}

// Hook kinds.
const (
	hookPort     = 0
	hookVxlan    = 1
	hookUnderlay = 2
)

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
	// VTEP is a remote MAC's VTEP (16 bytes, IPv4 mapped).
	VTEP [16]byte
	// Local (the vxlan device's IPv4 source address), Port (its UDP
	// port, network order) and Under (its underlay device) let the
	// program wrap frames itself; Local zero: it hands them to the
	// vxlan device.
	Local [4]byte
	Port  [2]byte
	Pad   [2]byte
	Under uint32
	// NH is the IPv4 next hop towards the VTEP out of Under, as the
	// host's routes gave it (nextHop); zero: the kernel looks the route
	// up for every frame.
	NH [4]byte
}

// vtep4 is the entry's VTEP as an IPv4 address (zero when it is IPv6).
func (v macVal) vtep4() (a [4]byte) {
	if ip := netip.AddrFrom16(v.VTEP).Unmap(); ip.Is4() {
		a = ip.As4()
	}
	return a
}

// Offsets in macVal, for the program.
const (
	valIfindex = 0
	valVTEP4   = 8 + 12
	valLocal   = 24
	valPort    = 28
	valUnder   = 32
	valNH      = 36
	macValSize = 40
)

// VXLAN over IPv4 as the program writes it: outer IPv4 (20), UDP (8),
// VXLAN (8) headers and the frame's own Ethernet header (14) after the
// room's Ethernet header.
const (
	ethLen   = 14
	encapLen = 20 + 8 + 8 + ethLen
	// Source ports come from the flow's hash, in Linux's default
	// ephemeral range (as the vxlan device picks them).
	srcPortMin, srcPortSpan = 32768, 60999 - 32768 + 1
	// bpf_skb_adjust_room: BPF_ADJ_ROOM_MAC, and FIXED_GSO (the inner
	// segment size stays), ENCAP_L3_IPV4, ENCAP_L4_UDP, ENCAP_L2_ETH,
	// ENCAP_L2(14): the kernel then segments and checksums the frame
	// as it does the vxlan device's (SKB_GSO_UDP_TUNNEL).
	adjRoomMAC   = 1
	adjRoomEncap = 1<<0 | 1<<1 | 1<<4 | 1<<6 | ethLen<<56
	// Unwrapping: FIXED_GSO and NO_CSUM_RESET (the checksum level is
	// lowered by one instead, as the kernel's UDP receive does for the
	// outer header), and DECAP_L3_IPV6 for an IPv6 frame.
	adjRoomDecap   = 1<<0 | 1<<5
	adjRoomDecap6  = adjRoomDecap | 1<<8
	csumLevelDec   = 2
	tcActShot      = 2
	decapMinLength = ethLen + encapLen
)

// ne16 and ne32 are the values whose bytes in memory, in this machine's
// order, are b: header fields the program stores whole.
func ne16(b0, b1 byte) int16 { return int16(binary.NativeEndian.Uint16([]byte{b0, b1})) }
func ne32(b0, b1, b2, b3 byte) int32 {
	return int32(binary.NativeEndian.Uint32([]byte{b0, b1, b2, b3}))
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
	under  *ebpf.Map
	// The maps as last read (at), kept equal by this dataplane's writes:
	// Observe reads the kernel's maps again only after tcxCache.maxAge.
	hooksSeen map[uint32]hookVal
	macsSeen  map[macKey]macVal
	underSeen uint32
	seenAt    time.Time
	// xfrm says whether the host had IPsec policies at xfrmAt.
	xfrm   bool
	xfrmAt time.Time
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
	var under uint32
	if err := f.under.Lookup(uint32(0), &under); err != nil {
		return fmt.Errorf("read the BPF map of the underlay: %w", err)
	}
	f.hooksSeen, f.macsSeen, f.underSeen, f.seenAt = hooks, macs, under, time.Now()
	return nil
}

// setUnder writes the underlay's slot.
func (f *fastPath) setUnder(idx uint32) error {
	if err := f.under.Put(uint32(0), idx); err != nil {
		f.forgetMaps()
		return fmt.Errorf("write the BPF map of the underlay: %w", err)
	}
	f.underSeen = idx
	return nil
}

// forgetMaps drops the mirror (after a failed write: read again).
func (f *fastPath) forgetMaps() { f.hooksSeen, f.macsSeen = nil, nil }

func (f *fastPath) close() {
	f.prog.Close()
	f.hooks.Close()
	f.macs.Close()
	f.under.Close()
}

// fastInstructions is the program (about 260 instructions).
func fastInstructions(hooks, macs, under *ebpf.Map) asm.Instructions {
	const (
		skbLen      = 0  // offsetof(struct __sk_buff, len)
		skbProtocol = 16 // protocol (network order)
		skbIfindex  = 40 // ifindex
		skbData     = 76
		skbDataEnd  = 80
		tcxNext     = -1 // TC_ACT_UNSPEC: on to the next program, tc and the bridge
		// The outer headers are built on the stack at buf (50 bytes),
		// bpf_redirect_neigh's parameters at nhParams.
		buf                   = -128
		nhParams, nhParamsLen = -160, 20
	)
	return append(asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		// The underlay device: straight to unwrapping (an array's
		// lookup, which the verifier inlines).
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, under.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "port"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, skbIfindex, asm.Word),
		asm.JEq.Reg(asm.R1, asm.R2, "underlay"),
		// The destination MAC: bytes 0-3 in R7, 4-5 in R8.
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word).WithSymbol("port"),
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
		asm.JEq.Imm(asm.R9, hookUnderlay, "underlay"),
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
		// A remote MAC: only from a port.
		asm.JNE.Imm(asm.R9, 0, "pass"),
		asm.Mov.Reg(asm.R7, asm.R0), // the entry, kept across calls
		// Wrapped here: an IPv4 or IPv6 frame whose entry has the
		// tunnel's addresses, short enough for an outer IPv4 length.
		asm.LoadMem(asm.R3, asm.R0, valLocal, asm.Word),
		asm.JEq.Imm(asm.R3, 0, "vxdev"),
		asm.LoadMem(asm.R3, asm.R6, skbProtocol, asm.Word),
		asm.JEq.Imm(asm.R3, int32(uint16(ne16(0x08, 0x00))), "wrap"),
		asm.JNE.Imm(asm.R3, int32(uint16(ne16(0x86, 0xdd))), "vxdev"),
		asm.LoadMem(asm.R3, asm.R6, skbLen, asm.Word).WithSymbol("wrap"),
		asm.JGT.Imm(asm.R3, 0xffff+ethLen-encapLen, "vxdev"),
		// The frame's Ethernet header goes after the VXLAN header.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, buf+36),
		asm.Mov.Imm(asm.R4, ethLen),
		asm.FnSkbLoadBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "vxdev"),
		// IPv4: version 4, 5 words, no TOS; a random ID (without DF, as
		// the vxlan device sends by default, a router may fragment), no
		// flags; TTL 64, UDP; checksum later; the entry's local address
		// and VTEP.
		asm.StoreImm(asm.RFP, buf+0, int64(ne16(0x45, 0)), asm.Half),
		asm.FnGetPrandomU32.Call(),
		asm.StoreMem(asm.RFP, buf+4, asm.R0, asm.Half),
		asm.StoreImm(asm.RFP, buf+6, 0, asm.Half),
		asm.StoreImm(asm.RFP, buf+8, int64(ne16(64, 17)), asm.Half),
		asm.StoreImm(asm.RFP, buf+10, 0, asm.Half),
		asm.LoadMem(asm.R3, asm.R7, valLocal, asm.Word),
		asm.StoreMem(asm.RFP, buf+12, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.R7, valVTEP4, asm.Word),
		asm.StoreMem(asm.RFP, buf+16, asm.R3, asm.Word),
		// UDP: destination port from the entry, no checksum (as the
		// vxlan device sends over IPv4).
		asm.LoadMem(asm.R3, asm.R7, valPort, asm.Half),
		asm.StoreMem(asm.RFP, buf+22, asm.R3, asm.Half),
		asm.StoreImm(asm.RFP, buf+26, 0, asm.Half),
		// VXLAN: the I flag, the VNI.
		asm.StoreImm(asm.RFP, buf+28, int64(ne32(0x08, 0, 0, 0)), asm.Word),
		asm.LoadMem(asm.R3, asm.RFP, -16, asm.Word),
		asm.LSh.Imm(asm.R3, 8),
		asm.HostTo(asm.BE, asm.R3, asm.Word),
		asm.StoreMem(asm.RFP, buf+32, asm.R3, asm.Word),
		// UDP source port from the flow's hash.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetHashRecalc.Call(),
		asm.Mod.Imm(asm.R0, srcPortSpan),
		asm.Add.Imm(asm.R0, srcPortMin),
		asm.HostTo(asm.BE, asm.R0, asm.Half),
		asm.StoreMem(asm.RFP, buf+20, asm.R0, asm.Half),
		// Room for the headers after the Ethernet header.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, encapLen),
		asm.Mov.Imm(asm.R3, adjRoomMAC),
		asm.LoadImm(asm.R4, adjRoomEncap, asm.DWord),
		asm.FnSkbAdjustRoom.Call(),
		asm.JNE.Imm(asm.R0, 0, "vxdev"),
		// Lengths: IPv4 total and UDP, of the frame as it now is.
		asm.LoadMem(asm.R3, asm.R6, skbLen, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R3),
		asm.Sub.Imm(asm.R3, ethLen),
		asm.HostTo(asm.BE, asm.R3, asm.Half),
		asm.StoreMem(asm.RFP, buf+2, asm.R3, asm.Half),
		asm.Sub.Imm(asm.R4, ethLen+20),
		asm.HostTo(asm.BE, asm.R4, asm.Half),
		asm.StoreMem(asm.RFP, buf+24, asm.R4, asm.Half),
		// The IPv4 header checksum: sum, fold twice, complement.
		asm.Mov.Imm(asm.R1, 0),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, buf),
		asm.Mov.Imm(asm.R4, 20),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnCsumDiff.Call(),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.RSh.Imm(asm.R1, 16),
		asm.And.Imm(asm.R0, 0xffff),
		asm.Add.Reg(asm.R0, asm.R1),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.RSh.Imm(asm.R1, 16),
		asm.And.Imm(asm.R0, 0xffff),
		asm.Add.Reg(asm.R0, asm.R1),
		asm.Xor.Imm(asm.R0, 0xffff),
		asm.StoreMem(asm.RFP, buf+10, asm.R0, asm.Half),
		// Write them; a frame half-wrapped is dropped.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, ethLen),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, buf),
		asm.Mov.Imm(asm.R4, encapLen),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkbStoreBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "drop"),
		// The outer Ethernet type: IPv4 (an IPv6 frame's was IPv6; the
		// room's ENCAP_L3_IPV4 made the packet's protocol IPv4).
		asm.StoreImm(asm.RFP, buf-8, int64(ne16(0x08, 0x00)), asm.Half),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 12),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, buf-8),
		asm.Mov.Imm(asm.R4, 2),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkbStoreBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "drop"),
		// Out of the underlay device, to the entry's next hop (struct
		// bpf_redir_neigh: AF_INET, the address; the kernel's neighbours
		// fill the Ethernet header), or, without one, to the one the
		// kernel's routes give.
		asm.LoadMem(asm.R1, asm.R7, valUnder, asm.Word),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Imm(asm.R3, 0),
		asm.Mov.Imm(asm.R4, 0),
		asm.LoadMem(asm.R5, asm.R7, valNH, asm.Word),
		asm.JEq.Imm(asm.R5, 0, "neigh"),
		asm.StoreImm(asm.RFP, nhParams, unix.AF_INET, asm.Word),
		asm.StoreMem(asm.RFP, nhParams+4, asm.R5, asm.Word),
		asm.StoreImm(asm.RFP, nhParams+8, 0, asm.Word),
		asm.StoreImm(asm.RFP, nhParams+12, 0, asm.Word),
		asm.StoreImm(asm.RFP, nhParams+16, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, nhParams),
		asm.Mov.Imm(asm.R3, nhParamsLen),
		asm.FnRedirectNeigh.Call().WithSymbol("neigh"),
		asm.Return(),
		// Else out through the vxlan device.
		asm.LoadMem(asm.R1, asm.R7, valIfindex, asm.Word).WithSymbol("vxdev"),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirect.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, tcActShot).WithSymbol("drop"),
		asm.Return(),
		// A local MAC: into the container's namespace.
		asm.Mov.Imm(asm.R2, 0).WithSymbol("local"),
		asm.FnRedirectPeer.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("pass"),
		asm.Return(),
	}, unwrapInstructions(macs)...)
}

// unwrapInstructions is the program's part at the underlay device: VXLAN
// over IPv4 to this host (its MAC and address), on the port, from the
// VTEP, for the VNI, and from the inner source MAC of one remote entry, to
// a local MAC, is unwrapped and goes into the container; everything else (another
// sender, another port, the VTEP of another MAC, fragments, IP options,
// VXLAN flags other than I, ARP, broadcast) goes on to the host's stack,
// its firewall (the VXLAN allow-list) and the vxlan device, as it would
// without the program. R6 holds the context.
func unwrapInstructions(macs *ebpf.Map) asm.Instructions {
	const (
		skbPktType = 4
		skbData    = 76
		skbDataEnd = 80
		tcxNext    = -1
		// Stack: the source MAC's key at fp-16 (as above), the outer
		// source and destination addresses and port at fp-24, -28, -30,
		// the destination MAC's key at fp-48, the inner Ethernet header
		// at fp-64.
		srcKey, outerSrc, outerDst, outerPort, dstKey, innerEth = -16, -24, -28, -30, -48, -64
	)
	return asm.Instructions{
		// Only what the host's stack would take: a frame to this
		// device's MAC (PACKET_HOST).
		asm.LoadMem(asm.R2, asm.R6, skbPktType, asm.Word).WithSymbol("underlay"),
		asm.JNE.Imm(asm.R2, 0, "upass"),
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, decapMinLength),
		asm.JGT.Reg(asm.R4, asm.R3, "upass"),
		// IPv4 without options or fragments, UDP, VXLAN with the I flag
		// alone, a unicast inner destination.
		asm.LoadMem(asm.R4, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R4, int32(uint16(ne16(0x08, 0x00))), "upass"),
		asm.LoadMem(asm.R4, asm.R2, 14, asm.Byte),
		asm.JNE.Imm(asm.R4, 0x45, "upass"),
		asm.LoadMem(asm.R4, asm.R2, 20, asm.Half),
		asm.JSet.Imm(asm.R4, int32(uint16(ne16(0x3f, 0xff))), "upass"),
		asm.LoadMem(asm.R4, asm.R2, 23, asm.Byte),
		asm.JNE.Imm(asm.R4, 17, "upass"),
		asm.LoadMem(asm.R4, asm.R2, 42, asm.Word),
		asm.JNE.Imm(asm.R4, ne32(0x08, 0, 0, 0), "upass"),
		asm.LoadMem(asm.R4, asm.R2, 50, asm.Byte),
		asm.JSet.Imm(asm.R4, 1, "upass"),
		// The inner frame: IPv4 or IPv6 (R9: the room's flags).
		asm.LoadMem(asm.R4, asm.R2, 62, asm.Half),
		asm.Mov.Imm(asm.R9, adjRoomDecap),
		asm.JEq.Imm(asm.R4, int32(uint16(ne16(0x08, 0x00))), "ukeys"),
		asm.JNE.Imm(asm.R4, int32(uint16(ne16(0x86, 0xdd))), "upass"),
		asm.Mov.Imm(asm.R9, adjRoomDecap6),
		// The VNI, and the keys of the inner source and destination MACs.
		asm.LoadMem(asm.R4, asm.R2, 46, asm.Word).WithSymbol("ukeys"),
		asm.HostTo(asm.BE, asm.R4, asm.Word),
		asm.RSh.Imm(asm.R4, 8),
		asm.StoreMem(asm.RFP, srcKey, asm.R4, asm.Word),
		asm.StoreMem(asm.RFP, dstKey, asm.R4, asm.Word),
		asm.LoadMem(asm.R4, asm.R2, 56, asm.Word),
		asm.StoreMem(asm.RFP, srcKey+4, asm.R4, asm.Word),
		asm.LoadMem(asm.R4, asm.R2, 60, asm.Half),
		asm.StoreMem(asm.RFP, srcKey+8, asm.R4, asm.Half),
		asm.StoreImm(asm.RFP, srcKey+10, 0, asm.Half),
		asm.LoadMem(asm.R4, asm.R2, 50, asm.Word),
		asm.StoreMem(asm.RFP, dstKey+4, asm.R4, asm.Word),
		asm.LoadMem(asm.R4, asm.R2, 54, asm.Half),
		asm.StoreMem(asm.RFP, dstKey+8, asm.R4, asm.Half),
		asm.StoreImm(asm.RFP, dstKey+10, 0, asm.Half),
		asm.LoadMem(asm.R4, asm.R2, 26, asm.Word),
		asm.StoreMem(asm.RFP, outerSrc, asm.R4, asm.Word),
		asm.LoadMem(asm.R4, asm.R2, 30, asm.Word),
		asm.StoreMem(asm.RFP, outerDst, asm.R4, asm.Word),
		asm.LoadMem(asm.R4, asm.R2, 36, asm.Half),
		asm.StoreMem(asm.RFP, outerPort, asm.R4, asm.Half),
		// The source MAC: a remote one, behind this VTEP, whose tunnel
		// is this host's address and port.
		asm.LoadMapPtr(asm.R1, macs.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, srcKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "upass"),
		asm.LoadMem(asm.R3, asm.R0, 4, asm.Word),
		asm.JEq.Imm(asm.R3, 0, "upass"),
		asm.LoadMem(asm.R3, asm.R0, valLocal, asm.Word),
		asm.JEq.Imm(asm.R3, 0, "upass"),
		asm.LoadMem(asm.R4, asm.RFP, outerDst, asm.Word),
		asm.JNE.Reg(asm.R3, asm.R4, "upass"),
		asm.LoadMem(asm.R3, asm.R0, valVTEP4, asm.Word),
		asm.LoadMem(asm.R4, asm.RFP, outerSrc, asm.Word),
		asm.JNE.Reg(asm.R3, asm.R4, "upass"),
		asm.LoadMem(asm.R3, asm.R0, valPort, asm.Half),
		asm.LoadMem(asm.R4, asm.RFP, outerPort, asm.Half),
		asm.JNE.Reg(asm.R3, asm.R4, "upass"),
		// The destination MAC: a local port of that network.
		asm.LoadMapPtr(asm.R1, macs.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, dstKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "upass"),
		asm.LoadMem(asm.R3, asm.R0, 4, asm.Word),
		asm.JNE.Imm(asm.R3, 0, "upass"),
		asm.LoadMem(asm.R7, asm.R0, valIfindex, asm.Word),
		// Keep the inner Ethernet header, take the 50 bytes before it
		// out, put it in front.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, encapLen),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, innerEth),
		asm.Mov.Imm(asm.R4, ethLen),
		asm.FnSkbLoadBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "upass"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, -encapLen),
		asm.Mov.Imm(asm.R3, adjRoomMAC),
		asm.Mov.Reg(asm.R4, asm.R9),
		asm.FnSkbAdjustRoom.Call(),
		asm.JNE.Imm(asm.R0, 0, "upass"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, csumLevelDec),
		asm.FnCsumLevel.Call(),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, innerEth),
		asm.Mov.Imm(asm.R4, ethLen),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkbStoreBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "udrop"),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirectPeer.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, tcActShot).WithSymbol("udrop"),
		asm.Return(),
		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("upass"),
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
	macs, err := ebpf.NewMap(&ebpf.MapSpec{Name: "vxnet_macs", Type: ebpf.Hash, KeySize: 12, ValueSize: macValSize,
		MaxEntries: fastMaxMACs, Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		hooks.Close()
		return nil, fmt.Errorf("create the BPF hash map of MACs: %w", err)
	}
	under, err := ebpf.NewMap(&ebpf.MapSpec{Name: "vxnet_under", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		hooks.Close()
		macs.Close()
		return nil, fmt.Errorf("create the BPF array of the underlay: %w", err)
	}
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{Name: fastProgName, Type: ebpf.SchedCLS,
		License: "Dual MIT/GPL", Instructions: fastInstructions(hooks, macs, under)}, ebpf.ProgramOptions{})
	if err != nil {
		hooks.Close()
		macs.Close()
		under.Close()
		return nil, fmt.Errorf("load the TC program (needs BPF with bpf_redirect_peer): %w", err)
	}
	f := &fastPath{prog: prog, hooks: hooks, macs: macs, under: under}
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
		case err == nil && mi.Name == "vxnet_under" && f.under == nil:
			f.under = m
		default:
			m.Close()
		}
	}
	if f.hooks == nil || f.macs == nil || f.under == nil || f.identify() != nil {
		p.Close()
		for _, m := range []*ebpf.Map{f.hooks, f.macs, f.under} {
			if m != nil {
				m.Close()
			}
		}
		return nil
	}
	return f
}
