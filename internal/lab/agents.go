package lab

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
)

// GossipPort is the lab agents' gossip port.
const GossipPort = 7947

func (l *Lab) dir() string { return filepath.Join(StateDir, l.Name) }

// KeyFile is the lab cluster's key file.
func (l *Lab) KeyFile() string { return filepath.Join(l.dir(), "key") }

// startAgents runs one agent per host, creates the networks through the
// first host's API and attaches every container through its host's API.
func (l *Lab) startAgents(cfg Config) error {
	if err := os.MkdirAll(l.dir(), 0o700); err != nil {
		return fmt.Errorf("lab directory: %w", err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	if err := os.WriteFile(l.KeyFile(), []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	l.Binary = cfg.Binary
	for i := range l.Hosts {
		h := &l.Hosts[i]
		h.Dir = filepath.Join(l.dir(), h.Name)
		h.Socket = filepath.Join(h.Dir, "vxnet.sock")
		if cfg.HostFirewall != "" {
			if err := l.applyHostFirewall(h, cfg.HostFirewall); err != nil {
				return err
			}
		}
		if err := l.StartAgent(h.Name); err != nil {
			return err
		}
	}
	if err := l.save(); err != nil {
		return err
	}
	first := api.NewClient(l.Hosts[0].Socket)
	for _, n := range l.Networks {
		req := api.NetworkCreate{Name: n.Name, Subnet: n.Subnet.String(), VNI: n.VNI, Flood: n.Flood, Encrypted: n.Encrypted}
		if n.Subnet6.IsValid() {
			req.Subnet6 = n.Subnet6.String()
		}
		if _, err := first.CreateNetwork(req); err != nil {
			return fmt.Errorf("create network %s: %w", n.Name, err)
		}
	}
	if err := l.WaitNetworks(10 * time.Second); err != nil {
		return err
	}
	for i := range l.Containers {
		c := &l.Containers[i]
		h, _ := l.Host(c.Host)
		att, err := api.NewClient(h.Socket).Attach(api.AttachRequest{Network: c.Network, Netns: c.Netns})
		if err != nil {
			return fmt.Errorf("attach %s: %w", c.Name, err)
		}
		p, err := netip.ParsePrefix(att.IP)
		if err != nil {
			return fmt.Errorf("attach %s: address %q: %w", c.Name, att.IP, err)
		}
		c.IP, c.MAC, c.ID = p.Addr(), att.MAC, att.ID
		c.IP6 = netip.Addr{}
		if p6, err := netip.ParsePrefix(att.IP6); err == nil {
			c.IP6 = p6.Addr()
		}
	}
	if err := l.save(); err != nil {
		return err
	}
	if err := l.WaitConverged(10 * time.Second); err != nil {
		return err
	}
	if l.NoHealth {
		return nil
	}
	// Every health endpoint known and programmed everywhere (the probes
	// pass), so a lab starts settled: tests that compare kernels before and
	// after do not see the health network arrive.
	return l.WaitHealthy(30 * time.Second)
}

// WaitHealthy waits until every agent's health probes reach every peer.
func (l *Lab) WaitHealthy(timeout time.Duration) error {
	return waitFor(timeout, func() error {
		for _, h := range l.Hosts {
			hv, err := api.NewClient(h.Socket).Health(false)
			if err != nil {
				return err
			}
			ok := 0
			for _, p := range hv.Peers {
				if p.State == "ok" || p.State == "degraded" { // degraded: answers, after early losses
					ok++
				}
			}
			if want := l.VXLANPeers(h); ok != want {
				return fmt.Errorf("host %s reaches %d of %d peers through the overlay", h.Name, ok, want)
			}
			if !slices.ContainsFunc(l.Networks, func(n model.Network) bool { return n.Encrypted }) {
				continue
			}
			ok = 0
			for _, p := range hv.TunnelPeers {
				if p.State == "ok" || p.State == "degraded" {
					ok++
				}
			}
			if want := l.tunnelPeers(h); ok != want {
				return fmt.Errorf("host %s reaches %d of %d peers through its WireGuard tunnel", h.Name, ok, want)
			}
		}
		return nil
	})
}

// VXLANPeers is how many peers h's health probes reach through clear
// VXLAN: none from or to a host that accepts no inbound traffic.
func (l *Lab) VXLANPeers(h Host) int {
	if h.NoInbound {
		return 0
	}
	n := 0
	for _, o := range l.Hosts {
		if o.Name != h.Name && !o.NoInbound {
			n++
		}
	}
	return n
}

// tunnelPeers is how many peers h's tunnel probes reach: all but those
// behind masquerading NATs too, when h is.
func (l *Lab) tunnelPeers(h Host) int {
	n := 0
	for _, o := range l.Hosts {
		if o.Name != h.Name && !(h.NoInbound && o.NoInbound) {
			n++
		}
	}
	return n
}

// StartAgent starts (or restarts) the agent of a host, in the host's
// namespace, and waits until its API answers.
func (l *Lab) StartAgent(host string) error { return l.startAgent(host, l.KeyFile(), true) }

// StartAgentWithKey starts a host's agent with another key file.
func (l *Lab) StartAgentWithKey(host, keyFile string) error { return l.startAgent(host, keyFile, true) }

// RestartAgentWithoutJoin starts a host's agent without --join: it must find
// the cluster from what it remembers.
func (l *Lab) RestartAgentWithoutJoin(host string) error {
	return l.startAgent(host, l.KeyFile(), false)
}

// MetricsPort is where lab agents serve metrics and the live page, at
// their host's underlay address.
const MetricsPort = 9630

// HealthNetns names the namespace of a host's health endpoint.
func (l *Lab) HealthNetns(host string) string { return l.Prefix + host + "-health" }

func (l *Lab) probeInterval() time.Duration {
	if l.ProbeInterval == 0 {
		return DefaultProbeInterval
	}
	return l.ProbeInterval
}

// StartAgentWith starts (or restarts) a host's agent from another binary
// (an older release, for mixed-version tests).
func (l *Lab) StartAgentWith(host, binary string) error {
	return l.startAgentBinary(host, l.KeyFile(), binary, true)
}

func (l *Lab) startAgent(host, keyFile string, withJoin bool) error {
	return l.startAgentBinary(host, keyFile, l.Binary, withJoin)
}

func (l *Lab) startAgentBinary(host, keyFile, binary string, withJoin bool) error {
	idx, err := l.hostIndex(host)
	if err != nil {
		return err
	}
	h := &l.Hosts[idx]
	if err := os.MkdirAll(h.Dir, 0o700); err != nil {
		return err
	}
	advertise := h.Addr.String()
	if h.Public.IsValid() {
		advertise += "," + h.Public.String()
	}
	args := []string{"agent", "--name", h.Name, "--advertise-addr", advertise,
		"--key-file", keyFile, "--state-dir", filepath.Join(h.Dir, "state"), "--socket", h.Socket,
		"--vxlan-port", fmt.Sprint(VXLANPort), "--probe-interval", l.probeInterval().String(), "-v",
		"--docker-plugin-socket", h.PluginSocket(), "--docker-host", filepath.Join(h.Dir, "docker", "docker.sock")}
	if !l.DefaultGossipPort {
		args = append(args, "--gossip-port", fmt.Sprint(GossipPort))
	}
	if h.NoInbound {
		args = append(args, "--no-inbound")
	}
	if binary == l.Binary { // flags an older release may not know
		args = append(args, l.AgentArgs...)
		args = append(args, "--metrics-addr", netip.AddrPortFrom(h.Addr, MetricsPort).String())
		if l.Datapath != "" {
			args = append(args, "--datapath", l.Datapath)
		}
		if l.NoHealth {
			args = append(args, "--health-subnet", "off")
		} else {
			// The agent's default health interval (1 s), not the lab's short
			// failure-detection probes: 32 agents probing every peer twice a
			// second on two cores would slow everything measured beside them.
			args = append(args, "--health-netns", l.HealthNetns(h.Name))
		}
	}
	var join []string
	for _, o := range l.Hosts {
		if o.Name != h.Name && len(join) < 2 {
			join = append(join, o.reachAddr().String())
		}
	}
	if !withJoin || len(l.Etcd) > 0 {
		join = nil
	}
	if len(l.Etcd) > 0 {
		f := l.EtcdFiles()
		args = append(args, "--store", "etcd://"+strings.Join(l.EtcdEndpoints(), ","),
			"--etcd-cacert", f.CA, "--etcd-cert", f.ClientCert, "--etcd-key", f.ClientKey)
	}
	if len(join) > 0 && idx > 0 {
		args = append(args, "--join", join[0])
	} else if len(join) > 0 && l.Hosts[0].PID != 0 {
		args = append(args, "--join", join[0]) // restart of the first host
	}
	logf, err := os.OpenFile(filepath.Join(h.Dir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	argv := append([]string{binary}, args...)
	if binary == l.Binary {
		if argv, err = l.sandboxed(h, argv, logf); err != nil {
			return err
		}
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := nsutil.Do(h.Netns, cmd.Start); err != nil {
		return fmt.Errorf("start agent of %s: %w", h.Name, err)
	}
	h.PID = cmd.Process.Pid
	go func() { _ = cmd.Wait() }() // reap
	c := api.NewClient(h.Socket)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := c.Status(); err == nil {
			return l.save()
		}
		if syscall.Kill(h.PID, 0) != nil || time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(h.Dir, "agent.log"))
			return fmt.Errorf("agent of %s did not come up; its log:\n%s", h.Name, tail(string(log), 2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// How an agent is started with respect to mount namespaces (Lab.Sandbox).
const (
	// SandboxNone: in the caller's mount namespace, as from a root shell.
	SandboxNone = ""
	// SandboxUnit: as the packaged systemd unit runs it. First 'vxnet agent
	// --prepare' in the host's mount namespace (the unit's ExecStartPre=+),
	// then the agent in a mount namespace of its own (slave propagation, as
	// systemd makes it for PrivateTmp= and ProtectSystem=), with a private
	// /tmp, /usr, /boot and /etc read-only, and only the unit's
	// capabilities.
	SandboxUnit = "unit"
	// SandboxNetnsExec: under 'ip netns exec HOST' (its own mount
	// namespace, /sys remounted), with every capability.
	SandboxNetnsExec = "netns-exec"
)

// unitSandbox is the mount set-up systemd gives the unit (PrivateTmp=,
// ProtectSystem=full), then the unit's capability bounding set; "$@" is
// the agent's command line.
const unitSandbox = `set -e
mount -t tmpfs -o mode=1777 tmpfs /tmp
for d in /usr /boot /efi /etc; do
  if [ -d "$d" ]; then mount --bind "$d" "$d"; mount -o remount,bind,ro "$d"; fi
done
exec setpriv --bounding-set -all,+net_admin,+net_raw,+sys_admin,+sys_ptrace,+bpf -- "$@"`

// sandboxed returns the command line that starts argv (an agent of h) in
// the lab's sandbox, after the unit's preparation step when there is one.
func (l *Lab) sandboxed(h *Host, argv []string, log *os.File) ([]string, error) {
	switch l.Sandbox {
	case SandboxNone:
		return argv, nil
	case SandboxUnit:
		prep := exec.Command(argv[0], append(argv[1:], "--prepare")...)
		prep.Stdout, prep.Stderr = log, log
		if err := nsutil.Do(h.Netns, prep.Run); err != nil {
			return nil, fmt.Errorf("prepare the agent of %s (as the unit's ExecStartPre): %w", h.Name, err)
		}
		return append([]string{"unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", unitSandbox, "sh"}, argv...), nil
	case SandboxNetnsExec:
		return append([]string{"ip", "netns", "exec", filepath.Base(h.Netns)}, argv...), nil
	}
	return nil, fmt.Errorf("unknown sandbox %q: want %q, %q or none", l.Sandbox, SandboxUnit, SandboxNetnsExec)
}

// KillAgent sends sig to a host's agent and waits for it to exit.
func (l *Lab) KillAgent(host string, sig syscall.Signal) error {
	h, ok := l.Host(host)
	if !ok || h.PID == 0 {
		return fmt.Errorf("host %s has no agent", host)
	}
	if err := syscall.Kill(h.PID, sig); err != nil {
		return fmt.Errorf("signal agent of %s (pid %d): %w", host, h.PID, err)
	}
	waitGone([]int{h.PID}, 10*time.Second)
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// WaitNetworks waits until every agent knows every lab network.
func (l *Lab) WaitNetworks(timeout time.Duration) error {
	return waitFor(timeout, func() error {
		for _, h := range l.Hosts {
			nets, err := api.NewClient(h.Socket).Networks()
			if err != nil {
				return err
			}
			if len(nets) < len(l.Networks) {
				return fmt.Errorf("host %s knows %d of %d networks", h.Name, len(nets), len(l.Networks))
			}
		}
		return nil
	})
}

// WaitConverged waits until every agent sees every container of the lab.
func (l *Lab) WaitConverged(timeout time.Duration) error {
	want := map[string]int{}
	for _, c := range l.Containers {
		want[c.Network]++
	}
	return waitFor(timeout, func() error {
		for _, h := range l.Hosts {
			s, err := api.NewClient(h.Socket).Status()
			if err != nil {
				return err
			}
			seen := map[string]int{}
			for _, n := range s.Networks {
				seen[n.Name] = n.Local + n.Remote
			}
			for _, nw := range l.Networks {
				got, ok := seen[nw.Name]
				if !ok {
					return fmt.Errorf("host %s does not know network %s", h.Name, nw.Name)
				}
				if got != want[nw.Name] {
					return fmt.Errorf("host %s sees %d of %d endpoints of %s", h.Name, got, want[nw.Name], nw.Name)
				}
			}
		}
		return nil
	})
}

func waitFor(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not converged after %s: %w", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Renumber gives a host a new underlay address (as a DHCP change or a move
// would); restart its agent afterwards.
func (l *Lab) Renumber(host string, addr netip.Addr) error {
	idx, err := l.hostIndex(host)
	if err != nil {
		return err
	}
	h := &l.Hosts[idx]
	hh, eth, err := openUnderlay(*h)
	if err != nil {
		return err
	}
	defer hh.Close()
	mask := net.CIDRMask(underlayNet.Bits(), 32)
	if err := hh.AddrDel(eth, &netlink.Addr{IPNet: &net.IPNet{IP: h.Addr.AsSlice(), Mask: mask}}); err != nil {
		return fmt.Errorf("remove %s from %s: %w", h.Addr, host, err)
	}
	if err := hh.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: mask}}); err != nil {
		return fmt.Errorf("add %s to %s: %w", addr, host, err)
	}
	h.Addr = addr
	return l.save()
}
