package lab

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/probe"
)

// ConvergeSample is one attach measured from another host.
type ConvergeSample struct {
	Host string
	// Call is how long the attach call itself took.
	Call time.Duration
	// Programmed is attach start to the neighbour entry on the prober's host.
	Programmed time.Duration
	// FirstReply is attach start to the first echo reply.
	FirstReply time.Duration
}

// Attacher attaches a container namespace to a network through a host's
// front door, returning its address and how to detach it again.
type Attacher func(host Host, network, netns string) (netip.Addr, func() error, error)

// APIAttach attaches through the agent's API ('vxnet attach').
func APIAttach(host Host, network, netns string) (netip.Addr, func() error, error) {
	c := api.NewClient(host.Socket)
	att, err := c.Attach(api.AttachRequest{Network: network, Netns: netns})
	if err != nil {
		return netip.Addr{}, nil, fmt.Errorf("attach on %s: %w", host.Name, err)
	}
	return netip.MustParsePrefix(att.IP).Addr(), func() error {
		return c.Detach(api.DetachRequest{Network: network, Netns: netns})
	}, nil
}

// CNIAttach attaches by running the vxnet-cni plugin binary (ADD, then DEL
// to detach) in the host's namespace, as a runtime does.
func CNIAttach(plugin string) Attacher {
	var seq int
	return func(host Host, network, netns string) (netip.Addr, func() error, error) {
		seq++
		conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"type":"vxnet","socket":%q}`, network, host.Socket)
		run := func(command string) ([]byte, error) {
			var out []byte
			err := nsutil.Do(host.Netns, func() error {
				cmd := exec.Command(plugin)
				cmd.Env = []string{"CNI_COMMAND=" + command, fmt.Sprintf("CNI_CONTAINERID=cv%d", seq), "CNI_NETNS=" + netns,
					"CNI_IFNAME=eth0", "CNI_PATH=" + filepath.Dir(plugin)}
				cmd.Stdin = strings.NewReader(conf)
				var err error
				out, err = cmd.Output()
				return err
			})
			if err != nil {
				return nil, fmt.Errorf("CNI %s on %s: %w: %s", command, host.Name, err, out)
			}
			return out, nil
		}
		out, err := run("ADD")
		if err != nil {
			return netip.Addr{}, nil, err
		}
		var res struct {
			IPs []struct{ Address string } `json:"ips"`
		}
		if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) == 0 {
			return netip.Addr{}, nil, fmt.Errorf("CNI ADD on %s answered %s", host.Name, out)
		}
		p, err := netip.ParsePrefix(res.IPs[0].Address)
		if err != nil {
			return netip.Addr{}, nil, err
		}
		return p.Addr(), func() error { _, err := run("DEL"); return err }, nil
	}
}

// MeasureConvergence attaches new containers on hosts other than the first,
// one at a time, and times how long until the first host has them
// programmed and until a container there gets an echo reply. Needs an
// agent lab with at least two hosts and a container on the first host.
func (l *Lab) MeasureConvergence(samples int, attach Attacher) ([]ConvergeSample, error) {
	if !l.Agent || len(l.Hosts) < 2 {
		return nil, fmt.Errorf("convergence needs an agent lab with at least 2 hosts")
	}
	var prober Container
	for _, c := range l.Containers {
		if c.Host == l.Hosts[0].Name && c.Network == l.Networks[0].Name {
			prober = c
		}
	}
	if prober.Name == "" {
		return nil, fmt.Errorf("no container of %s on %s to probe from", l.Networks[0].Name, l.Hosts[0].Name)
	}
	nw := l.Networks[0]
	h1, err := nsutil.Handle(l.Hosts[0].Netns)
	if err != nil {
		return nil, err
	}
	defer h1.Close()
	// Programmed on h1: a neighbour entry on the vxlan device, or for an
	// encrypted network a route into the tunnel.
	programmed := func(ip netip.Addr) (bool, error) {
		rs, err := h1.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN,
			Dst: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
		return len(rs) > 0, err
	}
	if !nw.Encrypted {
		vx, err := h1.LinkByName(datapath.VxlanName(nw.VNI))
		if err != nil {
			return nil, fmt.Errorf("vxlan device of %s on %s: %w", nw.Name, l.Hosts[0].Name, err)
		}
		programmed = func(ip netip.Addr) (bool, error) {
			neighs, err := h1.NeighList(vx.Attrs().Index, netlink.FAMILY_V4)
			for _, n := range neighs {
				if n.IP.Equal(ip.AsSlice()) {
					return true, err
				}
			}
			return false, err
		}
	}
	var out []ConvergeSample
	for i := 0; i < samples; i++ {
		host := l.Hosts[1+i%(len(l.Hosts)-1)]
		name := fmt.Sprintf("%scv%d", l.Prefix, i)
		path, err := nsutil.Create(name)
		if err != nil {
			return out, err
		}
		s, detach, err := l.convergeOnce(programmed, prober, host, path, attach)
		var derr error
		if detach != nil {
			derr = detach()
		}
		_ = nsutil.Delete(name)
		if err != nil {
			return out, err
		}
		if derr != nil {
			return out, fmt.Errorf("detach sample %d: %w", i, derr)
		}
		out = append(out, s)
	}
	return out, nil
}

func (l *Lab) convergeOnce(programmed func(netip.Addr) (bool, error), prober Container, host Host, path string, attach Attacher) (ConvergeSample, func() error, error) {
	s := ConvergeSample{Host: host.Name}
	start := time.Now()
	ip, detach, err := attach(host, prober.Network, path)
	if err != nil {
		return s, nil, err
	}
	s.Call = time.Since(start)
	deadline := start.Add(10 * time.Second)
	for s.Programmed == 0 {
		if time.Now().After(deadline) {
			return s, detach, fmt.Errorf("%s never programmed on %s", ip, l.Hosts[0].Name)
		}
		ok, err := programmed(ip)
		if err != nil {
			return s, detach, err
		}
		if ok {
			s.Programmed = time.Since(start)
		}
		if s.Programmed == 0 {
			time.Sleep(500 * time.Microsecond)
		}
	}
	for s.FirstReply == 0 {
		if time.Now().After(deadline) {
			return s, detach, fmt.Errorf("no reply from %s", ip)
		}
		if _, err := probe.Ping(prober.Netns, ip, 56, false, 100*time.Millisecond); err == nil {
			s.FirstReply = time.Since(start)
		}
	}
	return s, detach, nil
}

// Percentile returns the p-th percentile (0-100) of ds by nearest rank.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	slices.Sort(s)
	rank := int(p/100*float64(len(s))+0.999999) - 1
	rank = max(0, min(rank, len(s)-1))
	return s[rank]
}

// DockerAttach attaches by starting a container with 'docker run --net' on
// the host's dockerd (started by the caller with StartDocker).
func DockerAttach(dockerds map[string]*Dockerd) Attacher {
	var seq int
	return func(host Host, network, netns string) (netip.Addr, func() error, error) {
		d, ok := dockerds[host.Name]
		if !ok {
			return netip.Addr{}, nil, fmt.Errorf("no dockerd on %s", host.Name)
		}
		seq++
		name := fmt.Sprintf("cv%d", seq)
		if _, err := d.Docker("run", "-d", "--name", name, "--net", network, DockerImage, "sleep", "600"); err != nil {
			return netip.Addr{}, nil, err
		}
		rm := func() error { _, err := d.Docker("rm", "-f", name); return err }
		out, err := d.Docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
		if err != nil {
			return netip.Addr{}, rm, err
		}
		ip, err := netip.ParseAddr(strings.TrimSpace(out))
		if err != nil {
			return netip.Addr{}, rm, fmt.Errorf("address of %s on %s: %q", name, host.Name, out)
		}
		return ip, rm, nil
	}
}
