package config

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/vxnet/vxnet/internal/model"
)

// Flags are the agent's command line: Register puts them on a flag set
// with the defaults, Build makes the configuration once they are parsed.
type Flags struct {
	cfg          Agent
	configFile   string
	advertise    []string
	join         string
	keyFile      string
	dockerSocket string
	healthSubnet string
	datapath     string
	store        string
	// Prepare is --prepare: make what must exist in the host's mount
	// namespace, and exit.
	Prepare bool
	// gossipPortSet: --gossip-port given (flag or file).
	gossipPortSet bool
}

// Register adds the agent's flags to fs.
func (f *Flags) Register(fs *pflag.FlagSet) {
	c := &f.cfg
	fs.StringVar(&f.configFile, "config", "", "JSON file of flag values, e.g. {\"join\": \"10.0.0.1\", \"key-file\": \""+KeyFile+"\"}")
	fs.StringVar(&c.Name, "name", "", "node name (default: hostname)")
	fs.StringSliceVar(&f.advertise, "advertise-addr", nil, "address peers reach this host at (VXLAN, gossip, tunnel); default: the source address of the default route. Repeat it (or give a comma-separated list) for a host reached at several, the preferred first (private before public): each peer uses the first that answers. An address the host does not have (a 1:1 NAT's public one) is reached through the host's own, which is then listed first")
	fs.StringVar(&f.join, "join", "", "addresses of members to join, comma separated")
	fs.StringVar(&c.EtcdTLS.CA, "etcd-cacert", "", "CA bundle that signed the etcd servers' certificates (TLS to etcd; without it: plain HTTP)")
	fs.StringVar(&c.EtcdTLS.Cert, "etcd-cert", "", "client certificate to present to etcd (with --etcd-key)")
	fs.StringVar(&c.EtcdTLS.Key, "etcd-key", "", "private key of --etcd-cert")
	fs.StringVar(&f.store, "store", "gossip", "where the cluster state lives: gossip (members gossip it), or etcd://HOST:PORT[,HOST:PORT...] (an etcd cluster you run)")
	fs.StringVar(&f.keyFile, "key-file", "", "cluster key file (from 'vxnet key generate')")
	fs.BoolVar(&c.Insecure, "insecure", false, "run gossip without encryption")
	fs.StringVar(&c.StateDir, "state-dir", StateDir, "state directory")
	fs.StringVar(&c.Socket, "socket", Socket, "local API socket")
	fs.IntVar(&c.VXLANPort, "vxlan-port", VXLANPort, "VXLAN UDP port")
	fs.IntVar(&c.GossipPort, "gossip-port", GossipPort, fmt.Sprintf("gossip port (TCP and UDP); by default a host keeps the port it gossiped on before, and one upgraded from a release before this default keeps %d", LegacyGossipPort))
	fs.StringVar(&c.DockerHost, "docker-host", "", "local dockerd API socket (e.g. unix:///var/run/docker.sock): keep its vxnet networks equal to the cluster's")
	fs.StringVar(&f.dockerSocket, "docker-plugin-socket", "auto", "Docker network/IPAM driver socket: a path, 'auto' ("+PluginSocket+" when /run/docker exists) or 'none'")
	fs.DurationVar(&c.ProbeInterval, "probe-interval", time.Second, "failure detection probe interval")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (host:port, e.g. 127.0.0.1:9630)")
	fs.Uint16Var(&c.DNSPort, "dns-port", DNSPort, "local port of the resolver of container names (containers' DNS queries are redirected to it at their gateway); 0 turns names off")
	fs.DurationVar(&c.ResyncInterval, "resync-interval", 10*time.Second, "period of the full reconcile pass")
	fs.StringVar(&f.healthSubnet, "health-subnet", HealthSubnet, "subnet of the health network (one probe endpoint per host; the same on every host; no address of it appears on the hosts), or off")
	fs.StringVar(&c.HealthNetns, "health-netns", HealthNetns, "name of the network namespace of this host's health endpoint (/run/netns/NAME)")
	fs.DurationVar(&c.HealthInterval, "health-interval", time.Second, "health probe period")
	fs.BoolVar(&c.ManageHostFirewall, "manage-host-firewall", true, "open what vxnet needs in the host's own filters (iptables INPUT, the input and forward chains of other nftables tables such as firewalld's): VXLAN from members, gossip, containers' DNS and forwarding; false: you open them yourself")
	fs.IntVar(&c.TunnelPort, "tunnel-port", model.DefaultTunnelPort, "UDP port of this host's WireGuard device, which carries the encrypted networks (0: none here; encrypted networks are then not programmed on this host)")
	fs.BoolVar(&c.NoInbound, "no-inbound", false, "this host accepts no inbound traffic (behind a router that masquerades, no port forwarded): it keeps its NAT's mappings open to every member, which reach it through them; it carries encrypted networks only (clear VXLAN cannot cross such a NAT)")
	fs.BoolVar(&c.Notrack, "notrack", true, "take VXLAN between members out of connection tracking (saves a lookup per frame and an entry per inner flow)")
	fs.BoolVar(&c.Unwrap, "fast-unwrap", true, "with the fast path, unwrap members' VXLAN for local containers at the underlay device, before the host's firewall (false: the vxlan device does; for containers that route or bridge on what they receive, such as a VM behind a tap, on kernels whose BPF cannot clear the tunnel's offload state)")
	fs.StringVar(&f.datapath, "datapath", DatapathAuto, "bridge (bridge, veth and vxlan device only), bpf (plus TC-BPF programs that carry unicast within a network past the bridge and the host firewall), or auto (bpf where the kernel runs it)")
	fs.BoolVar(&f.Prepare, "prepare", false, "make what must exist in the host's mount namespace (the health namespace) and exit: run it, with the agent's flags, outside a sandbox that gives the agent a mount namespace of its own (the packaged unit does: ExecStartPre=+)")
}

// Env answers what the defaults of a configuration depend on.
type Env struct {
	Hostname func() (string, error)
	// DefaultAddr is the source address of the default route.
	DefaultAddr func() (netip.Addr, error)
	// HasAddr reports whether an address is on one of the host's
	// interfaces (nil: every address given is taken to be).
	HasAddr func(netip.Addr) bool
	// HasDocker reports whether Docker is installed (/run/docker exists).
	HasDocker func() bool
}

// ApplyConfigFile applies --config, when given, to fs (the command line
// wins); call it once the command line is parsed, before Build.
func (f *Flags) ApplyConfigFile(fs *pflag.FlagSet) error {
	if f.configFile != "" {
		if err := ApplyFile(fs, f.configFile); err != nil {
			return err
		}
	}
	f.gossipPortSet = fs.Changed("gossip-port")
	return nil
}

// HealthSubnet is --health-subnet, parsed (invalid: off).
func (f *Flags) HealthSubnet() (netip.Prefix, error) { return ParseHealthSubnet(f.healthSubnet) }

// HealthNetns is --health-netns.
func (f *Flags) HealthNetns() string { return f.cfg.HealthNetns }

// Datapath is --datapath, to resolve with ChooseDatapath.
func (f *Flags) Datapath() string { return f.datapath }

// Build makes the configuration from the parsed flags (and the file).
func (f *Flags) Build(h Env, log *slog.Logger) (Agent, error) {
	cfg := f.cfg
	cfg.Log = log
	var err error
	if cfg.Name == "" {
		if cfg.Name, err = h.Hostname(); err != nil {
			return cfg, fmt.Errorf("hostname: %w (give --name)", err)
		}
	}
	if cfg.AdvertiseAddr, cfg.Addrs, err = advertised(f.advertise, h); err != nil {
		return cfg, err
	}
	for _, a := range cfg.Addrs {
		if a != cfg.AdvertiseAddr && h.HasAddr != nil && h.HasAddr(a) {
			cfg.Binds = append(cfg.Binds, a)
		}
	}
	for _, j := range strings.Split(f.join, ",") {
		if j = strings.TrimSpace(j); j != "" {
			cfg.Join = append(cfg.Join, j)
		}
	}
	if cfg.Etcd, err = ParseStore(f.store, f.join); err != nil {
		return cfg, err
	}
	if cfg.NoInbound && (len(cfg.Etcd) > 0 || cfg.TunnelPort == 0) {
		return cfg, errors.New("--no-inbound needs the gossip store (its members reach this host through the mappings its probes keep open) and a tunnel (--tunnel-port not 0: only encrypted networks cross a masquerading NAT)")
	}
	if len(cfg.Etcd) > 0 && len(cfg.Addrs) > 0 {
		return cfg, fmt.Errorf("--advertise-addr %s: several addresses, or one this host does not have, need the gossip store (its members probe each other's addresses); with etcd give one address of this host", strings.Join(f.advertise, ","))
	}
	// With etcd, etcd's own TLS secures the state: no cluster key.
	if len(cfg.Etcd) == 0 && f.keyFile != "" {
		if cfg.Keys, err = ReadKeyFile(f.keyFile); err != nil {
			return cfg, err
		}
	} else if len(cfg.Etcd) == 0 && !cfg.Insecure {
		return cfg, fmt.Errorf("no cluster key: give --key-file (create one with 'vxnet key generate > key'), or --insecure to run unencrypted")
	}
	switch f.dockerSocket {
	case "none":
	case "auto":
		// Serve Docker's plugin directory when Docker is installed.
		if h.HasDocker() {
			cfg.DockerPluginSocket = PluginSocket
		}
	default:
		cfg.DockerPluginSocket = f.dockerSocket
	}
	if cfg.HealthSubnet, err = ParseHealthSubnet(f.healthSubnet); err != nil {
		return cfg, err
	}
	if cfg.TunnelPort < 0 || cfg.TunnelPort > 65535 {
		return cfg, fmt.Errorf("invalid --tunnel-port %d: want 1-65535, or 0 for no tunnel", cfg.TunnelPort)
	}
	if !f.gossipPortSet && len(cfg.Etcd) == 0 {
		port, why := GossipPortFor(cfg.StateDir)
		if port != cfg.GossipPort && log != nil {
			log.Info("gossip port kept", "port", port, "why", why)
		}
		cfg.GossipPort = port
	}
	return cfg, nil
}

// GossipPortFor is the gossip port of a node whose flags name none: the
// one recorded in its state directory; LegacyGossipPort for a state
// directory of a release before GossipPort (it has the node's database
// and no record), so that a rolling upgrade keeps the cluster on one port;
// GossipPort for a new node.
func GossipPortFor(stateDir string) (int, string) {
	if b, err := os.ReadFile(filepath.Join(stateDir, GossipPortFile)); err == nil {
		if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && p > 0 && p < 65536 {
			return p, "recorded in " + filepath.Join(stateDir, GossipPortFile)
		}
	}
	if _, err := os.Stat(filepath.Join(stateDir, "vxnet.db")); err == nil {
		return LegacyGossipPort, "this node ran a release before the default moved to " + strconv.Itoa(GossipPort) + "; give --gossip-port to move it"
	}
	return GossipPort, "default"
}

// RecordGossipPort writes the port a node gossips on into its state
// directory, for GossipPortFor.
func RecordGossipPort(stateDir string, port int) error {
	path := filepath.Join(stateDir, GossipPortFile)
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(port) {
		return nil
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("state directory %s: %w", stateDir, err)
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(port)+"\n"), 0o600); err != nil {
		return fmt.Errorf("record the gossip port: %w", err)
	}
	return nil
}

// ApplyFile sets every flag named in a JSON object that the command
// line did not set.
func ApplyFile(fs *pflag.FlagSet, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	vals, err := ParseConfig(b)
	if err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	for k, v := range vals {
		fl := fs.Lookup(k)
		if fl == nil || k == "config" {
			return fmt.Errorf("config file %s: unknown setting %q", path, k)
		}
		if fl.Changed {
			continue
		}
		if err := fs.Set(k, v); err != nil {
			return fmt.Errorf("config file %s: %s: %w", path, k, err)
		}
	}
	return nil
}

// ParseConfig reads a JSON object of flag names to values (strings, numbers
// or booleans).
func ParseConfig(b []byte) (map[string]string, error) {
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("want a JSON object of flag names to values: %w", err)
	}
	out := map[string]string{}
	for k, v := range raw {
		switch x := v.(type) {
		case string:
			out[k] = x
		case bool:
			out[k] = fmt.Sprint(x)
		case float64:
			out[k] = fmt.Sprint(x)
		default:
			return nil, fmt.Errorf("setting %q: want a string, number or boolean", k)
		}
	}
	return out, nil
}

// ReadKeyFile reads the cluster keys of a key file: base64, one a line,
// the primary first; # comments.
func ReadKeyFile(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	var keys [][]byte
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil || (len(k) != 16 && len(k) != 24 && len(k) != 32) {
			return nil, fmt.Errorf("key file %s: each line must be a base64 key of 16, 24 or 32 bytes (make one with 'vxnet key generate')", path)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("key file %s holds no key", path)
	}
	return keys, nil
}

// ParseStore returns the etcd endpoints of --store etcd://..., none for
// gossip; --join belongs to gossip alone.
func ParseStore(s, join string) ([]string, error) {
	if s == "" || s == "gossip" {
		return nil, nil
	}
	if strings.TrimSpace(join) != "" {
		return nil, fmt.Errorf("--join %s: with --store %s members find each other in etcd; --join is for the gossip store", join, s)
	}
	rest, ok := strings.CutPrefix(s, "etcd://")
	if !ok || rest == "" {
		return nil, fmt.Errorf("invalid --store %q: want gossip or etcd://HOST:PORT[,HOST:PORT...]", s)
	}
	var out []string
	for _, ep := range strings.Split(rest, ",") {
		ep = strings.TrimSpace(ep)
		ap, err := netip.ParseAddrPort(ep)
		if err != nil {
			if _, _, herr := net.SplitHostPort(ep); herr != nil || ep == "" {
				return nil, fmt.Errorf("invalid --store %q: etcd endpoint %q is not HOST:PORT", s, ep)
			}
			out = append(out, ep)
			continue
		}
		out = append(out, ap.String())
	}
	return out, nil
}

// ParseHealthSubnet reads --health-subnet: a private IPv4 CIDR, or off.
func ParseHealthSubnet(s string) (netip.Prefix, error) {
	if s == "off" || s == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() || p.Masked() != p || p.Bits() > 28 {
		return netip.Prefix{}, fmt.Errorf("invalid --health-subnet %q: want an IPv4 network such as 100.127.0.0/16 (at most /28), or off", s)
	}
	return p, nil
}
