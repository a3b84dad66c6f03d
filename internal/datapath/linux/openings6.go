package linux

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vxnet/vxnet/internal/datapath"
)

// The IPv6 half of VXNET-OPEN: the same chain and jump in the backend's
// ip6tables (when the host has its tools), so that a host whose ip6tables
// INPUT drops (ufw's) takes gossip, VXLAN and WireGuard from members
// reached over IPv6 (an IPv6 underlay).

// readOpen6 reads VXNET-OPEN from the backend's ip6tables into t.open6; it
// reports whether there was anything to read with.
func (t *iptables) readOpen6() (bool, error) {
	if t.tool6 == "" {
		return false, nil
	}
	if t.open6Read { // read6 read the filter table in this Observe
		t.open6Read = false
		return true, nil
	}
	b, err := t.run(t.tool6+"-save", nil, "-t", "filter")
	if err != nil {
		return false, err
	}
	t.open6 = iptOpen{}
	for _, l := range strings.Split(string(b), "\n") {
		t.open6.take(l)
	}
	return true, nil
}

// ensureOpen6 writes VXNET-OPEN for o into ip6tables.
func (t *iptables) ensureOpen6(o datapath.Openings) error {
	if t.tool6 == "" {
		return nil
	}
	in := fmt.Sprintf("*filter\n:%s - [0:0]\n%sCOMMIT\n", openChain, strings.Join(append(openLinesFor(o, true), ""), "\n"))
	if _, err := t.run(t.tool6+"-restore", []byte(in), "-w", "--noflush"); err != nil {
		return fmt.Errorf("install ip6tables chain %s: %w", openChain, err)
	}
	return t.ensureJumpWith(t.tool6, "filter", "INPUT", openJump)
}

// removeOpenWith takes VXNET-OPEN and its jumps out of one tool's filter
// table.
func (t *iptables) removeOpenWith(tool string) error {
	args := append([]string{"-w", "-t", "filter", "-D", "INPUT"}, strings.Fields(openJump)...)
	for range 10 { // a jump added twice by hand goes too
		if _, err := t.run(tool, nil, args...); err != nil {
			break
		}
	}
	if _, err := t.run(tool, nil, "-w", "-t", "filter", "-F", openChain); err == nil {
		if _, err := t.run(tool, nil, "-w", "-t", "filter", "-X", openChain); err != nil {
			return fmt.Errorf("remove %s chain %s: %w", tool, openChain, err)
		}
	}
	return nil
}

// parseOpenLines reads openings from VXNET-OPEN's lines into o (ports)
// and vteps (members).
func parseOpenLines(lines []string, o *datapath.Openings, vteps map[netip.Addr]bool) {
	for _, l := range lines {
		f := strings.Fields(l)
		p, _ := strconv.Atoi(fieldAfter(f, "--dport"))
		switch {
		case slices.Contains(f, openComment+"vxlan"):
			a, err := netip.ParsePrefix(fieldAfter(f, "-s"))
			if err == nil {
				vteps[a.Addr()], o.VXLANPort = true, p
			}
		case slices.Contains(f, openComment+"gossip"):
			o.GossipPort = p
		case slices.ContainsFunc(f, func(s string) bool { return strings.HasPrefix(s, openComment+"tunnel:") }):
			o.TunnelPort, o.TunnelDev = p, strings.TrimPrefix(fieldAfter(f, "--comment"), openComment+"tunnel:")
		case slices.Contains(f, openComment+"dns"):
			o.DNSPort = uint16(p)
		}
	}
}
