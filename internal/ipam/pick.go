package ipam

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/vxnet/vxnet/internal/model"
)

// Blocks is the cluster's address blocks as one node sees them, and how
// it claims one.
type Blocks interface {
	// Self names this node.
	Self() string
	// Claimed returns a network's claimed blocks, by the node holding each.
	Claimed(network string) map[netip.Prefix]string
	// Claim takes a block of a network for this node. won is false when
	// another node holds it (holder names it: pick another) or when a
	// newer release of it was learnt (holder empty: claim it again).
	Claim(network string, block netip.Prefix) (won bool, holder string, err error)
}

// maxClaims bounds the blocks tried before an allocation gives up.
const maxClaims = 9

// Pick returns the address for a new endpoint from pool p: want when it is valid
// (checked against used, the addresses in use by whom), else a free address
// of this node's blocks, else of a block it claims now, else, every block
// being claimed, any free address of the subnet (borrowed).
func Pick(p Pool, want netip.Addr, used map[netip.Addr]string, b Blocks, log *slog.Logger) (netip.Addr, error) {
	if want.IsValid() {
		if err := CheckStatic(p, want, used); err != nil {
			return netip.Addr{}, model.Errorf(model.ErrConflict, "%w", err)
		}
		return want, nil
	}
	claimed := b.Claimed(p.Network)
	var mine []netip.Prefix
	for cidr, node := range claimed {
		if node == b.Self() && p.Subnet.Contains(cidr.Addr()) {
			mine = append(mine, cidr)
		}
	}
	slices.SortFunc(mine, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
	if ip, ok := Allocate(p, mine, used); ok {
		return ip, nil
	}
	for range maxClaims {
		block, err := FreeBlock(p.Subnet, b.Self(), claimed)
		if err != nil {
			// Every block is claimed: take any free address of the subnet.
			if ip, ok := Borrow(p, used); ok {
				if log != nil {
					log.Info("all address blocks claimed; borrowed an address", "network", p.Network, "ip", ip)
				}
				return ip, nil
			}
			inUse := 0
			for a := range used {
				if p.Subnet.Contains(a) {
					inUse++
				}
			}
			return netip.Addr{}, model.Errorf(model.ErrConflict, "network %s: no free address left in %s (%d endpoints)", p.Network, p.Subnet, inUse)
		}
		won, holder, err := b.Claim(p.Network, block)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("network %s: claim address block %s: %w", p.Network, block, err)
		}
		if !won {
			if holder != "" {
				claimed[block] = holder // learnt: pick again
			}
			continue
		}
		if log != nil {
			log.Info("claimed address block", "network", p.Network, "block", block)
		}
		ip, ok := Allocate(p, []netip.Prefix{block}, used)
		if !ok {
			return netip.Addr{}, model.Errorf(model.ErrConflict, "network %s: block %s has no free address", p.Network, block)
		}
		return ip, nil
	}
	return netip.Addr{}, fmt.Errorf("network %s: no address block could be claimed after %d tries", p.Network, maxClaims)
}

// PickMAC checks a requested MAC, or derives one from the address, against
// the MACs in use (by whom).
func PickMAC(n model.Network, want string, ip netip.Addr, macs map[string]string) (string, error) {
	mac := MACFor(ip)
	if want != "" {
		hw, err := model.ParseMAC(want)
		if err != nil {
			return "", model.Errorf(model.ErrInvalid, "%w", err)
		}
		mac = hw.String()
	}
	if macs[mac] != "" {
		return "", model.Errorf(model.ErrConflict, "MAC %s is already in use on network %s by endpoint %s", mac, n.Name, macs[mac])
	}
	return mac, nil
}
