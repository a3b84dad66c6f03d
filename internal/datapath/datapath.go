// Package datapath defines the Dataplane interface: the kernel objects vxnet
// programs on one host (per network a bridge and a vxlan device, remote
// endpoints as FDB and neighbour entries, local endpoints as veth pairs).
//
// The linux subpackage is the only importer of netlink; the fake subpackage
// is an in-memory implementation for unit tests; the dptest subpackage holds
// the contract suite both must pass.
package datapath

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"

	"github.com/vxnet/vxnet/internal/model"
)

// OwnerPrefix marks every link vxnet creates (in its alias); links without it
// are never modified or deleted.
const OwnerPrefix = "vxnet:"

// NetworkSpec is what one network needs on one host.
type NetworkSpec struct {
	Name string `json:"name"`
	VNI  uint32 `json:"vni"`
	// Port is the VXLAN UDP destination port.
	Port int `json:"port"`
	// Local is this host's VTEP address.
	Local netip.Addr `json:"local"`
	// Underlay names the underlay device (optional).
	Underlay string `json:"underlay,omitempty"`
	MTU      int    `json:"mtu"`
	// Gateway is the anycast gateway address with the subnet's prefix length.
	Gateway  netip.Prefix `json:"gateway"`
	Gateway6 netip.Prefix `json:"gateway6,omitzero"`
	// GatewayMAC is the bridge's MAC (identical on every host).
	GatewayMAC string `json:"gatewayMac"`
	// Tunnel, when set, names the WireGuard device an encrypted network is
	// routed through: the network has its bridge and no vxlan device (Port,
	// Local and Underlay are unset), the bridge answers ARP for the other
	// hosts' containers with its own MAC (proxy ARP), and the host routes
	// their addresses into the tunnel (Route).
	Tunnel string `json:"tunnel,omitempty"`
}

// Route sends an address of an encrypted network's container on another
// host into the tunnel device Dev (a host route of vxnet's in the main
// table).
type Route struct {
	VNI uint32     `json:"vni"`
	IP  netip.Addr `json:"ip"`
	Dev string     `json:"dev"`
}

func (r Route) String() string { return fmt.Sprintf("route vni %d %s -> %s", r.VNI, r.IP, r.Dev) }

// BridgeName returns the bridge device name of a VNI.
func BridgeName(vni uint32) string { return fmt.Sprintf("vxbr%d", vni) }

// VxlanName returns the vxlan device name of a VNI.
func VxlanName(vni uint32) string { return fmt.Sprintf("vxlan%d", vni) }

// ZeroMAC is the FDB MAC of a flood (head-end replication) entry.
const ZeroMAC = "00:00:00:00:00:00"

// FDB is a forwarding entry on a network's vxlan device: frames for MAC go to
// the remote VTEP. MAC ZeroMAC marks a flood entry (one per peer).
type FDB struct {
	VNI  uint32     `json:"vni"`
	MAC  string     `json:"mac"`
	VTEP netip.Addr `json:"vtep"`
	// Incomplete is observed only: with the fast path a unicast entry
	// lacks its static twin on the bridge (it equals nothing wanted).
	Incomplete bool `json:"incomplete,omitempty"`
}

// FDBKey identifies an FDB entry: a unicast MAC maps to one VTEP (VTEP is
// zero in its key), flood entries are one per VTEP.
type FDBKey struct {
	VNI  uint32
	MAC  string
	VTEP netip.Addr
}

// Key identifies the entry.
func (f FDB) Key() FDBKey {
	if f.MAC == ZeroMAC {
		return FDBKey{VNI: f.VNI, MAC: f.MAC, VTEP: f.VTEP}
	}
	return FDBKey{VNI: f.VNI, MAC: f.MAC}
}

// Compare orders keys (for deterministic plans).
func (k FDBKey) Compare(o FDBKey) int {
	if k.VNI != o.VNI {
		return cmp.Compare(k.VNI, o.VNI)
	}
	if k.MAC != o.MAC {
		return strings.Compare(k.MAC, o.MAC)
	}
	return k.VTEP.Compare(o.VTEP)
}

func (f FDB) String() string { return fmt.Sprintf("fdb vni %d %s -> %s", f.VNI, f.MAC, f.VTEP) }

// Neigh is a permanent neighbour entry on a network's vxlan device, answered
// locally by the device's ARP/ND proxy. Proxy marks instead an IPv6
// address the bridge of an encrypted network answers Neighbour
// Discovery for with its own MAC (a proxy entry, no MAC of its own), as
// it answers ARP for every IPv4 address routed into the tunnel.
type Neigh struct {
	VNI   uint32     `json:"vni"`
	IP    netip.Addr `json:"ip"`
	MAC   string     `json:"mac"`
	Proxy bool       `json:"proxy,omitempty"`
}

// NeighKey identifies a neighbour entry.
type NeighKey struct {
	VNI uint32
	IP  netip.Addr
}

// Key identifies the entry.
func (n Neigh) Key() NeighKey { return NeighKey{VNI: n.VNI, IP: n.IP} }

// Compare orders keys (for deterministic plans).
func (k NeighKey) Compare(o NeighKey) int {
	if k.VNI != o.VNI {
		return cmp.Compare(k.VNI, o.VNI)
	}
	return k.IP.Compare(o.IP)
}

func (n Neigh) String() string {
	if n.Proxy {
		return fmt.Sprintf("neigh vni %d %s proxied by the bridge", n.VNI, n.IP)
	}
	return fmt.Sprintf("neigh vni %d %s -> %s", n.VNI, n.IP, n.MAC)
}

// EndpointSpec is a local container interface to attach.
type EndpointSpec struct {
	ID  string `json:"id"`
	VNI uint32 `json:"vni"`
	// Netns is the path of the container's network namespace. Empty means
	// the container end stays in the host namespace, named IfName, for a
	// runtime (Docker) to move and configure itself.
	Netns   string       `json:"netns"`
	IfName  string       `json:"ifname"`
	MAC     string       `json:"mac"`
	IP      netip.Prefix `json:"ip"`
	IP6     netip.Prefix `json:"ip6,omitzero"`
	Gateway netip.Addr   `json:"gateway"`
	// Gateway6 is optional.
	Gateway6 netip.Addr `json:"gateway6,omitzero"`
	MTU      int        `json:"mtu"`
}

// Port is a local endpoint's host-side interface as observed.
type Port struct {
	ID     string `json:"id"`
	VNI    uint32 `json:"vni"`
	HostIf string `json:"hostIf"`
	// Shaped: the host end carries traffic control that vxnet did not
	// put there (a qdisc, such as the CNI bandwidth plugin's). The fast
	// path leaves such a port to the bridge path, where the shaping holds.
	// Observed only where the fast path is loaded.
	Shaped bool `json:"shaped,omitempty"`
}

// HostIfName returns the host-side veth name of an endpoint ID.
func HostIfName(id string) string { return "vxv" + shortHash(id) }

// shortHash is FNV-1a (32 bit) as 8 hex digits: stable and short enough
// for IFNAMSIZ.
func shortHash(s string) string {
	h := fnv.New32a()
	h.Write([]byte(s))
	return fmt.Sprintf("%08x", h.Sum32())
}

// Observed is what is programmed now on the devices vxnet owns.
type Observed struct {
	Networks map[uint32]NetworkSpec `json:"networks"`
	FDB      []FDB                  `json:"fdb"`
	Neigh    []Neigh                `json:"neigh"`
	Ports    []Port                 `json:"ports"`
	// Routes are vxnet's host routes into the tunnel.
	Routes []Route `json:"routes,omitempty"`
	// Firewall is vxnet's nftables table, nil when absent.
	Firewall *Firewall `json:"firewall,omitempty"`
	// HostFirewall is what vxnet added to the host's iptables, nil when
	// nothing.
	HostFirewall *HostFirewall `json:"hostFirewall,omitempty"`
	// Openings are vxnet's accepts in the host's filters, nil when none.
	Openings *Openings `json:"openings,omitempty"`
	// FastPath is the BPF fast path's state: nil where the dataplane has
	// none, its hooks and entries where it has.
	FastPath *FastPath `json:"fastPath,omitempty"`
	// Tunnel is the WireGuard device, nil when there is none.
	Tunnel *Tunnel `json:"tunnel,omitempty"`
	// Foreign are the VXLAN devices vxnet did not make, sorted by name.
	Foreign []model.ForeignVXLAN `json:"foreign,omitempty"`
}

// FastPath is what the BPF fast path holds on a host: the devices whose
// ingress runs the program, and where unicast frames for each known MAC
// go straight to.
type FastPath struct {
	Hooks   []FastHook  `json:"hooks"`
	Entries []FastEntry `json:"entries"`
}

// FastHook is the fast path's program at the ingress of a device (the
// host end of a local port, or a network's vxlan device) of network VNI,
// or (Underlay, VNI 0) of the underlay device, where it unwraps the VXLAN
// a member's VTEP sends to a local MAC, for every network.
type FastHook struct {
	Dev      string `json:"dev"`
	VNI      uint32 `json:"vni"`
	Vxlan    bool   `json:"vxlan,omitempty"`
	Underlay bool   `json:"underlay,omitempty"`
	// Index and Stale are observed only: the device's ifindex, and
	// whether what is there is not (or not only) this dataplane's
	// program with this entry (a detached program, a previous agent's,
	// a device that is gone).
	Index int  `json:"index,omitempty"`
	Stale bool `json:"stale,omitempty"`
}

// Want is the hook as a pass wants it (observed-only fields cleared).
func (h FastHook) Want() FastHook {
	return FastHook{Dev: h.Dev, VNI: h.VNI, Vxlan: h.Vxlan, Underlay: h.Underlay}
}

// FastEntry sends unicast frames for MAC, in network VNI, straight to Dev:
// the vxlan device for a remote MAC, a local port's host end (into its
// container) for a local one. A remote MAC's VTEP lets the program wrap
// the frame itself (VXLAN over IPv4, from the vxlan device's local address
// and port, out through its underlay device) instead of handing it to the
// vxlan device, and lets it unwrap, on the underlay device, what that VTEP
// sends from this MAC.
type FastEntry struct {
	VNI    uint32     `json:"vni"`
	MAC    string     `json:"mac"`
	Dev    string     `json:"dev"`
	Remote bool       `json:"remote,omitempty"`
	VTEP   netip.Addr `json:"vtep,omitzero"`
}

// FastKey identifies a fast entry.
type FastKey struct {
	VNI uint32
	MAC string
}

// Key identifies the entry.
func (e FastEntry) Key() FastKey { return FastKey{VNI: e.VNI, MAC: e.MAC} }

// Compare orders keys (for deterministic plans).
func (k FastKey) Compare(o FastKey) int {
	if k.VNI != o.VNI {
		return cmp.Compare(k.VNI, o.VNI)
	}
	return strings.Compare(k.MAC, o.MAC)
}

func (e FastEntry) String() string {
	if e.VTEP.IsValid() {
		return fmt.Sprintf("fast vni %d %s -> %s (vtep %s)", e.VNI, e.MAC, e.Dev, e.VTEP)
	}
	return fmt.Sprintf("fast vni %d %s -> %s", e.VNI, e.MAC, e.Dev)
}

// Dataplane programs the kernel of one host. Every method is idempotent.
type Dataplane interface {
	// Observe reads the state of every vxnet-owned device.
	Observe() (Observed, error)
	// EnsureNetwork creates or corrects a network's bridge and vxlan device.
	// It refuses (ErrNotOwned) to touch a same-named device vxnet did not create.
	EnsureNetwork(NetworkSpec) error
	// DeleteNetwork removes a network's devices; absent devices are no error.
	DeleteNetwork(vni uint32) error
	// SetFDB adds or replaces an FDB entry.
	SetFDB(FDB) error
	DelFDB(FDB) error
	// SetNeigh adds or replaces a permanent neighbour entry.
	SetNeigh(Neigh) error
	DelNeigh(Neigh) error
	// Attach plugs a container namespace into a network.
	Attach(EndpointSpec) (Port, error)
	// Detach removes an endpoint's interfaces; an absent one is no error.
	Detach(id string) error
	// EnsureFirewall installs vxnet's firewall, replacing what was there
	// in one transaction; RemoveFirewall takes it away.
	EnsureFirewall(Firewall) error
	RemoveFirewall() error
	// EnsureHostFirewall makes the host's own packet filter (iptables,
	// whichever backend the host uses) pass vxnet's traffic, replacing
	// vxnet's rules there at once; RemoveHostFirewall takes them away and
	// leaves every other rule alone.
	EnsureHostFirewall(HostFirewall) error
	RemoveHostFirewall() error
	// EnsureOpenings puts vxnet's accepts into the host's filters, replacing
	// its earlier ones; RemoveOpenings takes them all away. Neither touches
	// another rule.
	EnsureOpenings(Openings) error
	RemoveOpenings() error
	// SetFastHook runs the fast path's program at a device's ingress;
	// DelFastHook takes it off (by Index when set). Both fail where the
	// dataplane has no fast path loaded, except that DelFastHook removes
	// programs left by an earlier one.
	SetFastHook(FastHook) error
	DelFastHook(FastHook) error
	// SetFastEntry adds or replaces a fast path MAC entry; DelFastEntry
	// removes one (absent: no error).
	SetFastEntry(FastEntry) error
	DelFastEntry(FastEntry) error
	// EnsureTunnel creates or corrects the WireGuard device, changing only
	// what differs; RemoveTunnel deletes it (absent: no error).
	EnsureTunnel(Tunnel) error
	RemoveTunnel(dev string) error
	// SetRoute adds or replaces a route into the tunnel; DelRoute removes
	// one (absent: no error).
	SetRoute(Route) error
	DelRoute(Route) error
}

// NotOwnedError reports a device that exists but was not created by vxnet.
type NotOwnedError struct{ Device string }

func (e *NotOwnedError) Error() string {
	return fmt.Sprintf("device %s exists and was not created by vxnet; refusing to modify it (remove or rename it)", e.Device)
}

// Alias builds the owner alias of a device.
func Alias(kind, name string) string { return OwnerPrefix + kind + ":" + name }

// ParseAlias splits an owner alias; ok is false for devices vxnet did not create.
func ParseAlias(alias string) (kind, name string, ok bool) {
	rest, found := strings.CutPrefix(alias, OwnerPrefix)
	if !found {
		return "", "", false
	}
	kind, name, ok = strings.Cut(rest, ":")
	return kind, name, ok
}

// Firewall is vxnet's packet filter on a host (nftables table inet vxnet).
type Firewall struct {
	// Isolate lists, sorted, the VNIs whose bridges may not be routed to
	// the bridge of another network.
	Isolate []uint32 `json:"isolate"`
	// Port is the VXLAN UDP port; VXLAN packets are accepted only from VTEPs.
	Port int `json:"port"`
	// VTEPs lists, sorted, the member addresses VXLAN is accepted from.
	VTEPs []netip.Addr `json:"vteps"`
	// Internal lists, sorted, the VNIs of networks with no way out: nothing
	// is routed from or to their bridges.
	Internal []uint32 `json:"internal,omitempty"`
	// Notrack takes VXLAN between members (both ways, on Port) out of
	// connection tracking: the outer UDP of every frame would otherwise
	// cost a lookup and, per inner flow, an entry in the host's table.
	Notrack bool `json:"notrack,omitempty"`
	// Encrypted lists, sorted by VNI, the encrypted networks, routed
	// through the tunnel device TunnelDev: VXLAN with their VNIs is never
	// accepted, whoever sends it, and only a
	// network's own addresses cross between its bridge and the tunnel;
	// nothing else is routed into or out of the tunnel.
	Encrypted []EncryptedNet `json:"encrypted,omitempty"`
	TunnelDev string         `json:"tunnelDev,omitempty"`
}

// EncryptedNet is an encrypted network in the firewall (Subnet6: a
// dual-stack one's IPv6 subnet).
type EncryptedNet struct {
	VNI     uint32       `json:"vni"`
	Subnet  netip.Prefix `json:"subnet"`
	Subnet6 netip.Prefix `json:"subnet6,omitzero"`
}

// Equal compares two firewalls.
func (f Firewall) Equal(o Firewall) bool {
	return f.Port == o.Port && slices.Equal(f.Isolate, o.Isolate) && slices.Equal(f.VTEPs, o.VTEPs) &&
		slices.Equal(f.Internal, o.Internal) && f.Notrack == o.Notrack &&
		slices.Equal(f.Encrypted, o.Encrypted) && f.TunnelDev == o.TunnelDev
}

// Openings are vxnet's accepts in the host's own packet filter, in every
// place where it may drop: the host's iptables (INPUT) and the input and
// forward chains of every other nftables table (a native ruleset,
// firewalld's). A drop in any base chain is final whatever other tables
// accept, so an accept must sit in each chain that can drop. They open only
// what vxnet needs: VXLAN from members, gossip, containers' DNS queries to
// the agent, and forwarding out of vxnet's bridges and back in (what
// crosses between them is still vxnet's own firewall's to decide).
type Openings struct {
	// VXLANPort and VTEPs: VXLAN is accepted from these members.
	VXLANPort int          `json:"vxlanPort"`
	VTEPs     []netip.Addr `json:"vteps"`
	// GossipPort is opened (TCP and UDP) to any address: a joining host is
	// no member yet, and gossip without the cluster key is refused by the
	// agent. 0: none (etcd).
	GossipPort int `json:"gossipPort,omitempty"`
	// DNSPort is the agent's resolver, opened to the containers of vxnet's
	// bridges (0: none).
	DNSPort uint16 `json:"dnsPort,omitempty"`
	// TunnelPort is the WireGuard port, opened (UDP) to any address: the
	// handshake admits only members. What comes out of TunnelDev is
	// forwarded to vxnet's bridges (vxnet's own table decides which).
	// Zero, "": no tunnel.
	TunnelPort int    `json:"tunnelPort,omitempty"`
	TunnelDev  string `json:"tunnelDev,omitempty"`
	// Chains names, as observed, the host's chains that hold the openings
	// ("iptables filter INPUT", "inet filter input", ...).
	Chains []string `json:"chains,omitempty"`
	// Incomplete marks an observed state that is not what vxnet wrote.
	Incomplete bool `json:"incomplete,omitempty"`
}

// Equal compares two openings (not the chains they were found in; the
// VXLAN port only where there is a member to open it to).
func (o Openings) Equal(p Openings) bool {
	return (o.VXLANPort == p.VXLANPort || len(o.VTEPs) == 0) && slices.Equal(o.VTEPs, p.VTEPs) &&
		o.GossipPort == p.GossipPort && o.DNSPort == p.DNSPort && o.TunnelPort == p.TunnelPort && o.TunnelDev == p.TunnelDev &&
		!o.Incomplete && !p.Incomplete
}

// HostFirewall is what vxnet adds to the host's own packet filter so that
// its traffic passes a host that drops forwarded traffic by default (as
// dockerd, ufw and firewalld make it), reaches out, and is reached through
// published ports: per network, forwarding on its bridge (and out of it,
// source-NATed to the host's address, unless internal); per published
// port, a destination NAT at the host's addresses and its forwarding.
type HostFirewall struct {
	// Networks, sorted by VNI.
	Networks []HostNet `json:"networks"`
	// Ports, sorted by protocol and host port.
	Ports []PublishedPort `json:"ports,omitempty"`
	// DNSPort is the local port of the agent's resolver: DNS queries
	// from the networks' containers, to whatever server, are redirected to
	// it at their gateway address (0: not redirected).
	DNSPort uint16 `json:"dnsPort,omitempty"`
	// Incomplete marks an observed state that lacks rules vxnet writes
	// (flushed or deleted by someone): it equals nothing wanted.
	Incomplete bool `json:"incomplete,omitempty"`
}

// HostNet is one network in the host firewall.
type HostNet struct {
	VNI     uint32       `json:"vni"`
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"`
	// Egress lets the network's containers out through the host, NATed.
	Egress bool `json:"egress"`
	// Tunnel is the WireGuard device an encrypted network is routed
	// through: forwarded both ways between it and the bridge, never NATed.
	Tunnel string `json:"tunnel,omitempty"`
	// Subnet6 is a dual-stack network's IPv6 subnet: its rules go in the
	// host's ip6tables too (forwarding on the bridge; egress masqueraded
	// to the host's IPv6 address).
	Subnet6 netip.Prefix `json:"subnet6,omitzero"`
	// Gateway6 is its IPv6 gateway: containers' DNS queries to it are
	// redirected to the resolver as the IPv4 gateway's are.
	Gateway6 netip.Addr `json:"gateway6,omitzero"`
}

// PublishedPort is a local container port reachable at the host's
// addresses.
type PublishedPort struct {
	VNI      uint32     `json:"vni"`
	Proto    string     `json:"proto"`
	HostPort uint16     `json:"hostPort"`
	IP       netip.Addr `json:"ip"`
	Port     uint16     `json:"port"`
	// IP6 is the container's IPv6 address (dual stack): the port answers
	// at the host's IPv6 addresses too.
	IP6 netip.Addr `json:"ip6,omitzero"`
}

// Equal compares two host firewalls.
func (h HostFirewall) Equal(o HostFirewall) bool {
	return h.Incomplete == o.Incomplete && h.DNSPort == o.DNSPort && slices.Equal(h.Networks, o.Networks) && slices.Equal(h.Ports, o.Ports)
}
