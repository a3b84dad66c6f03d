package ipam

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/model"
)

// fakeBlocks is a cluster's claims; lose makes the first claims of those
// blocks go to another node (as a store that claims would answer).
type fakeBlocks struct {
	self    string
	claimed map[netip.Prefix]string
	lose    map[netip.Prefix]string
	err     error
	claims  []netip.Prefix
}

func (f *fakeBlocks) Self() string { return f.self }
func (f *fakeBlocks) Claimed(string) map[netip.Prefix]string {
	out := map[netip.Prefix]string{}
	for k, v := range f.claimed {
		out[k] = v
	}
	return out
}
func (f *fakeBlocks) Claim(_ string, b netip.Prefix) (bool, string, error) {
	f.claims = append(f.claims, b)
	if f.err != nil {
		return false, "", f.err
	}
	if h, ok := f.lose[b]; ok {
		f.claimed[b] = h
		return false, h, nil
	}
	f.claimed[b] = f.self
	return true, "", nil
}

func TestPick(t *testing.T) {
	n := model.Network{Name: "web", VNI: 1, Subnet: netip.MustParsePrefix("10.0.0.0/24")}
	n.Normalize()
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	mine := firstBlockOf(t, n, "h1")
	for _, tc := range []struct {
		name    string
		want    string
		used    map[netip.Addr]string
		claimed map[netip.Prefix]string
		lose    map[netip.Prefix]string
		err     error
		got     string // address, or the error's text
		claims  int
	}{
		{name: "static", want: "10.0.0.77", got: "10.0.0.77"},
		{name: "static taken", want: "10.0.0.77", used: map[netip.Addr]string{addr("10.0.0.77"): "c1"}, got: "address 10.0.0.77 is already in use on network web by endpoint c1"},
		{name: "own block", claimed: map[netip.Prefix]string{pfx("10.0.0.64/29"): "h1"}, got: "10.0.0.64"},
		{name: "claims its first block", got: mine.Addr().String(), claims: 1},
		{name: "another holds its first choice", lose: map[netip.Prefix]string{mine: "h2"}, claims: 2},
		{name: "store down", err: errors.New("context deadline exceeded"), got: "network web: claim address block " + mine.String() + ": context deadline exceeded", claims: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &fakeBlocks{self: "h1", claimed: map[netip.Prefix]string{}, lose: tc.lose, err: tc.err}
			for k, v := range tc.claimed {
				b.claimed[k] = v
			}
			used := tc.used
			if used == nil {
				used = map[netip.Addr]string{}
			}
			var want netip.Addr
			if tc.want != "" {
				want = addr(tc.want)
			}
			ip, err := Pick(PoolOf(n, false), want, used, b, nil)
			got := ip.String()
			if err != nil {
				got = err.Error()
			}
			if tc.got != "" && !strings.Contains(got, tc.got) {
				t.Fatalf("got %s, want %s", got, tc.got)
			}
			if len(b.claims) != tc.claims {
				t.Fatalf("%d claims (%v), want %d", len(b.claims), b.claims, tc.claims)
			}
			if tc.lose != nil && (err != nil || b.claimed[b.claims[1]] != "h1" || !b.claims[1].Contains(ip)) {
				t.Fatalf("after losing %v: %s from %v (%v)", b.claims[0], ip, b.claims, err)
			}
		})
	}
}

// TestPickWhenEveryBlockIsClaimed: with every block held by others an
// address is borrowed from any of them; with none free, a conflict.
func TestPickWhenEveryBlockIsClaimed(t *testing.T) {
	n := model.Network{Name: "web", VNI: 1, Subnet: netip.MustParsePrefix("10.0.0.0/29")}
	n.Normalize()
	b := &fakeBlocks{self: "h1", claimed: map[netip.Prefix]string{}}
	for i := range BlockCount(n.Subnet) {
		b.claimed[BlockAt(n.Subnet, i)] = "h2"
	}
	used := map[netip.Addr]string{}
	ip, err := Pick(PoolOf(n, false), netip.Addr{}, used, b, nil)
	if err != nil || !n.Subnet.Contains(ip) || len(b.claims) != 0 {
		t.Fatalf("borrow: %s %v (claims %v)", ip, err, b.claims)
	}
	for a := n.Subnet.Addr(); n.Subnet.Contains(a); a = a.Next() {
		used[a] = "x"
	}
	if _, err := Pick(PoolOf(n, false), netip.Addr{}, used, b, nil); !errors.Is(err, model.ErrConflict) || !strings.Contains(err.Error(), "no free address left in 10.0.0.0/29") {
		t.Fatalf("full subnet: %v", err)
	}
}

func TestPickMAC(t *testing.T) {
	n := model.Network{Name: "web"}
	ip := netip.MustParseAddr("10.0.0.5")
	if mac, err := PickMAC(n, "", ip, nil); err != nil || mac != MACFor(ip) {
		t.Fatalf("derived: %s %v", mac, err)
	}
	if mac, err := PickMAC(n, "02:AA:00:00:00:01", ip, nil); err != nil || mac != "02:aa:00:00:00:01" {
		t.Fatalf("given: %s %v", mac, err)
	}
	if _, err := PickMAC(n, "zz", ip, nil); !errors.Is(err, model.ErrInvalid) {
		t.Fatalf("bad MAC: %v", err)
	}
	if _, err := PickMAC(n, "", ip, map[string]string{MACFor(ip): "c1"}); !errors.Is(err, model.ErrConflict) || !strings.Contains(err.Error(), "by endpoint c1") {
		t.Fatalf("taken MAC: %v", err)
	}
}

// firstBlockOf is the block node tries first in n.
func firstBlockOf(t *testing.T, n model.Network, node string) netip.Prefix {
	t.Helper()
	b, err := FreeBlock(n.Subnet, node, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPickBothFamilies: a dual-stack network's pools draw from blocks of
// their own family only; the IPv6 pick claims an IPv6 block although the
// node holds an IPv4 one, and both addresses live in one used map.
func TestPickBothFamilies(t *testing.T) {
	n := model.Network{Name: "web", VNI: 1, Subnet: netip.MustParsePrefix("10.0.0.0/24"), Subnet6: netip.MustParsePrefix("fd00:1::/64")}
	n.Normalize()
	b := &fakeBlocks{self: "h1", claimed: map[netip.Prefix]string{netip.MustParsePrefix("10.0.0.64/29"): "h1"}}
	used := map[netip.Addr]string{}
	ip4, err := Pick(PoolOf(n, false), netip.Addr{}, used, b, nil)
	if err != nil || ip4.String() != "10.0.0.64" || len(b.claims) != 0 {
		t.Fatalf("IPv4: %s %v (claims %v)", ip4, err, b.claims)
	}
	used[ip4] = "c1"
	ip6, err := Pick(PoolOf(n, true), netip.Addr{}, used, b, nil)
	if err != nil || !n.Subnet6.Contains(ip6) || len(b.claims) != 1 || b.claims[0].Bits() != 122 || !b.claims[0].Contains(ip6) {
		t.Fatalf("IPv6: %s %v (claims %v)", ip6, err, b.claims)
	}
	used[ip6] = "c1"
	again, err := Pick(PoolOf(n, true), netip.Addr{}, used, b, nil)
	if err != nil || again == ip6 || !b.claims[0].Contains(again) || len(b.claims) != 1 {
		t.Fatalf("second IPv6: %s %v (claims %v)", again, err, b.claims)
	}
	if _, err := Pick(PoolOf(n, true), ip6, used, b, nil); err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("static IPv6 taken: %v", err)
	}
}
