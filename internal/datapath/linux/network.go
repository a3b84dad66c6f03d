package linux

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/datapath"
)

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

// anyLocal6 ends the alias of a vxlan device made with local address "::"
// (an IPv6 device whose source address the route to each peer picks): the
// kernel does not report an unspecified local address, so a device of IPv4
// without one would look the same.
const anyLocal6 = ":local=::"

// vxlanLocal is the local address a vxnet vxlan device was made with.
func vxlanLocal(o ownedLink) netip.Addr {
	v, ok := o.link.(*netlink.Vxlan)
	if !ok {
		return netip.Addr{}
	}
	if local, ok := netip.AddrFromSlice(v.SrcAddr); ok && !local.IsUnspecified() {
		return local.Unmap()
	}
	if strings.HasSuffix(o.rest, anyLocal6) {
		return netip.IPv6Unspecified()
	}
	return netip.Addr{}
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
	if s.Tunnel != "" {
		return d.ensureRouted(s, br, vxl, gwMAC)
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
		o, _ := parseOwned(vxl)
		if v.VxlanId != int(s.VNI) || v.Port != s.Port || vxlanLocal(o) != s.Local || v.Learning || !v.Proxy ||
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
		rest := s.Name
		if s.Local == netip.IPv6Unspecified() {
			rest += anyLocal6
		}
		if err := d.addOwned(v, aliasFor("vxlan", s.VNI, rest)); err != nil {
			return fmt.Errorf("create vxlan device %s (VNI %d, local %s, port %d): %w", vxName, s.VNI, s.Local, s.Port, err)
		}
		d.changed("created vxlan", "dev", vxName, "vni", s.VNI)
		if vxl, err = d.h.LinkByName(vxName); err != nil {
			return fmt.Errorf("look up %s: %w", vxName, err)
		}
	}
	// Bridge: MAC, MTU, addresses, up.
	if err := d.ensureGateway(br, gwMAC, s); err != nil {
		return err
	}
	// The vxlan device: MTU, master, up.
	if err := d.ensureMTU(vxl, s.MTU); err != nil {
		return err
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
	if err := d.ensureMTU(br, s.MTU); err != nil {
		return err
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

// observeNetwork reads a network's bridge and, when it is whole (enslaved,
// up, the same MTU, no learning, ARP proxy, its VNI), its vxnet device; a
// bridge without one that answers ARP for the tunnel's routes is routed
// through tunnel (when there is one).
func (d *Dataplane) observeNetwork(br, vx ownedLink, hasVx bool, byIndex map[int]netlink.Link, tunnel netlink.Link) (datapath.NetworkSpec, error) {
	spec := datapath.NetworkSpec{VNI: br.vni, Name: br.rest}
	brUp := br.link.Attrs().Flags&net.FlagUp != 0
	if !hasVx && tunnel != nil && brUp {
		routed, err := d.proxiesARP(br.link.Attrs().Name)
		if err != nil {
			return spec, err
		}
		if routed {
			spec.Tunnel, spec.MTU = tunnel.Attrs().Name, br.link.Attrs().MTU
		}
	}
	if hasVx {
		v := vx.link.(*netlink.Vxlan)
		if v.Attrs().MasterIndex == br.link.Attrs().Index && brUp && v.Attrs().Flags&net.FlagUp != 0 &&
			v.Attrs().MTU == br.link.Attrs().MTU && !v.Learning && v.Proxy && v.VxlanId == int(br.vni) {
			spec.Port = v.Port
			spec.Local = vxlanLocal(vx)
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
		return spec, err
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
	return spec, nil
}

// ensureRouted makes an encrypted network's devices: its bridge (as every
// network's), no vxlan device, and the bridge answering ARP at once for
// the addresses the host routes elsewhere (into the tunnel) with its own
// MAC, the gateway's: containers send the other hosts' containers' packets
// to the host, which routes them into WireGuard.
func (d *Dataplane) ensureRouted(s datapath.NetworkSpec, br, vxl netlink.Link, gwMAC net.HardwareAddr) error {
	brName := datapath.BridgeName(s.VNI)
	if vxl != nil {
		if err := d.h.LinkDel(vxl); err != nil {
			return fmt.Errorf("remove %s (the network is routed through %s now): %w", vxl.Attrs().Name, s.Tunnel, err)
		}
		d.changed("deleted vxlan of a routed network", "dev", vxl.Attrs().Name)
	}
	if err := d.ensureGateway(br, gwMAC, s); err != nil {
		return err
	}
	if err := d.ensureMTU(br, s.MTU); err != nil {
		return err
	}
	if ok, err := d.proxiesARP(brName); err != nil || !ok {
		err := d.inNS(func() error {
			for _, f := range proxyARPFiles(brName) {
				if err := os.WriteFile(f.path, []byte(f.want+"\n"), 0o644); err != nil && !noIPv6(f, err) {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("proxy ARP on %s: %w", brName, err)
		}
		d.changed("proxy ARP on", "dev", brName)
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := d.h.LinkSetUp(br); err != nil {
			return fmt.Errorf("set %s up: %w", brName, err)
		}
		d.changed("set up", "dev", brName)
	}
	return nil
}

type sysctlFile struct{ path, want string }

// proxyARPFiles are the settings of a routed network's bridge: proxy ARP,
// answered without the default random delay of up to 0.8 s, and IPv6's
// proxy Neighbour Discovery (for the addresses it has proxy entries of),
// likewise without delay.
func proxyARPFiles(dev string) []sysctlFile {
	return []sysctlFile{
		{"/proc/sys/net/ipv4/conf/" + dev + "/proxy_arp", "1"},
		{"/proc/sys/net/ipv4/neigh/" + dev + "/proxy_delay", "0"},
		{"/proc/sys/net/ipv6/conf/" + dev + "/proxy_ndp", "1"},
		{"/proc/sys/net/ipv6/neigh/" + dev + "/proxy_delay", "0"},
	}
}

// noIPv6 reports an IPv6 setting missing because the host has no IPv6 (or
// none on that device): nothing to set.
func noIPv6(f sysctlFile, err error) bool {
	return errors.Is(err, fs.ErrNotExist) && strings.HasPrefix(f.path, "/proc/sys/net/ipv6/")
}

// proxiesARP reports whether dev has the settings of proxyARPFiles.
func (d *Dataplane) proxiesARP(dev string) (bool, error) {
	ok := true
	err := d.inNS(func() error {
		for _, f := range proxyARPFiles(dev) {
			b, err := os.ReadFile(f.path)
			if noIPv6(f, err) {
				continue
			}
			if err != nil {
				return err
			}
			ok = ok && strings.TrimSpace(string(b)) == f.want
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("read proxy ARP settings of %s: %w", dev, err)
	}
	return ok, nil
}

// ensureGateway gives a network's bridge the anycast gateway's MAC and
// addresses.
func (d *Dataplane) ensureGateway(br netlink.Link, gwMAC net.HardwareAddr, s datapath.NetworkSpec) error {
	if br.Attrs().HardwareAddr.String() != gwMAC.String() {
		if err := d.h.LinkSetHardwareAddr(br, gwMAC); err != nil {
			return fmt.Errorf("set MAC of %s: %w", br.Attrs().Name, err)
		}
		d.changed("set bridge MAC", "dev", br.Attrs().Name)
	}
	return d.ensureAddrs(br, s.Gateway, s.Gateway6)
}

// ensureMTU sets a device's MTU when it differs.
func (d *Dataplane) ensureMTU(l netlink.Link, mtu int) error {
	if l.Attrs().MTU == mtu {
		return nil
	}
	if err := d.h.LinkSetMTU(l, mtu); err != nil {
		return fmt.Errorf("set MTU %d on %s: %w", mtu, l.Attrs().Name, err)
	}
	d.changed("set MTU", "dev", l.Attrs().Name, "mtu", mtu)
	return nil
}
