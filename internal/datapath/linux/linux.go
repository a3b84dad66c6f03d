// Package linux implements datapath.Dataplane over netlink, in one network
// namespace, without changing the calling thread's namespace.
package linux

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
)

// Dataplane programs one network namespace (a host).
type Dataplane struct {
	h   *netlink.Handle
	ns  netns.NsHandle
	log *slog.Logger
	// Changes counts kernel writes, so tests can prove a no-op pass is a no-op.
	Changes int
	// vxlanIdx caches each network's vxlan ifindex for the FDB and
	// neighbour writes: looking the device up per entry was half the cost
	// of programming many endpoints. Observe, EnsureNetwork and
	// DeleteNetwork refresh it, so it never outlives a pass.
	vxlanIdx map[uint32]int
	// nftRead is the lasting connection the firewall is read through;
	// writes, rare, each use a connection of their own.
	nftRead *nftables.Conn
	// ipt programs the host's iptables.
	ipt iptables
	// fast is the BPF fast path, nil unless EnableFastPath loaded it.
	fast *fastPath
	// tcx caches the programs at vxnet's devices (see readAttachments).
	tcx tcxCache
}

// HostFirewallMaxAge is how long Observe trusts its last reading of the
// host's iptables (reading them runs processes): rules someone flushed are
// noticed by the first pass after that, well within a resync interval.
const HostFirewallMaxAge = 2 * time.Second

var _ datapath.Dataplane = (*Dataplane)(nil)

// Open returns a Dataplane for the namespace at path, or for the caller's
// namespace when path is empty.
func Open(path string, log *slog.Logger) (*Dataplane, error) {
	var ns netns.NsHandle
	var err error
	if path == "" {
		ns, err = netns.Get()
	} else {
		ns, err = netns.GetFromPath(path)
	}
	if err != nil {
		return nil, fmt.Errorf("open network namespace %q: %w", path, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("netlink handle in namespace %q: %w", path, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Dataplane{h: h, ns: ns, log: log, vxlanIdx: map[uint32]int{},
		ipt: iptables{nsPath: path, maxAge: HostFirewallMaxAge}, tcx: tcxCache{maxAge: FastPathMaxAge}}, nil
}

func (d *Dataplane) neighList(what string, index, family int) ([]netlink.Neigh, error) {
	return dump(what, func() ([]netlink.Neigh, error) { return d.h.NeighList(index, family) })
}

// Close releases the namespace handle.
func (d *Dataplane) Close() error {
	d.closeReader()
	if d.fast != nil {
		d.fast.close() // the attachments keep the program and its maps alive
	}
	d.h.Close()
	return d.ns.Close()
}

// dumpAttempts bounds how often a dump is read again when the kernel
// flags it as interrupted (the table changed while it was being read).
const dumpAttempts = 5

// dump runs a netlink dump, reading again while the kernel reports it
// interrupted; what names the dump in the error.
func dump[T any](what string, read func() (T, error)) (T, error) {
	var v T
	var err error
	for range dumpAttempts {
		v, err = read()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		return v, fmt.Errorf("%s: interrupted %d times in a row (the table kept changing): %w", what, dumpAttempts, err)
	}
	if err != nil {
		return v, fmt.Errorf("%s: %w", what, err)
	}
	return v, nil
}

// changed counts and logs one kernel write; it is the dataplane's only
// debug-level log (tests read the log for writes).
func (d *Dataplane) changed(what string, args ...any) {
	d.Changes++
	d.log.Debug(what, args...)
}

type ownedLink struct {
	link netlink.Link
	kind string
	vni  uint32
	rest string
}

func parseOwned(l netlink.Link) (ownedLink, bool) {
	kind, name, ok := datapath.ParseAlias(l.Attrs().Alias)
	if !ok {
		return ownedLink{}, false
	}
	vniStr, rest, _ := strings.Cut(name, ":")
	vni, err := strconv.ParseUint(vniStr, 10, 32)
	if err != nil {
		return ownedLink{}, false
	}
	return ownedLink{link: l, kind: kind, vni: uint32(vni), rest: rest}, true
}

func aliasFor(kind string, vni uint32, rest string) string {
	return datapath.Alias(kind, fmt.Sprintf("%d:%s", vni, rest))
}

// Observe reads every vxnet-owned device and its entries.
func (d *Dataplane) Observe() (datapath.Observed, error) {
	obs := datapath.Observed{Networks: map[uint32]datapath.NetworkSpec{}}
	links, err := dump("list links", d.h.LinkList)
	if err != nil {
		return obs, err
	}
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	bridges := map[uint32]ownedLink{}
	vxlans := map[uint32]ownedLink{}
	owned := map[int]ownedLink{}
	clear(d.vxlanIdx)
	for _, l := range links {
		o, ok := parseOwned(l)
		if !ok {
			continue
		}
		owned[l.Attrs().Index] = o
		switch o.kind {
		case "bridge":
			bridges[o.vni] = o
		case "vxlan":
			vxlans[o.vni] = o
			d.vxlanIdx[o.vni] = l.Attrs().Index
		case "ep":
			obs.Ports = append(obs.Ports, datapath.Port{ID: o.rest, VNI: o.vni, HostIf: l.Attrs().Name})
		}
	}
	if len(obs.Ports) > 0 && d.fast != nil {
		// Ports whose host end has a qdisc (a veth has none of its own):
		// someone shapes their traffic; the fast path leaves them alone.
		qds, err := dump("list qdiscs", func() ([]netlink.Qdisc, error) { return d.h.QdiscList(nil) })
		if err != nil {
			return obs, err
		}
		shaped := map[string]bool{}
		for _, q := range qds {
			if l, ok := byIndex[q.Attrs().LinkIndex]; ok && q.Type() != "noqueue" {
				shaped[l.Attrs().Name] = true
			}
		}
		for i := range obs.Ports {
			obs.Ports[i].Shaped = shaped[obs.Ports[i].HostIf]
		}
	}
	for vni, br := range bridges {
		spec := datapath.NetworkSpec{VNI: vni, Name: br.rest}
		vx, hasVx := vxlans[vni]
		brUp := br.link.Attrs().Flags&net.FlagUp != 0
		if hasVx {
			v := vx.link.(*netlink.Vxlan)
			if v.Attrs().MasterIndex == br.link.Attrs().Index && brUp && v.Attrs().Flags&net.FlagUp != 0 &&
				v.Attrs().MTU == br.link.Attrs().MTU && !v.Learning && v.Proxy && v.VxlanId == int(vni) {
				spec.Port = v.Port
				spec.Local, _ = netip.AddrFromSlice(v.SrcAddr)
				spec.Local = spec.Local.Unmap()
				spec.MTU = v.Attrs().MTU
				if u, ok := byIndex[v.VtepDevIndex]; ok {
					spec.Underlay = u.Attrs().Name
				}
			}
		}
		spec.GatewayMAC = br.link.Attrs().HardwareAddr.String()
		addrs, err := dump("list addresses of "+br.link.Attrs().Name, func() ([]netlink.Addr, error) {
			return d.h.AddrList(br.link, netlink.FAMILY_ALL)
		})
		if err != nil {
			return obs, err
		}
		var n4, n6 int
		for _, a := range addrs {
			p, ok := toPrefix(a.IPNet)
			if !ok || p.Addr().IsLinkLocalUnicast() {
				continue
			}
			if p.Addr().Is4() {
				spec.Gateway = p
				n4++
			} else {
				spec.Gateway6 = p
				n6++
			}
		}
		if n4 > 1 || n6 > 1 { // extra addresses: report as not matching anything
			spec.Gateway = netip.Prefix{}
		}
		obs.Networks[vni] = spec
	}
	if obs.HostFirewall, err = d.ipt.observe(); err != nil {
		return obs, fmt.Errorf("read the host's iptables: %w", err)
	}
	if obs.Firewall, err = d.observeFirewall(); err != nil {
		return obs, err
	}
	if obs.FastPath, err = d.observeFast(byIndex, owned); err != nil {
		return obs, err
	}
	for vni, vx := range vxlans {
		if _, ok := bridges[vni]; !ok {
			obs.Networks[vni] = datapath.NetworkSpec{VNI: vni, Name: vx.rest}
			continue
		}
		fdbs, err := d.neighList("list fdb of "+vx.link.Attrs().Name, vx.link.Attrs().Index, unix.AF_BRIDGE)
		if err != nil {
			return obs, err
		}
		// With the fast path, a unicast entry is whole only with its
		// static twin on the bridge (see SetFDB).
		static := map[string]bool{}
		if d.fast != nil {
			for _, f := range fdbs {
				// The kernel marks the bridge's entries by NDA_MASTER,
				// not by the NTF_MASTER flag.
				if f.MasterIndex != 0 && f.IP == nil && f.State&netlink.NUD_NOARP != 0 && f.LinkIndex == vx.link.Attrs().Index {
					static[f.HardwareAddr.String()] = true
				}
			}
		}
		for _, f := range fdbs {
			if f.Flags&netlink.NTF_MASTER != 0 || f.IP == nil || f.LinkIndex != vx.link.Attrs().Index {
				continue
			}
			vtep, _ := netip.AddrFromSlice(f.IP)
			mac := f.HardwareAddr.String()
			entry := datapath.FDB{VNI: vni, MAC: mac, VTEP: vtep.Unmap()}
			if d.fast != nil && mac != datapath.ZeroMAC && !static[mac] {
				// Half an entry: a pass sets it whole or removes it.
				entry.Incomplete = true
			}
			obs.FDB = append(obs.FDB, entry)
		}
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			ns, err := d.neighList("list neighbours of "+vx.link.Attrs().Name, vx.link.Attrs().Index, fam)
			if err != nil {
				return obs, err
			}
			for _, n := range ns {
				ip, _ := netip.AddrFromSlice(n.IP)
				ip = ip.Unmap()
				if n.State&netlink.NUD_NOARP != 0 || ip.IsMulticast() || ip.IsLinkLocalUnicast() || n.HardwareAddr == nil {
					continue
				}
				obs.Neigh = append(obs.Neigh, datapath.Neigh{VNI: vni, IP: ip, MAC: n.HardwareAddr.String()})
			}
		}
	}
	return obs, nil
}

func toPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// addOwned creates a link and marks it as vxnet's. The kernel ignores an alias
// given at creation, so it is set right after; if that fails the link is removed.
func (d *Dataplane) addOwned(l netlink.Link, alias string) error {
	if err := d.h.LinkAdd(l); err != nil {
		return err
	}
	if err := d.h.LinkSetAlias(l, alias); err != nil {
		_ = d.h.LinkDel(l)
		return fmt.Errorf("mark %s as vxnet's: %w", l.Attrs().Name, err)
	}
	return nil
}

// lookupOwned finds a link by name; it returns nil when absent and an error
// when the link exists but is not vxnet's (or is of another kind).
func (d *Dataplane) lookupOwned(name, kind string) (netlink.Link, error) {
	l, err := d.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	o, ok := parseOwned(l)
	if !ok || o.kind != kind {
		return nil, &datapath.NotOwnedError{Device: name}
	}
	return l, nil
}

// EnsureNetwork creates or corrects a network's bridge and vxlan device.
func (d *Dataplane) EnsureNetwork(s datapath.NetworkSpec) error {
	gwMAC, err := net.ParseMAC(s.GatewayMAC)
	if err != nil {
		return fmt.Errorf("network %s: gateway MAC %q: %w", s.Name, s.GatewayMAC, err)
	}
	brName, vxName := datapath.BridgeName(s.VNI), datapath.VxlanName(s.VNI)
	delete(d.vxlanIdx, s.VNI)
	br, err := d.lookupOwned(brName, "bridge")
	if err != nil {
		return err
	}
	vxl, err := d.lookupOwned(vxName, "vxlan")
	if err != nil {
		return err
	}
	if br == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU, attrs.HardwareAddr = brName, s.MTU, gwMAC
		if err := d.addOwned(&netlink.Bridge{LinkAttrs: attrs}, aliasFor("bridge", s.VNI, s.Name)); err != nil {
			return fmt.Errorf("create bridge %s: %w", brName, err)
		}
		d.changed("created bridge", "dev", brName)
		if br, err = d.h.LinkByName(brName); err != nil {
			return fmt.Errorf("look up %s: %w", brName, err)
		}
	}
	var underlayIdx int
	if s.Underlay != "" {
		u, err := d.h.LinkByName(s.Underlay)
		if err != nil {
			return fmt.Errorf("network %s: underlay device %q: %w", s.Name, s.Underlay, err)
		}
		underlayIdx = u.Attrs().Index
	}
	if vxl != nil {
		v := vxl.(*netlink.Vxlan)
		local, _ := netip.AddrFromSlice(v.SrcAddr)
		if v.VxlanId != int(s.VNI) || v.Port != s.Port || local.Unmap() != s.Local || v.Learning || !v.Proxy ||
			(underlayIdx != 0 && v.VtepDevIndex != underlayIdx) {
			// These attributes are fixed at creation: replace the device.
			if err := d.h.LinkDel(vxl); err != nil {
				return fmt.Errorf("replace %s: %w", vxName, err)
			}
			d.changed("deleted vxlan for re-creation", "dev", vxName)
			vxl = nil
		}
	}
	if vxl == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU = vxName, s.MTU
		v := &netlink.Vxlan{LinkAttrs: attrs, VxlanId: int(s.VNI), SrcAddr: s.Local.AsSlice(), Port: s.Port,
			Learning: false, Proxy: true, VtepDevIndex: underlayIdx, UDPCSum: false}
		if err := d.addOwned(v, aliasFor("vxlan", s.VNI, s.Name)); err != nil {
			return fmt.Errorf("create vxlan device %s (VNI %d, local %s, port %d): %w", vxName, s.VNI, s.Local, s.Port, err)
		}
		d.changed("created vxlan", "dev", vxName, "vni", s.VNI)
		if vxl, err = d.h.LinkByName(vxName); err != nil {
			return fmt.Errorf("look up %s: %w", vxName, err)
		}
	}
	// Bridge: MAC, MTU, addresses, up.
	if br.Attrs().HardwareAddr.String() != gwMAC.String() {
		if err := d.h.LinkSetHardwareAddr(br, gwMAC); err != nil {
			return fmt.Errorf("set MAC of %s: %w", brName, err)
		}
		d.changed("set bridge MAC", "dev", brName)
	}
	if err := d.ensureAddrs(br, s.Gateway, s.Gateway6); err != nil {
		return err
	}
	// The vxlan device: MTU, master, up.
	if vxl.Attrs().MTU != s.MTU {
		if err := d.h.LinkSetMTU(vxl, s.MTU); err != nil {
			return fmt.Errorf("set MTU %d on %s: %w", s.MTU, vxName, err)
		}
		d.changed("set MTU", "dev", vxName, "mtu", s.MTU)
	}
	if vxl.Attrs().MasterIndex != br.Attrs().Index {
		if err := d.h.LinkSetMasterByIndex(vxl, br.Attrs().Index); err != nil {
			return fmt.Errorf("enslave %s to %s: %w", vxName, brName, err)
		}
		d.changed("enslaved vxlan", "dev", vxName)
	}
	if br, err = d.h.LinkByName(brName); err != nil { // MTU may have followed the ports
		return fmt.Errorf("look up %s: %w", brName, err)
	}
	if br.Attrs().MTU != s.MTU {
		if err := d.h.LinkSetMTU(br, s.MTU); err != nil {
			return fmt.Errorf("set MTU %d on %s: %w", s.MTU, brName, err)
		}
		d.changed("set MTU", "dev", brName, "mtu", s.MTU)
	}
	for _, l := range []netlink.Link{vxl, br} {
		if l.Attrs().Flags&net.FlagUp == 0 {
			if err := d.h.LinkSetUp(l); err != nil {
				return fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
			}
			d.changed("set up", "dev", l.Attrs().Name)
		}
	}
	return nil
}

func (d *Dataplane) ensureAddrs(br netlink.Link, want ...netip.Prefix) error {
	addrs, err := dump("list addresses of "+br.Attrs().Name, func() ([]netlink.Addr, error) {
		return d.h.AddrList(br, netlink.FAMILY_ALL)
	})
	if err != nil {
		return err
	}
	have := map[netip.Prefix]bool{}
	for _, a := range addrs {
		p, ok := toPrefix(a.IPNet)
		if !ok || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		keep := false
		for _, w := range want {
			if w == p {
				keep = true
			}
		}
		if !keep {
			if err := d.h.AddrDel(br, &a); err != nil {
				return fmt.Errorf("remove address %s from %s: %w", p, br.Attrs().Name, err)
			}
			d.changed("removed address", "dev", br.Attrs().Name, "addr", p)
			continue
		}
		have[p] = true
	}
	for _, w := range want {
		if !w.IsValid() || have[w] {
			continue
		}
		a := &netlink.Addr{IPNet: ipNet(w), Flags: unix.IFA_F_NODAD}
		if err := d.h.AddrReplace(br, a); err != nil {
			return fmt.Errorf("add gateway %s to %s: %w", w, br.Attrs().Name, err)
		}
		d.changed("added address", "dev", br.Attrs().Name, "addr", w)
	}
	return nil
}

// DeleteNetwork removes a network's vxnet-owned devices.
func (d *Dataplane) DeleteNetwork(vni uint32) error {
	delete(d.vxlanIdx, vni)
	for _, nk := range []struct{ name, kind string }{{datapath.VxlanName(vni), "vxlan"}, {datapath.BridgeName(vni), "bridge"}} {
		l, err := d.lookupOwned(nk.name, nk.kind)
		if err != nil {
			return err
		}
		if l == nil {
			continue
		}
		d.forgetFast(l.Attrs().Index, true)
		if err := d.h.LinkDel(l); err != nil {
			return fmt.Errorf("delete %s: %w", nk.name, err)
		}
		d.changed("deleted device", "dev", nk.name)
	}
	return nil
}

func (d *Dataplane) vxlanIndex(vni uint32) (int, error) {
	if idx, ok := d.vxlanIdx[vni]; ok {
		return idx, nil
	}
	l, err := d.lookupOwned(datapath.VxlanName(vni), "vxlan")
	if err != nil {
		return 0, err
	}
	if l == nil {
		return 0, fmt.Errorf("network with VNI %d is not set up on this host (no %s)", vni, datapath.VxlanName(vni))
	}
	d.vxlanIdx[vni] = l.Attrs().Index
	return l.Attrs().Index, nil
}

func (d *Dataplane) fdbNeigh(f datapath.FDB) (*netlink.Neigh, error) {
	idx, err := d.vxlanIndex(f.VNI)
	if err != nil {
		return nil, err
	}
	mac, err := net.ParseMAC(f.MAC)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid MAC: %w", f, err)
	}
	return &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT | netlink.NUD_NOARP, HardwareAddr: mac, IP: f.VTEP.AsSlice()}, nil
}

// SetFDB adds or replaces an FDB entry (flood entries are appended).
func (d *Dataplane) SetFDB(f datapath.FDB) error {
	n, err := d.fdbNeigh(f)
	if err != nil {
		return err
	}
	if f.MAC == datapath.ZeroMAC {
		// Flood entries are appended, one per VTEP; the kernel accepts a
		// duplicate silently, so look first to keep the write count honest.
		cur, lerr := d.neighList(fmt.Sprintf("list fdb for %s", f), n.LinkIndex, unix.AF_BRIDGE)
		if lerr != nil {
			return lerr
		}
		for _, c := range cur {
			if c.HardwareAddr.String() == datapath.ZeroMAC && c.IP.Equal(n.IP) && c.Flags&netlink.NTF_MASTER == 0 {
				return nil
			}
		}
		err = d.h.NeighAppend(n)
	} else {
		err = d.h.NeighSet(n)
		if err == nil && d.fast != nil {
			// The bridge does not learn from frames the fast path
			// carries: a static entry keeps the bridge path right (no
			// flooding) whenever a frame takes it, or the programs are
			// gone.
			err = d.h.NeighSet(bridgeStatic(n.LinkIndex, n.HardwareAddr))
		}
	}
	if err != nil {
		return fmt.Errorf("program %s: %w", f, err)
	}
	d.changed("set fdb", "entry", f.String())
	return nil
}

// DelFDB removes an FDB entry; an absent one is no error.
func (d *Dataplane) DelFDB(f datapath.FDB) error {
	n, err := d.fdbNeigh(f)
	if err != nil {
		return err
	}
	if err := d.h.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", f, err)
	}
	if f.MAC != datapath.ZeroMAC {
		if err := d.h.NeighDel(bridgeStatic(n.LinkIndex, n.HardwareAddr)); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove the bridge's entry of %s: %w", f, err)
		}
	}
	d.changed("deleted fdb", "entry", f.String())
	return nil
}

func (d *Dataplane) ipNeigh(n datapath.Neigh) (*netlink.Neigh, error) {
	idx, err := d.vxlanIndex(n.VNI)
	if err != nil {
		return nil, err
	}
	mac, err := net.ParseMAC(n.MAC)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid MAC: %w", n, err)
	}
	fam := netlink.FAMILY_V4
	if n.IP.Is6() {
		fam = netlink.FAMILY_V6
	}
	return &netlink.Neigh{LinkIndex: idx, Family: fam, State: netlink.NUD_PERMANENT, IP: n.IP.AsSlice(), HardwareAddr: mac}, nil
}

// SetNeigh adds or replaces a permanent neighbour entry.
func (d *Dataplane) SetNeigh(n datapath.Neigh) error {
	nn, err := d.ipNeigh(n)
	if err != nil {
		return err
	}
	if err := d.h.NeighSet(nn); err != nil {
		return fmt.Errorf("program %s: %w", n, err)
	}
	d.changed("set neigh", "entry", n.String())
	return nil
}

// DelNeigh removes a neighbour entry; an absent one is no error.
func (d *Dataplane) DelNeigh(n datapath.Neigh) error {
	nn, err := d.ipNeigh(n)
	if err != nil {
		return err
	}
	if err := d.h.NeighDel(nn); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", n, err)
	}
	d.changed("deleted neigh", "entry", n.String())
	return nil
}

// Attach plugs a container namespace into a network with a veth pair.
func (d *Dataplane) Attach(e datapath.EndpointSpec) (datapath.Port, error) {
	hostIf := datapath.HostIfName(e.ID)
	port := datapath.Port{ID: e.ID, VNI: e.VNI, HostIf: hostIf}
	if e.IfName == "" {
		e.IfName = "eth0"
	}
	if len(e.IfName) > 15 || strings.ContainsAny(e.IfName, "/ :") {
		return port, fmt.Errorf("invalid interface name %q: at most 15 characters, no '/', ':' or spaces", e.IfName)
	}
	mac, err := net.ParseMAC(e.MAC)
	if err != nil {
		return port, fmt.Errorf("endpoint %s: invalid MAC %q: %w", e.ID, e.MAC, err)
	}
	if e.Netns != "" {
		if _, err := os.Stat(e.Netns); err != nil {
			return port, fmt.Errorf("network namespace %s does not exist: %w", e.Netns, err)
		}
	}
	br, err := d.lookupOwned(datapath.BridgeName(e.VNI), "bridge")
	if err != nil {
		return port, err
	}
	if br == nil {
		return port, fmt.Errorf("network with VNI %d is not set up on this host", e.VNI)
	}
	existing, err := d.lookupOwned(hostIf, "ep")
	if err != nil {
		return port, err
	}
	if existing != nil {
		if o, _ := parseOwned(existing); o.rest != e.ID || existing.Attrs().MasterIndex != br.Attrs().Index {
			return port, fmt.Errorf("interface %s already belongs to endpoint %q", hostIf, o.rest)
		}
		return port, nil // already attached
	}
	if e.Netns == "" {
		return d.attachHostPeer(e, port, br, mac)
	}
	cns, err := netns.GetFromPath(e.Netns)
	if err != nil {
		return port, fmt.Errorf("open network namespace %s: %w", e.Netns, err)
	}
	defer cns.Close()
	ch, err := netlink.NewHandleAt(cns)
	if err != nil {
		return port, fmt.Errorf("netlink in namespace %s: %w", e.Netns, err)
	}
	defer ch.Close()
	if _, err := ch.LinkByName(e.IfName); err == nil {
		return port, model.Errorf(model.ErrConflict, "interface %s already exists in namespace %s; choose another interface name", e.IfName, e.Netns)
	}
	tmpPeer := "vxp" + strings.TrimPrefix(hostIf, "vxv")
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = hostIf, e.MTU
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: tmpPeer, PeerHardwareAddr: mac,
		PeerNamespace: netlink.NsFd(cns), PeerMTU: uint32(e.MTU)}
	if err := d.addOwned(veth, aliasFor("ep", e.VNI, e.ID)); err != nil {
		return port, fmt.Errorf("create veth %s for endpoint %s: %w", hostIf, e.ID, err)
	}
	d.changed("created veth", "dev", hostIf)
	fail := func(err error) (datapath.Port, error) {
		if l, lerr := d.h.LinkByName(hostIf); lerr == nil {
			_ = d.h.LinkDel(l)
		}
		return port, err
	}
	if err := setupContainer(ch, tmpPeer, e); err != nil {
		return fail(fmt.Errorf("endpoint %s in %s: %w", e.ID, e.Netns, err))
	}
	host, err := d.h.LinkByName(hostIf)
	if err != nil {
		return fail(fmt.Errorf("look up %s: %w", hostIf, err))
	}
	if err := d.h.LinkSetMasterByIndex(host, br.Attrs().Index); err != nil {
		return fail(fmt.Errorf("attach %s to %s: %w", hostIf, br.Attrs().Name, err))
	}
	if err := d.portStatic(host, mac); err != nil {
		return fail(err)
	}
	if err := d.h.LinkSetUp(host); err != nil {
		return fail(fmt.Errorf("set %s up: %w", hostIf, err))
	}
	// The kernel turns carrier on (and the bridge port to forwarding)
	// asynchronously; return only once frames pass both ways.
	if err := waitOperUp(d.h, hostIf); err != nil {
		return fail(err)
	}
	// The container end too: until the kernel has activated its queue,
	// what the container sends (its first ARP request) is dropped.
	if err := waitOperUp(ch, e.IfName); err != nil {
		return fail(fmt.Errorf("in %s: %w", e.Netns, err))
	}
	return port, nil
}

// attachHostPeer creates the veth pair with its container end left in the
// host namespace (named e.IfName, with its MAC and MTU, down) for the
// runtime to move into the container.
func (d *Dataplane) attachHostPeer(e datapath.EndpointSpec, port datapath.Port, br netlink.Link, mac net.HardwareAddr) (datapath.Port, error) {
	if _, err := d.h.LinkByName(e.IfName); err == nil {
		return port, fmt.Errorf("interface %s already exists on the host", e.IfName)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = port.HostIf, e.MTU
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: e.IfName, PeerHardwareAddr: mac, PeerMTU: uint32(e.MTU)}
	if err := d.addOwned(veth, aliasFor("ep", e.VNI, e.ID)); err != nil {
		return port, fmt.Errorf("create veth %s for endpoint %s: %w", port.HostIf, e.ID, err)
	}
	d.changed("created veth", "dev", port.HostIf, "peer", e.IfName)
	host, err := d.h.LinkByName(port.HostIf)
	if err == nil {
		err = d.h.LinkSetMasterByIndex(host, br.Attrs().Index)
	}
	if err == nil {
		err = d.portStatic(host, mac)
	}
	if err == nil {
		err = d.h.LinkSetUp(host)
	}
	if err != nil {
		if l, lerr := d.h.LinkByName(port.HostIf); lerr == nil {
			_ = d.h.LinkDel(l)
		}
		return port, fmt.Errorf("attach %s to %s: %w", port.HostIf, br.Attrs().Name, err)
	}
	return port, nil
}

// portStatic tells the bridge, with the fast path on, where a local
// container's MAC is: it may never learn it from frames.
func (d *Dataplane) portStatic(host netlink.Link, mac net.HardwareAddr) error {
	if d.fast == nil {
		return nil
	}
	if err := d.h.NeighSet(bridgeStatic(host.Attrs().Index, mac)); err != nil {
		return fmt.Errorf("bridge entry for %s on %s: %w", mac, host.Attrs().Name, err)
	}
	return nil
}

// waitOperUp polls a link until its operational state is up (bounded).
func waitOperUp(h *netlink.Handle, name string) error {
	deadline := time.Now().Add(3 * time.Second)
	for {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("look up %s: %w", name, err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not come up (operational state %s)", name, l.Attrs().OperState)
		}
		time.Sleep(time.Millisecond)
	}
}

func setupContainer(ch *netlink.Handle, tmpPeer string, e datapath.EndpointSpec) error {
	peer, err := ch.LinkByName(tmpPeer)
	if err != nil {
		return fmt.Errorf("find %s: %w", tmpPeer, err)
	}
	if err := ch.LinkSetName(peer, e.IfName); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmpPeer, e.IfName, err)
	}
	for _, p := range []netip.Prefix{e.IP, e.IP6} {
		if !p.IsValid() {
			continue
		}
		if err := ch.AddrAdd(peer, &netlink.Addr{IPNet: ipNet(p), Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("add address %s to %s: %w", p, e.IfName, err)
		}
	}
	if lo, err := ch.LinkByName("lo"); err == nil {
		_ = ch.LinkSetUp(lo)
	}
	if err := ch.LinkSetUp(peer); err != nil {
		return fmt.Errorf("set %s up: %w", e.IfName, err)
	}
	for _, gw := range []netip.Addr{e.Gateway, e.Gateway6} {
		if !gw.IsValid() {
			continue
		}
		fam := netlink.FAMILY_V4
		if gw.Is6() {
			fam = netlink.FAMILY_V6
		}
		routes, err := dump("list routes", func() ([]netlink.Route, error) { return ch.RouteList(nil, fam) })
		if err != nil {
			return err
		}
		if hasDefault(routes) {
			continue // the container already has a default route: keep it
		}
		if err := ch.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			return fmt.Errorf("add default route via %s: %w", gw, err)
		}
	}
	return nil
}

// Detach removes an endpoint's veth pair.
func (d *Dataplane) Detach(id string) error {
	name := datapath.HostIfName(id)
	l, err := d.lookupOwned(name, "ep")
	if err != nil || l == nil {
		return err
	}
	// The port's MAC entry goes with the next pass (finding it would
	// mean reading the whole map); frames for it meanwhile find no device.
	d.forgetFast(l.Attrs().Index, false)
	if err := d.h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		// ENODEV: the container's namespace went, and the pair with it.
		return fmt.Errorf("delete %s of endpoint %s: %w", name, id, err)
	}
	d.changed("deleted veth", "dev", name, "endpoint", id)
	return nil
}

func hasDefault(routes []netlink.Route) bool {
	for _, r := range routes {
		if r.Dst == nil {
			return true
		}
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			return true
		}
	}
	return false
}

// Namespace returns the file descriptor of the namespace this Dataplane programs.
func (d *Dataplane) Namespace() int { return int(d.ns) }
