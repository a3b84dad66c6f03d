// Package ipam carves a network's subnet into per-node blocks and allocates
// addresses from them. It is pure: callers pass the cluster's claims and the
// addresses in use, and record the results in the replicated state.
package ipam

import (
	"fmt"
	"hash/fnv"
	"net/netip"

	"github.com/vxnet/vxnet/internal/model"
)

// Pool is one address family of a network: what addresses are handed out
// from (a network's IPv4 subnet, or its IPv6 one).
type Pool struct {
	Network string
	Subnet  netip.Prefix
	Gateway netip.Addr
}

// PoolOf returns a network's IPv4 pool, or its IPv6 one (invalid Subnet
// when the network has none).
func PoolOf(n model.Network, v6 bool) Pool {
	if v6 {
		return Pool{Network: n.Name, Subnet: n.Subnet6, Gateway: n.Gateway6}
	}
	return Pool{Network: n.Name, Subnet: n.Subnet, Gateway: n.Gateway}
}

// Family names the pool's address family for messages.
func (p Pool) Family() string {
	if p.Subnet.Addr().Is6() {
		return "IPv6"
	}
	return "IPv4"
}

// maxBlocks bounds the blocks of one subnet that are handed out (an IPv6
// /64 holds 2^58 blocks of /122): 65,536 blocks are 4 million addresses.
const maxBlocks = 1 << 16

// BlockBits returns the prefix length of a subnet's blocks. IPv4: /26 (64
// addresses) in large subnets, 32 blocks in smaller ones, never past /30.
// IPv6: /122 (64 addresses) likewise, never past /126.
func BlockBits(subnet netip.Prefix) int {
	if subnet.Addr().Is6() {
		return min(max(subnet.Bits()+5, 122), 126)
	}
	return min(max(subnet.Bits()+5, 26), 30)
}

// BlockCount returns how many blocks of a subnet are handed out (all of
// them, up to maxBlocks).
func BlockCount(subnet netip.Prefix) int {
	d := BlockBits(subnet) - subnet.Bits()
	if d >= 16 {
		return maxBlocks
	}
	return 1 << d
}

// BlockAt returns the i-th block of a subnet (0 <= i < BlockCount).
func BlockAt(subnet netip.Prefix, i int) netip.Prefix {
	bits := BlockBits(subnet)
	a := subnet.Masked().Addr().AsSlice()
	// Add i << (address bits - bits), byte by byte from the end; the
	// shift is at most 6 (blocks of at least 4 addresses), i < 2^16.
	carry := uint64(i) << (len(a)*8 - bits)
	for k := len(a) - 1; k >= 0 && carry != 0; k-- {
		sum := uint64(a[k]) + carry&0xff
		a[k] = byte(sum)
		carry = carry>>8 + sum>>8
	}
	out, _ := netip.AddrFromSlice(a)
	return netip.PrefixFrom(out, bits)
}

// FreeBlock picks an unclaimed block for node. It starts at a position
// derived from the node name so that nodes claiming at the same moment
// rarely pick the same block.
func FreeBlock(subnet netip.Prefix, node string, claimed map[netip.Prefix]string) (netip.Prefix, error) {
	n := BlockCount(subnet)
	h := fnv.New32a()
	h.Write([]byte(node))
	start := int(h.Sum32() % uint32(n))
	for i := 0; i < n; i++ {
		b := BlockAt(subnet, (start+i)%n)
		if _, taken := claimed[b]; !taken {
			return b, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("subnet %s is full: all %d blocks of /%d are claimed", subnet, n, BlockBits(subnet))
}

// Reserved reports addresses no endpoint may take: the network address
// (IPv6's subnet-router anycast), IPv4's broadcast address and the gateway.
func Reserved(p Pool, a netip.Addr) bool {
	return a == p.Subnet.Masked().Addr() || (a.Is4() && a == model.LastAddr(p.Subnet)) || a == p.Gateway
}

// Allocate returns the first free address in the node's blocks (in order).
// It returns ok=false when they are all full (claim another block).
func Allocate(p Pool, blocks []netip.Prefix, used map[netip.Addr]string) (netip.Addr, bool) {
	for _, b := range blocks {
		for a := b.Masked().Addr(); b.Contains(a); a = a.Next() {
			if Reserved(p, a) {
				continue
			}
			if _, taken := used[a]; !taken {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

// Borrow returns any free address of the subnet, for a node that finds every
// block claimed: addresses are still unique cluster-wide (used holds every
// endpoint's address), only the locality of blocks is lost. The first free
// address is at most len(used)+3 addresses in, however large the subnet.
func Borrow(p Pool, used map[netip.Addr]string) (netip.Addr, bool) {
	for a := p.Subnet.Masked().Addr(); p.Subnet.Contains(a); a = a.Next() {
		if Reserved(p, a) {
			continue
		}
		if _, taken := used[a]; !taken {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// CheckStatic checks a requested address against the pool and every
// address in use in the cluster (used maps address -> endpoint ID).
func CheckStatic(p Pool, a netip.Addr, used map[netip.Addr]string) error {
	if !p.Subnet.Contains(a) {
		return fmt.Errorf("address %s is outside %s subnet %s of network %s", a, p.Family(), p.Subnet, p.Network)
	}
	switch {
	case a == p.Gateway:
		return fmt.Errorf("address %s is the gateway of network %s", a, p.Network)
	case a == p.Subnet.Masked().Addr():
		return fmt.Errorf("address %s is the network address of %s", a, p.Subnet)
	case a.Is4() && a == model.LastAddr(p.Subnet):
		return fmt.Errorf("address %s is the broadcast address of %s", a, p.Subnet)
	}
	if id, taken := used[a]; taken {
		return fmt.Errorf("address %s is already in use on network %s by endpoint %s", a, p.Network, id)
	}
	return nil
}

// MACFor derives an endpoint MAC from its IPv4 address, or on an
// IPv6-only network from the last 32 bits of its IPv6 address (locally
// administered, unicast), so a MAC is unique where the address is: IPv6
// addresses of one network differ in their last bits (blocks are handed
// out from the start of the subnet).
func MACFor(a netip.Addr) string {
	s := a.AsSlice()
	b := s[len(s)-4:]
	return fmt.Sprintf("02:7e:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}
