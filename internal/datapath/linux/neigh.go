package linux

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/datapath"
)

func (d *Dataplane) neighList(what string, index, family int) ([]netlink.Neigh, error) {
	return dump(what, func() ([]netlink.Neigh, error) { return d.h.NeighList(index, family) })
}

func (d *Dataplane) ipNeigh(n datapath.Neigh) (*netlink.Neigh, error) {
	if n.Proxy {
		if !n.IP.Is6() || n.IP.Is4In6() {
			return nil, fmt.Errorf("%s: proxy entries are for IPv6 addresses", n)
		}
		br, err := d.lookupOwned(datapath.BridgeName(n.VNI), "bridge")
		if err != nil {
			return nil, err
		}
		if br == nil {
			return nil, fmt.Errorf("network with VNI %d is not set up on this host (no %s)", n.VNI, datapath.BridgeName(n.VNI))
		}
		return &netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V6, Flags: netlink.NTF_PROXY, IP: n.IP.AsSlice()}, nil
	}
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

// observeProxies reads the IPv6 proxy entries on an encrypted network's
// bridge.
func (d *Dataplane) observeProxies(vni uint32, br ownedLink) ([]datapath.Neigh, error) {
	ns, err := dump("list proxy entries of "+br.link.Attrs().Name, func() ([]netlink.Neigh, error) {
		return d.h.NeighProxyList(br.link.Attrs().Index, netlink.FAMILY_V6)
	})
	if err != nil {
		return nil, err
	}
	var out []datapath.Neigh
	for _, n := range ns {
		if ip, ok := netip.AddrFromSlice(n.IP); ok {
			out = append(out, datapath.Neigh{VNI: vni, IP: ip, Proxy: true})
		}
	}
	return out, nil
}

// observeNeigh reads a network's permanent neighbour entries (both
// families) on its vxlan device.
func (d *Dataplane) observeNeigh(vni uint32, vx ownedLink) ([]datapath.Neigh, error) {
	var out []datapath.Neigh
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := d.neighList("list neighbours of "+vx.link.Attrs().Name, vx.link.Attrs().Index, fam)
		if err != nil {
			return nil, err
		}
		for _, n := range ns {
			ip, _ := netip.AddrFromSlice(n.IP)
			ip = ip.Unmap()
			if n.State&netlink.NUD_NOARP != 0 || ip.IsMulticast() || ip.IsLinkLocalUnicast() || n.HardwareAddr == nil {
				continue
			}
			out = append(out, datapath.Neigh{VNI: vni, IP: ip, MAC: n.HardwareAddr.String()})
		}
	}
	return out, nil
}
