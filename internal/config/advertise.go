package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// MaxAddrs bounds the addresses a host may be reached at.
const MaxAddrs = 8

// advertised resolves --advertise-addr: the host's own address (VXLAN and
// gossip are sent from it) and, when peers must reach the host at more
// than that one address, every address in order of preference. The own
// address is the first given that the host has, else the default route's,
// which then comes first (a host behind a 1:1 NAT is reached at its own
// address inside its site and at the public one from outside).
func advertised(given []string, h Env) (netip.Addr, []netip.Addr, error) {
	var addrs []netip.Addr
	for _, s := range given {
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			a, err := netip.ParseAddr(p)
			if err != nil || a.Zone() != "" {
				return netip.Addr{}, nil, fmt.Errorf("invalid --advertise-addr %q: want an IP address (this host's, or one it is reached at through a NAT)", p)
			}
			a = a.Unmap()
			if a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() {
				return netip.Addr{}, nil, fmt.Errorf("invalid --advertise-addr %s: want a unicast address peers can reach (not unspecified, loopback, multicast or link-local)", a)
			}
			if slices.Contains(addrs, a) {
				return netip.Addr{}, nil, fmt.Errorf("--advertise-addr %s is given twice", a)
			}
			addrs = append(addrs, a)
		}
	}
	if len(addrs) > MaxAddrs {
		return netip.Addr{}, nil, fmt.Errorf("--advertise-addr: %d addresses, want at most %d", len(addrs), MaxAddrs)
	}
	own := -1
	if h.HasAddr != nil {
		own = slices.IndexFunc(addrs, h.HasAddr)
	} else if len(addrs) > 0 {
		own = 0
	}
	var local netip.Addr
	if own >= 0 {
		local = addrs[own]
	} else {
		var err error
		if local, err = h.DefaultAddr(); err != nil {
			if len(addrs) > 0 {
				return netip.Addr{}, nil, fmt.Errorf("--advertise-addr %s: no address given is on this host, and %w", addrs[0], err)
			}
			return netip.Addr{}, nil, err
		}
		if len(addrs) > 0 {
			addrs = append([]netip.Addr{local}, addrs...)
		}
	}
	for _, a := range addrs {
		if a.Is4() != local.Is4() {
			return netip.Addr{}, nil, fmt.Errorf("--advertise-addr %s: this host's own address is %s; all addresses must be of one family (IPv4 or IPv6)", a, local)
		}
	}
	if len(addrs) == 1 && addrs[0] == local {
		addrs = nil // the common case: one address, on the host
	}
	return local, addrs, nil
}
