package lab

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vxnet/vxnet/internal/nsutil"
)

// Two sites (Config.Sites): the first half of the hosts on site A's private
// switch, the rest on site B's, each site behind a router that gives every
// host of its site a public address by 1:1 NAT (and NATs a host's traffic
// to a sibling's public address back through itself, as home and cloud
// routers do). The routers meet on a WAN switch. All three switches are
// bridges in the lab's switch namespace:
//
//	h1, h2 -- siteA (198.18.1.0/24) -- router ra -- wan (198.18.100.0/24) -- router rb -- siteB (198.18.2.0/24) -- h3, h4
//
// Host i's private address is 198.18.<site>.<10+i>, its public one
// 198.18.100.<10+i>; the routers are .1 on their site and 198.18.100.<site>
// on the WAN. Config.Masqueraded adds hosts on site C (198.18.3.0/24),
// whose router masquerades: they have no public address and accept
// nothing from outside.

// Site switches and the WAN.
const (
	wanBridge = "wan0"
)

func siteBridge(site int) string { return fmt.Sprintf("site%c", 'a'+site-1) }

// SiteRouter names the namespace of a site's router (1: A, 2: B).
func SiteRouter(prefix string, site int) string { return prefix + fmt.Sprintf("r%c", 'a'+site-1) }

func siteNet(site int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(site), 0}), 24)
}

func siteHostAddr(site, i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(site), byte(10 + i)})
}

// PublicNet is the WAN: the routers' and the hosts' public addresses.
var PublicNet = netip.MustParsePrefix("198.18.100.0/24")

// PublicAddr is host i's public address (1:1 NAT on its site's router).
func PublicAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 100, byte(10 + i)}) }

// MasqueradeAddr is the public address of the router of site C, which
// masquerades its hosts' traffic (Config.Masqueraded).
var MasqueradeAddr = wanRouterAddr(3)

func wanRouterAddr(site int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 100, byte(site)}) }

// buildSites makes the switches, the routers and the hosts of a two-site
// lab, and masq more hosts on a third site behind a router that
// masquerades (no inbound at all).
func (l *Lab) buildSites(sw *netlink.Handle, hosts, masq int) error {
	bridges := map[string]*netlink.Bridge{}
	names := []string{siteBridge(1), siteBridge(2), wanBridge}
	if masq > 0 {
		names = append(names, siteBridge(3))
	}
	for _, name := range names {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU = name, UnderlayMTU
		br := &netlink.Bridge{LinkAttrs: attrs}
		if err := sw.LinkAdd(br); err != nil {
			return fmt.Errorf("create switch %s: %w", name, err)
		}
		if err := sw.LinkSetUp(br); err != nil {
			return fmt.Errorf("switch %s up: %w", name, err)
		}
		bridges[name] = br
	}
	var nat [3]strings.Builder // per site: the router's nftables rules
	for i := 1; i <= hosts; i++ {
		site := 1
		if i > hosts/2 {
			site = 2
		}
		addr := siteHostAddr(site, i)
		h, err := addHostIn(sw, bridges[siteBridge(site)], l.Prefix, fmt.Sprintf("h%d", i), netip.PrefixFrom(addr, 24))
		if err != nil {
			return err
		}
		h.Public, h.Site = PublicAddr(i), site
		if err := defaultRoute(h.Netns, siteNet(site).Addr().Next()); err != nil {
			return fmt.Errorf("default route of %s: %w", h.Name, err)
		}
		l.Hosts = append(l.Hosts, h)
		fmt.Fprintf(&nat[site], "add rule ip labnat pre ip daddr %s dnat to %s\n", h.Public, addr)
		fmt.Fprintf(&nat[site], "add rule ip labnat post ip saddr %s oifname \"wan\" snat to %s\n", addr, h.Public)
		fmt.Fprintf(&nat[site], "add rule ip labnat post ip saddr %s ct status dnat snat to %s\n", addr, h.Public)
	}
	for i := hosts + 1; i <= hosts+masq; i++ {
		h, err := addHostIn(sw, bridges[siteBridge(3)], l.Prefix, fmt.Sprintf("h%d", i), netip.PrefixFrom(siteHostAddr(3, i), 24))
		if err != nil {
			return err
		}
		h.Site, h.NoInbound = 3, true
		if err := defaultRoute(h.Netns, siteNet(3).Addr().Next()); err != nil {
			return fmt.Errorf("default route of %s: %w", h.Name, err)
		}
		l.Hosts = append(l.Hosts, h)
	}
	if masq > 0 {
		// Out through the router's one public address; nothing in that was
		// not asked for from inside.
		masquerade := "add rule ip labnat post oifname \"wan\" masquerade\n" +
			"add table ip labfw\n" +
			"add chain ip labfw inbound { type filter hook forward priority filter; }\n" +
			"add rule ip labfw inbound iifname \"wan\" ct state new drop\n"
		if err := l.addRouter(sw, bridges, 3, nil, masquerade); err != nil {
			return err
		}
	}
	for site := 1; site <= 2; site++ {
		var public []netip.Addr
		for _, h := range l.Hosts {
			if h.Site == site {
				public = append(public, h.Public)
			}
		}
		if err := l.addRouter(sw, bridges, site, public, nat[site].String()); err != nil {
			return err
		}
	}
	return nil
}

// addRouter makes a site's router: "lan" on the site's switch, "wan" on the
// WAN with the router's address and its hosts' public ones, and the 1:1 NAT.
func (l *Lab) addRouter(sw *netlink.Handle, bridges map[string]*netlink.Bridge, site int, public []netip.Addr, rules string) error {
	name := SiteRouter(l.Prefix, site)
	path, err := nsutil.Create(name)
	if err != nil {
		return err
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer ns.Close()
	rh, err := nsutil.Handle(path)
	if err != nil {
		return err
	}
	defer rh.Close()
	for _, side := range []struct {
		dev, br string
		addrs   []netip.Prefix
	}{
		{"lan", siteBridge(site), []netip.Prefix{netip.PrefixFrom(siteNet(site).Addr().Next(), 24)}},
		{"wan", wanBridge, append([]netip.Prefix{netip.PrefixFrom(wanRouterAddr(site), PublicNet.Bits())}, hostPrefixes(public)...)},
	} {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU, attrs.MasterIndex = fmt.Sprintf("r%c%s", 'a'+site-1, side.dev), UnderlayMTU, bridges[side.br].Attrs().Index
		veth := &netlink.Veth{LinkAttrs: attrs, PeerName: side.dev, PeerNamespace: netlink.NsFd(ns), PeerMTU: UnderlayMTU}
		if err := sw.LinkAdd(veth); err != nil {
			return fmt.Errorf("link %s of router %s: %w", side.dev, name, err)
		}
		if err := sw.LinkSetUp(veth); err != nil {
			return fmt.Errorf("link %s of router %s up: %w", side.dev, name, err)
		}
		dev, err := rh.LinkByName(side.dev)
		if err != nil {
			return fmt.Errorf("%s of router %s: %w", side.dev, name, err)
		}
		for _, p := range side.addrs {
			a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
			if err := rh.AddrAdd(dev, a); err != nil {
				return fmt.Errorf("address %s of router %s: %w", p, name, err)
			}
		}
		if err := rh.LinkSetUp(dev); err != nil {
			return fmt.Errorf("%s of router %s up: %w", side.dev, name, err)
		}
	}
	lo, err := rh.LinkByName("lo")
	if err == nil {
		err = rh.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("lo of router %s: %w", name, err)
	}
	// Forwarding on; no ICMP redirects: a redirect for a sibling's public
	// address would send the sender straight to the sibling, which does not
	// have that address (home and cloud routers that NAT a site's traffic
	// back into it do not send them either).
	if err := nsutil.Do(path, func() error {
		for _, f := range []string{"ipv4/ip_forward", "ipv4/conf/all/send_redirects", "ipv4/conf/lan/send_redirects", "ipv4/conf/wan/send_redirects"} {
			v := "0\n"
			if f == "ipv4/ip_forward" {
				v = "1\n"
			}
			if err := os.WriteFile("/proc/sys/net/"+f, []byte(v), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("forwarding on router %s: %w", name, err)
	}
	ruleset := "add table ip labnat\n" +
		"add chain ip labnat pre { type nat hook prerouting priority dstnat; }\n" +
		"add chain ip labnat post { type nat hook postrouting priority srcnat; }\n" + rules
	return l.hostRun(Host{Name: name, Netns: path}, ruleset, "nft", "-f", "-")
}

func hostPrefixes(addrs []netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range addrs {
		out = append(out, netip.PrefixFrom(a, 32))
	}
	return out
}

func defaultRoute(nsPath string, gw netip.Addr) error {
	h, err := nsutil.Handle(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.RouteAdd(&netlink.Route{Gw: gw.AsSlice()})
}

// CutSite cuts (or, with cut false, mends) the private switch between two
// hosts of one site: their ports are isolated from each other (a bridge's
// isolated ports reach only ports that are not), while both still reach
// their router.
func (l *Lab) CutSite(a, b string, cut bool) error {
	sw, err := nsutil.Handle(nsutil.Path(l.Switch))
	if err != nil {
		return err
	}
	defer sw.Close()
	for _, name := range []string{a, b} {
		link, err := sw.LinkByName(name)
		if err != nil {
			return fmt.Errorf("switch port of %s: %w", name, err)
		}
		if err := sw.LinkSetIsolated(link, cut); err != nil {
			return fmt.Errorf("isolate switch port of %s: %w", name, err)
		}
	}
	return nil
}

// reachAddr is the address other hosts join h at: its public one, when it
// has one (hosts of the other site reach nothing else).
func (h Host) reachAddr() netip.Addr {
	if h.Public.IsValid() {
		return h.Public
	}
	return h.Addr
}
