// Package doctor holds the local checks of 'vxnet doctor': each looks at a
// fact of this host (read by the caller: the agent's status, the host's
// iptables, /proc) and says ok, warn or fail, with the evidence and the
// fix. The checks are pure; the command reads the facts.
package doctor

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/health"
)

// Level of a finding.
type Level string

// Levels, from fine to broken.
const (
	OK   Level = "ok"
	Warn Level = "warn"
	Fail Level = "fail"
)

// Finding is one check's result.
type Finding struct {
	Check    string `json:"check"`
	Level    Level  `json:"level"`
	Evidence string `json:"evidence"`
	Fix      string `json:"fix,omitempty"`
}

// Facts are what the checks look at.
type Facts struct {
	// Status is the agent's (nil when it does not answer; StatusErr says why).
	Status    *api.Status
	StatusErr error
	// VXLANPort is the agent's VXLAN port.
	VXLANPort int
	// IPTables is the output of iptables-save of the host's backend ("" if none),
	// IP6Tables of ip6tables-save.
	IPTables, IP6Tables string
	// IPv6Forwarding is net.ipv6.conf.all.forwarding (-1: unknown).
	IPv6Forwarding int
	// Nftables is the output of `nft -a list ruleset` ("" if none).
	Nftables string
	// UDPSockets are the lines of /proc/net/udp.
	UDPSockets []string
	// PortHolders names the processes holding a socket inode, by inode.
	PortHolders map[string]string
	// ForeignVXLAN lists vxlan devices vxnet did not make, with their port.
	ForeignVXLAN map[string]int
	// GCThresh3 is net.ipv4.neigh.default.gc_thresh3 (0: unknown).
	GCThresh3 int
	// Conntrack is nf_conntrack_count and _max (0: unknown).
	ConntrackCount, ConntrackMax int
	// RPFilter is the underlay device's rp_filter (-1: unknown).
	RPFilter int
	// Health is the agent's view of the overlay paths (nil: not asked).
	Health *api.Health
	// KernelVXLAN says whether the kernel's vxlan support is there (built
	// in or loaded: /sys/module/vxlan).
	KernelVXLAN bool
}

// Run runs every check.
func Run(f Facts) []Finding {
	out := []Finding{agent(f)}
	if f.Status != nil {
		out = append(out, addr(f), addresses(f), reconcile(f), datapath(f), overlayPaths(f))
	}
	out = append(out, kernelVXLAN(f), portHolders(f), foreignVXLAN(f), forwarding(f), forwarding6(f), hostFilters(f), neighbours(f), conntrack(f), rpFilter(f))
	return out
}

// Worst is the worst level of findings.
func Worst(fs []Finding) Level {
	w := OK
	for _, f := range fs {
		if f.Level == Fail {
			return Fail
		}
		if f.Level == Warn {
			w = Warn
		}
	}
	return w
}

func agent(f Facts) Finding {
	if f.Status == nil {
		return Finding{"agent", Fail, fmt.Sprintf("the agent does not answer: %v", f.StatusErr), "start it: systemctl start vxnet (or vxnet agent ...)"}
	}
	alive := 0
	for _, m := range f.Status.Members {
		if m.State == "alive" {
			alive++
		}
	}
	return Finding{"agent", OK, fmt.Sprintf("node %s (%s), vxnet %s, %d of %d members alive", f.Status.Node, f.Status.Addr, f.Status.Version, alive, len(f.Status.Members)), ""}
}

func addr(f Facts) Finding {
	if f.Status.AddrError != "" {
		return Finding{"advertise-address", Fail, f.Status.AddrError, "restart the agent with the host's new address"}
	}
	return Finding{"advertise-address", OK, fmt.Sprintf("%s is on this host", f.Status.Addr), ""}
}

func reconcile(f Facts) Finding {
	s := f.Status
	switch {
	case s.SyncError != "":
		return Finding{"reconcile", Fail, "the last pass failed: " + s.SyncError, "see the agent's log; 'vxnet doctor' names the usual causes below"}
	case len(s.Conflicts) > 0:
		return Finding{"reconcile", Warn, fmt.Sprintf("%d conflicts in the cluster state: %s", len(s.Conflicts), strings.Join(s.Conflicts, "; ")), "see 'vxnet status'"}
	}
	return Finding{"reconcile", OK, fmt.Sprintf("%d passes, the last in %s", s.Syncs, s.LastSyncDuration), ""}
}

// datapath says which datapath runs and why: with the fast path, unicast
// within a network passes neither the bridge nor the host's firewall.
func datapath(f Facts) Finding {
	s := f.Status
	switch s.Datapath {
	case "":
		return Finding{"datapath", OK, "bridge (an agent that does not report its datapath)", ""}
	case "bpf":
		return Finding{"datapath", OK, "bpf: TC programs carry unicast within each network past the bridge and the host's FORWARD chain (" + s.DatapathReason + ")", ""}
	}
	if strings.HasPrefix(s.DatapathReason, "auto:") {
		return Finding{"datapath", Warn, "bridge: " + s.DatapathReason, "the bridge path works; for the fast path the kernel needs TCX (6.6 or later) and the agent CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN"}
	}
	return Finding{"datapath", OK, "bridge (" + s.DatapathReason + ")", ""}
}

func kernelVXLAN(f Facts) Finding {
	if !f.KernelVXLAN {
		return Finding{"kernel-vxlan", Fail, "the kernel's vxlan support is not loaded (no /sys/module/vxlan)", "modprobe vxlan; a kernel built without CONFIG_VXLAN cannot run vxnet"}
	}
	return Finding{"kernel-vxlan", OK, "the kernel has vxlan (built in or loaded)", ""}
}

// paths turns the health probes' verdicts into findings: the overlay path
// to a peer that gossip reaches but probes do not is a VXLAN port blocked
// on the way; full-size probes lost while small ones pass is a path MTU
// below the underlay's (or offload trouble).
func overlayPaths(f Facts) Finding {
	h := f.Health
	if h == nil {
		return Finding{"overlay-paths", Warn, "the agent did not report its health view", "upgrade the agent; 'vxnet health' shows the probes"}
	}
	if !h.Enabled {
		return Finding{"overlay-paths", Warn, "health probes are off: broken paths between hosts go unnoticed", "run the agent without --health-subnet off"}
	}
	if h.Error != "" {
		return Finding{"overlay-paths", Warn, "health probes are not running: " + h.Error, "see the agent's log"}
	}
	members := map[string]cluster.Member{}
	for _, m := range f.Status.Members {
		members[m.Name] = m
	}
	var fails, warns, fixes []string
	ok := 0
	overlayOK := map[string]bool{}
	for _, p := range h.Peers {
		if p.State == health.OK {
			overlayOK[p.Node] = true
		}
	}
	for _, p := range append(slices.Clone(h.Peers), h.TunnelPeers...) {
		m, known := members[p.Node]
		where := p.Node
		if known && m.Addr.IsValid() {
			where = fmt.Sprintf("%s (%s)", p.Node, m.Addr)
		}
		if p.Path == health.PathWireGuard {
			if fail, fix := tunnelPath(f, p, where, overlayOK[p.Node]); fail != "" {
				fails, fixes = append(fails, fail), append(fixes, fix)
			} else if p.State == health.Degraded {
				warns = append(warns, fmt.Sprintf("%s through WireGuard: %s", where, p.Cause))
			} else {
				ok++
			}
			continue
		}
		switch p.State {
		case health.OK:
			ok++
		case health.Unreachable:
			gossip := "and gossip does not reach it either"
			if known && m.State == "alive" {
				gossip = "while gossip reaches it: the hosts talk, their VXLAN does not"
			}
			fails = append(fails, fmt.Sprintf("the overlay path to %s is unreachable (%s) %s", where, p.Cause, gossip))
			fixes = append(fixes, fmt.Sprintf("let UDP %d (VXLAN) through between %s and %s in both directions, in every firewall on the path (hosts, cloud security groups, switch ACLs)", f.VXLANPort, f.Status.Addr, where))
		case health.MTU:
			fails = append(fails, fmt.Sprintf("full-size frames to %s are lost: probes of %d bytes with DF (%d on the wire with VXLAN's 50) go unanswered while small ones pass", where, h.BigSize, h.BigSize+50))
			fixes = append(fixes, fmt.Sprintf("raise the MTU of every link on the path to %s to at least %d, or create the networks with a smaller --mtu; if the MTU is right everywhere, suspect checksum or segmentation offload of the NICs (ethtool -K DEV tx off)", where, h.BigSize+50))
		case health.Degraded:
			warns = append(warns, fmt.Sprintf("%s: %s", where, p.Cause))
		}
	}
	switch {
	case len(fails) > 0:
		return Finding{"overlay-paths", Fail, strings.Join(fails, "; "), strings.Join(fixes, "; ")}
	case len(warns) > 0:
		return Finding{"overlay-paths", Warn, "probes lost on the way to " + strings.Join(warns, "; "), "watch 'vxnet health'; a lossy underlay loses containers' packets too"}
	}
	if len(h.TunnelPeers) > 0 {
		return Finding{"overlay-paths", OK, fmt.Sprintf("%d of %d peers answer small and full-size (%d bytes, DF) probes through the overlay, and through WireGuard", ok, len(h.Peers)+len(h.TunnelPeers), h.BigSize), ""}
	}
	return Finding{"overlay-paths", OK, fmt.Sprintf("%d of %d peers answer small and full-size (%d bytes, DF) probes through the overlay", ok, len(h.Peers), h.BigSize), ""}
}

// tunnelPath judges the encrypted networks' path to one peer: what fails
// and how to fix it (both empty when it does not fail).
func tunnelPath(f Facts, p health.Peer, where string, overlayOK bool) (fail, fix string) {
	t := f.Status.Tunnel
	if t == nil {
		return "", ""
	}
	peerPort := 0
	for _, n := range f.Status.Nodes {
		if n.Name == p.Node && n.Tunnel != nil {
			peerPort = n.Tunnel.Port
		}
	}
	switch p.State {
	case health.Unreachable:
		clear := "and the overlay in clear does not reach it either"
		if overlayOK {
			clear = "while the overlay in clear (VXLAN) reaches it: WireGuard's packets do not pass"
		}
		return fmt.Sprintf("the encrypted networks' path to %s is unreachable (%s) %s", where, p.Cause, clear),
			fmt.Sprintf("let UDP %d (WireGuard, this host %s) and UDP %d (WireGuard, %s) through between them in both directions, in every firewall on the path",
				t.Port, f.Status.Addr, peerPort, where)
	case health.MTU:
		return fmt.Sprintf("full-size packets through WireGuard to %s are lost: probes of %d bytes with DF (%d on the wire) go unanswered while small ones pass", where, t.MTU, t.MTU+60),
			fmt.Sprintf("raise the MTU of every link on the path to %s to at least %d, or give the encrypted networks a smaller --mtu", where, t.MTU+60)
	}
	return "", ""
}

// portHolders finds programs bound to the VXLAN port: a socket on it that
// a process holds (the kernel's own vxlan sockets, vxnet's included, belong
// to no process).
func portHolders(f Facts) Finding {
	hex := fmt.Sprintf(":%04X", f.VXLANPort)
	var held []string
	for _, l := range f.UDPSockets {
		fs := strings.Fields(l)
		if len(fs) < 10 || !strings.HasSuffix(fs[1], hex) {
			continue
		}
		if who := f.PortHolders[fs[9]]; who != "" {
			held = append(held, who)
		}
	}
	if len(held) > 0 {
		return Finding{"vxlan-port", Fail, fmt.Sprintf("UDP %d is held by %s", f.VXLANPort, strings.Join(held, ", ")),
			fmt.Sprintf("stop it, or run vxnet on another port (--vxlan-port, the same on every host)")}
	}
	return Finding{"vxlan-port", OK, fmt.Sprintf("no program holds UDP %d", f.VXLANPort), ""}
}

func foreignVXLAN(f Facts) Finding {
	var same, other []string
	for dev, port := range f.ForeignVXLAN {
		if port == f.VXLANPort {
			same = append(same, dev)
		} else {
			other = append(other, fmt.Sprintf("%s (port %d)", dev, port))
		}
	}
	switch {
	case len(same) > 0:
		return Finding{"other-vxlan", Fail, fmt.Sprintf("vxlan devices vxnet did not make use port %d too: %s", f.VXLANPort, strings.Join(same, ", ")),
			"give vxnet another --vxlan-port, or remove the other overlay"}
	case len(other) > 0:
		return Finding{"other-vxlan", OK, "other overlays on other ports: " + strings.Join(other, ", "), ""}
	}
	return Finding{"other-vxlan", OK, "no other vxlan devices", ""}
}

// forwarding: a host that drops forwarded traffic needs vxnet's rules.
func forwarding(f Facts) Finding {
	if f.IPTables == "" {
		return Finding{"forwarding", OK, "no iptables rules on this host", ""}
	}
	drop := strings.Contains(f.IPTables, ":FORWARD DROP")
	jump := strings.Contains(f.IPTables, "-A FORWARD -j VXNET-FORWARD")
	networks := f.Status != nil && len(f.Status.Networks) > 0
	switch {
	case drop && networks && !jump && f.Status.Datapath == "bpf":
		return Finding{"forwarding", Fail, "the FORWARD policy is DROP (as dockerd, ufw and firewalld set it) and vxnet's VXNET-FORWARD rules are missing: traffic out of vxnet's networks (egress, published ports, routed) is dropped; unicast inside a network takes the fast path and still flows",
			"let the agent put its rules back (they return within a resync), or check what removes them"}
	case drop && networks && !jump:
		return Finding{"forwarding", Fail, "the FORWARD policy is DROP (as dockerd, ufw and firewalld set it) and vxnet's VXNET-FORWARD rules are missing: bridged traffic of vxnet's networks is dropped",
			"let the agent put its rules back (they return within a resync), or check what removes them"}
	case drop && jump:
		return Finding{"forwarding", OK, "the FORWARD policy is DROP and vxnet's rules let its networks through", ""}
	case drop:
		return Finding{"forwarding", OK, "the FORWARD policy is DROP; vxnet adds its rules with its first network", ""}
	}
	return Finding{"forwarding", OK, "forwarded traffic is accepted by default", ""}
}

// forwarding6: a host with dual-stack networks that drops forwarded IPv6
// needs vxnet's ip6tables rules, and IPv6 out of them needs forwarding.
func forwarding6(f Facts) Finding {
	var v6 []string
	if f.Status != nil {
		for _, n := range f.Status.Networks {
			if strings.Contains(n.Subnet, ":") {
				v6 = append(v6, n.Name)
			}
		}
	}
	if len(v6) == 0 {
		return Finding{"forwarding-ipv6", OK, "no network here carries IPv6", ""}
	}
	drop := strings.Contains(f.IP6Tables, ":FORWARD DROP")
	jump := strings.Contains(f.IP6Tables, "-A FORWARD -j VXNET-FORWARD")
	switch {
	case drop && !jump:
		return Finding{"forwarding-ipv6", Fail, fmt.Sprintf("the ip6tables FORWARD policy is DROP and vxnet's VXNET-FORWARD rules are missing there: IPv6 of %s is dropped where it is bridged through ip6tables (br_netfilter) or routed out", strings.Join(v6, ", ")),
			"let the agent put its rules back (they return within a resync), or check what removes them"}
	case f.IPv6Forwarding == 0:
		return Finding{"forwarding-ipv6", Warn, fmt.Sprintf("IPv6 forwarding is off (net.ipv6.conf.all.forwarding=0): IPv6 of %s does not leave the host, and published ports do not answer at its IPv6 addresses (vxnet turns it on with the first dual-stack network that has egress or ports; something turned it off)", strings.Join(v6, ", ")),
			"sysctl -w net.ipv6.conf.all.forwarding=1 (set accept_ra=2 on interfaces configured by router advertisements first)"}
	}
	return Finding{"forwarding-ipv6", OK, fmt.Sprintf("IPv6 of %s is forwarded", strings.Join(v6, ", ")), ""}
}

func neighbours(f Facts) Finding {
	if f.GCThresh3 == 0 || f.Status == nil {
		return Finding{"neighbour-table", OK, "not checked", ""}
	}
	remote := 0
	for _, n := range f.Status.Networks {
		remote += n.Remote
	}
	if remote*2 > f.GCThresh3 {
		return Finding{"neighbour-table", Warn, fmt.Sprintf("%d remote endpoints against a neighbour table of %d entries (gc_thresh3)", remote, f.GCThresh3),
			fmt.Sprintf("sysctl -w net.ipv4.neigh.default.gc_thresh3=%d (and gc_thresh1/2)", max(4*remote, 1024))}
	}
	return Finding{"neighbour-table", OK, fmt.Sprintf("%d remote endpoints, gc_thresh3 %d", remote, f.GCThresh3), ""}
}

func conntrack(f Facts) Finding {
	if f.ConntrackMax == 0 {
		return Finding{"conntrack", OK, "no connection tracking table", ""}
	}
	use := float64(f.ConntrackCount) / float64(f.ConntrackMax)
	if use > 0.9 {
		return Finding{"conntrack", Warn, fmt.Sprintf("the connection tracking table is %.0f%% full (%d of %d)", 100*use, f.ConntrackCount, f.ConntrackMax),
			"raise net.netfilter.nf_conntrack_max"}
	}
	return Finding{"conntrack", OK, fmt.Sprintf("%d of %d connections tracked", f.ConntrackCount, f.ConntrackMax), ""}
}

func rpFilter(f Facts) Finding {
	if f.RPFilter == 1 {
		return Finding{"rp-filter", Warn, "strict reverse-path filtering on the underlay device drops VXLAN that arrives on another interface than the route back",
			"sysctl -w net.ipv4.conf.<underlay>.rp_filter=2 (loose) on multi-homed hosts"}
	}
	return Finding{"rp-filter", OK, "rp_filter " + strconv.Itoa(f.RPFilter), ""}
}
