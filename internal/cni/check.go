package cni

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/nsutil"
)

// checkInterface verifies that the container's interface is in its
// namespace with the endpoint's address and MAC.
func checkInterface(netnsPath string, e api.LocalEndpoint) error {
	h, err := nsutil.Handle(netnsPath)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, "vxnet: "+err.Error(), "")
	}
	defer h.Close()
	l, err := h.LinkByName(e.IfName)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("vxnet: interface %s is missing in %s", e.IfName, netnsPath), "")
	}
	if got := l.Attrs().HardwareAddr.String(); !strings.EqualFold(got, e.MAC) {
		return types.NewError(types.ErrInternal, fmt.Sprintf("vxnet: interface %s has MAC %s, not %s", e.IfName, got, e.MAC), "")
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("vxnet: addresses of %s: %v", e.IfName, err), "")
	}
	for _, s := range []string{e.IP, e.IP6} {
		want, err := netip.ParseAddr(s)
		if err != nil {
			continue // no IPv6 address on an IPv4 network
		}
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { ip, ok := netip.AddrFromSlice(a.IP); return ok && ip.Unmap() == want }) {
			return types.NewError(types.ErrInternal, fmt.Sprintf("vxnet: interface %s lacks its address %s", e.IfName, s), "")
		}
	}
	return nil
}

// checkRemotes verifies that this host (the plugin runs in its namespace)
// has a neighbour entry for every remote endpoint of the network the agent
// knows: a container that cannot reach its peers is not attached well.
func checkRemotes(a Agent, network string) error {
	n, err := a.Network(network)
	if err != nil {
		return cniError(err)
	}
	s, err := a.Status()
	if err != nil {
		return cniError(err)
	}
	remote := -1
	for _, ns := range s.Networks {
		if ns.Name == network {
			remote = ns.Remote
		}
	}
	if remote < 0 {
		return types.NewError(types.ErrInternal, fmt.Sprintf("vxnet: network %s is not programmed on this host", network), "")
	}
	l, err := netlink.LinkByName(datapath.VxlanName(n.VNI))
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("vxnet: network %s has no vxlan device on this host: %v", network, err), "")
	}
	neighs, err := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("vxnet: neighbours of %s: %v", l.Attrs().Name, err), "")
	}
	if len(neighs) < remote {
		return types.NewError(types.ErrInternal, fmt.Sprintf("vxnet: network %s has %d remote endpoints, %d programmed on this host", network, remote, len(neighs)), "")
	}
	return nil
}
