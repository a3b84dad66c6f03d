package datapath

import (
	"cmp"
	"net/netip"
	"slices"
	"time"
)

// TunnelName returns the WireGuard device name of a host: unique per host,
// because a userspace device's control socket is named after its device in
// a directory every namespace of a machine shares.
func TunnelName(node string) string { return "vxwg" + shortHash(node) }

// Tunnel is a host's WireGuard device: the encrypted networks' VXLAN runs
// between the hosts' tunnel addresses inside it.
type Tunnel struct {
	Dev  string     `json:"dev"`
	Port int        `json:"port"`
	MTU  int        `json:"mtu"`
	Addr netip.Addr `json:"addr"`
	// Key is this host's public key (the private one never leaves the
	// dataplane).
	Key   string       `json:"key"`
	Peers []TunnelPeer `json:"peers"`
	// Userspace is observed only: the device is wireguard-go's, run in a
	// process of its own, not the kernel's.
	Userspace bool `json:"userspace,omitempty"`
}

// TunnelPeer is one other host on the tunnel.
type TunnelPeer struct {
	Key      string         `json:"key"`
	Endpoint netip.AddrPort `json:"endpoint"`
	// AllowedIPs, sorted, are the addresses the peer sends from and is sent
	// to: its tunnel address and its containers' on encrypted networks.
	AllowedIPs []netip.Addr `json:"allowedIps"`
	// PSK is the pair's pre-shared key, derived from the cluster key (zero:
	// none). Secret: never printed.
	PSK [32]byte `json:"-"`
	// Observed only.
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
	RxBytes       int64     `json:"rxBytes,omitempty"`
	TxBytes       int64     `json:"txBytes,omitempty"`
}

// Same reports whether peer p (as it is) is set as o wants (not the
// observed-only fields). An endpoint o leaves unset (a peer behind a
// masquerading NAT, which WireGuard finds by its handshakes) matches any.
func (p TunnelPeer) Same(o TunnelPeer) bool {
	return p.Key == o.Key && (p.Endpoint == o.Endpoint || !o.Endpoint.IsValid()) && p.PSK == o.PSK && slices.Equal(p.AllowedIPs, o.AllowedIPs)
}

// Equal compares what a pass sets (not the observed-only fields).
func (t Tunnel) Equal(o Tunnel) bool {
	return t.Dev == o.Dev && t.Port == o.Port && t.MTU == o.MTU && t.Addr == o.Addr && t.Key == o.Key &&
		slices.EqualFunc(t.Peers, o.Peers, TunnelPeer.Same)
}

// SortPeers orders peers by key (the order Observe and Desired use).
func SortPeers(ps []TunnelPeer) {
	slices.SortFunc(ps, func(a, b TunnelPeer) int { return cmp.Compare(a.Key, b.Key) })
}
