package linux

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/nsutil"
)

// inNS runs fn on a thread in the dataplane's namespace: TCX attachments
// name their device by ifindex, which the kernel resolves in the caller's
// namespace.
func (d *Dataplane) inNS(fn func() error) error {
	return nsutil.DoIn(d.ns, "of the dataplane", fn)
}

// attached returns the IDs of the programs at a device's TCX ingress (in
// the namespace: call within inNS).
func attached(idx int) ([]ebpf.ProgramID, error) {
	q, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return nil, err
	}
	ids := make([]ebpf.ProgramID, 0, len(q.Programs))
	for _, p := range q.Programs {
		ids = append(ids, p.ID)
	}
	return ids, nil
}

// EnableFastPath loads the fast path's program; from then on Observe
// reports its hooks and entries and the Set/Del methods program them. When
// an earlier agent's program runs here and is the same program, it and its
// maps are adopted: a restart changes nothing. The error says why this
// kernel cannot run the fast path.
func (d *Dataplane) EnableFastPath() error {
	if d.fast != nil {
		return nil
	}
	f, err := loadFastPath()
	if err != nil {
		return err
	}
	links, err := dump("list links", d.h.LinkList)
	if err != nil {
		f.close()
		return err
	}
	var found []ebpf.ProgramID
	err = d.inNS(func() error {
		// TCX (kernel 6.6): a query on the loopback device says whether
		// the kernel has it.
		if _, err := attached(1); err != nil {
			return fmt.Errorf("query TCX programs (needs kernel 6.6 or later): %w", err)
		}
		for _, l := range links {
			if o, ok := parseOwned(l); ok && o.kind == "vxlan" {
				ids, err := attached(l.Attrs().Index)
				if err != nil {
					return fmt.Errorf("query TCX programs of %s: %w", l.Attrs().Name, err)
				}
				found = append(found, ids...)
			}
		}
		return nil
	})
	if err != nil {
		f.close()
		return err
	}
	for _, id := range found {
		if old := adopt(id, f.tag); old != nil {
			f.close()
			f = old
			d.log.Info("adopted the running fast path", "program", id)
			break
		}
	}
	d.fast = f
	return nil
}

// errNoFastPath is the error of a fast-path write while it is not loaded.
var errNoFastPath = errors.New("the BPF fast path is not loaded (datapath bridge)")

// vxnetProgs returns, of the programs at a device's ingress, the IDs of
// vxnet's (this dataplane's or another's); call within inNS.
func (d *Dataplane) vxnetProgs(idx int) ([]ebpf.ProgramID, error) {
	ids, err := attached(idx)
	if err != nil {
		return nil, err
	}
	var out []ebpf.ProgramID
	for _, id := range ids {
		if d.fast != nil && id == d.fast.progID || d.progName(id) == fastProgName {
			out = append(out, id)
		}
	}
	return out, nil
}

// progName returns the name of the program with this ID (cached: IDs are
// not reused while the kernel has IDs to spare).
func (d *Dataplane) progName(id ebpf.ProgramID) string {
	if n, ok := d.tcx.names[id]; ok {
		return n
	}
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return ""
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return ""
	}
	if d.tcx.names == nil {
		d.tcx.names = map[ebpf.ProgramID]string{}
	}
	d.tcx.names[id] = info.Name
	return info.Name
}

// tcxCache is what Observe last read of vxnet's programs at its devices'
// ingress (ifindex -> program IDs), trusted for maxAge: the query enters
// the namespace and asks the kernel once per device, a cost each pass of
// every agent would pay. The hooks this dataplane sets and removes update
// it at once; a device it has not seen, or the age, makes it read again.
type tcxCache struct {
	progs map[int][]ebpf.ProgramID
	// names of the programs met there, by ID.
	names  map[ebpf.ProgramID]string
	at     time.Time
	maxAge time.Duration
}

// FastPathMaxAge is how long Observe trusts its last reading of the
// programs at vxnet's devices: a program someone took off by hand is put
// back by the first pass after that.
const FastPathMaxAge = 2 * time.Second

// SetFastPathMaxAge sets how long Observe trusts that reading.
func (d *Dataplane) SetFastPathMaxAge(age time.Duration) { d.tcx.maxAge = age }

// hookable returns the devices where vxnet's program may run: the owned
// vxlan devices and ports, their underlay devices, and the devices the
// hooks map names as underlays (ifindex -> name).
func (d *Dataplane) hookable(byIndex map[int]netlink.Link, owned map[int]ownedLink) map[int]string {
	out := map[int]string{}
	for idx, o := range owned {
		if o.kind != "vxlan" && o.kind != "ep" {
			continue
		}
		out[idx] = o.link.Attrs().Name
		if x, ok := o.link.(*netlink.Vxlan); ok && x.VtepDevIndex != 0 {
			if l, ok := byIndex[x.VtepDevIndex]; ok {
				out[x.VtepDevIndex] = l.Attrs().Name
			}
		}
	}
	if d.fast != nil {
		for k, v := range d.fast.hooksSeen {
			if l, ok := byIndex[int(k)]; ok && v.Kind == hookUnderlay {
				out[int(k)] = l.Attrs().Name
			}
		}
	}
	return out
}

// readAttachments refreshes the cache of programs at the hookable devices
// when it is old or misses one of them.
func (d *Dataplane) readAttachments(devs map[int]string) error {
	fresh := d.tcx.progs != nil && time.Since(d.tcx.at) <= d.tcx.maxAge
	for idx := range devs {
		if _, seen := d.tcx.progs[idx]; fresh && !seen {
			fresh = false
		}
	}
	if fresh {
		for idx := range d.tcx.progs { // devices gone
			if _, ok := devs[idx]; !ok {
				delete(d.tcx.progs, idx)
			}
		}
		return nil
	}
	progs := map[int][]ebpf.ProgramID{}
	err := d.inNS(func() error {
		for idx, name := range devs {
			ids, err := d.vxnetProgs(idx)
			if err != nil {
				return fmt.Errorf("query TCX programs of %s: %w", name, err)
			}
			progs[idx] = ids
		}
		return nil
	})
	if err != nil {
		d.tcx.progs = nil
		return err
	}
	d.tcx.progs, d.tcx.at = progs, time.Now()
	return nil
}

// observeFast reads the hooks (the devices whose ingress runs this
// dataplane's program, with the network the map gives them) and the MAC
// entries. A device running another agent's program, or none though the
// map names it, is reported stale; entries pointing at a device that is
// gone report an empty Dev.
func (d *Dataplane) observeFast(byIndex map[int]netlink.Link, owned map[int]ownedLink) (*datapath.FastPath, error) {
	fp := &datapath.FastPath{}
	hooked := map[int]bool{}
	stale := map[int]bool{}
	if d.fast != nil {
		// The underlays the map names (hookable reads the mirror).
		if err := d.fast.readMaps(d.tcx.maxAge); err != nil {
			return nil, err
		}
	}
	err := d.readAttachments(d.hookable(byIndex, owned))
	if err != nil && d.fast != nil {
		return nil, err
	}
	for idx, ids := range d.tcx.progs {
		for _, id := range ids {
			if d.fast != nil && id == d.fast.progID {
				hooked[idx] = true
			} else {
				stale[idx] = true
			}
		}
	}
	if d.fast == nil {
		// Nothing is programmed; programs left by a fast-path agent are
		// reported so that the pass removes them. (A kernel without TCX
		// has none: its query error is no error here.)
		if len(stale) == 0 {
			return nil, nil
		}
		for idx := range stale {
			fp.Hooks = append(fp.Hooks, datapath.FastHook{Dev: byIndex[idx].Attrs().Name, Index: idx, Stale: true})
		}
		return fp, nil
	}
	for k, v := range d.fast.hooksSeen { // read above
		l, ok := byIndex[int(k)]
		h := datapath.FastHook{VNI: v.VNI, Vxlan: v.Kind == hookVxlan, Underlay: v.Kind == hookUnderlay, Index: int(k)}
		if ok {
			h.Dev = l.Attrs().Name
		}
		// An underlay the program does not find in its slot is set again.
		h.Stale = !hooked[int(k)] || stale[int(k)] || h.Underlay && d.fast.underSeen != k
		delete(stale, int(k))
		fp.Hooks = append(fp.Hooks, h)
	}
	if u := d.fast.underSeen; u != 0 && d.fast.hooksSeen[u].Kind != hookUnderlay {
		// The slot names a device that is no underlay: unhooked.
		h := datapath.FastHook{Underlay: true, Index: int(u), Stale: true}
		if l, ok := byIndex[int(u)]; ok {
			h.Dev = l.Attrs().Name
		}
		delete(stale, int(u))
		fp.Hooks = append(fp.Hooks, h)
	}
	for idx := range stale {
		fp.Hooks = append(fp.Hooks, datapath.FastHook{Dev: byIndex[idx].Attrs().Name, Index: idx, Stale: true})
	}
	slices.SortFunc(fp.Hooks, func(a, b datapath.FastHook) int { return cmp.Compare(a.Index, b.Index) })
	fp.Entries = make([]datapath.FastEntry, 0, len(d.fast.macsSeen))
	for k, v := range d.fast.macsSeen {
		e := datapath.FastEntry{VNI: k.VNI, MAC: net.HardwareAddr(k.MAC[:]).String(), Remote: v.Remote == 1}
		if vtep := netip.AddrFrom16(v.VTEP).Unmap(); !vtep.IsUnspecified() {
			e.VTEP = vtep
		}
		if v.Local != [4]byte{} && (d.hostIPsec() || v.NH != d.nextHop(v.vtep4(), v.Local, v.Under)) {
			// Wrapped past the host's IPsec policies, or to a next hop
			// the routes no longer give: wanting its VTEP, the pass
			// writes the entry again (unwrapped, or to the new hop).
			e.VTEP = netip.Addr{}
		}
		if l, ok := byIndex[int(v.Ifindex)]; ok {
			e.Dev = l.Attrs().Name
		}
		fp.Entries = append(fp.Entries, e)
	}
	slices.SortFunc(fp.Entries, func(a, b datapath.FastEntry) int { return a.Key().Compare(b.Key()) })
	return fp, nil
}

// SetFastHook runs the program at the ingress of h.Dev for network h.VNI:
// in place of another agent's program there, else after whatever runs
// there already.
func (d *Dataplane) SetFastHook(h datapath.FastHook) error {
	if d.fast == nil {
		return errNoFastPath
	}
	l, err := d.h.LinkByName(h.Dev)
	if err != nil {
		return fmt.Errorf("hook %s: %w", h.Dev, err)
	}
	if _, ok := parseOwned(l); !ok && !h.Underlay {
		return &datapath.NotOwnedError{Device: h.Dev}
	}
	idx := l.Attrs().Index
	kind := uint32(hookPort)
	switch {
	case h.Vxlan:
		kind = hookVxlan
	case h.Underlay:
		kind = hookUnderlay
	}
	if err := d.fast.hooks.Put(uint32(idx), hookVal{VNI: h.VNI, Kind: kind}); err != nil {
		d.fast.forgetMaps()
		return fmt.Errorf("hook %s: write the BPF map: %w", h.Dev, err)
	}
	if d.fast.hooksSeen != nil {
		d.fast.hooksSeen[uint32(idx)] = hookVal{VNI: h.VNI, Kind: kind}
	}
	err = d.inNS(func() error {
		ids, err := d.vxnetProgs(idx)
		if err != nil {
			return err
		}
		opts := link.RawAttachProgramOptions{Target: idx, Program: d.fast.prog, Attach: ebpf.AttachTCXIngress}
		if i := slices.Index(ids, d.fast.progID); i >= 0 {
			// Ours runs: others of vxnet's beside it go.
			for _, id := range slices.Delete(ids, i, i+1) {
				if err := detach(idx, id); err != nil {
					return err
				}
			}
			return nil
		}
		if len(ids) > 0 {
			old, err := ebpf.NewProgramFromID(ids[0])
			if err != nil {
				return fmt.Errorf("open the program there: %w", err)
			}
			defer old.Close()
			opts.Anchor = link.ReplaceProgram(old)
			ids = ids[1:]
		}
		if err := link.RawAttachProgram(opts); err != nil {
			return err
		}
		for _, id := range ids { // more than one of ours: keep one
			if err := detach(idx, id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		d.tcx.progs = nil
		return fmt.Errorf("hook %s: attach the TC program: %w", h.Dev, err)
	}
	if d.tcx.progs != nil {
		d.tcx.progs[idx] = []ebpf.ProgramID{d.fast.progID}
	}
	if h.Underlay {
		if err := d.fast.setUnder(uint32(idx)); err != nil {
			return fmt.Errorf("hook %s: %w", h.Dev, err)
		}
	}
	d.changed("set fast hook", "dev", h.Dev, "vni", h.VNI)
	return nil
}

// clearUnder empties the underlay's slot when it names idx (before the
// device is unhooked or goes).
func (d *Dataplane) clearUnder(idx int) error {
	var cur uint32
	if err := d.fast.under.Lookup(uint32(0), &cur); err != nil {
		return fmt.Errorf("read the BPF map of the underlay: %w", err)
	}
	if cur != uint32(idx) {
		return nil
	}
	return d.fast.setUnder(0)
}

// detach takes the program with this ID off a device's ingress (inNS).
func detach(idx int, id ebpf.ProgramID) error {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	defer p.Close()
	err = link.RawDetachProgram(link.RawDetachProgramOptions{Target: idx, Program: p, Attach: ebpf.AttachTCXIngress})
	if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENODEV) {
		return err
	}
	return nil
}

// DelFastHook takes vxnet's programs off a device (by h.Index when set,
// else by name) and forgets the device; an absent one is no error.
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
	if d.fast != nil {
		if err := d.clearUnder(idx); err != nil {
			return fmt.Errorf("unhook %s: %w", h.Dev, err)
		}
	}
	err := d.inNS(func() error {
		ids, err := d.vxnetProgs(idx)
		if err != nil {
			if errors.Is(err, unix.ENODEV) {
				return nil
			}
			return err
		}
		for _, id := range ids {
			if err := detach(idx, id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		d.tcx.progs = nil
		return fmt.Errorf("unhook %s: %w", h.Dev, err)
	}
	if d.tcx.progs != nil {
		d.tcx.progs[idx] = nil
	}
	if d.fast != nil {
		if err := d.fast.hooks.Delete(uint32(idx)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			d.fast.forgetMaps()
			return fmt.Errorf("unhook %s: write the BPF map: %w", h.Dev, err)
		}
		delete(d.fast.hooksSeen, uint32(idx))
	}
	d.changed("deleted fast hook", "dev", h.Dev, "vni", h.VNI, "index", idx)
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
		tunnelOf(&v, e.VTEP, l)
		switch {
		case v.Local == [4]byte{}: // the vxlan device wraps its frames
		case d.hostIPsec():
			v.Local, v.Port, v.Under = [4]byte{}, [2]byte{}, 0
		default:
			v.NH = d.nextHop(v.vtep4(), v.Local, v.Under)
		}
	}
	if err := d.fast.macs.Put(k, v); err != nil {
		d.fast.forgetMaps()
		return fmt.Errorf("%s: write the BPF map: %w", e, err)
	}
	if d.fast.macsSeen != nil {
		d.fast.macsSeen[k] = v
	}
	d.changed("set fast entry", "entry", e.String())
	return nil
}

// tunnelOf records a remote entry's VTEP and, when the frames can be
// wrapped by the program (an IPv4 VTEP, and a vxlan device vx with an IPv4
// local address and an underlay device), the tunnel's addresses: the
// device's, so that the wire sees what the device would send.
func tunnelOf(v *macVal, vtep netip.Addr, vx netlink.Link) {
	if !vtep.IsValid() {
		return
	}
	v.VTEP = vtep.As16()
	x, ok := vx.(*netlink.Vxlan)
	if !ok || !vtep.Is4() || x.VtepDevIndex == 0 {
		return
	}
	local, ok := netip.AddrFromSlice(x.SrcAddr)
	if local = local.Unmap(); !ok || !local.Is4() || local.IsUnspecified() {
		return
	}
	v.Local = local.As4()
	binary.BigEndian.PutUint16(v.Port[:], uint16(x.Port))
	v.Under = uint32(x.VtepDevIndex)
}

// hostIPsec says whether the host has IPsec (xfrm) policies. Frames the
// program wraps leave by bpf_redirect_neigh, which no policy sees: on such
// a host the vxlan device sends them, through the host's stack, as before.
// (Read at most every tcxCache.maxAge. A kernel that cannot list them,
// without XFRM_USER, has none that ip xfrm or an IKE daemon could set.)
func (d *Dataplane) hostIPsec() bool {
	if d.fast.xfrmAt.IsZero() || time.Since(d.fast.xfrmAt) > d.tcx.maxAge {
		pols, err := d.h.XfrmPolicyList(netlink.FAMILY_ALL)
		d.fast.xfrm, d.fast.xfrmAt = err == nil && len(pols) > 0, time.Now()
	}
	return d.fast.xfrm
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
		d.fast.forgetMaps()
		return fmt.Errorf("%s: write the BPF map: %w", e, err)
	}
	delete(d.fast.macsSeen, k)
	d.changed("deleted fast entry", "entry", e.String())
	return nil
}

// forgetFast drops the hook of a device about to go away and, with
// entries, the MAC entries that point at it, so that a reused ifindex
// never inherits them.
func (d *Dataplane) forgetFast(idx int, entries bool) {
	if d.fast == nil {
		return
	}
	_ = d.clearUnder(idx)
	_ = d.fast.hooks.Delete(uint32(idx))
	delete(d.fast.hooksSeen, uint32(idx))
	if !entries {
		return
	}
	if err := d.fast.readMaps(d.tcx.maxAge); err != nil {
		return // the pass after the device is gone removes them
	}
	for k, v := range d.fast.macsSeen {
		if int(v.Ifindex) == idx {
			_ = d.fast.macs.Delete(k)
			delete(d.fast.macsSeen, k)
		}
	}
}

// bridgeStatic is the static entry on the bridge (master) for a MAC behind
// the port at idx: the bridge does not learn from frames the fast path
// carries, so it is told.
func bridgeStatic(idx int, mac net.HardwareAddr) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_MASTER,
		State: netlink.NUD_NOARP, HardwareAddr: mac}
}
