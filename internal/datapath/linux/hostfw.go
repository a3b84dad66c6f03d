package linux

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/nsutil"
)

// The host firewall is the host's own iptables, in whichever backend (nft or
// legacy) the host uses: a drop in one base chain is final whatever other
// tables accept, so vxnet's accepts must sit in the chains that drop. vxnet
// owns five chains and six jumps to them, and nothing else:
//
//	filter VXNET-FORWARD      <- FORWARD (after DOCKER-USER when Docker's is there)
//	filter VXNET-INPUT        <- INPUT: containers' redirected DNS queries to the
//	                             agent's resolver (a host whose INPUT drops, as
//	                             ufw's does, would drop them)
//	nat    VXNET-POSTROUTING  <- POSTROUTING
//	nat    VXNET-DNAT         <- PREROUTING and OUTPUT, for the host's own addresses
//	nat    VXNET-DNS          <- PREROUTING: containers' DNS queries to the agent's resolver
//
// Every rule in its chains carries a comment naming the network or port it
// serves, which is how Observe reads them back.
const (
	chainForward = "VXNET-FORWARD"
	chainSNAT    = "VXNET-POSTROUTING"
	chainDNAT    = "VXNET-DNAT"
	chainDNS     = "VXNET-DNS"
	chainInput   = "VXNET-INPUT"
	commentTag   = "vxnet:"
)

// jumps are vxnet's rules in the host's own chains: table, chain, rule.
var jumps = []struct{ table, chain, rule string }{
	{"filter", "FORWARD", "-j " + chainForward},
	{"nat", "POSTROUTING", "-j " + chainSNAT},
	{"nat", "PREROUTING", "-m addrtype --dst-type LOCAL -j " + chainDNAT},
	{"nat", "OUTPUT", "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j " + chainDNAT},
	{"nat", "PREROUTING", "-j " + chainDNS},
	{"filter", "INPUT", "-j " + chainInput},
}

// ownChains are vxnet's chains, by table.
var ownChains = []struct{ table, chain string }{{"filter", chainForward}, {"nat", chainSNAT}, {"nat", chainDNAT}, {"nat", chainDNS}, {"filter", chainInput}}

// hostRule is one rule in one of vxnet's chains.
type hostRule struct{ table, chain, spec string }

func netComment(n datapath.HostNet, dnsPort uint16) string {
	mode := "egress"
	if !n.Egress {
		mode = "internal"
	}
	gw := "none"
	if n.Gateway.IsValid() {
		gw = n.Gateway.String()
	}
	c := fmt.Sprintf("%snet:%d:%s:%s:%s:%d", commentTag, n.VNI, n.Subnet, gw, mode, dnsPort)
	if n.Tunnel != "" {
		c += ":" + n.Tunnel
	}
	return c
}

func portComment(p datapath.PublishedPort) string {
	return fmt.Sprintf("%sport:%d:%s:%d:%s:%d", commentTag, p.VNI, p.Proto, p.HostPort, p.IP, p.Port)
}

// hostRules renders a host firewall as rules, grouped by comment.
func hostRules(h datapath.HostFirewall) map[string][]hostRule {
	out := map[string][]hostRule{}
	for _, n := range h.Networks {
		if !n.Subnet.IsValid() {
			continue // IPv6-only: in ip6tables alone (hostRules6)
		}
		c := netComment(n, h.DNSPort)
		br := datapath.BridgeName(n.VNI)
		tag := " -m comment --comment " + c
		rs := []hostRule{{"filter", chainForward, "-i " + br + " -o " + br + tag + " -j ACCEPT"}}
		rs = append(rs, dnsRules(n.Gateway, h.DNSPort, br, tag)...)
		out[c] = append(rs, routedRules(n, n.Subnet, br, tag)...)
	}
	for _, p := range h.Ports {
		if !p.IP.IsValid() {
			continue // an IPv6-only endpoint's port: in ip6tables alone
		}
		c := portComment(p)
		out[c] = portRules(p, p.IP, " -m comment --comment "+c)
	}
	return out
}

// dnsRules redirect the DNS queries that reach a network's bridge br to
// the resolver at its gateway gw (one family's), and let them in.
func dnsRules(gw netip.Addr, port uint16, br, tag string) []hostRule {
	if port == 0 || !gw.IsValid() {
		return nil
	}
	var rs []hostRule
	to := netip.AddrPortFrom(gw, port).String()
	for _, proto := range []string{"udp", "tcp"} {
		rs = append(rs, hostRule{"nat", chainDNS, fmt.Sprintf("-i %s -p %s -m %s --dport 53%s -j DNAT --to-destination %s", br, proto, proto, tag, to)},
			hostRule{"filter", chainInput, fmt.Sprintf("-d %s -i %s -p %s -m %s --dport %d%s -j ACCEPT", netip.PrefixFrom(gw, gw.BitLen()), br, proto, proto, port, tag)})
	}
	return rs
}

// routedRules are a network's rules for one family (its subnet sub there)
// beyond its own bridge: through the tunnel between its own addresses,
// and out of the host, masqueraded.
func routedRules(n datapath.HostNet, subnet netip.Prefix, br, tag string) []hostRule {
	var rs []hostRule
	sub := subnet.String()
	if n.Tunnel != "" {
		// Routed through the tunnel, both ways, between the network's
		// own addresses (vxnet's table keeps every other out).
		within := " -s " + sub + " -d " + sub
		rs = append(rs,
			hostRule{"filter", chainForward, "-i " + n.Tunnel + " -o " + br + within + tag + " -j ACCEPT"},
			hostRule{"filter", chainForward, "-i " + br + " -o " + n.Tunnel + within + tag + " -j ACCEPT"})
	}
	if n.Egress {
		snat := "-s " + sub + " ! -o " + br
		if n.Tunnel != "" { // never NAT what goes to the network's own containers
			snat = "-s " + sub + " ! -d " + sub + " ! -o " + br
		}
		rs = append(rs,
			hostRule{"filter", chainForward, "-i " + br + " ! -o " + br + tag + " -j ACCEPT"},
			hostRule{"filter", chainForward, "-o " + br + " -m conntrack --ctstate RELATED,ESTABLISHED" + tag + " -j ACCEPT"},
			hostRule{"nat", chainSNAT, snat + tag + " -j MASQUERADE"})
	}
	return rs
}

// portRules publish a container port at the host's addresses of one
// family (ip is the container's address there).
func portRules(p datapath.PublishedPort, ip netip.Addr, tag string) []hostRule {
	br := datapath.BridgeName(p.VNI)
	return []hostRule{
		{"nat", chainDNAT, fmt.Sprintf("-p %s -m %s --dport %d%s -j DNAT --to-destination %s", p.Proto, p.Proto, p.HostPort, tag, netip.AddrPortFrom(ip, p.Port))},
		{"filter", chainForward, fmt.Sprintf("-d %s -o %s -p %s -m %s --dport %d%s -j ACCEPT", netip.PrefixFrom(ip, ip.BitLen()), br, p.Proto, p.Proto, p.Port, tag)},
	}
}

// parseComment reads a network or port back from a rule's comment.
func parseComment(c string, h *datapath.HostFirewall) bool {
	f := strings.Split(strings.TrimPrefix(c, commentTag), ":")
	switch {
	case (len(f) == 6 || len(f) == 7) && f[0] == "net":
		hn, dns, ok := parseNetFields(f, func(s string) string { return s })
		if !ok || !hn.Subnet.Addr().Is4() || (hn.Gateway.IsValid() && !hn.Gateway.Is4()) {
			return false
		}
		addNet(h, hn, dns)
	case len(f) == 6 && f[0] == "port":
		vni, err1 := strconv.ParseUint(f[1], 10, 32)
		hp, err2 := strconv.ParseUint(f[3], 10, 16)
		ip, err3 := netip.ParseAddr(f[4])
		cp, err4 := strconv.ParseUint(f[5], 10, 16)
		if errors.Join(err1, err2, err3, err4) != nil {
			return false
		}
		h.Ports = append(h.Ports, datapath.PublishedPort{VNI: uint32(vni), Proto: f[2], HostPort: uint16(hp), IP: ip, Port: uint16(cp)})
	default:
		return false
	}
	return true
}

// parseNetFields reads the fields of a network's comment, "net" or
// "net6" (VNI, subnet, gateway or "none", mode, DNS port, tunnel), with
// the addresses decoded by dec; the subnet and gateway come back in
// Subnet and Gateway whatever their family.
func parseNetFields(f []string, dec func(string) string) (datapath.HostNet, uint16, bool) {
	vni, err1 := strconv.ParseUint(f[1], 10, 32)
	sub, err2 := netip.ParsePrefix(dec(f[2]))
	var gw netip.Addr
	var err3 error
	if f[3] != "none" {
		gw, err3 = netip.ParseAddr(dec(f[3]))
	}
	dns, err4 := strconv.ParseUint(f[5], 10, 16)
	if errors.Join(err1, err2, err3, err4) != nil || (f[4] != "egress" && f[4] != "internal") {
		return datapath.HostNet{}, 0, false
	}
	hn := datapath.HostNet{VNI: uint32(vni), Subnet: sub, Gateway: gw, Egress: f[4] == "egress"}
	if len(f) == 7 {
		hn.Tunnel = f[6]
	}
	return hn, uint16(dns), true
}

// addNet adds a network read back to h; a DNS port other than the one
// the networks before it named makes h incomplete.
func addNet(h *datapath.HostFirewall, hn datapath.HostNet, dns uint16) {
	if len(h.Networks) > 0 && h.DNSPort != dns {
		h.Incomplete = true
	}
	h.DNSPort = dns
	h.Networks = append(h.Networks, hn)
}

// iptables runs the iptables tools of the host's backend in the
// dataplane's namespace.
type iptables struct {
	nsPath string // "" for the caller's namespace
	// prefix names the tools: "iptables-nft", "iptables-legacy" or
	// "iptables" (when the host has only that); "" until detected.
	prefix string
	// seen is the host firewall as last read or written, and when: the
	// tools are processes, too dear to run on every pass, so Observe reads
	// them again only once seen is older than maxAge.
	seen   *datapath.HostFirewall
	seenAt time.Time
	maxAge time.Duration
	// missing is set when the host has no iptables tools at all.
	missing bool
	// open is VXNET-OPEN as last read (openings.go).
	open iptOpen
	// had6: vxnet's chains were in the host's ip6tables when last read
	// or written; checked6: they have been read once (leftovers of an
	// earlier agent found). Without either, and nothing to write there,
	// a reading leaves ip6tables alone.
	had6, checked6 bool
	// tool6 is the IPv6 tool of the backend ("" when the host has none).
	tool6 string
	// open6 is VXNET-OPEN in ip6tables as last read (openings6.go);
	// open6Read: read6 read it in the current Observe, so the openings
	// need not read ip6tables again.
	open6     iptOpen
	open6Read bool
}

func (t *iptables) run(tool string, stdin []byte, args ...string) ([]byte, error) {
	var out, errOut bytes.Buffer
	do := func() error {
		cmd := exec.Command(tool, args...)
		cmd.Stdin = bytes.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = &out, &errOut
		return cmd.Run()
	}
	var err error
	if t.nsPath == "" {
		err = do()
	} else {
		err = nsutil.Do(t.nsPath, do)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(errOut.String()))
	}
	return out.Bytes(), nil
}

// detect picks the backend the host's rules live in, as Kubernetes does:
// the one whose save shows more rules and non-default policies; on a tie
// (a host with no rules yet) the system's default iptables.
func (t *iptables) detect() error {
	if t.prefix != "" || t.missing {
		return nil
	}
	weight := func(prefix string) int {
		b, err := t.run(prefix+"-save", nil)
		if err != nil {
			return -1
		}
		n := 0
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "-A ") || (strings.HasPrefix(l, ":") && strings.Contains(l, " DROP ")) {
				n++
			}
		}
		return n
	}
	_, errNft := exec.LookPath("iptables-nft")
	_, errLegacy := exec.LookPath("iptables-legacy")
	_, errPlain := exec.LookPath("iptables")
	switch {
	case errNft == nil && errLegacy == nil:
		nft, legacy := weight("iptables-nft"), weight("iptables-legacy")
		switch {
		case legacy > nft:
			t.prefix = "iptables-legacy"
		case nft > legacy || errPlain != nil:
			t.prefix = "iptables-nft"
		default: // the system's default names its backend
			t.prefix = "iptables-nft"
			if v, err := t.run("iptables", nil, "-V"); err == nil && strings.Contains(string(v), "legacy") {
				t.prefix = "iptables-legacy"
			}
		}
	case errNft == nil:
		t.prefix = "iptables-nft"
	case errLegacy == nil:
		t.prefix = "iptables-legacy"
	case errPlain == nil:
		t.prefix = "iptables"
	default:
		t.missing = true
	}
	if t.prefix != "" {
		// The same backend's IPv6 tool, looked up once ("" when absent).
		if tool := "ip6" + t.prefix[len("ip"):]; lookPath(tool) {
			t.tool6 = tool
		}
	}
	return nil
}

func lookPath(tool string) bool {
	_, err := exec.LookPath(tool)
	return err == nil
}

// save returns the lines of one table.
func (t *iptables) save(table string) ([]string, error) {
	b, err := t.run(t.prefix+"-save", nil, "-t", table)
	if err != nil {
		return nil, err
	}
	return strings.Split(string(b), "\n"), nil
}

// comment extracts the vxnet comment of a saved rule ("" when none).
func comment(line string) string {
	_, rest, ok := strings.Cut(line, "--comment ")
	if !ok {
		return ""
	}
	rest = strings.TrimPrefix(rest, `"`)
	c, _, _ := strings.Cut(rest, " ")
	c = strings.TrimSuffix(c, `"`)
	if !strings.HasPrefix(c, commentTag) {
		return ""
	}
	return c
}

// read reads vxnet's rules from the host, IPv4 and IPv6: nil when it has
// none at all, an Incomplete firewall when some are missing.
func (t *iptables) read() (*datapath.HostFirewall, error) {
	h, err := t.read4()
	if err != nil {
		return nil, err
	}
	tool := t.tool6
	if tool == "" {
		// No ip6tables tools: the IPv6 halves are what was last written
		// (nothing to write them to), as with no iptables tools at all.
		if h != nil && t.seen != nil {
			keep6(h, t.seen)
		}
		return h, nil
	}
	if t.checked6 && !t.had6 && (t.seen == nil || len(hostRules6(*t.seen)) == 0) {
		return h, nil // nothing of vxnet's was there, nor written since
	}
	h6, err := t.read6(tool)
	if err != nil {
		return nil, err
	}
	t.had6, t.checked6 = h6 != nil, true
	switch {
	case h6 == nil:
		return h, nil
	case h == nil:
		return &datapath.HostFirewall{Incomplete: true}, nil
	}
	merge6(h, h6)
	return h, nil
}

// keep6 copies the IPv6 halves of from's networks and ports to the same
// ones of h.
func keep6(h, from *datapath.HostFirewall) {
	for i, n := range h.Networks {
		if j := slices.IndexFunc(from.Networks, func(o datapath.HostNet) bool { return o.VNI == n.VNI }); j >= 0 {
			h.Networks[i].Subnet6 = from.Networks[j].Subnet6
		}
	}
	for i, p := range h.Ports {
		if j := slices.IndexFunc(from.Ports, func(o datapath.PublishedPort) bool {
			return o.VNI == p.VNI && o.Proto == p.Proto && o.HostPort == p.HostPort
		}); j >= 0 {
			h.Ports[i].IP6 = from.Ports[j].IP6
		}
	}
}

// read4 reads vxnet's rules from the host's iptables.
func (t *iptables) read4() (*datapath.HostFirewall, error) {
	h := &datapath.HostFirewall{}
	count := map[string]int{}
	chains := 0
	jumpsSeen := map[int]bool{}
	t.open = iptOpen{}
	for _, table := range []string{"filter", "nat"} {
		lines, err := t.save(table)
		if err != nil {
			return nil, err
		}
		for _, l := range lines {
			if table == "filter" && t.open.take(l) {
				continue
			}
			if name, ok := strings.CutPrefix(l, ":VXNET-"); ok && name != "" {
				chains++
				continue
			}
			for i, j := range jumps {
				if j.table == table && l == "-A "+j.chain+" "+j.rule {
					jumpsSeen[i] = true
				}
			}
			if strings.HasPrefix(l, "-A VXNET-") {
				c := comment(l)
				if c == "" {
					h.Incomplete = true // a rule vxnet did not write, in its chain
					continue
				}
				if count[c] == 0 && !parseComment(c, h) {
					h.Incomplete = true
				}
				count[c]++
			}
		}
	}
	if chains == 0 && len(jumpsSeen) == 0 {
		return nil, nil
	}
	for c, rs := range hostRules(*h) {
		if count[c] != len(rs) {
			h.Incomplete = true
		}
	}
	if chains != len(ownChains) || len(jumpsSeen) != len(jumps) {
		h.Incomplete = true
	}
	slices.SortFunc(h.Networks, func(a, b datapath.HostNet) int { return int(a.VNI) - int(b.VNI) })
	slices.SortFunc(h.Ports, comparePorts)
	return h, nil
}

// take takes a saved line of VXNET-OPEN or its jump into o; false for any
// other line.
func (o *iptOpen) take(l string) bool {
	switch {
	case strings.HasPrefix(l, ":"+openChain+" "):
		o.chain = true
	case l == "-A INPUT "+openJump:
		o.jump = true
	case strings.HasPrefix(l, "-A "+openChain+" "):
		o.lines = append(o.lines, strings.ReplaceAll(l, `"`, ""))
	default:
		return false
	}
	return true
}

func comparePorts(a, b datapath.PublishedPort) int {
	if c := strings.Compare(a.Proto, b.Proto); c != 0 {
		return c
	}
	return int(a.HostPort) - int(b.HostPort)
}

// observe returns the host firewall, read again when the last reading is
// older than maxAge.
func (t *iptables) observe() (*datapath.HostFirewall, error) {
	if t.seenAt.IsZero() || time.Since(t.seenAt) >= t.maxAge {
		if err := t.detect(); err != nil {
			return nil, err
		}
		if t.missing {
			return t.seen, nil
		}
		h, err := t.read()
		if err != nil {
			return nil, err
		}
		t.seen, t.seenAt = h, time.Now()
	}
	if t.seen == nil {
		return nil, nil
	}
	c := *t.seen
	return &c, nil
}

// ensure replaces vxnet's chains at once (iptables-restore without flushing
// anything else) and adds the jumps that are missing.
func (t *iptables) ensure(h datapath.HostFirewall) error {
	if err := t.detect(); err != nil {
		return err
	}
	if t.missing {
		t.seen, t.seenAt = &h, time.Now()
		return nil
	}
	t.seenAt = time.Time{} // read again whatever happens next
	if _, err := t.run(t.prefix+"-restore", restoreInput(hostRules(h)), "-w", "--noflush"); err != nil {
		return fmt.Errorf("install vxnet's iptables chains: %w", err)
	}
	for _, j := range jumps {
		if err := t.ensureJump(j.table, j.chain, j.rule); err != nil {
			return err
		}
	}
	if len(h.Ports) > 0 || slices.ContainsFunc(h.Networks, func(n datapath.HostNet) bool { return n.Egress }) {
		if err := t.forwarding(); err != nil {
			return err
		}
	}
	if err := t.ensure6(h); err != nil {
		return err
	}
	t.seen, t.seenAt = &h, time.Now()
	return nil
}

// restoreInput is what iptables-restore (or ip6tables-restore) is given
// to replace vxnet's chains with rules, leaving every other chain alone.
func restoreInput(rules map[string][]hostRule) []byte {
	keys := slices.Sorted(maps.Keys(rules))
	var in bytes.Buffer
	for _, table := range []string{"filter", "nat"} {
		fmt.Fprintf(&in, "*%s\n", table)
		for _, c := range ownChains {
			if c.table == table {
				fmt.Fprintf(&in, ":%s - [0:0]\n", c.chain)
			}
		}
		for _, c := range keys {
			for _, r := range rules[c] {
				if r.table == table {
					fmt.Fprintf(&in, "-A %s %s\n", r.chain, r.spec)
				}
			}
		}
		in.WriteString("COMMIT\n")
	}
	return in.Bytes()
}

// ensureJump inserts a jump unless it is there: at the top of the chain,
// or in FORWARD right after Docker's DOCKER-USER, so that rules users put
// there for containers apply to vxnet's too.
func (t *iptables) ensureJump(table, chain, rule string) error {
	return t.ensureJumpWith(t.prefix, table, chain, rule)
}

// ensureJumpWith is ensureJump with one tool (iptables or ip6tables of the
// backend).
func (t *iptables) ensureJumpWith(tool, table, chain, rule string) error {
	args := strings.Fields(rule)
	if _, err := t.run(tool, nil, append([]string{"-w", "-t", table, "-C", chain}, args...)...); err == nil {
		return nil
	}
	pos := 1
	if chain == "FORWARD" {
		b, err := t.run(tool+"-save", nil, "-t", table)
		if err != nil {
			return err
		}
		lines := strings.Split(string(b), "\n")
		i := 0
		for _, l := range lines {
			if strings.HasPrefix(l, "-A FORWARD ") {
				i++
				if l == "-A FORWARD -j DOCKER-USER" {
					pos = i + 1
				}
			}
		}
	}
	if _, err := t.run(tool, nil, append([]string{"-w", "-t", table, "-I", chain, strconv.Itoa(pos)}, args...)...); err != nil {
		return fmt.Errorf("add vxnet's jump to %s %s %s: %w", tool, table, chain, err)
	}
	return nil
}

// forwarding turns on IPv4 forwarding in the namespace, which egress and
// published ports need (as Docker does for its networks).
func (t *iptables) forwarding() error {
	const path = "/proc/sys/net/ipv4/ip_forward"
	set := func() error {
		b, err := os.ReadFile(path)
		if err != nil || strings.TrimSpace(string(b)) == "1" {
			return err
		}
		return os.WriteFile(path, []byte("1\n"), 0o644)
	}
	if t.nsPath == "" {
		return set()
	}
	return nsutil.Do(t.nsPath, set)
}

// remove deletes vxnet's jumps and chains; what is absent is no error.
func (t *iptables) remove() error {
	if err := t.detect(); err != nil {
		return err
	}
	t.seen, t.seenAt = nil, time.Time{}
	if t.missing {
		return nil
	}
	errs := []error{t.removeOwn(t.prefix, jumps)}
	if tool := t.tool6; tool != "" && t.had6 {
		errs = append(errs, t.removeOwn(tool, jumps6()))
		t.had6 = false
	}
	return errors.Join(errs...)
}

// removeOwn deletes vxnet's jumps (js) and chains with one tool
// (iptables or ip6tables of the backend); what is absent is no error.
func (t *iptables) removeOwn(tool string, js []struct{ table, chain, rule string }) error {
	var errs []error
	for _, j := range js {
		args := append([]string{"-w", "-t", j.table, "-D", j.chain}, strings.Fields(j.rule)...)
		for range 10 { // a jump added twice by hand goes too
			if _, err := t.run(tool, nil, args...); err != nil {
				break
			}
		}
	}
	for _, c := range ownChains {
		if _, err := t.run(tool, nil, "-w", "-t", c.table, "-F", c.chain); err != nil {
			continue // absent
		}
		if _, err := t.run(tool, nil, "-w", "-t", c.table, "-X", c.chain); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// EnsureHostFirewall installs vxnet's rules in the host's iptables.
func (d *Dataplane) EnsureHostFirewall(h datapath.HostFirewall) error {
	if err := d.ipt.ensure(h); err != nil {
		return err
	}
	if d.ipt.missing {
		d.log.Warn("no iptables tools on this host: vxnet's traffic relies on the host forwarding it (install the iptables package if the host filters forwarded traffic)")
	}
	d.changed("installed host firewall", "backend", d.ipt.prefix, "networks", len(h.Networks), "ports", len(h.Ports))
	return nil
}

// RemoveHostFirewall removes vxnet's rules from the host's iptables.
func (d *Dataplane) RemoveHostFirewall() error {
	if err := d.ipt.remove(); err != nil {
		return err
	}
	d.changed("removed host firewall", "backend", d.ipt.prefix)
	return nil
}

// HostFirewallBackend names the iptables tools in use ("" before first use).
func (d *Dataplane) HostFirewallBackend() string { return d.ipt.prefix }

// RunIptables runs the host's iptables (the detected backend) with args in
// the dataplane's namespace, for tests and diagnosis.
func (d *Dataplane) RunIptables(args ...string) ([]byte, error) {
	if err := d.ipt.detect(); err != nil {
		return nil, err
	}
	if d.ipt.missing {
		return nil, errors.New("no iptables tools on this host")
	}
	return d.ipt.run(d.ipt.prefix, nil, args...)
}

// RereadHostFirewall makes the next Observe read the host's iptables again.
func (d *Dataplane) RereadHostFirewall() { d.ipt.seenAt = time.Time{} }

// SetHostFirewallMaxAge sets how long Observe trusts its last reading of
// the host's iptables (HostFirewallMaxAge by default; 0 reads every time).
func (d *Dataplane) SetHostFirewallMaxAge(age time.Duration) { d.ipt.maxAge = age }
