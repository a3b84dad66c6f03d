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

// BlockBits returns the prefix length of a subnet's blocks: /26 (64
// addresses) in large subnets, 32 blocks in smaller ones, never past /30.
func BlockBits(subnet netip.Prefix) int {
	b := max(subnet.Bits()+5, 26)
	return min(b, 30)
}

// BlockCount returns how many blocks a subnet holds.
func BlockCount(subnet netip.Prefix) int {
	return 1 << (BlockBits(subnet) - subnet.Bits())
}

// BlockAt returns the i-th block of a subnet.
func BlockAt(subnet netip.Prefix, i int) netip.Prefix {
	bits := BlockBits(subnet)
	base := subnet.Masked().Addr().As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(i) << (32 - bits)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), bits)
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

// Reserved reports addresses no endpoint may take: the network and broadcast
// addresses and the gateway.
func Reserved(n model.Network, a netip.Addr) bool {
	return a == n.Subnet.Masked().Addr() || a == model.LastAddr(n.Subnet) || a == n.Gateway
}

// Allocate returns the first free address in the node's blocks (in order).
// It returns ok=false when they are all full (claim another block).
func Allocate(n model.Network, blocks []netip.Prefix, used map[netip.Addr]string) (netip.Addr, bool) {
	for _, b := range blocks {
		for a := b.Masked().Addr(); b.Contains(a); a = a.Next() {
			if Reserved(n, a) {
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
// endpoint's address), only the locality of blocks is lost.
func Borrow(n model.Network, used map[netip.Addr]string) (netip.Addr, bool) {
	for a := n.Subnet.Masked().Addr(); n.Subnet.Contains(a); a = a.Next() {
		if Reserved(n, a) {
			continue
		}
		if _, taken := used[a]; !taken {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// CheckStatic checks a requested address against the network and every
// address in use in the cluster (used maps address -> endpoint ID).
func CheckStatic(n model.Network, a netip.Addr, used map[netip.Addr]string) error {
	if !n.Subnet.Contains(a) {
		return fmt.Errorf("address %s is outside subnet %s of network %s", a, n.Subnet, n.Name)
	}
	switch {
	case a == n.Gateway:
		return fmt.Errorf("address %s is the gateway of network %s", a, n.Name)
	case a == n.Subnet.Masked().Addr():
		return fmt.Errorf("address %s is the network address of %s", a, n.Subnet)
	case a == model.LastAddr(n.Subnet):
		return fmt.Errorf("address %s is the broadcast address of %s", a, n.Subnet)
	}
	if id, taken := used[a]; taken {
		return fmt.Errorf("address %s is already in use on network %s by endpoint %s", a, n.Name, id)
	}
	return nil
}

// MACFor derives an endpoint MAC from its IPv4 address (locally
// administered, unicast), so a MAC is unique where the address is.
func MACFor(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("02:7e:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}
