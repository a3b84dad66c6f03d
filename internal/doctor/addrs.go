package doctor

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/paths"
)

// addresses looks at the address each peer is reached at, where a host or
// a peer is reached at several (cloud 1:1 NAT, two sites): a peer none of
// whose addresses answers; a pair whose probes on the gossip port pass
// while VXLAN does not (something between drops or rewrites the VXLAN
// port, as a NAT that maps ports does); a peer that sees this host at an
// address it does not advertise (a NAT this host does not know of).
func addresses(f Facts) Finding {
	s := f.Status
	probed := slices.DeleteFunc(slices.Clone(s.Paths), func(p paths.Path) bool { return !p.Probed() })
	if len(probed) == 0 && len(s.Addrs) == 0 {
		return Finding{"addresses", OK, fmt.Sprintf("every member is reached at the one address it advertises (this host: %s)", s.Addr), ""}
	}
	own := map[netip.Addr]bool{}
	for _, a := range s.Addrs {
		own[a] = true
	}
	if a, err := netip.ParseAddr(s.Addr); err == nil {
		own[a] = true
	}
	overlay := map[string]health.Peer{}
	theirs := map[string]netip.Addr{}  // the address each peer reaches this host at
	unreached := map[string][]string{} // this host's addresses each peer does not reach
	if f.Health != nil {
		for _, p := range f.Health.Peers {
			overlay[p.Node] = p
		}
		for _, r := range f.Health.All {
			if a, ok := r.Via[s.Node]; ok {
				theirs[r.Node] = a
			}
			for _, a := range r.Unreached[s.Node] {
				unreached[a.String()] = append(unreached[a.String()], r.Node)
			}
		}
	}
	var fails, fixes, warns, notes []string
	for _, p := range probed {
		var up, down []string
		using := false
		for _, c := range p.Candidates {
			if c.Up {
				up = append(up, c.Addr.String())
				using = using || c.Addr == p.Addr
			} else {
				down = append(down, c.Addr.String())
			}
			if c.SeenAs.IsValid() && !own[c.SeenAs] {
				warns = append(warns, fmt.Sprintf("%s sees this host's probes come from %s, an address this host does not advertise (a NAT between?)", p.Peer, c.SeenAs))
			}
		}
		back, reachesUs := theirs[p.Peer]
		switch {
		case len(up) == 0 && reachesUs:
			fails = append(fails, fmt.Sprintf("%s reaches this host (at %s) but none of its addresses answers from here (%s): one way only", p.Peer, back, strings.Join(down, ", ")))
			fixes = append(fixes, fmt.Sprintf("something lets traffic from %s in but not this host's out to it (a firewall on this side's way out, or on %s's way in): open UDP to its gossip and VXLAN ports", p.Peer, p.Peer))
			continue
		case len(up) == 0:
			fails = append(fails, fmt.Sprintf("no address of %s answers probes from here (%s)", p.Peer, strings.Join(down, ", ")))
			fixes = append(fixes, fmt.Sprintf("check that %s's --advertise-addr lists addresses this host can reach, and let UDP to its gossip port through on the way", p.Peer))
			continue
		case reachesUs && len(s.Addrs) > 1 && len(p.Candidates) > 1 && (p.Addr == p.Candidates[0].Addr) != (back == s.Addrs[0]):
			warns = append(warns, fmt.Sprintf("asymmetric paths with %s: this host reaches it at %s, it reaches this host at %s (this host's first address is %s): the preferred path works in one direction only", p.Peer, p.Addr, back, s.Addrs[0]))
			continue
		case using && overlay[p.Peer].State == health.Unreachable:
			fails = append(fails, fmt.Sprintf("%s answers at %s on the gossip port, but VXLAN to it does not pass (%s)", p.Peer, p.Addr, overlay[p.Peer].Cause))
			fixes = append(fixes, fmt.Sprintf("something between this host and %s drops or rewrites UDP %d (a NAT that maps ports, or a firewall): let it through unchanged, or use an encrypted network (WireGuard)", p.Peer, f.VXLANPort))
			continue
		}
		note := fmt.Sprintf("%s at %s (%s)", p.Peer, p.Addr, p.Reason)
		notes = append(notes, note)
	}
	// This host's advertised addresses as its peers find them.
	for _, a := range s.Addrs {
		peers := unreached[a.String()]
		if len(peers) == 0 {
			continue
		}
		slices.Sort(peers)
		notes = append(notes, fmt.Sprintf("this host's %s does not answer from %s (expected where it is private to this site)", a, strings.Join(peers, ", ")))
	}
	for _, peer := range slices.Sorted(maps.Keys(theirs)) {
		all := len(s.Addrs) > 0
		for _, a := range s.Addrs {
			all = all && slices.Contains(unreached[a.String()], peer)
		}
		if all {
			fails = append(fails, fmt.Sprintf("none of this host's addresses answers %s's probes: it cannot reach this host", peer))
			fixes = append(fixes, fmt.Sprintf("check this host's --advertise-addr (are they what %s can reach, NAT included?) and that UDP to the gossip port comes in", peer))
		}
	}
	slices.Sort(warns)
	warns = slices.Compact(warns)
	switch {
	case len(fails) > 0:
		return Finding{"addresses", Fail, strings.Join(fails, "; "), strings.Join(fixes, "; ")}
	case len(warns) > 0:
		return Finding{"addresses", Warn, strings.Join(warns, "; "), "for a NAT nobody knew of: add that address to the host's --advertise-addr if peers outside must reach it there; for asymmetric paths: find what drops the preferred direction (a firewall or route on one side)"}
	}
	return Finding{"addresses", OK, "peers reached at the first of their addresses that answers: " + strings.Join(notes, "; "), ""}
}
