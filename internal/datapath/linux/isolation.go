package linux

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/datapath"
)

// FirewallTable is the nftables table (family inet) vxnet owns on a host.
const FirewallTable = "vxnet"

const (
	forwardChain   = "forward"
	inputChain     = "input"
	vtepSet        = "vteps"
	vtepSet6       = "vteps6"
	vniSet         = "vnis"
	isolatePrefix  = "vxnet-isolate:"
	internalPrefix = "vxnet-internal:"
	ingressPrefix  = "vxnet-vxlan:"
	ingress6Prefix = "vxnet-vxlan6:"
	notrackIn      = "notrack-in"
	notrackOut     = "notrack-out"
	notrackPrefix  = "vxnet-notrack:"
	dnatTag        = "vxnet-dnat"
	clearPrefix    = "vxnet-clear:"
	clear6Prefix   = "vxnet-clear6:"
	tunnelOut      = "vxnet-tunnel-out:"
	tunnelIn       = "vxnet-tunnel-in:"
	tunnelOut6     = "vxnet-tunnel6-out:"
	tunnelIn6      = "vxnet-tunnel6-in:"
	tunnelDrop     = "vxnet-tunnel-drop:"
	encryptedSet   = "encrypted"
)

func ifname(name string) []byte { return append([]byte(name), 0) }

// isolationRule drops traffic routed from one network's bridge to the bridge
// of any other network: networks are isolated even on a host that forwards
// IP (as every Docker host does). Traffic inside a network stays on its
// bridge; with br_netfilter it passes this hook with the same bridge as
// input and output, which the rule lets through.
func isolationRule(t *nftables.Table, c *nftables.Chain, vni uint32) *nftables.Rule {
	br := datapath.BridgeName(vni)
	return &nftables.Rule{Table: t, Chain: c, UserData: []byte(isolatePrefix + strconv.FormatUint(uint64(vni), 10)),
		Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(br)},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(br)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte("vxbr")}, // prefix: any vxnet bridge
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}}
}

// internalRules drop anything routed out of or into the bridge of an
// internal network, whatever the host's other rules say.
func internalRules(t *nftables.Table, c *nftables.Chain, vni uint32) []*nftables.Rule {
	br := ifname(datapath.BridgeName(vni))
	ud := []byte(internalPrefix + strconv.FormatUint(uint64(vni), 10))
	var out []*nftables.Rule
	for _, dir := range [][2]expr.MetaKey{{expr.MetaKeyIIFNAME, expr.MetaKeyOIFNAME}, {expr.MetaKeyOIFNAME, expr.MetaKeyIIFNAME}} {
		out = append(out, &nftables.Rule{Table: t, Chain: c, UserData: ud, Exprs: []expr.Any{
			&expr.Meta{Key: dir[0], Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: br},
			&expr.Meta{Key: dir[1], Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: br},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
	}
	return out
}

// dnatRule accepts connections to published ports (destination-NATed by
// vxnet's host rules) before the isolation rules: a container of another
// network reaches a published port at the host's address, as with Docker.
func dnatRule(t *nftables.Table, c *nftables.Chain) *nftables.Rule {
	const ipsDstNAT = 1 << 5 // IPS_DST_NAT
	mask := make([]byte, 4)
	binary.NativeEndian.PutUint32(mask, ipsDstNAT)
	return &nftables.Rule{Table: t, Chain: c, UserData: []byte(dnatTag), Exprs: []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}}
}

// ingressRule drops VXLAN of vxnet's networks (a VNI in vnis) from any
// address that is not a member's VTEP, for one IP family (vteps holds that
// family's members): VXLAN has no authentication, so this is what stops a
// stranger on the underlay from injecting frames into a network. VXLAN of
// other VNIs on the port (a hand-made tunnel, Docker's or Calico's
// overlay) is left to whoever owns it. Both families get a rule whatever
// the members' addresses: a host reachable over IPv6 is not left open
// because its members happen to use IPv4.
func ingressRule(t *nftables.Table, c *nftables.Chain, vnis, vteps *nftables.Set, port int, v6 bool) *nftables.Rule {
	tag, saddr, alen := ingressPrefix, uint32(12), uint32(4)
	if v6 {
		tag, saddr, alen = ingress6Prefix, 8, 16
	}
	return &nftables.Rule{Table: t, Chain: c, UserData: []byte(tag + strconv.Itoa(port)),
		Exprs: join(udpTo(v6, port), []expr.Any{
			// The VXLAN header follows the 8 bytes of UDP: its VNI is the
			// 3 bytes at 4, then a reserved byte (masked off).
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 8 + 4, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{0xff, 0xff, 0xff, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Lookup{SourceRegister: 1, SetName: vnis.Name, SetID: vnis.ID},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: saddr, Len: alen},
			&expr.Lookup{SourceRegister: 1, SetName: vteps.Name, SetID: vteps.ID, Invert: true},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		})}
}

// clearRule drops VXLAN of the encrypted networks (a VNI in encrypted),
// for one IP family, whoever sends it: those networks are routed through
// WireGuard and never carried in VXLAN, so such a frame is forged or
// misrouted, even from a member.
func clearRule(t *nftables.Table, c *nftables.Chain, encrypted *nftables.Set, port int, v6 bool) *nftables.Rule {
	tag := clearPrefix
	if v6 {
		tag = clear6Prefix
	}
	return &nftables.Rule{Table: t, Chain: c, UserData: []byte(tag + strconv.Itoa(port)),
		Exprs: join(udpTo(v6, port), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 8 + 4, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{0xff, 0xff, 0xff, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Lookup{SourceRegister: 1, SetName: encrypted.Name, SetID: encrypted.ID},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		})}
}

// tunnelRules let an encrypted network's own addresses (both ends in its
// subnet) cross between its bridge and the tunnel, both ways; what follows
// them drops anything else routed into or out of the tunnel (another
// network's containers, the host's forwarding of anything else).
func tunnelRules(t *nftables.Table, c *nftables.Chain, n datapath.EncryptedNet, dev string) []*nftables.Rule {
	br := datapath.BridgeName(n.VNI)
	id, id6 := tunnelID(n.VNI, n.Subnet, dev), tunnelID(n.VNI, n.Subnet6, dev)
	var within, within6 []expr.Any // nil: the network has no such family
	if n.Subnet.IsValid() {
		within = join([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		}, inPrefix(12, n.Subnet), inPrefix(16, n.Subnet))
	}
	if n.Subnet6.IsValid() {
		within6 = join([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
		}, inPrefix(8, n.Subnet6), inPrefix(24, n.Subnet6))
	}
	var out []*nftables.Rule
	for _, dir := range []struct {
		tag, tag6 string
		from, to  string
	}{{tunnelOut, tunnelOut6, br, dev}, {tunnelIn, tunnelIn6, dev, br}} {
		ifaces := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(dir.from)},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(dir.to)},
		}
		if within != nil {
			out = append(out, &nftables.Rule{Table: t, Chain: c, UserData: []byte(dir.tag + id), Exprs: join(ifaces, within, accept())})
		}
		if within6 != nil {
			out = append(out, &nftables.Rule{Table: t, Chain: c, UserData: []byte(dir.tag6 + id6), Exprs: join(ifaces, within6, accept())})
		}
	}
	return out
}

// tunnelDrops drop what the tunnel rules did not accept.
func tunnelDrops(t *nftables.Table, c *nftables.Chain, dev string) []*nftables.Rule {
	var out []*nftables.Rule
	for _, key := range []expr.MetaKey{expr.MetaKeyOIFNAME, expr.MetaKeyIIFNAME} {
		out = append(out, &nftables.Rule{Table: t, Chain: c, UserData: []byte(tunnelDrop + dev), Exprs: []expr.Any{
			&expr.Meta{Key: key, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(dev)},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
	}
	return out
}

// inPrefix matches an address at offset of the network header (IPv4: 12
// source, 16 destination; IPv6: 8 and 24) within p.
func inPrefix(offset uint32, p netip.Prefix) []expr.Any {
	bits := p.Addr().BitLen()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(bits / 8)},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(bits / 8), Mask: net.CIDRMask(p.Bits(), bits), Xor: make([]byte, bits/8)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

// udpTo matches UDP of one IP family to port.
func udpTo(v6 bool, port int) []expr.Any {
	proto := byte(unix.NFPROTO_IPV4)
	if v6 {
		proto = unix.NFPROTO_IPV6
	}
	return join([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}, l4port(unix.IPPROTO_UDP, port))
}

// notrackRule takes VXLAN on port to (out) or from (in) a member's VTEP,
// one IP family, out of connection tracking: the kernel's VXLAN sockets
// need no state, and the outer UDP of every frame would otherwise cost a
// conntrack lookup and an entry per inner flow (the source port is a hash
// of the inner flow).
func notrackRule(t *nftables.Table, c *nftables.Chain, vteps *nftables.Set, port int, v6, out bool) *nftables.Rule {
	addr, alen, fam := uint32(12), uint32(4), "4"
	if v6 {
		addr, alen, fam = 8, 16, "6"
	}
	dir := "in"
	if out {
		addr += alen // the destination follows the source in both headers
		dir = "out"
	}
	return &nftables.Rule{Table: t, Chain: c, UserData: []byte(notrackPrefix + dir + fam + ":" + strconv.Itoa(port)),
		Exprs: join(udpTo(v6, port), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: addr, Len: alen},
			&expr.Lookup{SourceRegister: 1, SetName: vteps.Name, SetID: vteps.ID},
			&expr.Counter{},
			&expr.Notrack{},
		})}
}

// notrackChains are the raw-priority chains of the notrack rules.
var notrackChains = []struct {
	name string
	hook *nftables.ChainHook
	out  bool
}{{notrackIn, nftables.ChainHookPrerouting, false}, {notrackOut, nftables.ChainHookOutput, true}}

// vniKey is a VNI as the VXLAN header holds it, with the reserved byte
// after it zero (the ingress rule's set key).
func vniKey(vni uint32) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, vni<<8)
	return b
}

func (d *Dataplane) nft() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(d.ns)))
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// reader returns the lasting nftables connection that every pass reads
// through: a connection per request costs a socket in the namespace each,
// which was a third of a pass.
func (d *Dataplane) reader() (*nftables.Conn, error) {
	if d.nftRead != nil {
		return d.nftRead, nil
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(d.ns)), nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	d.nftRead = c
	return c, nil
}

func (d *Dataplane) closeReader() {
	if d.nftRead != nil {
		_ = d.nftRead.CloseLasting()
		d.nftRead = nil
	}
}

// observeFirewall reads vxnet's table; nil when absent. A table that holds
// anything vxnet did not write reads as a firewall that matches nothing
// wanted, so the next pass rebuilds it.
func (d *Dataplane) observeFirewall() (*datapath.Firewall, error) {
	c, err := d.reader()
	if err != nil {
		return nil, err
	}
	f, err := readFirewall(c)
	if err != nil {
		d.closeReader() // start afresh on the next pass
	}
	return f, err
}

func readFirewall(c *nftables.Conn) (*datapath.Firewall, error) {
	t, err := c.ListTableOfFamily(FirewallTable, nftables.TableFamilyINet)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up nftables table inet %s: %w", FirewallTable, err)
	}
	broken := &datapath.Firewall{Port: -1}
	f := &datapath.Firewall{Isolate: []uint32{}, VTEPs: []netip.Addr{}}
	internal := map[uint32]int{} // rules seen per internal network (two each)
	dnat := 0
	port4, port6 := -1, -1
	tunnelRules := map[string]int{} // tag -> rules (one each)
	for _, name := range []string{forwardChain, inputChain} {
		ch, err := c.ListChain(t, name)
		if err != nil {
			return broken, nil
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of %s/%s: %w", FirewallTable, name, err)
		}
		for _, r := range rules {
			ud := string(r.UserData)
			if v, ok := strings.CutPrefix(ud, isolatePrefix); ok && name == forwardChain {
				n, err := strconv.ParseUint(v, 10, 32)
				if err != nil {
					return broken, nil
				}
				f.Isolate = append(f.Isolate, uint32(n))
			} else if v, ok := strings.CutPrefix(ud, internalPrefix); ok && name == forwardChain {
				n, err := strconv.ParseUint(v, 10, 32)
				if err != nil {
					return broken, nil
				}
				internal[uint32(n)]++
			} else if ud == dnatTag && name == forwardChain {
				dnat++
			} else if v, ok := strings.CutPrefix(ud, ingressPrefix); ok && name == inputChain && port4 < 0 {
				if port4, err = strconv.Atoi(v); err != nil {
					return broken, nil
				}
			} else if v, ok := strings.CutPrefix(ud, ingress6Prefix); ok && name == inputChain && port6 < 0 {
				if port6, err = strconv.Atoi(v); err != nil {
					return broken, nil
				}
			} else if (strings.HasPrefix(ud, clearPrefix) || strings.HasPrefix(ud, clear6Prefix)) && name == inputChain {
				tunnelRules[ud]++
			} else if (strings.HasPrefix(ud, tunnelOut) || strings.HasPrefix(ud, tunnelIn) || strings.HasPrefix(ud, tunnelOut6) ||
				strings.HasPrefix(ud, tunnelIn6) || strings.HasPrefix(ud, tunnelDrop)) && name == forwardChain {
				tunnelRules[ud]++
				if dev, ok := strings.CutPrefix(ud, tunnelDrop); ok {
					f.TunnelDev = dev
				}
			} else {
				return broken, nil
			}
		}
	}
	// Both families' rules, on one port (a table from a release that
	// guarded IPv4 alone reads as broken, and is rebuilt).
	if port4 < 0 || port4 != port6 {
		return broken, nil
	}
	f.Port = port4
	// The VNIs the ingress rules guard are the networks' (Isolate).
	guarded, err := readVNIs(c, t, vniSet)
	if err != nil || guarded == nil {
		return broken, err
	}
	isolated := slices.Clone(f.Isolate)
	slices.Sort(isolated)
	if !slices.Equal(guarded, isolated) {
		return broken, nil
	}
	for _, name := range []string{vtepSet, vtepSet6} {
		set, err := c.GetSetByName(t, name)
		if err != nil {
			return broken, nil
		}
		elems, err := c.GetSetElements(set)
		if err != nil {
			return nil, fmt.Errorf("list set %s: %w", name, err)
		}
		for _, e := range elems {
			if a, ok := netip.AddrFromSlice(e.Key); ok {
				f.VTEPs = append(f.VTEPs, a.Unmap())
			}
		}
	}
	if dnat != 1 {
		return broken, nil
	}
	if len(tunnelRules) > 0 {
		if f.Encrypted, err = readEncrypted(c, t, tunnelRules, f.Port, f.TunnelDev); err != nil || f.Encrypted == nil {
			return broken, err
		}
	}
	nt := 0
	for _, ntc := range notrackChains {
		ch, err := c.ListChain(t, ntc.name)
		if err != nil {
			continue // absent: VXLAN is tracked
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of %s/%s: %w", FirewallTable, ntc.name, err)
		}
		for _, r := range rules {
			if !strings.HasPrefix(string(r.UserData), notrackPrefix) || !strings.HasSuffix(string(r.UserData), ":"+strconv.Itoa(f.Port)) {
				return broken, nil
			}
			nt++
		}
	}
	switch nt {
	case 0:
	case 2 * len(notrackChains):
		f.Notrack = true
	default:
		return broken, nil
	}
	for vni, n := range internal {
		if n != 2 {
			return broken, nil
		}
		f.Internal = append(f.Internal, vni)
	}
	slices.Sort(f.Isolate)
	slices.Sort(f.Internal)
	slices.SortFunc(f.VTEPs, netip.Addr.Compare)
	return f, nil
}

// readEncrypted reads the encrypted networks back from the rules seen (by
// tag, with their counts): nil, no error, when they are not exactly what
// EnsureFirewall writes for them.
func readEncrypted(c *nftables.Conn, t *nftables.Table, seen map[string]int, port int, dev string) ([]datapath.EncryptedNet, error) {
	vnis, err := readVNIs(c, t, encryptedSet)
	if err != nil || len(vnis) == 0 {
		return nil, err
	}
	var out []datapath.EncryptedNet
	for _, prefix := range []string{tunnelOut, tunnelOut6} { // IPv4, then IPv6 (beside it, or alone)
		for tag, n := range seen {
			v, ok := strings.CutPrefix(tag, prefix)
			if !ok || n != 1 {
				continue
			}
			vni, sub, ok := parseTunnelID(v, dev)
			i := slices.IndexFunc(out, func(e datapath.EncryptedNet) bool { return e.VNI == vni })
			switch {
			case !ok || (i >= 0 && (prefix == tunnelOut || out[i].Subnet6.IsValid())):
				return nil, nil
			case prefix == tunnelOut:
				out = append(out, datapath.EncryptedNet{VNI: vni, Subnet: sub})
			case i < 0:
				out = append(out, datapath.EncryptedNet{VNI: vni, Subnet6: sub})
			default:
				out[i].Subnet6 = sub
			}
		}
	}
	slices.SortFunc(out, func(a, b datapath.EncryptedNet) int { return cmp.Compare(a.VNI, b.VNI) })
	want := map[string]int{tunnelDrop + dev: 2}
	want[clearPrefix+strconv.Itoa(port)], want[clear6Prefix+strconv.Itoa(port)] = 1, 1
	var got []uint32
	for _, n := range out {
		if n.Subnet.IsValid() {
			tid := tunnelID(n.VNI, n.Subnet, dev)
			want[tunnelOut+tid], want[tunnelIn+tid] = 1, 1
		}
		if n.Subnet6.IsValid() {
			tid6 := tunnelID(n.VNI, n.Subnet6, dev)
			want[tunnelOut6+tid6], want[tunnelIn6+tid6] = 1, 1
		}
		got = append(got, n.VNI)
	}
	if !maps.Equal(want, seen) || !slices.Equal(got, vnis) {
		return nil, nil
	}
	return out, nil
}

// tunnelID names an encrypted network's tunnel rules of one family
// (IPv6 prefixes with '-' for ':', the field separator).
func tunnelID(vni uint32, sub netip.Prefix, dev string) string {
	return fmt.Sprintf("%d:%s:%s", vni, enc6(sub.String()), dev)
}

// parseTunnelID reads a tunnelID of device dev back.
func parseTunnelID(v, dev string) (uint32, netip.Prefix, bool) {
	f := strings.Split(v, ":")
	if len(f) != 3 || f[2] != dev {
		return 0, netip.Prefix{}, false
	}
	vni, err1 := strconv.ParseUint(f[0], 10, 32)
	sub, err2 := netip.ParsePrefix(dec6(f[1]))
	return uint32(vni), sub, err1 == nil && err2 == nil
}

// readVNIs reads a set of VNIs, sorted: nil (no error) when the set is
// absent, empty when it is empty.
func readVNIs(c *nftables.Conn, t *nftables.Table, name string) ([]uint32, error) {
	set, err := c.GetSetByName(t, name)
	if err != nil {
		return nil, nil
	}
	elems, err := c.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("list set %s: %w", name, err)
	}
	out := []uint32{}
	for _, e := range elems {
		if len(e.Key) == 4 {
			out = append(out, binary.BigEndian.Uint32(e.Key)>>8)
		}
	}
	slices.Sort(out)
	return out, nil
}

// clearTable opens a write connection and queues the removal of vxnet's
// table, whatever it holds (add-then-delete: no error when absent); the
// caller adds to the transaction and flushes it.
func (d *Dataplane) clearTable() (*nftables.Conn, *nftables.Table, error) {
	c, err := d.nft()
	if err != nil {
		return nil, nil, err
	}
	t := &nftables.Table{Name: FirewallTable, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	return c, t, nil
}

// EnsureFirewall rebuilds vxnet's table in one transaction: there is no
// moment without it once it exists.
func (d *Dataplane) EnsureFirewall(f datapath.Firewall) error {
	c, t, err := d.clearTable()
	if err != nil {
		return err
	}
	c.AddTable(t) // then build it anew, in the same transaction
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{Name: forwardChain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	for _, n := range f.Encrypted {
		for _, r := range tunnelRules(t, fwd, n, f.TunnelDev) {
			c.AddRule(r)
		}
	}
	if len(f.Encrypted) > 0 {
		for _, r := range tunnelDrops(t, fwd, f.TunnelDev) {
			c.AddRule(r)
		}
	}
	c.AddRule(dnatRule(t, fwd))
	for _, v := range f.Internal {
		for _, r := range internalRules(t, fwd, v) {
			c.AddRule(r)
		}
	}
	for _, v := range f.Isolate {
		c.AddRule(isolationRule(t, fwd, v))
	}
	in := c.AddChain(&nftables.Chain{Name: inputChain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	set := &nftables.Set{Table: t, Name: vtepSet, KeyType: nftables.TypeIPAddr}
	set6 := &nftables.Set{Table: t, Name: vtepSet6, KeyType: nftables.TypeIP6Addr}
	var elems, elems6 []nftables.SetElement
	for _, a := range f.VTEPs {
		if a.Is4() || a.Is4In6() {
			elems = append(elems, nftables.SetElement{Key: a.Unmap().AsSlice()})
		} else {
			elems6 = append(elems6, nftables.SetElement{Key: a.AsSlice()})
		}
	}
	if err := c.AddSet(set, elems); err != nil {
		return fmt.Errorf("nftables set %s: %w", vtepSet, err)
	}
	if err := c.AddSet(set6, elems6); err != nil {
		return fmt.Errorf("nftables set %s: %w", vtepSet6, err)
	}
	vnis := &nftables.Set{Table: t, Name: vniSet, KeyType: nftables.TypeInteger}
	var velems []nftables.SetElement
	for _, v := range f.Isolate {
		velems = append(velems, nftables.SetElement{Key: vniKey(v)})
	}
	if err := c.AddSet(vnis, velems); err != nil {
		return fmt.Errorf("nftables set %s: %w", vniSet, err)
	}
	if len(f.Encrypted) > 0 {
		enc := &nftables.Set{Table: t, Name: encryptedSet, KeyType: nftables.TypeInteger}
		var eelems []nftables.SetElement
		for _, n := range f.Encrypted {
			eelems = append(eelems, nftables.SetElement{Key: vniKey(n.VNI)})
		}
		if err := c.AddSet(enc, eelems); err != nil {
			return fmt.Errorf("nftables set %s: %w", encryptedSet, err)
		}
		c.AddRule(clearRule(t, in, enc, f.Port, false))
		c.AddRule(clearRule(t, in, enc, f.Port, true))
	}
	c.AddRule(ingressRule(t, in, vnis, set, f.Port, false))
	c.AddRule(ingressRule(t, in, vnis, set6, f.Port, true))
	if f.Notrack {
		for _, ntc := range notrackChains {
			ch := c.AddChain(&nftables.Chain{Name: ntc.name, Table: t, Type: nftables.ChainTypeFilter,
				Hooknum: ntc.hook, Priority: nftables.ChainPriorityRaw, Policy: &accept})
			c.AddRule(notrackRule(t, ch, set, f.Port, false, ntc.out))
			c.AddRule(notrackRule(t, ch, set6, f.Port, true, ntc.out))
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install nftables table inet %s: %w", FirewallTable, err)
	}
	d.changed("installed firewall", "table", FirewallTable, "networks", len(f.Isolate), "vteps", len(f.VTEPs), "notrack", f.Notrack)
	return nil
}

// RemoveFirewall deletes vxnet's table; absent is no error.
func (d *Dataplane) RemoveFirewall() error {
	c, _, err := d.clearTable()
	if err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove nftables table inet %s: %w", FirewallTable, err)
	}
	d.changed("removed firewall", "table", FirewallTable)
	return nil
}
