package model

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/netip"
)

// DefaultTunnelPort is the UDP port of the hosts' WireGuard devices. It is
// not WireGuard's customary 51820, which a host's own VPN may hold.
const DefaultTunnelPort = 51830

// TunnelPrefix holds every host's tunnel address: an IPv6 unique local
// prefix (RFC 4193) that exists only inside the hosts' WireGuard devices.
var TunnelPrefix = netip.MustParsePrefix("fd76:786e:6574:7775::/64")

// TunnelInfo is what a host publishes of its WireGuard device: its public
// key (base64, as WireGuard prints it) and UDP port. Membership is the key
// distribution: a host's record carries it to every other.
type TunnelInfo struct {
	Key  string `json:"key"`
	Port int    `json:"port"`
}

// Validate checks the key's encoding and the port.
func (t TunnelInfo) Validate() error {
	b, err := base64.StdEncoding.DecodeString(t.Key)
	if err != nil || len(b) != 32 {
		return fmt.Errorf("tunnel key %q is not a WireGuard public key (32 bytes in base64)", t.Key)
	}
	if t.Port < 1 || t.Port > 65535 {
		return fmt.Errorf("tunnel port %d is out of range (1-65535)", t.Port)
	}
	return nil
}

// TunnelAddr derives a host's tunnel address from its public key: the
// prefix with 64 bits of the key's SHA-256 as interface identifier. Every
// host computes every other's without asking; a key change moves it.
func TunnelAddr(key string) netip.Addr {
	sum := sha256.Sum256([]byte("vxnet tunnel address\x00" + key))
	a := TunnelPrefix.Addr().As16()
	copy(a[8:], sum[:8])
	if [8]byte(a[8:]) == [8]byte{} {
		a[15] = 1 // never the subnet-router anycast address
	}
	return netip.AddrFrom16(a)
}
