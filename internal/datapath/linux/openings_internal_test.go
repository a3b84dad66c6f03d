package linux

import (
	"testing"

	"github.com/google/nftables"
)

// vxnet's own table (rebuilt whole on every change) and iptables-nft's
// (announced by every iptables command) are no reason for a pass; anyone
// else's table or chain is.
func TestIgnoredObjects(t *testing.T) {
	own := &nftables.Table{Name: FirewallTable, Family: nftables.TableFamilyINet}
	for _, tc := range []struct {
		name string
		data any
		want bool
	}{
		{"vxnet's table", own, true},
		{"a chain of vxnet's table", &nftables.Chain{Name: "input", Table: own}, true},
		{"the owner's table", &nftables.Table{Name: "filter", Family: nftables.TableFamilyINet}, false},
		{"a table named vxnet in another family", &nftables.Table{Name: FirewallTable, Family: nftables.TableFamilyIPv4}, false},
		{"firewalld's chain", &nftables.Chain{Name: "filter_INPUT", Table: &nftables.Table{Name: "firewalld", Family: nftables.TableFamilyINet}}, false},
		{"iptables-nft's filter", &nftables.Chain{Name: "FORWARD", Table: &nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv4}}, true},
		{"iptables-nft's ip6 nat", &nftables.Table{Name: "nat", Family: nftables.TableFamilyIPv6}, true},
		{"a native ip table of another name", &nftables.Table{Name: "mine", Family: nftables.TableFamilyIPv4}, false},
		{"a rule", &nftables.Rule{}, true},
	} {
		if got := ignored(tc.data); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
