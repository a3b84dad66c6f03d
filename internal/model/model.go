// Package model holds vxnet's core types (networks, nodes, endpoints) and their
// validation. It performs no I/O.
package model

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"time"
)

// VNI limits: VXLAN carries a 24-bit network identifier; 0 is reserved here.
const (
	MinVNI = 1
	MaxVNI = 1<<24 - 1
	// AutoVNIMin is where the VNIs vxnet picks itself start: far above
	// those other overlays on the same hosts allocate (Docker Swarm from
	// 4096 up, one by one; Calico 4096 and 6096; flannel 1; Cilium its
	// identities, below 65536), which share UDP 4789 with vxnet.
	AutoVNIMin = 1 << 20
	// HealthVNI is the VNI of HealthNetwork.
	HealthVNI = MaxVNI
)

// Overheads of VXLAN encapsulation on the underlay:
// outer Ethernet is not counted in MTU; IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
const (
	OverheadIPv4 = 50
	OverheadIPv6 = 70
)

// Network is one isolated layer-2 network carried in one VNI.
type Network struct {
	Name    string       `json:"name"`
	VNI     uint32       `json:"vni"`
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"`
	// Subnet6 and Gateway6 are optional (dual stack).
	Subnet6  netip.Prefix `json:"subnet6,omitzero"`
	Gateway6 netip.Addr   `json:"gateway6,omitzero"`
	// MTU of the container interfaces; 0 means derived from the underlay.
	MTU int `json:"mtu,omitempty"`
	// Flood enables broadcast/multicast flooding by head-end replication.
	Flood bool `json:"flood,omitempty"`
	// DockerName is the name of the network in every dockerd (agents with a
	// Docker host create it there); empty while unknown.
	DockerName string `json:"dockerName,omitempty"`
	// Internal networks have no way out: no egress, no published ports.
	Internal bool `json:"internal,omitempty"`
	// Encrypted networks cross the underlay only inside WireGuard: the
	// hosts route their containers' unicast through their WireGuard
	// devices (not VXLAN), never on the underlay in clear.
	Encrypted bool `json:"encrypted,omitempty"`
}

// Node is one host of the cluster.
type Node struct {
	Name string     `json:"name"`
	Addr netip.Addr `json:"addr"` // VTEP and gossip address (the one in use)
	// Addrs are all the addresses its traffic may come from (empty: Addr
	// alone).
	Addrs []netip.Addr `json:"addrs,omitempty"`
	// NoInbound: it accepts no inbound traffic (behind a masquerading
	// NAT); it carries encrypted networks only, and its peers leave its
	// WireGuard endpoint to what its handshakes say.
	NoInbound bool `json:"noInbound,omitempty"`
}

// Endpoint is one container interface on one network.
type Endpoint struct {
	ID      string     `json:"id"`
	Network string     `json:"network"`
	Node    string     `json:"node"`
	MAC     string     `json:"mac"`
	IP      netip.Addr `json:"ip"`
	IP6     netip.Addr `json:"ip6,omitzero"`
	// Ports are published at the addresses of the endpoint's host.
	Ports []PortMap `json:"ports,omitempty"`
	// Name and Aliases are what other containers of the network resolve
	// to the endpoint's address, whichever host they run on.
	Name    string   `json:"name,omitempty"`
	Aliases []string `json:"aliases,omitempty"`
	// Since is when the endpoint was attached (UTC, to the second).
	Since time.Time `json:"since,omitzero"`
}

// HasName reports whether the endpoint answers to name (case-insensitive).
func (e Endpoint) HasName(name string) bool {
	if strings.EqualFold(e.Name, name) {
		return true
	}
	for _, a := range e.Aliases {
		if strings.EqualFold(a, name) {
			return true
		}
	}
	return false
}

var hostnameRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9_-]{0,62})$`)

// ValidateHostname checks a container name or alias: one DNS label of
// letters, digits, '-' and '_' (up to 63).
func ValidateHostname(kind, name string) error {
	if !hostnameRE.MatchString(name) {
		return fmt.Errorf("invalid %s %q: want one DNS label of letters, digits, '-' and '_' (up to 63 characters)", kind, name)
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// ValidateName checks a network or node name.
func ValidateName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid %s name %q: want 1-63 characters of letters, digits, '_', '.', '-', starting with a letter or digit", kind, name)
	}
	return nil
}

// ValidateVNI checks a VXLAN network identifier.
func ValidateVNI(vni uint64) error {
	if vni < MinVNI || vni > MaxVNI {
		return fmt.Errorf("invalid VNI %d: must be between %d and %d", vni, MinVNI, MaxVNI)
	}
	return nil
}

// ValidatePort checks a UDP/TCP port number.
func ValidatePort(what string, port int) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("invalid %s %d: must be between 1 and 65535", what, port)
	}
	return nil
}

// ParseSubnet parses a CIDR and insists on a canonical network address.
func ParseSubnet(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid subnet %q: want CIDR notation such as 10.20.0.0/16", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("invalid subnet %q: host bits are set; did you mean %s?", s, p.Masked())
	}
	return p, nil
}

// ParseMAC parses and normalises a unicast MAC address.
func ParseMAC(s string) (net.HardwareAddr, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return nil, fmt.Errorf("invalid MAC %q: want six hex octets such as 02:42:ac:11:00:02", s)
	}
	if hw[0]&1 == 1 {
		return nil, fmt.Errorf("invalid MAC %q: multicast bit is set; a unicast MAC is needed", s)
	}
	if isZero(hw) {
		return nil, fmt.Errorf("invalid MAC %q: all-zero address", s)
	}
	return hw, nil
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// FirstHost returns the first usable host address of a prefix.
func FirstHost(p netip.Prefix) netip.Addr { return p.Masked().Addr().Next() }

// LastAddr returns the last address of a prefix (the IPv4 broadcast address).
func LastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().AsSlice()
	bits := p.Bits()
	for i := range a {
		for b := 0; b < 8; b++ {
			if i*8+b >= bits {
				a[i] |= 0x80 >> b
			}
		}
	}
	out, _ := netip.AddrFromSlice(a)
	return out
}

// Normalize fills derived defaults (gateways) in place.
func (n *Network) Normalize() {
	if !n.Gateway.IsValid() && n.Subnet.IsValid() {
		n.Gateway = FirstHost(n.Subnet)
	}
	if !n.Gateway6.IsValid() && n.Subnet6.IsValid() {
		n.Gateway6 = FirstHost(n.Subnet6)
	}
}

// Validate checks a network definition on its own.
func (n Network) Validate() error {
	if err := ValidateName("network", n.Name); err != nil {
		return err
	}
	if err := ValidateVNI(uint64(n.VNI)); err != nil {
		return fmt.Errorf("network %s: %w", n.Name, err)
	}
	if err := n.validateSubnet(); err != nil {
		return err
	}
	if n.Subnet6.IsValid() {
		if !n.Subnet6.Addr().Is6() || n.Subnet6.Addr().Is4In6() {
			return fmt.Errorf("network %s: invalid IPv6 subnet %s", n.Name, n.Subnet6)
		}
		if n.Subnet6.Masked() != n.Subnet6 {
			return fmt.Errorf("network %s: invalid IPv6 subnet %s: host bits are set; did you mean %s?", n.Name, n.Subnet6, n.Subnet6.Masked())
		}
		if n.Subnet6.Bits() > 126 {
			return fmt.Errorf("network %s: IPv6 subnet %s is too small: the prefix length must be 126 or shorter", n.Name, n.Subnet6)
		}
		if err := checkGateway(n.Name, n.Subnet6, n.Gateway6, false); err != nil {
			return err
		}
	} else if n.Gateway6.IsValid() {
		return fmt.Errorf("network %s: IPv6 gateway %s given without an IPv6 subnet", n.Name, n.Gateway6)
	}
	if n.MTU != 0 && (n.MTU < 576 || n.MTU > 9000) {
		return fmt.Errorf("network %s: invalid MTU %d: must be between 576 and 9000, or 0 to derive it from the underlay", n.Name, n.MTU)
	}
	if n.Encrypted && n.Flood {
		return fmt.Errorf("network %s: encrypted networks carry unicast only (routed through WireGuard): create it without flooding, or not encrypted", n.Name)
	}
	return nil
}

// validateSubnet checks the IPv4 subnet and gateway: required, unless the
// network has an IPv6 subnet (an IPv6-only network).
func (n Network) validateSubnet() error {
	if !n.Subnet.IsValid() && n.Subnet6.IsValid() {
		if n.Gateway.IsValid() {
			return fmt.Errorf("network %s: gateway %s given without an IPv4 subnet", n.Name, n.Gateway)
		}
		return nil
	}
	if !n.Subnet.IsValid() || !n.Subnet.Addr().Is4() {
		return fmt.Errorf("network %s: invalid subnet %q: an IPv4 subnet (or, for an IPv6-only network, an IPv6 subnet alone) is required", n.Name, n.Subnet)
	}
	if n.Subnet.Masked() != n.Subnet {
		return fmt.Errorf("network %s: invalid subnet %s: host bits are set; did you mean %s?", n.Name, n.Subnet, n.Subnet.Masked())
	}
	if n.Subnet.Bits() > 30 {
		return fmt.Errorf("network %s: subnet %s is too small: the prefix length must be 30 or shorter", n.Name, n.Subnet)
	}
	return checkGateway(n.Name, n.Subnet, n.Gateway, true)
}

// HasIPv4 reports whether the network carries IPv4 (all but IPv6-only
// networks do).
func (n Network) HasIPv4() bool { return n.Subnet.IsValid() }

func checkGateway(netName string, subnet netip.Prefix, gw netip.Addr, v4 bool) error {
	if !gw.IsValid() {
		return fmt.Errorf("network %s: no gateway for subnet %s", netName, subnet)
	}
	if !subnet.Contains(gw) {
		return fmt.Errorf("network %s: gateway %s is outside subnet %s", netName, gw, subnet)
	}
	if gw == subnet.Addr() {
		return fmt.Errorf("network %s: gateway %s is the network address of %s; use a host address such as %s", netName, gw, subnet, FirstHost(subnet))
	}
	if v4 && gw == LastAddr(subnet) {
		return fmt.Errorf("network %s: gateway %s is the broadcast address of %s", netName, gw, subnet)
	}
	return nil
}

// CheckConflicts reports why n cannot join the existing networks: a duplicate
// name, a duplicate VNI or an overlapping subnet. A network identical to an
// existing one of the same name is not a conflict.
func CheckConflicts(existing []Network, n Network) error {
	for _, e := range existing {
		if e.Name == n.Name {
			if e.Equal(n) {
				continue
			}
			return fmt.Errorf("network name %q is already in use (VNI %d, subnet %s)", n.Name, e.VNI, e.Subnet)
		}
		if e.VNI == n.VNI {
			return fmt.Errorf("VNI %d is already used by network %q; pick another VNI", n.VNI, e.Name)
		}
		if n.Subnet.IsValid() && e.Subnet.IsValid() && e.Subnet.Overlaps(n.Subnet) {
			return fmt.Errorf("subnet %s overlaps subnet %s of network %q", n.Subnet, e.Subnet, e.Name)
		}
		if n.Subnet6.IsValid() && e.Subnet6.IsValid() && e.Subnet6.Overlaps(n.Subnet6) {
			return fmt.Errorf("IPv6 subnet %s overlaps subnet %s of network %q", n.Subnet6, e.Subnet6, e.Name)
		}
	}
	return nil
}

// Equal reports whether two network definitions are the same.
func (n Network) Equal(o Network) bool { return n == o }

// GatewayMAC derives the anycast gateway MAC of a VNI: locally administered,
// unicast, identical on every host.
func GatewayMAC(vni uint32) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x76, 0x78, byte(vni >> 16), byte(vni >> 8), byte(vni)}
}

// WireGuard's overhead on the underlay (outer IP, UDP 8, WireGuard's
// header 16 and tag 16): 60 bytes over IPv4, 80 over IPv6.
const (
	WireGuardOverheadIPv4 = 60
	WireGuardOverheadIPv6 = 80
)

// Overhead is what a network's path adds to each packet on the underlay:
// VXLAN over the underlay, or, for an encrypted network, whose IP packets
// are routed into WireGuard, WireGuard's.
func Overhead(encrypted, underlayV6 bool) int {
	switch {
	case encrypted && underlayV6:
		return WireGuardOverheadIPv6
	case encrypted:
		return WireGuardOverheadIPv4
	case underlayV6:
		return OverheadIPv6
	}
	return OverheadIPv4
}

// DeriveMTU returns the largest inner MTU that fits an underlay MTU.
func DeriveMTU(underlayMTU int, underlayV6 bool) int {
	return underlayMTU - Overhead(false, underlayV6)
}

// NetworkMTU returns the MTU of network n's devices and containers on an
// underlay: its own MTU, or when it has none the largest that fits.
func NetworkMTU(n Network, underlayMTU int, underlayV6 bool) (int, error) {
	over := Overhead(n.Encrypted, underlayV6)
	what := "VXLAN"
	if n.Encrypted {
		what = "WireGuard"
	}
	max := underlayMTU - over
	if max < 576 {
		return 0, fmt.Errorf("underlay MTU %d is too small for %s: it leaves %d bytes, at least 576 are needed", underlayMTU, what, max)
	}
	if n.MTU == 0 {
		return max, nil
	}
	if n.MTU > max {
		return 0, fmt.Errorf("MTU %d does not fit: underlay MTU %d minus %d bytes of %s overhead leaves at most %d", n.MTU, underlayMTU, over, what, max)
	}
	return n.MTU, nil
}

// HealthNetwork is the network of the agents' health endpoints, one per
// host in a namespace of its own: probes between them take the path
// containers' traffic takes. The name is reserved; the network has no
// gateway address on the hosts and no way out.
const HealthNetwork = "vxnet-health"

// ForeignVXLAN is a VXLAN device on a host that vxnet did not make (a
// hand-made tunnel, another overlay): the kernel refuses a second device
// with its VNI on its port, so vxnet's networks must avoid it.
type ForeignVXLAN struct {
	Dev  string `json:"dev"`
	VNI  uint32 `json:"vni"`
	Port int    `json:"port"`
}
