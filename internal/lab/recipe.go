package lab

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vxnet/vxnet/internal/nsutil"
)

// RecipeVNI is the VNI of the hand-made recipe (as in the classic steps).
const RecipeVNI = 100

// Recipe is the classic hand-made VXLAN setup between the first two hosts,
// built exactly as ../shared/reference/manual-vxlan-baseline.sh does (a
// bridge, a vxlan device with a static remote and learning, a veth to a
// container with MTU underlay-50), for comparison with vxnet. Its devices
// carry no vxnet mark, so agents leave them alone.
type Recipe struct {
	Containers [2]Container
}

// BuildRecipe adds the recipe to hosts h1 and h2 of the lab.
func (l *Lab) BuildRecipe() (*Recipe, error) {
	if len(l.Hosts) < 2 {
		return nil, fmt.Errorf("the recipe needs two hosts")
	}
	r := &Recipe{}
	for i := 0; i < 2; i++ {
		h, other := l.Hosts[i], l.Hosts[1-i]
		c := Container{Name: fmt.Sprintf("rc%d", i+1), Host: h.Name, Network: "recipe",
			IP: netip.AddrFrom4([4]byte{198, 19, 250, byte(i + 1)})}
		path, err := nsutil.Create(l.Prefix + c.Name)
		if err != nil {
			return nil, err
		}
		c.Netns = path
		if err := buildRecipeHost(h, other, c); err != nil {
			return nil, fmt.Errorf("recipe on %s: %w", h.Name, err)
		}
		r.Containers[i] = c
	}
	return r, nil
}

func buildRecipeHost(h, other Host, c Container) error {
	hh, eth, err := openUnderlay(h)
	if err != nil {
		return err
	}
	defer hh.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "rbr0"}}
	if err := hh.LinkAdd(br); err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "rvx0"}, VxlanId: RecipeVNI, Port: 4789,
		VtepDevIndex: eth.Attrs().Index, Group: other.Addr.AsSlice(), Learning: true}
	if err := hh.LinkAdd(vx); err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	cns, err := netns.GetFromPath(c.Netns)
	if err != nil {
		return err
	}
	defer cns.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "rv0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(cns)}
	if err := hh.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth: %w", err)
	}
	for _, name := range []string{"rbr0", "rvx0", "rv0"} {
		l, err := hh.LinkByName(name)
		if err != nil {
			return err
		}
		if name != "rbr0" {
			if err := hh.LinkSetMaster(l, br); err != nil {
				return fmt.Errorf("enslave %s: %w", name, err)
			}
		}
		if err := hh.LinkSetUp(l); err != nil {
			return err
		}
	}
	ch, err := nsutil.Handle(c.Netns)
	if err != nil {
		return err
	}
	defer ch.Close()
	ce, err := ch.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := ch.AddrAdd(ce, &netlink.Addr{IPNet: &net.IPNet{IP: c.IP.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		return err
	}
	if err := ch.LinkSetMTU(ce, UnderlayMTU-50); err != nil {
		return err
	}
	for _, l := range []netlink.Link{ce} {
		if err := ch.LinkSetUp(l); err != nil {
			return err
		}
	}
	if lo, err := ch.LinkByName("lo"); err == nil {
		_ = ch.LinkSetUp(lo)
	}
	return nil
}

// BareVNI is the VNI of the bare VXLAN path (BuildBareVXLAN).
const BareVNI = 101

// BareVXLAN is the least any kernel-VXLAN datapath can do: a vxlan device
// in each of the first two hosts, carrying an address itself, with no
// bridge, veth or container namespace. Its throughput is the ceiling for
// every datapath built on kernel VXLAN, vxnet's and the recipe's alike.
type BareVXLAN struct {
	// Netns and IP of the two ends (the host namespaces).
	Netns [2]string
	IP    [2]netip.Addr
}

// BuildBareVXLAN adds the bare path to hosts h1 and h2 of the lab.
func (l *Lab) BuildBareVXLAN() (*BareVXLAN, error) {
	if len(l.Hosts) < 2 {
		return nil, fmt.Errorf("the bare VXLAN path needs two hosts")
	}
	b := &BareVXLAN{}
	for i := 0; i < 2; i++ {
		h, other := l.Hosts[i], l.Hosts[1-i]
		b.Netns[i], b.IP[i] = h.Netns, netip.AddrFrom4([4]byte{198, 19, 251, byte(i + 1)})
		if err := buildBareHost(h, other, b.IP[i]); err != nil {
			return nil, fmt.Errorf("bare vxlan on %s: %w", h.Name, err)
		}
	}
	return b, nil
}

func buildBareHost(h, other Host, ip netip.Addr) error {
	hh, eth, err := openUnderlay(h)
	if err != nil {
		return err
	}
	defer hh.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = "bvx0", UnderlayMTU-50
	vx := &netlink.Vxlan{LinkAttrs: attrs, VxlanId: BareVNI, Port: 4789, VtepDevIndex: eth.Attrs().Index,
		SrcAddr: h.Addr.AsSlice(), Group: other.Addr.AsSlice()}
	if err := hh.LinkAdd(vx); err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	if err := hh.AddrAdd(vx, &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		return err
	}
	return hh.LinkSetUp(vx)
}
