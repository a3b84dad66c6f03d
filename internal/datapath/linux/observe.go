package linux

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
)

// Observe reads every vxnet-owned device and its entries, one kind of
// kernel object at a time (each read beside the code that writes it).
func (d *Dataplane) Observe() (datapath.Observed, error) {
	obs := datapath.Observed{Networks: map[uint32]datapath.NetworkSpec{}}
	links, err := dump("list links", d.h.LinkList)
	if err != nil {
		return obs, err
	}
	o := d.readOwned(links)
	slices.SortFunc(o.foreign, func(x, y model.ForeignVXLAN) int { return cmp.Compare(x.Dev, y.Dev) })
	obs.Foreign = o.foreign
	if obs.Ports, err = d.observePorts(o); err != nil {
		return obs, err
	}
	for vni, br := range o.bridges {
		vx, hasVx := o.vxlans[vni]
		if obs.Networks[vni], err = d.observeNetwork(br, vx, hasVx, o.byIndex, o.tunnel); err != nil {
			return obs, err
		}
	}
	if d.open.stale.Load() { // a firewall was reloaded: iptables too
		d.RereadHostFirewall()
	}
	d.ipt.open6Read = false // set by a reading of ip6tables in this Observe
	if obs.HostFirewall, err = d.ipt.observe(); err != nil {
		return obs, fmt.Errorf("read the host's iptables: %w", err)
	}
	if obs.Openings, err = d.observeOpenings(); err != nil {
		return obs, err
	}
	if obs.Firewall, err = d.observeFirewall(); err != nil {
		return obs, err
	}
	if obs.FastPath, err = d.observeFast(o.byIndex, o.all); err != nil {
		return obs, err
	}
	if obs.Tunnel, err = d.observeTunnel(o.tunnel); err != nil {
		return obs, err
	}
	if obs.Routes, err = d.observeRoutes(o.byIndex); err != nil {
		return obs, err
	}
	for vni, vx := range o.vxlans {
		if _, ok := o.bridges[vni]; !ok {
			obs.Networks[vni] = datapath.NetworkSpec{VNI: vni, Name: strings.TrimSuffix(vx.rest, anyLocal6)}
			continue
		}
		fdb, err := d.observeFDB(vni, vx)
		if err != nil {
			return obs, err
		}
		neigh, err := d.observeNeigh(vni, vx)
		if err != nil {
			return obs, err
		}
		obs.FDB, obs.Neigh = append(obs.FDB, fdb...), append(obs.Neigh, neigh...)
	}
	for vni, br := range o.bridges {
		if _, hasVx := o.vxlans[vni]; hasVx {
			continue
		}
		proxies, err := d.observeProxies(vni, br) // a routed (encrypted) network's
		if err != nil {
			return obs, err
		}
		obs.Neigh = append(obs.Neigh, proxies...)
	}
	return obs, nil
}

// owned is what one link dump shows of vxnet's devices.
type owned struct {
	byIndex map[int]netlink.Link // every link
	all     map[int]ownedLink    // vxnet's, by index
	bridges map[uint32]ownedLink
	vxlans  map[uint32]ownedLink
	ports   []ownedLink // host ends of containers' veths
	tunnel  netlink.Link
	foreign []model.ForeignVXLAN
}

// readOwned sorts a link dump into vxnet's devices (and refreshes the
// vxlan index cache).
func (d *Dataplane) readOwned(links []netlink.Link) owned {
	o := owned{byIndex: map[int]netlink.Link{}, all: map[int]ownedLink{}, bridges: map[uint32]ownedLink{}, vxlans: map[uint32]ownedLink{}}
	clear(d.vxlanIdx)
	for _, l := range links {
		o.byIndex[l.Attrs().Index] = l
		ol, ok := parseOwned(l)
		if !ok {
			if v, isVx := l.(*netlink.Vxlan); isVx {
				o.foreign = append(o.foreign, model.ForeignVXLAN{Dev: v.Attrs().Name, VNI: uint32(v.VxlanId), Port: v.Port})
			}
			continue
		}
		o.all[l.Attrs().Index] = ol
		switch ol.kind {
		case "bridge":
			o.bridges[ol.vni] = ol
		case "vxlan":
			o.vxlans[ol.vni] = ol
			d.vxlanIdx[ol.vni] = l.Attrs().Index
		case "ep":
			o.ports = append(o.ports, ol)
		case tunnelKind:
			o.tunnel = l
		}
	}
	return o
}
