package linux

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
)

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
	if err := setupContainer(ch, cns, tmpPeer, e); err != nil {
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

func setupContainer(ch *netlink.Handle, cns netns.NsHandle, tmpPeer string, e datapath.EndpointSpec) error {
	peer, err := ch.LinkByName(tmpPeer)
	if err != nil {
		return fmt.Errorf("find %s: %w", tmpPeer, err)
	}
	if err := ch.LinkSetName(peer, e.IfName); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmpPeer, e.IfName, err)
	}
	if e.IP6.IsValid() {
		// Usable at once and nothing but vxnet's: no duplicate address
		// detection (vxnet's IPAM keeps addresses unique; the link-local
		// address would otherwise stay tentative for a second), no address
		// or route from router advertisements.
		err := nsutil.DoIn(cns, e.Netns, func() error {
			for _, f := range containerIPv6Files(e.IfName) {
				if err := os.WriteFile(f.path, []byte(f.want), 0o644); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("IPv6 settings of %s: %w", e.IfName, err)
		}
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

// containerIPv6Files are the IPv6 settings of a container's interface on a
// network with an IPv6 subnet.
func containerIPv6Files(dev string) []sysctlFile {
	return []sysctlFile{
		{"/proc/sys/net/ipv6/conf/" + dev + "/accept_dad", "0"},
		{"/proc/sys/net/ipv6/conf/" + dev + "/accept_ra", "0"},
		{"/proc/sys/net/ipv6/conf/" + dev + "/autoconf", "0"},
	}
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

// observePorts reads the containers' ports; with the fast path, also which
// are shaped (their host end has a qdisc: a veth has none of its own, so
// someone shapes their traffic and the fast path leaves them alone).
func (d *Dataplane) observePorts(o owned) ([]datapath.Port, error) {
	var ports []datapath.Port
	for _, p := range o.ports {
		ports = append(ports, datapath.Port{ID: p.rest, VNI: p.vni, HostIf: p.link.Attrs().Name})
	}
	if len(ports) == 0 || d.fast == nil {
		return ports, nil
	}
	qds, err := dump("list qdiscs", func() ([]netlink.Qdisc, error) { return d.h.QdiscList(nil) })
	if err != nil {
		return nil, err
	}
	shaped := map[string]bool{}
	for _, q := range qds {
		if l, ok := o.byIndex[q.Attrs().LinkIndex]; ok && q.Type() != "noqueue" {
			shaped[l.Attrs().Name] = true
		}
	}
	for i := range ports {
		ports[i].Shaped = shaped[ports[i].HostIf]
	}
	return ports, nil
}
