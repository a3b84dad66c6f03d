// Package lab builds N vxnet hosts on one machine out of network namespaces:
// an underlay switch (a bridge in its own namespace), host namespaces joined
// to it by veth and addressed from 198.18.0.0/15, and container namespaces
// attached to vxnet networks on every host. Everything it makes carries the
// prefix "vxl-NAME-" so Down can remove it all, also after a crash.
package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
)

// StateDir holds one JSON file per lab.
const StateDir = "/run/vxnet-lab"

// Underlay addressing: host i is 198.18.0.i/24 (the benchmarking range).
var underlayNet = netip.MustParsePrefix("198.18.0.0/24")

// underlayNet6 is the lab's IPv6 underlay (Config.Underlay6): from the IPv6
// benchmarking range (RFC 5180), as the IPv4 one is from RFC 2544's.
var underlayNet6 = netip.MustParsePrefix("2001:2::/64")

// underlayAddr is the underlay address of host index i (1-250).
func underlayAddr(i int, v6 bool) netip.Addr {
	if v6 {
		a := underlayNet6.Addr().As16()
		a[15] = byte(i)
		return netip.AddrFrom16(a)
	}
	return netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})
}

// UnderlayMTU is the MTU of the lab's underlay links.
const UnderlayMTU = 1500

// Config describes a lab.
type Config struct {
	Name     string
	Hosts    int
	Networks int
	// PerHost is the number of containers per host and network.
	PerHost int
	// Flood enables head-end flooding on every network.
	Flood bool
	// Encrypted lists the networks (1 for n1, ...) that are encrypted.
	Encrypted []int
	// Agent runs one real vxnet agent per host (the Binary); otherwise the
	// lab programs every host from its own plan.
	Agent  bool
	Binary string
	// ProbeInterval is the agents' failure-detection probe interval
	// (DefaultProbeInterval when zero).
	ProbeInterval time.Duration
	// Outside adds a machine on the underlay that is no member (namespace
	// NAME-out, OutsideAddr): the "internet" of egress, published-port and
	// DNS tests.
	Outside bool
	// NoHealth runs the agents without health probes (they probe by
	// default, as real agents do).
	NoHealth bool
	// Etcd runs an etcd cluster of this many members (each in a namespace
	// on the underlay) and the agents with --store etcd://...
	Etcd int
	// Datapath is the agents' --datapath (bridge, bpf, auto; empty: the
	// agent's default), or, without agents, bpf to program the fast path.
	Datapath string
	// IPv6 makes every network dual-stack (NetworkDef's IPv6 subnet):
	// each container gets an IPv6 address too.
	IPv6 bool
	// Underlay6 addresses the hosts from an IPv6 underlay alone
	// (underlayNet6): the agents advertise, gossip and carry VXLAN over
	// IPv6. Not with Outside or Etcd.
	Underlay6 bool
	// Sandbox runs the agents as the packaged unit does (SandboxUnit) or
	// under 'ip netns exec' (SandboxNetnsExec); empty: as from a shell.
	Sandbox string
	// HostFirewall gives every host a firewall of one common kind
	// (HostFirewalls) before its agent starts; empty: none.
	HostFirewall string
	// Sites puts the hosts on two sites, each behind a router with 1:1 NAT
	// (sites.go); every agent is reached at its private and its public
	// address.
	Sites bool
	// Masqueraded adds this many hosts to a two-site lab, on a third site
	// whose router masquerades (no inbound traffic): their agents run with
	// --no-inbound and they have containers on encrypted networks only.
	Masqueraded int
	// DefaultGossipPort runs the agents without --gossip-port (each takes
	// its release's default, or the port its state directory says).
	DefaultGossipPort bool
	Log               *slog.Logger
}

// OutsideAddr is the underlay address of the lab's outside machine, and
// the upstream DNS server every lab dockerd is given (so no container ever
// asks this machine's resolver).
var OutsideAddr = netip.AddrFrom4([4]byte{198, 18, 0, 200})

// DefaultProbeInterval is the lab agents' probe interval: half the
// agent's default, so failure tests finish sooner.
const DefaultProbeInterval = 500 * time.Millisecond

var labNameRE = regexp.MustCompile(`^[a-z0-9]{1,10}$`)

// Validate checks a lab configuration.
func (c Config) Validate() error {
	if !labNameRE.MatchString(c.Name) {
		return fmt.Errorf("invalid lab name %q: want 1-10 lowercase letters or digits", c.Name)
	}
	if c.Hosts < 1 || c.Hosts > 250 {
		return fmt.Errorf("invalid host count %d: must be between 1 and 250", c.Hosts)
	}
	if c.Networks < 1 || c.Networks > 200 {
		return fmt.Errorf("invalid network count %d: must be between 1 and 200", c.Networks)
	}
	if c.Agent && c.Binary == "" {
		return fmt.Errorf("agent mode needs the vxnet binary to run")
	}
	switch c.Datapath {
	case "", "bridge", "bpf", "auto":
	default:
		return fmt.Errorf("invalid datapath %q: want bridge, bpf or auto", c.Datapath)
	}
	if c.Underlay6 && (c.Outside || c.Etcd > 0) {
		return fmt.Errorf("an IPv6 underlay lab has no outside machine and no etcd members")
	}
	switch c.Sandbox {
	case SandboxNone, SandboxUnit, SandboxNetnsExec:
	default:
		return fmt.Errorf("invalid sandbox %q: want %s, %s or none", c.Sandbox, SandboxUnit, SandboxNetnsExec)
	}
	if c.HostFirewall != "" && (!slices.Contains(HostFirewalls, c.HostFirewall) || !c.Agent) {
		return fmt.Errorf("invalid host firewall %q: want one of %s, with agents", c.HostFirewall, strings.Join(HostFirewalls, ", "))
	}
	if c.Etcd < 0 || c.Etcd > 5 || (c.Etcd > 0 && !c.Agent) {
		return fmt.Errorf("invalid etcd member count %d: want 0-5, with agents", c.Etcd)
	}
	for _, j := range c.Encrypted {
		if j < 1 || j > c.Networks || !c.Agent {
			return fmt.Errorf("invalid encrypted network %d: want one of 1-%d, with agents", j, c.Networks)
		}
	}
	if c.Sites && (c.Hosts < 2 || c.Hosts > 40 || !c.Agent || c.Underlay6 || c.Outside || c.Etcd > 0) {
		return fmt.Errorf("a two-site lab needs 2-40 hosts with agents, an IPv4 underlay, no outside machine and no etcd")
	}
	if c.Masqueraded < 0 || c.Masqueraded > 4 || (c.Masqueraded > 0 && (!c.Sites || len(c.Encrypted) == 0)) {
		return fmt.Errorf("invalid masqueraded host count %d: want 0-4, in a two-site lab with an encrypted network", c.Masqueraded)
	}
	if c.PerHost < 0 || c.Hosts*c.PerHost > 200 {
		return fmt.Errorf("invalid containers per host %d: hosts x containers must be at most 200", c.PerHost)
	}
	return nil
}

// Host is one lab host.
type Host struct {
	Name  string     `json:"name"`
	Netns string     `json:"netns"`
	Addr  netip.Addr `json:"addr"`
	// Public is the host's address on its router's 1:1 NAT and Site its
	// site (1 or 2), in a two-site lab (Config.Sites).
	Public netip.Addr `json:"public,omitzero"`
	Site   int        `json:"site,omitempty"`
	// NoInbound: behind a masquerading router (Config.Masqueraded).
	NoInbound bool `json:"noInbound,omitempty"`
	// Addr6 is a second, IPv6 address on the underlay of a dual-stack lab
	// with an IPv4 underlay (Config.IPv6): the agents do not advertise it;
	// the hosts' containers reach the outside machine over IPv6 through it.
	Addr6  netip.Addr `json:"addr6,omitzero"`
	Socket string     `json:"socket,omitempty"`
	PID    int        `json:"pid,omitempty"`
	Dir    string     `json:"dir,omitempty"`
}

// Container is one lab container.
type Container struct {
	Name    string     `json:"name"`
	ID      string     `json:"id,omitempty"` // endpoint ID (agent mode)
	Host    string     `json:"host"`
	Network string     `json:"network"`
	Netns   string     `json:"netns"`
	IP      netip.Addr `json:"ip"`
	IP6     netip.Addr `json:"ip6,omitzero"` // on a dual-stack network
	MAC     string     `json:"mac"`
}

// Lab is a built lab, as saved in its state file.
type Lab struct {
	Name       string          `json:"name"`
	Prefix     string          `json:"prefix"`
	Switch     string          `json:"switch"`
	Hosts      []Host          `json:"hosts"`
	Networks   []model.Network `json:"networks"`
	Containers []Container     `json:"containers"`
	Agent      bool            `json:"agent"`
	Binary     string          `json:"binary,omitempty"`
	// ProbeInterval of the agents (DefaultProbeInterval when zero).
	ProbeInterval time.Duration `json:"probeInterval,omitempty"`
	// Outside is the machine on the underlay that is no member, when asked for.
	Outside *Host `json:"outside,omitempty"`
	// NoHealth: agents run with --health-subnet off.
	NoHealth bool `json:"noHealth,omitempty"`
	// Etcd are the etcd members, when the agents keep their state there.
	Etcd []Host `json:"etcd,omitempty"`
	// Datapath is the agents' --datapath (empty: their default).
	Datapath string `json:"datapath,omitempty"`
	// Underlay6: the hosts' underlay is IPv6 alone.
	Underlay6 bool `json:"underlay6,omitempty"`
	// Sandbox is how agents (re)started from now on are run: SandboxNone,
	// SandboxUnit or SandboxNetnsExec.
	Sandbox string `json:"sandbox,omitempty"`
	// HostFirewall is the hosts' own firewall (Config.HostFirewall).
	HostFirewall string `json:"hostFirewall,omitempty"`
	// DefaultGossipPort: agents get no --gossip-port.
	DefaultGossipPort bool `json:"defaultGossipPort,omitempty"`
	// AgentArgs are more flags for agents (re)started from now on.
	AgentArgs []string `json:"agentArgs,omitempty"`
}

// Prefix returns the namespace prefix of a lab.
func Prefix(name string) string { return "vxl-" + name + "-" }

// NetworkDef returns the j-th (1-based) lab network.
func NetworkDef(j int, flood bool) model.Network {
	n := model.Network{Name: fmt.Sprintf("net%d", j), VNI: uint32(4096 + j),
		Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(j), 0}), 24), Flood: flood}
	n.Normalize()
	return n
}

// Up builds a lab. On failure everything made so far is removed.
func Up(cfg Config) (l *Lab, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if existing, _ := nsutil.List(Prefix(cfg.Name)); len(existing) > 0 {
		return nil, fmt.Errorf("lab %q already exists (%d namespaces); run 'vxnet lab down --name %s' first", cfg.Name, len(existing), cfg.Name)
	}
	p := Prefix(cfg.Name)
	l = &Lab{Name: cfg.Name, Prefix: p, Switch: p + "sw", Agent: cfg.Agent, ProbeInterval: cfg.ProbeInterval, NoHealth: cfg.NoHealth,
		Datapath: cfg.Datapath, Sandbox: cfg.Sandbox, Underlay6: cfg.Underlay6, HostFirewall: cfg.HostFirewall,
		DefaultGossipPort: cfg.DefaultGossipPort}
	defer func() {
		if err != nil && os.Getenv("VXNET_LAB_KEEP_FAILED") != "" {
			cfg.Log.Error("lab up failed; kept as VXNET_LAB_KEEP_FAILED asks", "name", cfg.Name)
			return
		}
		if err != nil {
			if derr := Down(cfg.Name); derr != nil {
				cfg.Log.Error("cleanup after failed lab up", "err", derr)
			}
		}
	}()
	if err := os.MkdirAll(StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", StateDir, err)
	}
	swPath, err := nsutil.Create(l.Switch)
	if err != nil {
		return nil, err
	}
	sw, err := nsutil.Handle(swPath)
	if err != nil {
		return nil, err
	}
	defer sw.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = "sw0", UnderlayMTU
	br := &netlink.Bridge{LinkAttrs: attrs}
	if err := sw.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("create underlay switch: %w", err)
	}
	if err := sw.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("underlay switch up: %w", err)
	}
	for i := 1; i <= cfg.Hosts && !cfg.Sites; i++ {
		h, err := addHost(sw, br, p, fmt.Sprintf("h%d", i), underlayAddr(i, cfg.Underlay6))
		if err != nil {
			return nil, err
		}
		l.Hosts = append(l.Hosts, h)
	}
	if cfg.Sites {
		if err := l.buildSites(sw, cfg.Hosts, cfg.Masqueraded); err != nil {
			return nil, err
		}
	}
	if cfg.Outside {
		out, err := addHost(sw, br, p, "out", OutsideAddr)
		if err != nil {
			return nil, err
		}
		l.Outside = &out
	}
	for i := 1; i <= cfg.Etcd; i++ {
		h, err := addHost(sw, br, p, fmt.Sprintf("etcd%d", i), EtcdAddr(i))
		if err != nil {
			return nil, err
		}
		h.Dir = filepath.Join(l.dir(), h.Name)
		l.Etcd = append(l.Etcd, h)
	}
	if err := staticUnderlayNeighbours(l.Hosts); err != nil && !cfg.Sites {
		return nil, err
	}
	if cfg.IPv6 && !cfg.Underlay6 && !cfg.Sites {
		if err := l.addUnderlay6(); err != nil {
			return nil, err
		}
	}
	for j := 1; j <= cfg.Networks; j++ {
		n := NetworkDef(j, cfg.Flood)
		n.Encrypted = slices.Contains(cfg.Encrypted, j)
		if cfg.IPv6 {
			n.Subnet6 = Subnet6Def(j)
			n.Normalize()
		}
		l.Networks = append(l.Networks, n)
	}
	for hi, h := range l.Hosts {
		for j := range l.Networks {
			if h.NoInbound && !l.Networks[j].Encrypted {
				continue // refused there: clear VXLAN does not cross its NAT
			}
			for k := 1; k <= cfg.PerHost; k++ {
				idx := hi*cfg.PerHost + k
				c := Container{Name: fmt.Sprintf("%s-n%d-c%d", h.Name, j+1, k), Host: h.Name, Network: l.Networks[j].Name,
					IP:  netip.AddrFrom4([4]byte{198, 19, byte(j + 1), byte(10 + idx)}),
					MAC: net.HardwareAddr{0x02, 0xc6, 0x13, byte(j + 1), byte(hi + 1), byte(k)}.String()}
				if cfg.IPv6 {
					c.IP6 = containerIP6(j+1, byte(10+idx))
				}
				if c.Netns, err = nsutil.Create(p + c.Name); err != nil {
					return nil, err
				}
				l.Containers = append(l.Containers, c)
			}
		}
	}
	if err := l.save(); err != nil {
		return nil, err
	}
	if len(l.Etcd) > 0 {
		if err := l.makeEtcdPKI(); err != nil {
			return nil, err
		}
	}
	for i := range l.Etcd {
		if err := l.StartEtcd(i); err != nil {
			return nil, err
		}
	}
	if err := l.WaitEtcd(30 * time.Second); err != nil {
		return nil, err
	}
	if cfg.Agent {
		err = l.startAgents(cfg)
	} else {
		err = l.programStatic(cfg)
	}
	if err != nil {
		return nil, err
	}
	return l, l.save()
}

// openUnderlay opens a netlink handle in host h and finds its underlay
// device; the caller closes the handle.
// staticUnderlayNeighbours gives every lab host a permanent neighbour entry
// for every other host's underlay address. Real hosts each resolve their
// peers in a table of their own; the lab's hosts share one kernel, whose
// limit on dynamic entries (gc_thresh3, 1,024 by default) a full mesh of 32
// hosts alone nearly fills. Permanent entries do not count against it.
// StaticNeighbours gives the lab's hosts and extra ones (synthetic members)
// permanent underlay neighbour entries for each other: at a hundred members
// the shared kernel's table of dynamic entries would overflow.
func (l *Lab) StaticNeighbours(extra []Host) error {
	return staticUnderlayNeighbours(append(slices.Clone(l.Hosts), extra...))
}

func staticUnderlayNeighbours(hosts []Host) error {
	macs := map[netip.Addr]net.HardwareAddr{}
	for _, h := range hosts {
		hh, link, err := openUnderlay(h)
		if err != nil {
			return err
		}
		macs[h.Addr] = link.Attrs().HardwareAddr
		hh.Close()
	}
	for _, h := range hosts {
		hh, link, err := openUnderlay(h)
		if err != nil {
			return err
		}
		for _, o := range hosts {
			if o.Name == h.Name {
				continue
			}
			family := netlink.FAMILY_V4
			if o.Addr.Is6() {
				family = netlink.FAMILY_V6
			}
			n := &netlink.Neigh{LinkIndex: link.Attrs().Index, Family: family, State: netlink.NUD_PERMANENT,
				IP: net.IP(o.Addr.AsSlice()), HardwareAddr: macs[o.Addr]}
			if err := hh.NeighSet(n); err != nil {
				hh.Close()
				return fmt.Errorf("underlay neighbour %s on %s: %w", o.Addr, h.Name, err)
			}
		}
		hh.Close()
	}
	return nil
}

func openUnderlay(h Host) (*netlink.Handle, netlink.Link, error) {
	hh, err := nsutil.Handle(h.Netns)
	if err != nil {
		return nil, nil, err
	}
	eth, err := hh.LinkByName("eth0")
	if err != nil {
		hh.Close()
		return nil, nil, fmt.Errorf("underlay device of %s: %w", h.Name, err)
	}
	return hh, eth, nil
}

// addHost creates host i: a namespace, its underlay link "eth0" plugged into
// the switch, and its address.
func addHost(sw *netlink.Handle, br *netlink.Bridge, prefix, name string, addr netip.Addr) (Host, error) {
	if addr.Is6() {
		return addHostIn(sw, br, prefix, name, netip.PrefixFrom(addr, underlayNet6.Bits()))
	}
	return addHostIn(sw, br, prefix, name, netip.PrefixFrom(addr, underlayNet.Bits()))
}

// addHostIn is addHost with the address's subnet given.
func addHostIn(sw *netlink.Handle, br *netlink.Bridge, prefix, name string, p netip.Prefix) (Host, error) {
	h := Host{Name: name}
	addr := p.Addr()
	path, err := nsutil.Create(prefix + h.Name)
	if err != nil {
		return h, err
	}
	h.Netns = path
	h.Addr = addr
	hostNS, err := netns.GetFromPath(path)
	if err != nil {
		return h, fmt.Errorf("open %s: %w", path, err)
	}
	defer hostNS.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.MasterIndex = h.Name, UnderlayMTU, br.Attrs().Index
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(hostNS), PeerMTU: UnderlayMTU}
	if err := sw.LinkAdd(veth); err != nil {
		return h, fmt.Errorf("underlay link of %s: %w", h.Name, err)
	}
	if err := sw.LinkSetUp(veth); err != nil {
		return h, fmt.Errorf("underlay link of %s up: %w", h.Name, err)
	}
	hh, err := nsutil.Handle(path)
	if err != nil {
		return h, err
	}
	defer hh.Close()
	eth, err := hh.LinkByName("eth0")
	if err != nil {
		return h, fmt.Errorf("eth0 of %s: %w", h.Name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: h.Addr.AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
	if addr.Is6() { // usable at once: no duplicate address detection
		a = &netlink.Addr{IPNet: &net.IPNet{IP: h.Addr.AsSlice(), Mask: net.CIDRMask(p.Bits(), 128)}, Flags: unix.IFA_F_NODAD}
	}
	if err := hh.AddrAdd(eth, a); err != nil {
		return h, fmt.Errorf("address of %s: %w", h.Name, err)
	}
	// Hosts route IP, as Docker hosts do: isolation between networks must
	// come from vxnet's rules, not from a host that happens not to forward.
	// Their underlay link coalesces what it receives (GRO), as every
	// physical NIC's driver does by default (a veth does not).
	if err := nsutil.Do(path, func() error {
		if err := setGRO("eth0"); err != nil {
			return err
		}
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	}); err != nil {
		return h, fmt.Errorf("set up forwarding and GRO on %s: %w", h.Name, err)
	}
	for _, name := range []string{"lo", "eth0"} {
		l, err := hh.LinkByName(name)
		if err == nil {
			err = hh.LinkSetUp(l)
		}
		if err != nil {
			return h, fmt.Errorf("%s of %s up: %w", name, h.Name, err)
		}
	}
	return h, nil
}

func statePath(name string) string { return filepath.Join(StateDir, name+".json") }

func (l *Lab) save() error {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(statePath(l.Name), b, 0o600); err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	return nil
}

// Load reads a lab's state file.
func Load(name string) (*Lab, error) {
	b, err := os.ReadFile(statePath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no lab named %q is up (no %s)", name, statePath(name))
	}
	if err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	var l Lab
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("lab state %s: %w", statePath(name), err)
	}
	return &l, nil
}

// Down removes everything a lab made: the processes in its namespaces, the
// namespaces (and with them every link) and its state. It needs no state
// file, so it also cleans up after a crash.
func Down(name string) error {
	if !labNameRE.MatchString(name) {
		return fmt.Errorf("invalid lab name %q: want 1-10 lowercase letters or digits", name)
	}
	names, err := nsutil.List(Prefix(name))
	if err != nil {
		return err
	}
	var errs []error
	// Again while any is left: a process may start one as it goes (an
	// agent whose tunnel device ended before it starts another).
	for round := 0; round < 3; round++ {
		var pids []int
		for _, n := range names {
			ps, err := nsutil.PIDsIn(nsutil.Path(n))
			if err != nil && round == 0 {
				errs = append(errs, err)
			}
			pids = append(pids, ps...)
		}
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
		if round == 0 {
			killCgroups(Prefix(name))
		}
		waitGone(pids, 3*time.Second)
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		waitGone(pids, 2*time.Second)
	}
	for _, n := range names {
		if err := nsutil.Delete(n); err != nil {
			errs = append(errs, err)
		}
	}
	dir := filepath.Join(StateDir, name)
	// Mounts the lab's daemons left under its directory (podman's storage
	// mounts itself; a daemon killed before it unmounts leaves it).
	if err := unmountUnder(dir); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(statePath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			points = append(points, f[4])
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

func waitGone(pids []int, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		alive := false
		for _, pid := range pids {
			if syscall.Kill(pid, 0) == nil {
				// Reap our own children so they do not linger as zombies.
				var ws syscall.WaitStatus
				if wp, _ := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); wp == pid {
					continue
				}
				alive = true
			}
		}
		if !alive {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Host returns the host of that name.
func (l *Lab) Host(name string) (Host, bool) {
	i, err := l.hostIndex(name)
	if err != nil {
		return Host{}, false
	}
	return l.Hosts[i], true
}

// Container returns the container of that name.
func (l *Lab) Container(name string) (Container, bool) {
	for _, c := range l.Containers {
		if c.Name == name {
			return c, true
		}
	}
	return Container{}, false
}

// hostIndex returns the index of a host in l.Hosts.
func (l *Lab) hostIndex(name string) (int, error) {
	for i := range l.Hosts {
		if l.Hosts[i].Name == name {
			return i, nil
		}
	}
	return -1, fmt.Errorf("no host %q in lab %s", name, l.Name)
}

// Network returns the network of that name.
func (l *Lab) Network(name string) (model.Network, bool) {
	for _, n := range l.Networks {
		if n.Name == name {
			return n, true
		}
	}
	return model.Network{}, false
}
