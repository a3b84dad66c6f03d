package cni

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/vxnet/vxnet/internal/api"
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
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("vxnet: addresses of %s: %v", e.IfName, err), "")
	}
	want := netip.MustParseAddr(e.IP)
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == want {
			return nil
		}
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("vxnet: interface %s lacks its address %s", e.IfName, e.IP), "")
}
