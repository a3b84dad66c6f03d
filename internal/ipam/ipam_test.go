package ipam

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/model"
)

func TestBlocks(t *testing.T) {
	for _, tc := range []struct {
		subnet string
		bits   int
		count  int
		third  string
	}{
		{"172.18.0.0/16", 26, 1024, "172.18.0.128/26"},
		{"198.19.1.0/24", 29, 32, "198.19.1.16/29"},
		{"10.0.0.0/28", 30, 4, "10.0.0.8/30"},
		{"10.0.0.0/30", 30, 1, ""},
		// IPv6: blocks of /122 (64 addresses), the first 65,536 used.
		{"fd00:1::/64", 122, 65536, "fd00:1::80/122"},
		{"fd00:1::/112", 122, 1024, "fd00:1::80/122"},
		{"fd00:1::/120", 125, 32, "fd00:1::10/125"},
		{"fd00:1::/126", 126, 1, ""},
	} {
		p := netip.MustParsePrefix(tc.subnet)
		if BlockBits(p) != tc.bits || BlockCount(p) != tc.count {
			t.Errorf("%s: bits %d count %d, want %d %d", p, BlockBits(p), BlockCount(p), tc.bits, tc.count)
		}
		if tc.third != "" && BlockAt(p, 2).String() != tc.third {
			t.Errorf("%s: third block %s, want %s", p, BlockAt(p, 2), tc.third)
		}
	}
}

func TestFreeBlock(t *testing.T) {
	subnet := netip.MustParsePrefix("10.0.0.0/28")
	claimed := map[netip.Prefix]string{}
	seen := map[netip.Prefix]bool{}
	for i := 0; i < 4; i++ {
		b, err := FreeBlock(subnet, "h1", claimed)
		if err != nil {
			t.Fatal(err)
		}
		if seen[b] || !subnet.Contains(b.Addr()) {
			t.Fatalf("block %s reused or outside", b)
		}
		seen[b] = true
		claimed[b] = "h1"
	}
	if _, err := FreeBlock(subnet, "h1", claimed); err == nil || !strings.Contains(err.Error(), "subnet 10.0.0.0/28 is full") {
		t.Fatalf("full subnet: err = %v", err)
	}
	// Different nodes start at different places.
	a, _ := FreeBlock(netip.MustParsePrefix("10.0.0.0/16"), "h1", nil)
	b, _ := FreeBlock(netip.MustParsePrefix("10.0.0.0/16"), "h2", nil)
	if a == b {
		t.Fatalf("h1 and h2 start at the same block %s", a)
	}
	// IPv6: a block inside the subnet, past carries across bytes.
	v6 := netip.MustParsePrefix("fd00:1::/64")
	if last := BlockAt(v6, BlockCount(v6)-1); last.String() != "fd00:1::3f:ffc0/122" || !v6.Contains(last.Addr()) {
		t.Fatalf("last IPv6 block %s", last)
	}
	if b, err := FreeBlock(v6, "h1", nil); err != nil || !v6.Contains(b.Addr()) || b.Bits() != 122 {
		t.Fatalf("IPv6 block %s %v", b, err)
	}
}

func TestAllocate(t *testing.T) {
	n := model.Network{Name: "web", VNI: 1, Subnet: netip.MustParsePrefix("10.0.0.0/28")}
	n.Normalize()
	blocks := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/30"), netip.MustParsePrefix("10.0.0.12/30")}
	used := map[netip.Addr]string{}
	got := drain(t, 16, func() (netip.Addr, bool) { return Allocate(PoolOf(n, false), blocks, used) }, used)
	// .0 network, .1 gateway, .15 broadcast are reserved.
	if want := "10.0.0.2 10.0.0.3 10.0.0.12 10.0.0.13 10.0.0.14"; strings.Join(got, " ") != want {
		t.Fatalf("allocated %v, want %s", got, want)
	}
	// IPv6: the subnet-router anycast address and the gateway are
	// reserved, the last address is not (no broadcast).
	n.Subnet6 = netip.MustParsePrefix("fd00:1::/124")
	n.Normalize()
	used = map[netip.Addr]string{}
	blocks = []netip.Prefix{netip.MustParsePrefix("fd00:1::/126"), netip.MustParsePrefix("fd00:1::c/126")}
	got = drain(t, 16, func() (netip.Addr, bool) { return Allocate(PoolOf(n, true), blocks, used) }, used)
	if want := "fd00:1::2 fd00:1::3 fd00:1::c fd00:1::d fd00:1::e fd00:1::f"; strings.Join(got, " ") != want {
		t.Fatalf("allocated %v, want %s", got, want)
	}
}

func TestCheckStatic(t *testing.T) {
	n := model.Network{Name: "web", VNI: 1, Subnet: netip.MustParsePrefix("172.18.0.0/16")}
	n.Normalize()
	used := map[netip.Addr]string{netip.MustParseAddr("172.18.0.11"): "h1-ctr"}
	for _, tc := range []struct{ ip, want string }{
		{"172.18.0.12", ""},
		{"172.18.0.11", "address 172.18.0.11 is already in use on network web by endpoint h1-ctr"},
		{"172.18.0.1", "is the gateway"},
		{"172.18.0.0", "is the network address"},
		{"172.18.255.255", "is the broadcast address"},
		{"10.0.0.1", "is outside IPv4 subnet 172.18.0.0/16"},
		{"fd00:1::5", "is outside IPv4 subnet 172.18.0.0/16"},
	} {
		err := CheckStatic(PoolOf(n, false), netip.MustParseAddr(tc.ip), used)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: err = %v, want %q", tc.ip, err, tc.want)
		}
	}
	n.Subnet6 = netip.MustParsePrefix("fd00:1::/64")
	n.Normalize()
	used[netip.MustParseAddr("fd00:1::11")] = "h2-ctr"
	for _, tc := range []struct{ ip, want string }{
		{"fd00:1::12", ""},
		{"fd00:1::ffff:ffff:ffff:ffff", ""},
		{"fd00:1::11", "address fd00:1::11 is already in use on network web by endpoint h2-ctr"},
		{"fd00:1::1", "is the gateway"},
		{"fd00:1::", "is the network address"},
		{"fd00:2::1", "is outside IPv6 subnet fd00:1::/64 of network web"},
		{"172.18.0.12", "is outside IPv6 subnet"},
	} {
		err := CheckStatic(PoolOf(n, true), netip.MustParseAddr(tc.ip), used)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: err = %v, want %q", tc.ip, err, tc.want)
		}
	}
}

func TestMACFor(t *testing.T) {
	if got := MACFor(netip.MustParseAddr("172.18.0.11")); got != "02:7e:ac:12:00:0b" {
		t.Fatalf("MACFor = %s", got)
	}
	if _, err := model.ParseMAC(MACFor(netip.MustParseAddr("255.255.255.255"))); err != nil {
		t.Fatal(err)
	}
	// IPv6-only endpoints: from the address's last 32 bits.
	if got := MACFor(netip.MustParseAddr("fd00:60::d:6480")); got != "02:7e:00:0d:64:80" {
		t.Fatalf("MACFor IPv6 = %s", got)
	}
}

func TestBorrow(t *testing.T) {
	n := model.Network{Name: "web", VNI: 1, Subnet: netip.MustParsePrefix("10.0.0.0/29")}
	n.Normalize()
	used := map[netip.Addr]string{}
	got := drain(t, 8, func() (netip.Addr, bool) { return Borrow(PoolOf(n, false), used) }, used)
	if want := "10.0.0.2 10.0.0.3 10.0.0.4 10.0.0.5 10.0.0.6"; strings.Join(got, " ") != want {
		t.Fatalf("borrowed %v, want %s", got, want)
	}
}

// drain takes addresses from next until it has none, marking each used; an
// address given twice, or more than limit (the subnet's size), fails the
// test instead of looping for ever.
func drain(t *testing.T, limit int, next func() (netip.Addr, bool), used map[netip.Addr]string) []string {
	t.Helper()
	var got []string
	for range limit + 1 {
		a, ok := next()
		if !ok {
			return got
		}
		if _, twice := used[a]; twice {
			t.Fatalf("%s given again after %v", a, got)
		}
		used[a] = "x"
		got = append(got, a.String())
	}
	t.Fatalf("more than %d addresses from a subnet of %d: %v", limit, limit, got)
	return nil
}
