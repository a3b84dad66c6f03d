package model

import (
	"net/netip"
	"strings"
	"testing"
)

func TestValidateVNI(t *testing.T) {
	for _, tc := range []struct {
		vni  uint64
		want string
	}{
		{0, "invalid VNI 0: must be between 1 and 16777215"},
		{1, ""},
		{16777215, ""},
		{16777216, "invalid VNI 16777216: must be between 1 and 16777215"},
	} {
		checkErr(t, ValidateVNI(tc.vni), tc.want)
	}
}

func TestValidatePort(t *testing.T) {
	checkErr(t, ValidatePort("VXLAN port", 0), "invalid VXLAN port 0: must be between 1 and 65535")
	checkErr(t, ValidatePort("VXLAN port", 65536), "invalid VXLAN port 65536")
	checkErr(t, ValidatePort("VXLAN port", 4789), "")
}

func TestParseSubnet(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"10.20.0.0/16", ""},
		{"10.20.0.1/16", `invalid subnet "10.20.0.1/16": host bits are set; did you mean 10.20.0.0/16?`},
		{"10.20.0.0", `invalid subnet "10.20.0.0": want CIDR notation`},
		{"banana", `invalid subnet "banana"`},
	} {
		_, err := ParseSubnet(tc.in)
		checkErr(t, err, tc.want)
	}
}

func TestParseMAC(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"02:42:ac:11:00:02", ""},
		{"01:00:5e:00:00:01", "multicast bit is set"},
		{"00:00:00:00:00:00", "all-zero"},
		{"zz", `invalid MAC "zz"`},
	} {
		_, err := ParseMAC(tc.in)
		checkErr(t, err, tc.want)
	}
}

func net4(name string, vni uint32, subnet string) Network {
	n := Network{Name: name, VNI: vni, Subnet: netip.MustParsePrefix(subnet)}
	n.Normalize()
	return n
}

func TestNetworkValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Network)
		want string
	}{
		{"valid", func(*Network) {}, ""},
		{"bad name", func(n *Network) { n.Name = "-x" }, `invalid network name "-x"`},
		{"vni 0", func(n *Network) { n.VNI = 0 }, "network web: invalid VNI 0"},
		{"vni too big", func(n *Network) { n.VNI = 1 << 24 }, "invalid VNI 16777216"},
		{"gateway outside", func(n *Network) { n.Gateway = netip.MustParseAddr("10.9.0.1") }, "gateway 10.9.0.1 is outside subnet 10.1.0.0/24"},
		{"gateway is network address", func(n *Network) { n.Gateway = netip.MustParseAddr("10.1.0.0") }, "is the network address"},
		{"gateway is broadcast", func(n *Network) { n.Gateway = netip.MustParseAddr("10.1.0.255") }, "is the broadcast address"},
		{"host bits", func(n *Network) { n.Subnet = netip.MustParsePrefix("10.1.0.5/24") }, "host bits are set; did you mean 10.1.0.0/24?"},
		{"ipv6 as subnet", func(n *Network) { n.Subnet = netip.MustParsePrefix("fd00::/64") }, "an IPv4 subnet (or, for an IPv6-only network, an IPv6 subnet alone) is required"},
		{"no subnet at all", func(n *Network) { n.Subnet, n.Gateway = netip.Prefix{}, netip.Addr{} }, "an IPv4 subnet (or, for an IPv6-only network, an IPv6 subnet alone) is required"},
		{"ipv6 only", func(n *Network) {
			n.Subnet, n.Gateway, n.Subnet6 = netip.Prefix{}, netip.Addr{}, netip.MustParsePrefix("fd00:1::/64")
			n.Normalize()
		}, ""},
		{"ipv6 only with an IPv4 gateway", func(n *Network) {
			n.Subnet, n.Subnet6 = netip.Prefix{}, netip.MustParsePrefix("fd00:1::/64")
			n.Normalize()
		}, "network web: gateway 10.1.0.1 given without an IPv4 subnet"},
		{"ipv6 only encrypted", func(n *Network) {
			n.Subnet, n.Gateway, n.Subnet6, n.Encrypted = netip.Prefix{}, netip.Addr{}, netip.MustParsePrefix("fd00:1::/64"), true
			n.Normalize()
		}, ""}, // routed through the tunnel like a dual-stack network's IPv6
		{"too small", func(n *Network) { n.Subnet = netip.MustParsePrefix("10.1.0.0/31") }, "too small"},
		{"mtu", func(n *Network) { n.MTU = 100 }, "invalid MTU 100"},
		{"v6 ok", func(n *Network) { n.Subnet6 = netip.MustParsePrefix("fd00:1::/64"); n.Normalize() }, ""},
		{"v6 gw outside", func(n *Network) {
			n.Subnet6 = netip.MustParsePrefix("fd00:1::/64")
			n.Gateway6 = netip.MustParseAddr("fd00:2::1")
		}, "gateway fd00:2::1 is outside subnet fd00:1::/64"},
		{"encrypted", func(n *Network) { n.Encrypted = true }, ""},
		{"encrypted flooding", func(n *Network) { n.Encrypted, n.Flood = true, true }, "encrypted networks carry unicast only"},
		{"encrypted dual stack", func(n *Network) {
			n.Encrypted, n.Subnet6 = true, netip.MustParsePrefix("fd00:1::/64")
			n.Normalize()
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := net4("web", 100, "10.1.0.0/24")
			tc.mod(&n)
			checkErr(t, n.Validate(), tc.want)
		})
	}
}

func TestCheckConflicts(t *testing.T) {
	existing := []Network{net4("web", 100, "10.1.0.0/16"), net4("db", 200, "10.2.0.0/24")}
	for _, tc := range []struct {
		n    Network
		want string
	}{
		{net4("app", 300, "10.3.0.0/24"), ""},
		{net4("web", 100, "10.1.0.0/16"), ""}, // identical: agreement
		{net4("web", 101, "10.9.0.0/24"), `network name "web" is already in use`},
		{net4("app", 200, "10.3.0.0/24"), `VNI 200 is already used by network "db"`},
		{net4("app", 300, "10.1.5.0/24"), `subnet 10.1.5.0/24 overlaps subnet 10.1.0.0/16 of network "web"`},
		{net4("app", 300, "10.0.0.0/8"), `overlaps subnet 10.1.0.0/16`},
	} {
		checkErr(t, CheckConflicts(existing, tc.n), tc.want)
	}
}

func TestMTU(t *testing.T) {
	for _, tc := range []struct {
		explicit, underlay int
		v6                 bool
		want               int
		err                string
	}{
		{0, 1500, false, 1450, ""},
		{0, 1500, true, 1430, ""},
		{0, 9000, false, 8950, ""},
		{1400, 1500, false, 1400, ""},
		{1450, 1500, false, 1450, ""},
		{1500, 1500, false, 0, "MTU 1500 does not fit: underlay MTU 1500 minus 50 bytes of VXLAN overhead leaves at most 1450"},
		{1450, 1500, true, 0, "minus 70 bytes of VXLAN overhead leaves at most 1430"},
		{0, 600, false, 0, "underlay MTU 600 is too small"},
	} {
		got, err := NetworkMTU(Network{MTU: tc.explicit}, tc.underlay, tc.v6)
		checkErr(t, err, tc.err)
		if got != tc.want {
			t.Errorf("NetworkMTU(%d, %d, %v) = %d, want %d", tc.explicit, tc.underlay, tc.v6, got, tc.want)
		}
	}
	// Encrypted networks: WireGuard's overhead alone (they are routed, not
	// carried in VXLAN).
	for _, tc := range []struct {
		explicit, underlay int
		v6                 bool
		want               int
		err                string
	}{
		{0, 1500, false, 1440, ""},
		{0, 1500, true, 1420, ""},
		{0, 1450, false, 1390, ""},
		{1441, 1500, false, 0, "MTU 1441 does not fit: underlay MTU 1500 minus 60 bytes of WireGuard overhead leaves at most 1440"},
		{0, 630, false, 0, "underlay MTU 630 is too small for WireGuard"},
	} {
		got, err := NetworkMTU(Network{MTU: tc.explicit, Encrypted: true}, tc.underlay, tc.v6)
		checkErr(t, err, tc.err)
		if got != tc.want {
			t.Errorf("NetworkMTU(encrypted %d, %d, %v) = %d, want %d", tc.explicit, tc.underlay, tc.v6, got, tc.want)
		}
	}
}

func TestTunnel(t *testing.T) {
	key := "sTbDT0hPBs8ZUGtnWfbpJHWuVd4PW8Wn6Fa0v7sKfXI="
	a := TunnelAddr(key)
	if !TunnelPrefix.Contains(a) || a == TunnelPrefix.Addr() || TunnelAddr(key) != a {
		t.Fatalf("TunnelAddr = %s: want one stable address in %s", a, TunnelPrefix)
	}
	if TunnelAddr("WzJmL6DrZ7ivYdWrs5tMOVIYOOCSC/3LCzd5ML1i+XI=") == a {
		t.Fatal("two keys, one tunnel address")
	}
	for _, tc := range []struct {
		info TunnelInfo
		want string
	}{
		{TunnelInfo{Key: key, Port: 51830}, ""},
		{TunnelInfo{Key: "short", Port: 51830}, `tunnel key "short" is not a WireGuard public key`},
		{TunnelInfo{Key: key, Port: 0}, "tunnel port 0 is out of range"},
	} {
		checkErr(t, tc.info.Validate(), tc.want)
	}
}

func TestGatewayMAC(t *testing.T) {
	if got := GatewayMAC(4097).String(); got != "02:76:78:00:10:01" {
		t.Fatalf("GatewayMAC(4097) = %s", got)
	}
	a, b := GatewayMAC(1), GatewayMAC(2)
	if a.String() == b.String() || a[0]&1 != 0 || a[0]&2 == 0 {
		t.Fatalf("gateway MACs must differ per VNI and be unicast, locally administered: %s %s", a, b)
	}
}

func TestAddrHelpers(t *testing.T) {
	p := netip.MustParsePrefix("10.1.2.0/23")
	if FirstHost(p).String() != "10.1.2.1" || LastAddr(p).String() != "10.1.3.255" {
		t.Fatalf("FirstHost/LastAddr of %s = %s/%s", p, FirstHost(p), LastAddr(p))
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Errorf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("error %q does not contain %q", err, want)
	}
}
