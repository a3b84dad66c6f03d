// Package config builds an agent's configuration from its flags, the JSON
// file (/etc/vxnet/agent.json, written by 'vxnet init') and one set of
// defaults, which every command (agent, init, uninstall, doctor) shares.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/model"
)

// The defaults, one place for every command.
const (
	Dir          = "/etc/vxnet"
	File         = Dir + "/agent.json"
	KeyFile      = Dir + "/key"
	StateDir     = "/var/lib/vxnet"
	Socket       = api.DefaultSocket
	PluginSocket = "/run/docker/plugins/vxnet.sock"
	HealthNetns  = "vxnet-health"
	HealthSubnet = "100.127.0.0/16"
	VXLANPort    = 4789
	// GossipPort is the default gossip port: not 7946, which Docker Swarm
	// (and Serf, Consul) hold on the same hosts.
	GossipPort = 7947
	// LegacyGossipPort is the default of releases before GossipPort: a
	// host upgraded from one keeps it (GossipPortFor), and a new host joins
	// such a cluster through it.
	LegacyGossipPort = 7946
	// GossipPortFile, in the state directory, records the port the node
	// gossips on.
	GossipPortFile = "gossip-port"
	DNSPort        = 53533
)

// Agent is an agent's configuration.
type Agent struct {
	Name string
	// AdvertiseAddr is this host's own address that VXLAN and gossip are
	// sent from and bound to (the VTEP address).
	AdvertiseAddr netip.Addr
	// Addrs are the addresses peers reach this host at, in order of
	// preference, when that is not AdvertiseAddr alone (nil then): it may
	// list addresses the host does not have (a 1:1 NAT's public one).
	Addrs []netip.Addr
	// Binds are the addresses of Addrs besides AdvertiseAddr that are on
	// this host (several interfaces): gossip listens at them too, so that
	// peers that reach the host there are answered.
	Binds []netip.Addr
	// NoInbound: the host accepts no inbound traffic (behind a masquerading
	// NAT): it keeps its NAT's mappings open to every member and carries
	// encrypted networks only.
	NoInbound  bool
	Join       []string
	Keys       [][]byte
	Insecure   bool
	StateDir   string
	Socket     string
	VXLANPort  int
	GossipPort int
	// ResyncInterval is the period of the full reconcile pass.
	ResyncInterval time.Duration
	// ProbeInterval tunes gossip failure detection.
	ProbeInterval time.Duration
	// DockerPluginSocket is where the Docker network and IPAM driver is
	// served (empty: not served).
	DockerPluginSocket string
	// DockerHost is the local dockerd's API socket: with it the agent keeps
	// the dockerd's vxnet networks equal to the cluster's.
	DockerHost string
	// DNSPort is the local port of the resolver that answers containers'
	// queries for cluster names (0: no resolver, queries are not redirected).
	DNSPort uint16
	// MetricsAddr is where Prometheus metrics are served (host:port; empty:
	// not served).
	MetricsAddr string
	// HealthSubnet is the subnet of the health network (invalid: no health
	// probes); HealthNetns names the namespace of this host's health
	// endpoint; HealthInterval is the probe period (default 1s).
	HealthSubnet   netip.Prefix
	HealthNetns    string
	HealthInterval time.Duration
	// Etcd holds the etcd client endpoints (HOST:PORT) when the cluster
	// state lives in etcd (--store etcd://...); empty: gossip.
	Etcd    []string
	EtcdTLS EtcdTLS
	// ManageHostFirewall puts vxnet's accepts (VXLAN from members, gossip,
	// containers' DNS and forwarding) into the host's own filters: iptables
	// and every other nftables table's input and forward chains.
	ManageHostFirewall bool
	// Notrack takes VXLAN between members out of connection tracking.
	Notrack bool
	// Unwrap lets the fast path unwrap members' VXLAN for local
	// containers at the underlay device (else the vxlan device does).
	Unwrap bool
	// TunnelPort is the WireGuard device's UDP port (0: no tunnel here);
	// TunnelKey is the host's public key (set once the key is loaded).
	TunnelPort int
	TunnelKey  string
	// Datapath is the datapath chosen (ChooseDatapath); the zero value is
	// the bridge.
	Datapath Datapath
	Log      *slog.Logger
}

// Identity is the address memberlist knows this host at: the last it is
// reached at (the one every peer can reach, when the preferred are
// private).
func (c Agent) Identity() netip.Addr {
	if len(c.Addrs) > 0 {
		return c.Addrs[len(c.Addrs)-1]
	}
	return c.AdvertiseAddr
}

// GossipListen is the port the agent gossips on (0 with etcd: none).
func (c Agent) GossipListen() int {
	if len(c.Etcd) > 0 {
		return 0
	}
	return c.GossipPort
}

// EtcdTLS are the files of TLS to etcd: the CA that signed the servers'
// certificates (TLS on when set) and a client certificate and key.
type EtcdTLS struct{ CA, Cert, Key string }

// Validate checks the configuration.
func (c Agent) Validate() error {
	if err := model.ValidateName("node", c.Name); err != nil {
		return err
	}
	if !c.AdvertiseAddr.IsValid() {
		return errors.New("no advertise address: give --advertise-addr")
	}
	if err := model.ValidatePort("VXLAN port", c.VXLANPort); err != nil {
		return err
	}
	if err := model.ValidatePort("gossip port", c.GossipPort); err != nil {
		return err
	}
	if c.StateDir == "" || c.Socket == "" {
		return errors.New("state directory and socket path are required")
	}
	return nil
}

// Datapath modes (--datapath).
const (
	DatapathBridge = "bridge"
	DatapathBPF    = "bpf"
	DatapathAuto   = "auto"
)

// Datapath is the datapath an agent runs and why.
type Datapath struct {
	Mode   string // DatapathBridge or DatapathBPF
	Reason string
}

// ChooseDatapath resolves --datapath: bridge as asked; bpf loads the fast
// path (enable) or fails with why; auto takes bpf where it loads and the
// bridge, saying why, where it does not.
func ChooseDatapath(want string, enable func() error) (Datapath, error) {
	switch want {
	case DatapathBridge:
		return Datapath{DatapathBridge, "--datapath bridge"}, nil
	case DatapathBPF:
		if err := enable(); err != nil {
			return Datapath{}, fmt.Errorf("--datapath bpf: %w (use --datapath bridge or auto on this kernel)", err)
		}
		return Datapath{DatapathBPF, "--datapath bpf"}, nil
	case DatapathAuto, "":
		if err := enable(); err != nil {
			return Datapath{DatapathBridge, "auto: the BPF fast path does not load here: " + err.Error()}, nil
		}
		return Datapath{DatapathBPF, "auto: this kernel runs the BPF fast path"}, nil
	}
	return Datapath{}, fmt.Errorf("invalid --datapath %q: want bridge, bpf or auto", want)
}
