package linux

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/nsutil"
)

// The IPv6 half of the host firewall: the same five chains and six jumps
// in the host's ip6tables (same backend), holding the rules of dual-stack
// networks (forwarding on their bridges, egress masqueraded to the host's
// IPv6 address) and the IPv6 ends of their published ports. A host whose
// ip6tables FORWARD drops (ufw's does) would otherwise drop bridged IPv6
// where br_netfilter is on, and nothing would leave or come in over IPv6.
// Its comments name IPv6 addresses with '-' for ':' (the comments'
// separator). Containers' DNS queries to a network's IPv6 gateway are
// redirected to the resolver as those to its IPv4 gateway are (the
// resolver listens on both families).

// jumps6 are jumps for ip6tables.
func jumps6() []struct{ table, chain, rule string } {
	out := slices.Clone(jumps)
	for i := range out {
		out[i].rule = strings.Replace(out[i].rule, "! -d 127.0.0.0/8", "! -d ::1/128", 1)
	}
	return out
}

// enc6 and dec6 turn an IPv6 address or prefix into a comment field and
// back.
func enc6(s string) string { return strings.ReplaceAll(s, ":", "-") }
func dec6(s string) string { return strings.ReplaceAll(s, "-", ":") }

func net6Comment(n datapath.HostNet, dnsPort uint16) string {
	mode := "egress"
	if !n.Egress {
		mode = "internal"
	}
	gw := "none"
	if n.Gateway6.IsValid() {
		gw = enc6(n.Gateway6.String())
	}
	c := fmt.Sprintf("%snet6:%d:%s:%s:%s:%d", commentTag, n.VNI, enc6(n.Subnet6.String()), gw, mode, dnsPort)
	if n.Tunnel != "" {
		c += ":" + n.Tunnel
	}
	return c
}

func port6Comment(p datapath.PublishedPort) string {
	return fmt.Sprintf("%sport6:%d:%s:%d:%s:%d", commentTag, p.VNI, p.Proto, p.HostPort, enc6(p.IP6.String()), p.Port)
}

// hostRules6 renders the IPv6 half of a host firewall, grouped by comment.
func hostRules6(h datapath.HostFirewall) map[string][]hostRule {
	out := map[string][]hostRule{}
	for _, n := range h.Networks {
		if !n.Subnet6.IsValid() {
			continue
		}
		c := net6Comment(n, h.DNSPort)
		br := datapath.BridgeName(n.VNI)
		tag := " -m comment --comment " + c
		rs := []hostRule{{"filter", chainForward, "-i " + br + " -o " + br + tag + " -j ACCEPT"}}
		rs = append(rs, dnsRules(n.Gateway6, h.DNSPort, br, tag)...)
		out[c] = append(rs, routedRules(n, n.Subnet6, br, tag)...)
	}
	for _, p := range h.Ports {
		if !p.IP6.IsValid() {
			continue
		}
		c := port6Comment(p)
		out[c] = portRules(p, p.IP6, " -m comment --comment "+c)
	}
	return out
}

// parseComment6 reads a network's or a port's IPv6 half back from a
// comment into h6 (networks carry VNI, Subnet6 and Egress; ports their
// key and IP6).
func parseComment6(c string, h6 *datapath.HostFirewall) bool {
	f := strings.Split(strings.TrimPrefix(c, commentTag), ":")
	switch {
	case (len(f) == 6 || len(f) == 7) && f[0] == "net6":
		hn, dns, ok := parseNetFields(f, dec6)
		if !ok || !hn.Subnet.Addr().Is6() || (hn.Gateway.IsValid() && !hn.Gateway.Is6()) {
			return false
		}
		hn.Subnet, hn.Gateway, hn.Subnet6, hn.Gateway6 = netip.Prefix{}, netip.Addr{}, hn.Subnet, hn.Gateway
		addNet(h6, hn, dns)
	case len(f) == 6 && f[0] == "port6":
		vni, err1 := strconv.ParseUint(f[1], 10, 32)
		hp, err2 := strconv.ParseUint(f[3], 10, 16)
		ip, err3 := netip.ParseAddr(dec6(f[4]))
		cp, err4 := strconv.ParseUint(f[5], 10, 16)
		if errors.Join(err1, err2, err3, err4) != nil || !ip.Is6() {
			return false
		}
		h6.Ports = append(h6.Ports, datapath.PublishedPort{VNI: uint32(vni), Proto: f[2], HostPort: uint16(hp), IP6: ip, Port: uint16(cp)})
	default:
		return false
	}
	return true
}

// merge6 puts what the host's ip6tables hold (h6) into h, read from its
// iptables: a network's or port's IPv6 half joins its IPv4 half, or stands
// alone (IPv6-only); one that disagrees with its IPv4 half makes h
// incomplete.
func merge6(h *datapath.HostFirewall, h6 *datapath.HostFirewall) {
	if h6.Incomplete {
		h.Incomplete = true
	}
	if len(h6.Networks) > 0 {
		if len(h.Networks) > 0 && h.DNSPort != h6.DNSPort {
			h.Incomplete = true
		}
		h.DNSPort = h6.DNSPort
	}
	for _, n6 := range h6.Networks {
		i := slices.IndexFunc(h.Networks, func(n datapath.HostNet) bool { return n.VNI == n6.VNI })
		switch {
		case i < 0:
			h.Networks = append(h.Networks, n6)
		case h.Networks[i].Egress != n6.Egress || h.Networks[i].Tunnel != n6.Tunnel || h.Networks[i].Subnet6.IsValid():
			h.Incomplete = true
		default:
			h.Networks[i].Subnet6, h.Networks[i].Gateway6 = n6.Subnet6, n6.Gateway6
		}
	}
	for _, p6 := range h6.Ports {
		i := slices.IndexFunc(h.Ports, func(p datapath.PublishedPort) bool {
			return p.VNI == p6.VNI && p.Proto == p6.Proto && p.HostPort == p6.HostPort && p.Port == p6.Port
		})
		switch {
		case i < 0:
			h.Ports = append(h.Ports, p6)
		case h.Ports[i].IP6.IsValid():
			h.Incomplete = true
		default:
			h.Ports[i].IP6 = p6.IP6
		}
	}
	slices.SortFunc(h.Networks, func(a, b datapath.HostNet) int { return int(a.VNI) - int(b.VNI) })
	slices.SortFunc(h.Ports, comparePorts)
}

// read6 reads the IPv6 half: nil when the host's ip6tables have none of
// vxnet's chains or jumps.
func (t *iptables) read6(tool string) (*datapath.HostFirewall, error) {
	h6 := &datapath.HostFirewall{}
	count := map[string]int{}
	chains, jumpsSeen := 0, map[int]bool{}
	j6 := jumps6()
	for _, table := range []string{"filter", "nat"} {
		b, err := t.run(tool+"-save", nil, "-t", table)
		if err != nil {
			return nil, err
		}
		if table == "filter" { // VXNET-OPEN too, for this Observe's openings
			t.open6, t.open6Read = iptOpen{}, true
		}
		for _, l := range strings.Split(string(b), "\n") {
			if table == "filter" && t.open6.take(l) {
				continue
			}
			if name, ok := strings.CutPrefix(l, ":VXNET-"); ok && name != "" {
				chains++
				continue
			}
			for i, j := range j6 {
				if j.table == table && l == "-A "+j.chain+" "+j.rule {
					jumpsSeen[i] = true
				}
			}
			if strings.HasPrefix(l, "-A VXNET-") {
				c := comment(l)
				if c == "" {
					h6.Incomplete = true
					continue
				}
				if count[c] == 0 && !parseComment6(c, h6) {
					h6.Incomplete = true
				}
				count[c]++
			}
		}
	}
	if chains == 0 && len(jumpsSeen) == 0 {
		return nil, nil
	}
	for c, rs := range hostRules6(*h6) {
		if count[c] != len(rs) {
			h6.Incomplete = true
		}
	}
	if chains != len(ownChains) || len(jumpsSeen) != len(j6) {
		h6.Incomplete = true
	}
	return h6, nil
}

// ensure6 replaces vxnet's ip6tables chains with h's IPv6 half, or, when
// h has none, removes them if the last reading or writing left them there.
func (t *iptables) ensure6(h datapath.HostFirewall) error {
	tool, rules := t.tool6, hostRules6(h)
	if tool == "" {
		return nil
	}
	if len(rules) == 0 {
		if !t.had6 {
			return nil
		}
		t.had6 = false
		return t.removeOwn(tool, jumps6())
	}
	t.had6 = true // from here on, whatever fails, there may be chains to read
	if _, err := t.run(tool+"-restore", restoreInput(rules), "-w", "--noflush"); err != nil {
		return fmt.Errorf("install vxnet's ip6tables chains: %w", err)
	}
	for _, j := range jumps6() {
		if err := t.ensureJumpWith(tool, j.table, j.chain, j.rule); err != nil {
			return err
		}
	}
	if slices.ContainsFunc(h.Networks, func(n datapath.HostNet) bool { return (n.Egress || n.Tunnel != "") && n.Subnet6.IsValid() }) ||
		slices.ContainsFunc(h.Ports, func(p datapath.PublishedPort) bool { return p.IP6.IsValid() }) {
		return t.forwarding6()
	}
	return nil
}

// forwarding6 turns on IPv6 forwarding in the namespace, which IPv6 egress
// and published ports need. A host that forwards takes no router
// advertisements where accept_ra is 1, and a host configured by them would
// lose its own IPv6 route: such interfaces get accept_ra 2 first (take
// them although forwarding), so the host's own addressing is unchanged.
func (t *iptables) forwarding6() error {
	const fwd = "/proc/sys/net/ipv6/conf/all/forwarding"
	set := func() error {
		b, err := os.ReadFile(fwd)
		if err != nil || strings.TrimSpace(string(b)) == "1" {
			return err
		}
		ras, _ := filepath.Glob("/proc/sys/net/ipv6/conf/*/accept_ra")
		for _, ra := range ras {
			if v, err := os.ReadFile(ra); err == nil && strings.TrimSpace(string(v)) == "1" {
				if err := os.WriteFile(ra, []byte("2\n"), 0o644); err != nil {
					return fmt.Errorf("keep router advertisements on with forwarding (%s): %w", ra, err)
				}
			}
		}
		return os.WriteFile(fwd, []byte("1\n"), 0o644)
	}
	if t.nsPath == "" {
		return set()
	}
	return nsutil.Do(t.nsPath, set)
}
