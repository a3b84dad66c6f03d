package linux

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/datapath"
)

// IsolationTable is the nftables table (family inet) vxnet owns on a host.
const IsolationTable = "vxnet"

const (
	isolationChain = "forward"
	rulePrefix     = "vxnet-isolate:"
)

func ifname(name string) []byte { return append([]byte(name), 0) }

// isolationRule drops traffic routed from one network's bridge to the bridge
// of any other network: networks are isolated even on a host that forwards
// IP (as every Docker host does). Traffic inside a network stays on its
// bridge; with br_netfilter it passes this hook with the same bridge as
// input and output, which the rule lets through.
func isolationRule(t *nftables.Table, c *nftables.Chain, vni uint32) *nftables.Rule {
	br := datapath.BridgeName(vni)
	return &nftables.Rule{Table: t, Chain: c, UserData: []byte(rulePrefix + strconv.FormatUint(uint64(vni), 10)),
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

func (d *Dataplane) nft() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(d.ns)))
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// observeIsolation returns the VNIs the isolation rules cover, or nil when
// vxnet's table is absent.
func (d *Dataplane) observeIsolation() ([]uint32, error) {
	c, err := d.nft()
	if err != nil {
		return nil, err
	}
	t, err := c.ListTableOfFamily(IsolationTable, nftables.TableFamilyINet)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up nftables table inet %s: %w", IsolationTable, err)
	}
	ch, err := c.ListChain(t, isolationChain)
	if err != nil {
		return []uint32{}, nil // a table without our chain: rebuild
	}
	rules, err := c.GetRules(t, ch)
	if err != nil {
		return nil, fmt.Errorf("list rules of %s/%s: %w", IsolationTable, isolationChain, err)
	}
	vnis := []uint32{}
	for _, r := range rules {
		v, ok := strings.CutPrefix(string(r.UserData), rulePrefix)
		n, err := strconv.ParseUint(v, 10, 32)
		if !ok || err != nil || len(r.Exprs) != 7 {
			return []uint32{}, nil // not a rule we wrote: rebuild
		}
		vnis = append(vnis, uint32(n))
	}
	sort.Slice(vnis, func(i, j int) bool { return vnis[i] < vnis[j] })
	return vnis, nil
}

// EnsureIsolation rebuilds the isolation table for vnis in one transaction.
func (d *Dataplane) EnsureIsolation(vnis []uint32) error {
	c, err := d.nft()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: IsolationTable, Family: nftables.TableFamilyINet}
	// Add-then-delete removes whatever was there; then build it anew.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: isolationChain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &policy})
	for _, v := range vnis {
		c.AddRule(isolationRule(t, ch, v))
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install nftables table inet %s: %w", IsolationTable, err)
	}
	d.changed("installed isolation rules", "table", IsolationTable, "networks", len(vnis))
	return nil
}

// RemoveIsolation deletes the isolation table; absent is no error.
func (d *Dataplane) RemoveIsolation() error {
	c, err := d.nft()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: IsolationTable, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove nftables table inet %s: %w", IsolationTable, err)
	}
	d.changed("removed isolation rules", "table", IsolationTable)
	return nil
}
