package reconcile

import (
	"fmt"

	"github.com/vxnet/vxnet/internal/datapath"
)

// OpKind names an operation.
type OpKind int

// Operation kinds, in the order Plan emits them.
const (
	EnsureOpenings OpKind = iota
	EnsureFirewall
	EnsureHostFirewall
	EnsureTunnel
	EnsureNetwork
	SetFDB
	SetNeigh
	SetFastEntry
	SetFastHook
	SetRoute
	DelRoute
	DelFastHook
	DelFastEntry
	DelNeigh
	DelFDB
	DetachPort
	DeleteNetwork
	RemoveHostFirewall
	RemoveFirewall
	RemoveOpenings
	RemoveTunnel
)

var opNames = [...]string{"ensure-openings", "ensure-firewall", "ensure-host-firewall", "ensure-tunnel", "ensure-network", "set-fdb", "set-neigh", "set-fast-entry", "set-fast-hook", "set-route", "del-route", "del-fast-hook", "del-fast-entry", "del-neigh", "del-fdb", "detach", "delete-network", "remove-host-firewall", "remove-firewall", "remove-openings", "remove-tunnel"}

func (k OpKind) String() string { return opNames[k] }

// Op is one kernel change.
type Op struct {
	Kind     OpKind
	Network  datapath.NetworkSpec
	VNI      uint32
	FDB      datapath.FDB
	Neigh    datapath.Neigh
	PortID   string
	Firewall datapath.Firewall
	HostFW   datapath.HostFirewall
	Openings datapath.Openings
	Hook     datapath.FastHook
	Entry    datapath.FastEntry
	Tunnel   datapath.Tunnel
	Route    datapath.Route
}

func (o Op) String() string {
	switch o.Kind {
	case EnsureFirewall, RemoveFirewall, RemoveHostFirewall, RemoveOpenings:
		return o.Kind.String()
	case EnsureOpenings:
		return fmt.Sprintf("%s vteps %d gossip %d", o.Kind, len(o.Openings.VTEPs), o.Openings.GossipPort)
	case EnsureHostFirewall:
		return fmt.Sprintf("%s networks %d ports %d", o.Kind, len(o.HostFW.Networks), len(o.HostFW.Ports))
	case EnsureNetwork:
		return fmt.Sprintf("%s vni %d", o.Kind, o.Network.VNI)
	case SetRoute, DelRoute:
		return fmt.Sprintf("%s %s", o.Kind, o.Route)
	case EnsureTunnel, RemoveTunnel:
		return fmt.Sprintf("%s %s peers %d", o.Kind, o.Tunnel.Dev, len(o.Tunnel.Peers))
	case SetNeigh, DelNeigh:
		return fmt.Sprintf("%s %s", o.Kind, o.Neigh)
	case SetFDB, DelFDB:
		return fmt.Sprintf("%s %s", o.Kind, o.FDB)
	case DetachPort:
		return fmt.Sprintf("%s %s", o.Kind, o.PortID)
	case SetFastHook, DelFastHook:
		return fmt.Sprintf("%s %s vni %d", o.Kind, o.Hook.Dev, o.Hook.VNI)
	case SetFastEntry, DelFastEntry:
		return fmt.Sprintf("%s %s", o.Kind, o.Entry)
	default:
		return fmt.Sprintf("%s vni %d", o.Kind, o.VNI)
	}
}

// Plan returns the operations that take observed to desired: adds before
// deletes, networks before their entries, an FDB entry before the neighbour
// entry that lets the kernel resolve the address (so the first packet after
