package doctor

import (
	"strings"
	"testing"
)

// What `nft -a list ruleset` prints on hosts vxnet runs on.
const (
	nativeDrop = `table inet filter { # handle 1
	chain input { # handle 1
		type filter hook input priority filter; policy drop;
		ct state established,related accept # handle 4
		ct state invalid drop # handle 5
		iifname "lo" accept # handle 6
	}

	chain forward { # handle 2
		type filter hook forward priority filter; policy drop;
	}

	chain output { # handle 3
		type filter hook output priority filter; policy accept;
	}
}
`
	nativeOpened = `table inet filter { # handle 1
	chain input { # handle 1
		type filter hook input priority filter; policy drop;
		udp dport 4789 ip saddr { 198.18.0.2 } counter packets 3 bytes 300 accept comment "vxnet-open:vxlan4:4789:1a2b" # handle 12
		tcp dport 7947 counter packets 0 bytes 0 accept comment "vxnet-open:gossip-tcp:7947" # handle 13
		ct state established,related accept # handle 4
	}

	chain forward { # handle 2
		type filter hook forward priority filter; policy drop;
		iifname "vxbr*" counter packets 0 bytes 0 accept comment "vxnet-open:from-bridges" # handle 14
	}
}
`
	// firewalld's shape: policy accept, a final reject.
	firewalld = `table inet firewalld { # handle 7
	chain filter_INPUT { # handle 20
		type filter hook input priority filter + 10; policy accept;
		ct state { established, related } accept # handle 31
		ct status dnat accept # handle 32
		iifname "lo" accept # handle 33
		ct state invalid drop # handle 34
		jump filter_INPUT_ZONES # handle 36
		reject with icmpx admin-prohibited # handle 37
	}
	chain filter_INPUT_ZONES { # handle 21
		goto filter_IN_public # handle 90
	}
}
`
	// iptables-nft's own tables (with nft's warning on stdout, or not), and
	// vxnet's: not this check's.
	others = `# Warning: table ip filter is managed by iptables-nft, do not touch!
table ip filter { # handle 9
	chain INPUT { # handle 1
		type filter hook input priority filter; policy drop;
		counter packets 0 bytes 0 jump VXNET-OPEN # handle 3
	}
}
table ip6 filter { # handle 11
	chain INPUT { # handle 1
		type filter hook input priority filter; policy drop;
		counter packets 0 bytes 0 jump VXNET-OPEN # handle 3
	}
}
table inet vxnet { # handle 10
	chain input { # handle 2
		type filter hook input priority filter; policy accept;
		meta l4proto udp udp dport 4789 counter packets 0 bytes 0 drop # handle 5
	}
}
`
)

func TestHostFilters(t *testing.T) {
	for _, tc := range []struct {
		name           string
		nft, ipt, ipt6 string
		level          Level
		want           []string
	}{
		{"native drop, not opened", nativeDrop, "", "", Fail, []string{`table inet filter chain input (hook input) drops VXLAN`, `"policy drop"`, `table inet filter chain forward (hook forward)`, "nft insert rule inet filter input udp dport 4789"}},
		{"native drop, opened", nativeOpened, "", "", OK, []string{"table inet filter chain input, table inet filter chain forward"}},
		{"firewalld, not opened", firewalld, "", "", Fail, []string{`table inet firewalld chain filter_INPUT (hook input)`, `"reject with icmpx admin-prohibited"`}},
		{"iptables and vxnet's own tables are not looked at", others, "", "", OK, []string{"no chain"}},
		{"ufw-like INPUT DROP without VXNET-OPEN", "", ":INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n", "", Fail, []string{"iptables filter INPUT (policy DROP)"}},
		{"ufw-like INPUT DROP with VXNET-OPEN", "", ":INPUT DROP [0:0]\n-A INPUT -j VXNET-OPEN\n-A VXNET-OPEN -p tcp -m tcp --dport 7947 -j ACCEPT\n", "", OK, nil},
		{"ufw-like INPUT DROP with VXNET-OPEN flushed", "", ":INPUT DROP [0:0]\n-A INPUT -j VXNET-OPEN\n", "", Fail, []string{"iptables filter INPUT (policy DROP)"}},
		{"ufw-like ip6tables INPUT DROP without VXNET-OPEN (an IPv6 underlay)", "", ":INPUT DROP [0:0]\n-A INPUT -j VXNET-OPEN\n-A VXNET-OPEN -p tcp -m tcp --dport 7947 -j ACCEPT\n", ":INPUT DROP [0:0]\n",
			Fail, []string{"ip6tables filter INPUT (policy DROP)", "ip6tables -I INPUT -p udp --dport 4789"}},
		{"ufw-like, both opened", "", ":INPUT DROP [0:0]\n-A INPUT -j VXNET-OPEN\n-A VXNET-OPEN -p tcp -m tcp --dport 7947 -j ACCEPT\n", ":INPUT DROP [0:0]\n-A INPUT -j VXNET-OPEN\n-A VXNET-OPEN -p tcp -m tcp --dport 7947 -j ACCEPT\n", OK, nil},
		{"nothing", "", "", "", OK, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := hostFilters(Facts{Nftables: tc.nft, IPTables: tc.ipt, IP6Tables: tc.ipt6, VXLANPort: 4789})
			if got.Level != tc.level {
				t.Errorf("level %s, want %s: %+v", got.Level, tc.level, got)
			}
			text := got.Evidence + " " + got.Fix
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("%q lacks %q", text, w)
				}
			}
		})
	}
}
