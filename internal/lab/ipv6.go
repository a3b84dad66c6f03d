package lab

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// A dual-stack lab (Config.IPv6): every network has an IPv6 subnet beside
// its IPv4 one, and on an IPv4 underlay every host (and the outside
// machine) has an IPv6 address too.

// OutsideAddr6 is the outside machine's IPv6 address in a dual-stack lab.
var OutsideAddr6 = underlayAddr(200, true)

// Subnet6Def is the IPv6 subnet of the j-th lab network when the lab is
// dual-stack: fd00:198:19:J::/64 (a unique local prefix, as 198.19.J.0/24).
func Subnet6Def(j int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0x01, 0x98, 0, 0x19, 0, byte(j)}), 64)
}

// containerIP6 is a static lab container's IPv6 address on network j
// (1-based): the IPv4 address's last byte as its last group.
func containerIP6(j int, last byte) netip.Addr {
	a := Subnet6Def(j).Addr().As16()
	a[15] = last
	return netip.AddrFrom16(a)
}

// addUnderlay6 gives every host and the outside machine an IPv6 address
// on the underlay beside its IPv4 one (no DAD: usable at once).
func (l *Lab) addUnderlay6() error {
	hosts := make([]*Host, 0, len(l.Hosts)+1)
	for i := range l.Hosts {
		l.Hosts[i].Addr6 = underlayAddr(i+1, true)
		hosts = append(hosts, &l.Hosts[i])
	}
	if l.Outside != nil {
		l.Outside.Addr6 = OutsideAddr6
		hosts = append(hosts, l.Outside)
	}
	for _, h := range hosts {
		hh, eth, err := openUnderlay(*h)
		if err != nil {
			return err
		}
		err = hh.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: h.Addr6.AsSlice(), Mask: net.CIDRMask(underlayNet6.Bits(), 128)}, Flags: unix.IFA_F_NODAD})
		hh.Close()
		if err != nil {
			return fmt.Errorf("IPv6 underlay address of %s: %w", h.Name, err)
		}
	}
	return nil
}
