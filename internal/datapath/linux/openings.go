package linux

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/datapath"
)

// vxnet's openings (datapath.Openings) live in two places:
//
//   - iptables: chain filter VXNET-OPEN, jumped to from the top of INPUT
//     (ufw's INPUT policy drops; VXNET-FORWARD and VXNET-INPUT already pass
//     forwarded traffic and DNS there);
//   - nftables: rules at the head of every other table's input and forward
//     base chains of type filter (a native ruleset, firewalld's table),
//     each with a comment "vxnet-open:..." (nft's own, which `nft list
//     ruleset` shows). iptables-nft's own tables are iptables' (above).
//
// Nothing else in those chains is touched, and RemoveOpenings takes exactly
// the tagged rules away.
const (
	openChain   = "VXNET-OPEN"
	openTag     = "vxnet-open:"
	openComment = commentTag + "open:"
	bridgePref  = "vxbr" // every vxnet bridge's name starts so
)

var openJump = "-j " + openChain

// iptOpen is what a reading of iptables showed of VXNET-OPEN.
type iptOpen struct {
	chain, jump bool
	lines       []string // "-A VXNET-OPEN ..." without quotes
}

// openLines are VXNET-OPEN's rules for o, as iptables-save prints them
// (without quotes).
func openLines(o datapath.Openings) []string { return openLinesFor(o, false) }

// openLinesFor is openLines for iptables or (v6) ip6tables: the members
// of that family.
func openLinesFor(o datapath.Openings, v6 bool) []string {
	var out []string
	for _, a := range o.VTEPs {
		if a.Is6() == v6 {
			out = append(out, fmt.Sprintf("-A %s -s %s -p udp -m udp --dport %d -m comment --comment %svxlan -j ACCEPT", openChain, netip.PrefixFrom(a, a.BitLen()), o.VXLANPort, openComment))
		}
	}
	if o.GossipPort != 0 {
		for _, p := range []string{"tcp", "udp"} {
			out = append(out, fmt.Sprintf("-A %s -p %s -m %s --dport %d -m comment --comment %sgossip -j ACCEPT", openChain, p, p, o.GossipPort, openComment))
		}
	}
	if o.TunnelPort != 0 {
		out = append(out, fmt.Sprintf("-A %s -p udp -m udp --dport %d -m comment --comment %stunnel:%s -j ACCEPT", openChain, o.TunnelPort, openComment, o.TunnelDev))
	}
	if o.DNSPort != 0 {
		for _, p := range []string{"tcp", "udp"} {
			out = append(out, fmt.Sprintf("-A %s -i %s+ -p %s -m %s --dport %d -m comment --comment %sdns -j ACCEPT", openChain, bridgePref, p, p, o.DNSPort, openComment))
		}
	}
	return out
}

// openRule is one tagged rule for a foreign nftables chain; set, when not
// nil, is the anonymous set of member addresses its lookup reads.
type openRule struct {
	tag   string
	exprs []expr.Any
	set   *nftables.Set
	elems []nftables.SetElement
}

// hookIs tells a base chain's hook.
func hookIs(ch *nftables.Chain, h *nftables.ChainHook) bool {
	return ch.Hooknum != nil && *ch.Hooknum == *h
}

func port16(p int) []byte {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, uint16(p))
	return b
}

// l4port matches a layer 4 protocol and destination port.
func l4port(proto byte, port int) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port16(port)},
	}
}

// onBridge matches packets in from (or out to) any vxnet bridge.
func onBridge(key expr.MetaKey) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(bridgePref)}, // a prefix
	}
}

// ctBits matches a conntrack key (state or status) with any of bits set.
func ctBits(key expr.CtKey, bits uint32) []expr.Any {
	mask := make([]byte, 4)
	binary.NativeEndian.PutUint32(mask, bits)
	return []expr.Any{
		&expr.Ct{Register: 1, Key: key},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

func accept() []expr.Any { return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept}} }

func join(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }

// vtepHash names a member list in a tag (user data is short).
func vtepHash(as []netip.Addr) string {
	h := fnv.New32a()
	for _, a := range as {
		h.Write(a.AsSlice())
	}
	return strconv.FormatUint(uint64(h.Sum32()), 16)
}

// openRules are the tagged rules for one foreign base chain, in order.
func openRules(o datapath.Openings, ch *nftables.Chain) []openRule {
	fam := ch.Table.Family
	var out []openRule
	if hookIs(ch, nftables.ChainHookForward) {
		out := []openRule{
			{tag: openTag + "from-bridges", exprs: join(onBridge(expr.MetaKeyIIFNAME), accept())},
			{tag: openTag + "to-bridges", exprs: join(onBridge(expr.MetaKeyOIFNAME),
				ctBits(expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept())},
			{tag: openTag + "dnat", exprs: join(onBridge(expr.MetaKeyOIFNAME), ctBits(expr.CtKeySTATUS, 1<<5 /* IPS_DST_NAT */), accept())},
		}
		if o.TunnelDev != "" {
			// The encrypted networks' packets out of the tunnel into the
			// bridges (which of them may pass is vxnet's table's to say).
			out = append(out, openRule{tag: openTag + "tunnel-in:" + o.TunnelDev, exprs: join([]expr.Any{
				&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(o.TunnelDev)},
			}, onBridge(expr.MetaKeyOIFNAME), accept())})
		}
		return out
	}
	for _, v6 := range []bool{false, true} {
		if (v6 && fam == nftables.TableFamilyIPv4) || (!v6 && fam == nftables.TableFamilyIPv6) {
			continue
		}
		var addrs []netip.Addr
		var elems []nftables.SetElement
		for _, a := range o.VTEPs {
			if a.Is4() != v6 {
				addrs = append(addrs, a)
				elems = append(elems, nftables.SetElement{Key: a.AsSlice()})
			}
		}
		if len(elems) == 0 {
			continue
		}
		saddr, alen, kt, name := uint32(12), uint32(4), nftables.TypeIPAddr, "vxlan4"
		if v6 {
			saddr, alen, kt, name = 8, 16, nftables.TypeIP6Addr, "vxlan6"
		}
		set := &nftables.Set{Table: ch.Table, Anonymous: true, Constant: true, KeyType: kt}
		out = append(out, openRule{
			tag: fmt.Sprintf("%s%s:%d:%s", openTag, name, o.VXLANPort, vtepHash(addrs)),
			exprs: join(udpTo(v6, o.VXLANPort), []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: saddr, Len: alen},
				&expr.Lookup{SourceRegister: 1, SetName: "", SetID: 0}, // bound in ensure
			}, accept()),
			set: set, elems: elems,
		})
	}
	protos := []struct {
		name  string
		proto byte
	}{{"tcp", unix.IPPROTO_TCP}, {"udp", unix.IPPROTO_UDP}}
	for _, p := range protos {
		if o.GossipPort != 0 {
			out = append(out, openRule{tag: fmt.Sprintf("%sgossip-%s:%d", openTag, p.name, o.GossipPort),
				exprs: join(l4port(p.proto, o.GossipPort), accept())})
		}
	}
	if o.TunnelPort != 0 {
		out = append(out, openRule{tag: fmt.Sprintf("%stunnel:%d:%s", openTag, o.TunnelPort, o.TunnelDev),
			exprs: join(l4port(unix.IPPROTO_UDP, o.TunnelPort), accept())})
		if fam != nftables.TableFamilyIPv4 {
			// The health probes of the encrypted path: ICMPv6 between the
			// hosts' tunnel addresses, out of the tunnel.
			out = append(out, openRule{tag: openTag + "tunnel-probe:" + o.TunnelDev, exprs: join([]expr.Any{
				&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(o.TunnelDev)},
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
			}, accept())})
		}
	}
	for _, p := range protos {
		if o.DNSPort != 0 {
			out = append(out, openRule{tag: fmt.Sprintf("%sdns-%s:%d", openTag, p.name, o.DNSPort),
				exprs: join(onBridge(expr.MetaKeyIIFNAME), l4port(p.proto, int(o.DNSPort)), accept())})
		}
	}
	return out
}

func openTags(rs []openRule) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.tag)
	}
	return out
}

// iptablesTables are the tables iptables-nft makes; their upper-case
// chains are iptables' and opened through it.
var iptablesTables = []string{"filter", "nat", "mangle", "raw", "security"}

// foreignChains lists the base chains of type filter at input and forward
// in every table but vxnet's and iptables-nft's.
func foreignChains(c *nftables.Conn) ([]*nftables.Chain, error) {
	all, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	var out []*nftables.Chain
	for _, ch := range all {
		if ch.Type != nftables.ChainTypeFilter || !(hookIs(ch, nftables.ChainHookInput) || hookIs(ch, nftables.ChainHookForward)) {
			continue
		}
		switch ch.Table.Family {
		case nftables.TableFamilyINet:
			if ch.Table.Name == FirewallTable {
				continue
			}
		case nftables.TableFamilyIPv4, nftables.TableFamilyIPv6:
			if slices.Contains(iptablesTables, ch.Table.Name) && ch.Name == strings.ToUpper(ch.Name) {
				continue
			}
		default:
			continue
		}
		out = append(out, ch)
	}
	slices.SortFunc(out, func(a, b *nftables.Chain) int { return strings.Compare(chainName(a), chainName(b)) })
	return out, nil
}

func chainName(ch *nftables.Chain) string {
	fam := map[nftables.TableFamily]string{nftables.TableFamilyINet: "inet", nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6"}[ch.Table.Family]
	return fam + " " + ch.Table.Name + " " + ch.Name
}

// nftComment encodes a tag as nft's own rule comment (user data TLV type 0,
// NUL-terminated), so that `nft list ruleset` shows whose rule it is.
func nftComment(tag string) []byte {
	return append([]byte{0, byte(len(tag) + 1)}, append([]byte(tag), 0)...)
}

// ruleComment decodes a rule's comment ("" when it has none).
func ruleComment(ud []byte) string {
	for len(ud) >= 2 {
		typ, n := ud[0], int(ud[1])
		if len(ud) < 2+n {
			return ""
		}
		if typ == 0 {
			return strings.TrimRight(string(ud[2:2+n]), "\x00")
		}
		ud = ud[2+n:]
	}
	return ""
}

// ourRules returns the tags and rules of vxnet's openings in a chain.
func ourRules(c *nftables.Conn, ch *nftables.Chain) ([]string, []*nftables.Rule, error) {
	rules, err := c.GetRules(ch.Table, ch)
	if err != nil {
		return nil, nil, fmt.Errorf("list rules of %s: %w", chainName(ch), err)
	}
	var tags []string
	var ours []*nftables.Rule
	for _, r := range rules {
		if t := ruleComment(r.UserData); strings.HasPrefix(t, openTag) {
			tags, ours = append(tags, t), append(ours, r)
		}
	}
	return tags, ours, nil
}

// observeOpenings reads vxnet's openings: what the rules say when every
// chain holds exactly the rules for that, Incomplete when anything differs
// (a ruleset reloaded, a new table), nil when there are none at all. It
// reads again once its last reading is older than the host firewall's max
// age.
func (d *Dataplane) observeOpenings() (*datapath.Openings, error) {
	if !d.open.stale.Swap(false) && !d.open.seenAt.IsZero() && time.Since(d.open.seenAt) < d.ipt.maxAge {
		return d.open.copySeen(), nil
	}
	seen, err := d.readOpenings()
	if err != nil {
		d.closeReader()
		return nil, err
	}
	d.open.seen, d.open.seenAt = seen, time.Now()
	return d.open.copySeen(), nil
}

func (d *Dataplane) readOpenings() (*datapath.Openings, error) {
	c, err := d.reader()
	if err != nil {
		return nil, err
	}
	chains, err := foreignChains(c)
	if err != nil {
		return nil, err
	}
	// What the rules say: ports from the tags, members from the sets (and
	// from iptables' lines).
	var o datapath.Openings
	found := false
	tags := make([][]string, len(chains))
	var names []string
	vteps := map[netip.Addr]bool{}
	for i, ch := range chains {
		t, ours, err := ourRules(c, ch)
		if err != nil {
			return nil, err
		}
		tags[i] = t
		if len(t) > 0 {
			found = true
			names = append(names, chainName(ch))
		}
		for j, tag := range t {
			f := strings.Split(strings.TrimPrefix(tag, openTag), ":")
			if len(f) < 2 {
				continue
			}
			p, _ := strconv.Atoi(f[1])
			switch f[0] {
			case "vxlan4", "vxlan6":
				o.VXLANPort = p
				if err := readMembers(c, ch, ours[j], vteps); err != nil {
					return nil, err
				}
			case "gossip-tcp":
				o.GossipPort = p
			case "tunnel":
				o.TunnelPort = p
				if len(f) > 2 {
					o.TunnelDev = f[2]
				}
			case "dns-tcp":
				o.DNSPort = uint16(p)
			}
		}
	}
	io := d.ipt.open
	if !d.ipt.missing {
		found = found || io.chain || io.jump
		if io.jump {
			names = append(names, "iptables filter INPUT")
		}
		parseOpenLines(io.lines, &o, vteps)
	}
	read6, err := d.ipt.readOpen6()
	if err != nil {
		return nil, err
	}
	io6 := d.ipt.open6
	if read6 {
		found = found || io6.chain || io6.jump
		if io6.jump {
			names = append(names, "ip6tables filter INPUT")
		}
		parseOpenLines(io6.lines, &o, vteps)
	}
	if !found {
		return nil, nil
	}
	for a := range vteps {
		o.VTEPs = append(o.VTEPs, a)
	}
	slices.SortFunc(o.VTEPs, netip.Addr.Compare)
	// Those openings must be exactly what every chain holds.
	ok := true
	for i, ch := range chains {
		ok = ok && slices.Equal(tags[i], openTags(openRules(o, ch)))
	}
	if !d.ipt.missing {
		ok = ok && io.chain && io.jump && slices.Equal(io.lines, openLines(o))
	}
	if read6 {
		ok = ok && io6.chain && io6.jump && slices.Equal(io6.lines, openLinesFor(o, true))
	}
	if !ok {
		return &datapath.Openings{Incomplete: true, Chains: names}, nil
	}
	o.Chains = names
	return &o, nil
}

// fieldAfter returns the field after name ("" when none).
func fieldAfter(f []string, name string) string {
	if i := slices.Index(f, name); i >= 0 && i+1 < len(f) {
		return f[i+1]
	}
	return ""
}

// readMembers adds the addresses of the anonymous set a VXLAN opening
// looks its sources up in.
func readMembers(c *nftables.Conn, ch *nftables.Chain, r *nftables.Rule, into map[netip.Addr]bool) error {
	for _, e := range r.Exprs {
		l, ok := e.(*expr.Lookup)
		if !ok {
			continue
		}
		set, err := c.GetSetByName(ch.Table, l.SetName)
		if err != nil {
			return nil // reads as incomplete
		}
		elems, err := c.GetSetElements(set)
		if err != nil {
			return fmt.Errorf("members of %s: %w", chainName(ch), err)
		}
		for _, el := range elems {
			if a, ok := netip.AddrFromSlice(el.Key); ok {
				into[a] = true
			}
		}
	}
	return nil
}

// openState is the dataplane's memory of its openings.
type openState struct {
	seen   *datapath.Openings
	seenAt time.Time
	stale  atomic.Bool // set by WatchRuleset
}

// invalidate makes the next Observe read the openings again (from the
// monitor's goroutine: seenAt is atomic).
func (s *openState) invalidate() { s.stale.Store(true) }

func (s *openState) copySeen() *datapath.Openings {
	if s.seen == nil {
		return nil
	}
	o := *s.seen
	return &o
}

// EnsureOpenings writes vxnet's openings where they differ from o: in
// iptables (VXNET-OPEN, replaced at once) and in every foreign chain (its
// tagged rules replaced, in one nftables transaction).
func (d *Dataplane) EnsureOpenings(o datapath.Openings) error {
	o.Chains, o.Incomplete = nil, false
	d.open.seenAt = time.Time{}
	d.ipt.seenAt = time.Time{}
	if err := d.ipt.detect(); err != nil {
		return err
	}
	if !d.ipt.missing {
		var in strings.Builder
		fmt.Fprintf(&in, "*filter\n:%s - [0:0]\n", openChain)
		for _, l := range openLines(o) {
			in.WriteString(l + "\n")
		}
		in.WriteString("COMMIT\n")
		if _, err := d.ipt.run(d.ipt.prefix+"-restore", []byte(in.String()), "-w", "--noflush"); err != nil {
			return fmt.Errorf("install iptables chain %s: %w", openChain, err)
		}
		if err := d.ipt.ensureJump("filter", "INPUT", openJump); err != nil {
			return err
		}
		if err := d.ipt.ensureOpen6(o); err != nil {
			return err
		}
	}
	changed, err := d.rewriteForeign(func(ch *nftables.Chain) []openRule { return openRules(o, ch) })
	if err != nil {
		return err
	}
	d.changed("opened the host's filters", "chains", changed, "vteps", len(o.VTEPs), "gossip", o.GossipPort)
	return nil
}

// rewriteForeign makes vxnet's rules in every foreign chain what want says
// (none: taken out), replacing them where they differ, in one nftables
// transaction; it returns the chains it changed.
func (d *Dataplane) rewriteForeign(want func(*nftables.Chain) []openRule) ([]string, error) {
	r, err := d.reader()
	if err != nil {
		return nil, err
	}
	chains, err := foreignChains(r)
	if err != nil {
		d.closeReader()
		return nil, err
	}
	w, err := d.nft()
	if err != nil {
		return nil, err
	}
	var changed []string
	for _, ch := range chains {
		tags, ours, err := ourRules(r, ch)
		if err != nil {
			d.closeReader()
			return nil, err
		}
		rules := want(ch)
		if slices.Equal(tags, openTags(rules)) {
			continue
		}
		for _, old := range ours {
			if err := w.DelRule(old); err != nil {
				return nil, fmt.Errorf("remove vxnet's rule %q from %s: %w", ruleComment(old.UserData), chainName(ch), err)
			}
		}
		for _, rule := range slices.Backward(rules) { // each goes to the head
			if rule.set != nil {
				if err := w.AddSet(rule.set, rule.elems); err != nil {
					return nil, fmt.Errorf("member set for %s: %w", chainName(ch), err)
				}
				for _, e := range rule.exprs {
					if l, ok := e.(*expr.Lookup); ok {
						l.SetName, l.SetID = rule.set.Name, rule.set.ID
					}
				}
			}
			w.InsertRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: rule.exprs, UserData: nftComment(rule.tag)})
		}
		changed = append(changed, chainName(ch))
	}
	if len(changed) > 0 {
		if err := w.Flush(); err != nil {
			return nil, fmt.Errorf("vxnet's rules in %s: %w", strings.Join(changed, ", "), err)
		}
	}
	return changed, nil
}

// RemoveOpenings takes vxnet's openings out of every chain.
func (d *Dataplane) RemoveOpenings() error {
	d.open.seenAt = time.Time{}
	d.ipt.seenAt = time.Time{}
	if err := d.ipt.detect(); err != nil {
		return err
	}
	if !d.ipt.missing {
		err := d.ipt.removeOpenWith(d.ipt.prefix)
		if d.ipt.tool6 != "" {
			err = errors.Join(err, d.ipt.removeOpenWith(d.ipt.tool6))
		}
		if err != nil {
			return err
		}
	}
	changed, err := d.rewriteForeign(func(*nftables.Chain) []openRule { return nil })
	if err != nil {
		return err
	}
	d.changed("closed the host's filters", "chains", changed)
	return nil
}

// WatchRuleset calls changed whenever a table or chain of the namespace's
// nftables ruleset other than vxnet's own and iptables' is made or deleted
// (a firewall reloaded: `firewall-cmd --reload`, `nft -f`), until ctx ends, so that
// vxnet's openings are back at once instead of at the next resync. The
// next Observe reads the openings afresh.
func (d *Dataplane) WatchRuleset(ctx context.Context, changed func()) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(d.ns)), nftables.AsLasting())
	if err != nil {
		return fmt.Errorf("nftables monitor: %w", err)
	}
	defer c.CloseLasting()
	m := nftables.NewMonitor(nftables.WithMonitorObject(nftables.MonitorObjectTables | nftables.MonitorObjectChains))
	events, err := c.AddMonitor(m)
	if err != nil {
		return fmt.Errorf("nftables monitor: %w", err)
	}
	defer m.Close()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return errors.New("nftables monitor closed")
			}
			if ev.Error != nil || ignored(ev.Data) {
				continue
			}
			d.open.invalidate()
			changed()
		}
	}
}

// ignored tells events no pass is needed for: about vxnet's own table (it
// rebuilds it whole) and iptables-nft's tables (every iptables command
// announces them; the host firewall's own re-reading covers iptables).
func ignored(data any) bool {
	var t *nftables.Table
	switch o := data.(type) {
	case *nftables.Table:
		t = o
	case *nftables.Chain:
		t = o.Table
	default:
		return true
	}
	if t == nil {
		return true
	}
	switch t.Family {
	case nftables.TableFamilyINet:
		return t.Name == FirewallTable
	case nftables.TableFamilyIPv4, nftables.TableFamilyIPv6:
		return slices.Contains(iptablesTables, t.Name)
	}
	return false
}
