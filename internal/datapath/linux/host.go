package linux

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/ti-mo/conntrack"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/datapath"
)

// Host answers the agent's questions about this host's addresses, in the
// network namespace the process runs in.
type HostNet struct{}

// Underlay finds the device holding addr and its MTU.
func (HostNet) Underlay(addr netip.Addr) (string, int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return "", 0, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
				return l.Attrs().Name, l.Attrs().MTU, nil
			}
		}
	}
	return "", 0, fmt.Errorf("advertise address %s is not configured on any interface of this host", addr)
}

// HasAddr reports whether addr is configured on an interface of this host
// (one dump of every address).
func (HostNet) HasAddr(addr netip.Addr) (bool, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return false, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			return true, nil
		}
	}
	return false, nil
}

// PortFree tries to bind the port on every address of the host: a process
// listening there (or Docker's proxy for a published port) makes it fail.
func (HostNet) PortFree(proto string, port uint16) error {
	addr := fmt.Sprintf(":%d", port)
	switch proto {
	case "tcp":
		l, err := net.Listen("tcp4", addr)
		if err != nil {
			return fmt.Errorf("host port %d/tcp is in use on this host: %w", port, err)
		}
		return l.Close()
	case "udp":
		c, err := net.ListenPacket("udp4", addr)
		if err != nil {
			return fmt.Errorf("host port %d/udp is in use on this host: %w", port, err)
		}
		return c.Close()
	}
	return fmt.Errorf("unknown protocol %q: want tcp or udp", proto)
}

// DefaultAdvertiseAddr returns the preferred source address of the default
// route: IPv4's, or, on a host without one, IPv6's.
func DefaultAdvertiseAddr() (netip.Addr, error) {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		a, err := defaultAddr(fam)
		if err != nil || a.IsValid() {
			return a, err
		}
	}
	return netip.Addr{}, errors.New("no default route to take an address from: give --advertise-addr")
}

// defaultAddr is the source address of family fam's default route: its
// preferred source, else the first usable address of its link (global,
// not tentative or deprecated); invalid when there is none.
func defaultAddr(fam int) (netip.Addr, error) {
	routes, err := netlink.RouteList(nil, fam)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if a, ok := netip.AddrFromSlice(r.Src); ok && a.IsValid() && !a.IsUnspecified() {
			return a.Unmap(), nil
		}
		l, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		addrs, err := netlink.AddrList(l, fam)
		if err != nil {
			continue
		}
		for _, x := range addrs {
			a, _ := netip.AddrFromSlice(x.IP)
			if a = a.Unmap(); a.IsGlobalUnicast() && x.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DEPRECATED|unix.IFA_F_DADFAILED) == 0 {
				return a, nil
			}
		}
	}
	return netip.Addr{}, nil
}

// OriginalDst returns where a connection from client, destination-NATed
// to local on this host, was going: the connection tracking entry whose
// reply goes from local to client names it.
func (HostNet) OriginalDst(proto string, client, local netip.AddrPort) (netip.AddrPort, error) {
	p := map[string]uint8{"udp": unix.IPPROTO_UDP, "tcp": unix.IPPROTO_TCP}[proto]
	if p == 0 {
		return netip.AddrPort{}, fmt.Errorf("unknown protocol %q", proto)
	}
	c, err := conntrack.Dial(nil)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("conntrack: %w", err)
	}
	defer c.Close()
	f, err := c.Get(conntrack.Flow{TupleReply: conntrack.Tuple{
		IP:    conntrack.IPTuple{SourceAddress: local.Addr(), DestinationAddress: client.Addr()},
		Proto: conntrack.ProtoTuple{Protocol: p, SourcePort: local.Port(), DestinationPort: client.Port()},
	}})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("conntrack entry of %s %s -> %s: %w", proto, client, local, err)
	}
	o := f.TupleOrig
	return netip.AddrPortFrom(o.IP.DestinationAddress, o.Proto.DestinationPort), nil
}

// ForeignVXLAN lists the vxlan devices of this host vxnet did not make,
// with their UDP port (another overlay: Docker's, flannel's).
func ForeignVXLAN() (map[string]int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := map[string]int{}
	for _, l := range links {
		vx, ok := l.(*netlink.Vxlan)
		if !ok {
			continue
		}
		if _, _, owned := datapath.ParseAlias(l.Attrs().Alias); owned {
			continue
		}
		out[l.Attrs().Name] = vx.Port
	}
	return out, nil
}
