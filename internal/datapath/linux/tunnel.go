package linux

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/tunnel"
)

const tunnelKind = "tunnel"

// UserspaceStarter starts a userspace WireGuard device (wireguard-go) named
// dev in the dataplane's namespace, in a process that outlives the agent,
// and returns once it was started (the link appears shortly after).
type UserspaceStarter func(dev string, mtu int) error

// tunnelState is what the dataplane needs for the WireGuard device.
type tunnelState struct {
	key   wgtypes.Key
	set   bool
	start UserspaceStarter
	wg    *wgctrl.Client
}

// SetTunnel gives the dataplane the host's private key and the way to
// start a userspace device where the kernel has no WireGuard.
func (d *Dataplane) SetTunnel(key wgtypes.Key, start UserspaceStarter) {
	d.tun.key, d.tun.set, d.tun.start = key, true, start
}

// wgClient opens wgctrl's client in the dataplane's namespace: its netlink
// socket stays there (the userspace devices' control sockets are files).
func (d *Dataplane) wgClient() (*wgctrl.Client, error) {
	if d.tun.wg != nil {
		return d.tun.wg, nil
	}
	err := d.inNS(func() error {
		c, err := wgctrl.New()
		d.tun.wg = c
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open WireGuard control: %w", err)
	}
	return d.tun.wg, nil
}

// routeProto marks vxnet's routes (an unassigned routing protocol number;
// 'ip route' shows it as "proto 118").
const routeProto = 118

func hostRoute(ip netip.Addr, dev int) *netlink.Route {
	return &netlink.Route{LinkIndex: dev, Dst: ipNet(netip.PrefixFrom(ip, ip.BitLen())), Scope: netlink.SCOPE_LINK,
		Protocol: routeProto, Table: unix.RT_TABLE_MAIN}
}

// SetRoute routes an address into the tunnel.
func (d *Dataplane) SetRoute(r datapath.Route) error {
	l, err := d.h.LinkByName(r.Dev)
	if err != nil {
		return fmt.Errorf("route %s: device %s: %w", r.IP, r.Dev, err)
	}
	if err := d.h.RouteReplace(hostRoute(r.IP, l.Attrs().Index)); err != nil {
		return fmt.Errorf("route %s into %s: %w", r.IP, r.Dev, err)
	}
	d.changed("set route", "ip", r.IP, "dev", r.Dev)
	return nil
}

// DelRoute removes a route of vxnet's (absent: no error).
func (d *Dataplane) DelRoute(r datapath.Route) error {
	l, err := d.h.LinkByName(r.Dev)
	if err != nil {
		return nil // gone with its device
	}
	if err := d.h.RouteDel(hostRoute(r.IP, l.Attrs().Index)); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("remove route %s: %w", r.IP, err)
	}
	d.changed("removed route", "ip", r.IP, "dev", r.Dev)
	return nil
}

// observeRoutes reads vxnet's routes (their VNI is not in the kernel).
func (d *Dataplane) observeRoutes(byIndex map[int]netlink.Link) ([]datapath.Route, error) {
	rs, err := dump("list routes", func() ([]netlink.Route, error) {
		return d.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: routeProto, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, err
	}
	var out []datapath.Route
	for _, r := range rs {
		p, ok := toPrefix(r.Dst)
		l, known := byIndex[r.LinkIndex]
		if !ok || !known || p.Bits() != p.Addr().BitLen() {
			continue
		}
		out = append(out, datapath.Route{IP: p.Addr(), Dev: l.Attrs().Name})
	}
	return out, nil
}

// EnsureTunnel creates or corrects the host's WireGuard device: the
// kernel's where the kernel has WireGuard, else a userspace one; then its
// MTU, tunnel address and peers, changing only what differs (a running
// tunnel is adopted as it is).
func (d *Dataplane) EnsureTunnel(t datapath.Tunnel) error {
	if !d.tun.set {
		return errors.New("tunnel: no key was given to the dataplane")
	}
	l, have, err := d.tunnelDevice(t)
	if err != nil {
		return err
	}
	if err := d.ensureMTU(l, t.MTU); err != nil {
		return err
	}
	if err := d.ensureAddrs(l, netip.PrefixFrom(t.Addr, model.TunnelPrefix.Bits())); err != nil {
		return err
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := d.h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", t.Dev, err)
		}
		d.changed("set up", "dev", t.Dev)
	}
	cfg, changed := tunnel.Config(t, d.tun.key, have)
	if !changed {
		return nil
	}
	if err := d.tun.wg.ConfigureDevice(t.Dev, cfg); err != nil {
		return fmt.Errorf("configure WireGuard device %s (%d peers): %w", t.Dev, len(t.Peers), err)
	}
	d.changed("configured tunnel", "dev", t.Dev, "peers", len(t.Peers), "changed", len(cfg.Peers))
	return nil
}

// tunnelDevice returns the tunnel's link and its device as wgctrl reads
// it, making the link when there is none, and replacing a userspace
// device's link that no process serves (its control socket gone or dead).
func (d *Dataplane) tunnelDevice(t datapath.Tunnel) (netlink.Link, *wgtypes.Device, error) {
	c, err := d.wgClient()
	if err != nil {
		return nil, nil, err
	}
	l, err := d.h.LinkByName(t.Dev)
	var nf netlink.LinkNotFoundError
	made := false
	switch {
	case errors.As(err, &nf):
		if l, err = d.createTunnel(t); err != nil {
			return nil, nil, err
		}
		made = true
	case err != nil:
		return nil, nil, fmt.Errorf("look up tunnel device %s: %w", t.Dev, err)
	default:
		if kind, _, ok := datapath.ParseAlias(l.Attrs().Alias); !ok || kind != tunnelKind {
			return nil, nil, &datapath.NotOwnedError{Device: t.Dev}
		}
	}
	dev, err := readDevice(c, t.Dev, made)
	if err != nil && !made && l.Type() != "wireguard" {
		if err := d.h.LinkDel(l); err != nil {
			return nil, nil, fmt.Errorf("remove tunnel device %s, which no process serves: %w", t.Dev, err)
		}
		d.changed("removed a tunnel device no process serves", "dev", t.Dev)
		if l, err = d.createTunnel(t); err != nil {
			return nil, nil, err
		}
		dev, err = readDevice(c, t.Dev, true)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read WireGuard device %s: %w", t.Dev, err)
	}
	return l, dev, nil
}

// readDevice reads a WireGuard device; fresh, a userspace device's control
// socket may follow its link by a moment, so it is waited for (tunnelWait).
func readDevice(c *wgctrl.Client, name string, fresh bool) (*wgtypes.Device, error) {
	deadline := time.Now().Add(tunnelWait)
	for {
		dev, err := c.Device(name)
		if err == nil || !fresh || time.Now().After(deadline) {
			return dev, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tunnelWait bounds how long a userspace device may take to appear.
const tunnelWait = 10 * time.Second

func (d *Dataplane) createTunnel(t datapath.Tunnel) (netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = t.Dev, t.MTU
	err := d.h.LinkAdd(&netlink.Wireguard{LinkAttrs: attrs})
	switch {
	case err == nil:
		d.changed("created kernel tunnel", "dev", t.Dev)
	case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.ENODEV):
		if d.tun.start == nil {
			return nil, fmt.Errorf("create tunnel device %s: the kernel has no WireGuard (%w) and no userspace device was configured", t.Dev, err)
		}
		if err := d.tun.start(t.Dev, t.MTU); err != nil {
			return nil, fmt.Errorf("start userspace tunnel device %s: %w", t.Dev, err)
		}
		d.changed("started userspace tunnel", "dev", t.Dev)
	default:
		return nil, fmt.Errorf("create WireGuard device %s: %w", t.Dev, err)
	}
	deadline := time.Now().Add(tunnelWait)
	for {
		l, err := d.h.LinkByName(t.Dev)
		if err == nil {
			if err := d.h.LinkSetAlias(l, datapath.Alias(tunnelKind, "0:")); err != nil {
				return nil, fmt.Errorf("mark tunnel device %s as vxnet's: %w", t.Dev, err)
			}
			l.Attrs().Alias = datapath.Alias(tunnelKind, "0:")
			return l, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("tunnel device %s did not appear within %s: %w", t.Dev, tunnelWait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// observeTunnel reads the tunnel device l (nil: none).
func (d *Dataplane) observeTunnel(l netlink.Link) (*datapath.Tunnel, error) {
	if l == nil {
		return nil, nil
	}
	c, err := d.wgClient()
	if err != nil {
		return nil, err
	}
	dev, err := c.Device(l.Attrs().Name)
	if err != nil {
		// A link without its device (a userspace one whose process is
		// gone): it is wrong, so the next ensure replaces it.
		return &datapath.Tunnel{Dev: l.Attrs().Name}, nil
	}
	t := tunnel.Observe(dev)
	t.MTU = l.Attrs().MTU
	addrs, err := dump("list addresses of "+t.Dev, func() ([]netlink.Addr, error) { return d.h.AddrList(l, netlink.FAMILY_V6) })
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if p, ok := toPrefix(a.IPNet); ok && model.TunnelPrefix.Contains(p.Addr()) {
			t.Addr = p.Addr()
		}
	}
	return &t, nil
}

// RemoveTunnel deletes the tunnel device (a userspace device's process
// ends with its control socket).
func (d *Dataplane) RemoveTunnel(dev string) error {
	l, err := d.h.LinkByName(dev)
	if err != nil {
		return nil
	}
	if kind, _, ok := datapath.ParseAlias(l.Attrs().Alias); !ok || kind != tunnelKind {
		return &datapath.NotOwnedError{Device: dev}
	}
	if l.Type() != "wireguard" {
		sock := filepath.Join("/var/run/wireguard", dev+".sock")
		if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove control socket %s: %w", sock, err)
		}
	}
	if err := d.h.LinkDel(l); err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("delete tunnel device %s: %w", dev, err)
		}
	}
	d.changed("removed tunnel", "dev", dev)
	return nil
}
