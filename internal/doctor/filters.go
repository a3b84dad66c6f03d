package doctor

import (
	"fmt"
	"strings"
)

// baseChain is one input or forward chain of the host's nftables ruleset,
// as `nft -a list ruleset` prints it.
type baseChain struct {
	table, name, hook string
	// blocker is what drops there: "policy drop" or the first rule that
	// drops or rejects ("" when neither).
	blocker string
	// opened: vxnet's openings are in it.
	opened bool
}

// parseRuleset reads the input and forward base chains of every table but
// vxnet's own and iptables-nft's (iptables-save shows those).
func parseRuleset(text string) []baseChain {
	var out []baseChain
	var table string
	warned, skip := false, false
	var cur *baseChain
	done := func() {
		if cur != nil && cur.hook != "" {
			out = append(out, *cur)
		}
		cur = nil
	}
	for _, raw := range strings.Split(text, "\n") {
		l := strings.TrimSpace(raw)
		if i := strings.Index(l, " # handle "); i >= 0 {
			l = l[:i]
		}
		f := strings.Fields(l)
		switch {
		case strings.HasPrefix(l, "# Warning: table ") && strings.Contains(l, "iptables"):
			warned = true // about the table that follows
		case len(f) >= 3 && f[0] == "table":
			done()
			table = f[1] + " " + f[2]
			skip, warned = warned || table == "inet vxnet", false
		case len(f) >= 2 && f[0] == "chain":
			done()
			if !skip && !iptablesChain(table, f[1]) {
				cur = &baseChain{table: table, name: f[1]}
			}
		case cur == nil:
		case strings.HasPrefix(l, "type "):
			if len(f) < 4 || f[1] != "filter" || f[2] != "hook" || (f[3] != "input" && f[3] != "forward") {
				cur = nil
				continue
			}
			cur.hook = f[3]
			if strings.Contains(l, "policy drop") {
				cur.blocker = "policy drop"
			}
		case strings.Contains(l, `comment "vxnet-open:`):
			cur.opened = true
		case l == "}":
			done()
		case cur.blocker == "" && (hasWord(l, "drop") || hasWord(l, "reject")) && !strings.HasPrefix(l, "ct state invalid"):
			cur.blocker = l
		}
	}
	done()
	return out
}

// iptablesChain tells iptables-nft's chains (nft prints its warning about
// them on stderr): upper-case chains of its tables, IPv4 or IPv6.
func iptablesChain(table, chain string) bool {
	fam, name, _ := strings.Cut(table, " ")
	switch name {
	case "filter", "nat", "mangle", "raw", "security":
		return (fam == "ip" || fam == "ip6") && chain == strings.ToUpper(chain)
	}
	return false
}

func hasWord(l, w string) bool {
	for _, f := range strings.Fields(l) {
		if f == w {
			return true
		}
	}
	return false
}

// hostFilters: every chain of the host's own filters that drops must hold
// vxnet's openings, or VXLAN from members, gossip, names and forwarding
// die there; the finding names the rule that drops.
func hostFilters(f Facts) Finding {
	var blocked, fixes, opened []string
	for _, c := range parseRuleset(f.Nftables) {
		where := fmt.Sprintf("table %s chain %s", c.table, c.name)
		switch {
		case c.blocker == "":
		case c.opened:
			opened = append(opened, where)
		default:
			what := "VXLAN from the members, gossip and containers' name queries"
			if c.hook == "forward" {
				what = "containers' traffic out of vxnet's bridges (egress, published ports)"
			}
			blocked = append(blocked, fmt.Sprintf("%s (hook %s) drops %s: %q, and vxnet's openings are not there", where, c.hook, what, c.blocker))
			fixes = append(fixes, fmt.Sprintf("nft insert rule %s %s udp dport %d ip saddr { MEMBERS } accept (and gossip, TCP and UDP)", c.table, c.name, f.VXLANPort))
		}
	}
	for _, t := range []struct{ tool, save string }{{"iptables", f.IPTables}, {"ip6tables", f.IP6Tables}} {
		if t.save != "" && strings.Contains(t.save, ":INPUT DROP") &&
			(!strings.Contains(t.save, "-A INPUT -j VXNET-OPEN") || !strings.Contains(t.save, "-A VXNET-OPEN ")) {
			blocked = append(blocked, t.tool+" filter INPUT (policy DROP) drops VXLAN from the members and gossip, and vxnet's VXNET-OPEN is not there")
			fixes = append(fixes, fmt.Sprintf("%s -I INPUT -p udp --dport %d -s MEMBER -j ACCEPT (and gossip)", t.tool, f.VXLANPort))
		}
	}
	if len(blocked) > 0 {
		return Finding{"host-filters", Fail, strings.Join(blocked, "; "),
			"let the agent open them (--manage-host-firewall, the default; it puts them back within a resync), or add them yourself: " + strings.Join(fixes, "; ")}
	}
	if len(opened) > 0 {
		return Finding{"host-filters", OK, "vxnet's openings are in every chain of the host's own filters that drops: " + strings.Join(opened, ", "), ""}
	}
	return Finding{"host-filters", OK, "no chain of the host's own nftables filters drops by default", ""}
}
