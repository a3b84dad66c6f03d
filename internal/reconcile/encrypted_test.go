package reconcile_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/fake"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/reconcile"
)

var (
	secret = model.Network{Name: "secret", VNI: 4099, Subnet: netip.MustParsePrefix("198.19.3.0/24"), Gateway: netip.MustParseAddr("198.19.3.1"), Encrypted: true}
	keys   = map[string]string{
		"h1": "sTbDT0hPBs8ZUGtnWfbpJHWuVd4PW8Wn6Fa0v7sKfXI=",
		"h2": "hRBn4bcprTjPYSOWtv6cxFamDXaA/fsnMK+r2Bk/CVk=",
		"h3": "WzJmL6DrZ7ivYdWrs5tMOVIYOOCSC/3LCzd5ML1i+XI=",
	}
)

// encInput is h1 with web (clear) and secret (encrypted); h1 and h2 have
// tunnels, h3 (an older agent) none.
func encInput(eps ...model.Endpoint) reconcile.Input {
	in := input(eps...)
	in.Networks = []model.Network{web, secret}
	in.Tunnel = &reconcile.TunnelInput{Dev: "vxwg0", Info: model.TunnelInfo{Key: keys["h1"], Port: 51830}}
	in.Tunnels = map[string]model.TunnelInfo{"h1": in.Tunnel.Info, "h2": {Key: keys["h2"], Port: 51831}}
	in.PSK = func(a, b string) [32]byte { return [32]byte{byte(len(a + b))} }
	in.Open, in.GossipPort = true, 7947
	return in
}

func TestDesiredEncrypted(t *testing.T) {
	in := encInput(
		ep("a", "secret", "h1", "02:00:00:00:00:01", "198.19.3.2"),
		ep("b", "secret", "h2", "02:00:00:00:00:02", "198.19.3.3"),
		ep("c", "secret", "h3", "02:00:00:00:00:03", "198.19.3.4"),
		ep("d", "web", "h2", "02:00:00:00:00:04", "198.19.1.4"))
	want, problems := reconcile.Desired(in)
	if len(problems) != 0 {
		t.Fatalf("problems: %v", problems)
	}
	spec := want.Networks[secret.VNI]
	if spec.Tunnel != "vxwg0" || spec.Port != 0 || spec.Local.IsValid() || spec.MTU != 1440 {
		t.Fatalf("secret's spec = %+v: want routed through vxwg0, no VXLAN, MTU 1440", spec)
	}
	if w := want.Networks[web.VNI]; w.Tunnel != "" || w.Local != h1.Addr || w.MTU != 1450 {
		t.Fatalf("web's spec = %+v: want VXLAN as ever", w)
	}
	for _, f := range want.FDB {
		if f.VNI == secret.VNI {
			t.Fatalf("an encrypted network has an FDB entry: %v", f)
		}
	}
	for _, n := range want.Neigh {
		if n.VNI == secret.VNI {
			t.Fatalf("an encrypted network has a neighbour entry: %v", n)
		}
	}
	// b (h2) is routed into the tunnel; c's host has no tunnel: not.
	if len(want.Routes) != 1 || want.Routes[netip.MustParseAddr("198.19.3.3")].Dev != "vxwg0" {
		t.Fatalf("routes = %v, want 198.19.3.3 into vxwg0 alone", want.Routes)
	}
	tun := want.Tunnel
	if tun == nil || tun.Dev != "vxwg0" || tun.Port != 51830 || tun.MTU != 1440 || tun.Key != keys["h1"] || tun.Addr != model.TunnelAddr(keys["h1"]) {
		t.Fatalf("tunnel = %+v", tun)
	}
	if len(tun.Peers) != 1 {
		t.Fatalf("peers = %+v: want h2 alone (h3 has no tunnel)", tun.Peers)
	}
	p := tun.Peers[0]
	wantIPs := []netip.Addr{netip.MustParseAddr("198.19.3.3"), model.TunnelAddr(keys["h2"])}
	slices.SortFunc(wantIPs, netip.Addr.Compare)
	if p.Key != keys["h2"] || p.Endpoint != netip.MustParseAddrPort("198.18.0.2:51831") || !slices.Equal(p.AllowedIPs, wantIPs) ||
		p.PSK != in.PSK(keys["h1"], keys["h2"]) {
		t.Fatalf("peer = %+v: want h2's key, address and port, its container and tunnel address, the pair's PSK", p)
	}
	fw := want.Firewall
	if fw.TunnelDev != "vxwg0" || !slices.Equal(fw.Encrypted, []datapath.EncryptedNet{{VNI: secret.VNI, Subnet: secret.Subnet}}) {
		t.Fatalf("firewall = %+v", fw)
	}
	for _, hn := range want.HostFirewall.Networks {
		if (hn.VNI == secret.VNI) != (hn.Tunnel == "vxwg0") {
			t.Fatalf("host firewall network %+v: only secret's names the tunnel", hn)
		}
	}
	if o := want.Openings; o == nil || o.TunnelPort != 51830 || o.TunnelDev != "vxwg0" {
		t.Fatalf("openings = %+v: want the tunnel's port and device", o)
	}

	// The plan on a fresh host: the tunnel before the networks, the route
	// after; applied, a second plan is empty.
	dp := fake.New()
	ops, err := reconcile.Sync(dp, want)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, op := range ops {
		kinds = append(kinds, op.Kind.String())
	}
	order := strings.Join(kinds, " ")
	if !strings.Contains(order, "ensure-tunnel ensure-network") || strings.Index(order, "set-route") < strings.Index(order, "ensure-tunnel") {
		t.Fatalf("plan order %q: want the tunnel before the networks and routes", order)
	}
	if ops, err := reconcile.Sync(dp, want); err != nil || len(ops) != 0 {
		t.Fatalf("second pass: %v %v, want nothing to do", ops, err)
	}
	// b goes: its route goes, and its address from h2's peer.
	in.Endpoints = slices.Delete(in.Endpoints, 1, 2)
	want2, _ := reconcile.Desired(in)
	ops, err = reconcile.Sync(dp, want2)
	if err != nil {
		t.Fatal(err)
	}
	if len(ops) != 2 || ops[0].Kind != reconcile.EnsureTunnel || ops[1].Kind != reconcile.DelRoute {
		t.Fatalf("ops when b went = %v: want the tunnel's peer changed and the route removed", ops)
	}
	// The last encrypted network goes: so does the tunnel.
	in.Networks = []model.Network{web}
	want3, _ := reconcile.Desired(in)
	if want3.Tunnel != nil || want3.Openings.TunnelPort != 0 || len(want3.Firewall.Encrypted) != 0 {
		t.Fatalf("with no encrypted network: tunnel %+v, openings %+v, firewall %+v", want3.Tunnel, want3.Openings, want3.Firewall)
	}
	if _, err := reconcile.Sync(dp, want3); err != nil {
		t.Fatal(err)
	}
	if obs, _ := dp.Observe(); obs.Tunnel != nil || len(obs.Routes) != 0 {
		t.Fatalf("after: tunnel %+v routes %+v", obs.Tunnel, obs.Routes)
	}
}

func TestEncryptedWithoutTunnel(t *testing.T) {
	in := encInput(ep("b", "secret", "h2", "02:00:00:00:00:02", "198.19.3.3"))
	in.Tunnel = nil
	want, problems := reconcile.Desired(in)
	if _, ok := want.Networks[secret.VNI]; ok || want.Tunnel != nil || len(want.Routes) != 0 {
		t.Fatalf("an encrypted network was programmed on a host without a tunnel: %+v", want)
	}
	if len(problems) != 1 || problems[0].Kind != "encrypted" || !strings.Contains(problems[0].Detail, "no tunnel key") {
		t.Fatalf("problems = %v, want one saying the host has no tunnel", problems)
	}
}

// TestDesiredEncryptedDualStack: a dual-stack encrypted network routes a
// remote container's IPv6 address into the tunnel too, allows it on the
// peer, has the bridge answer Neighbour Discovery for it (a proxy entry),
// and guards its IPv6 subnet in the firewalls; applied, a second plan is
// empty.
func TestDesiredEncryptedDualStack(t *testing.T) {
	in := encInput(ep6("b", "secret", "h2", "02:00:00:00:00:02", "198.19.3.3", "fd00:3::3"))
	s := secret
	s.Subnet6 = netip.MustParsePrefix("fd00:3::/64")
	s.Normalize()
	in.Networks = []model.Network{web, s}
	want, problems := reconcile.Desired(in)
	if len(problems) != 0 {
		t.Fatalf("problems: %v", problems)
	}
	ip6 := netip.MustParseAddr("fd00:3::3")
	if len(want.Routes) != 2 || want.Routes[ip6].Dev != "vxwg0" {
		t.Fatalf("routes = %v, want both of b's addresses into vxwg0", want.Routes)
	}
	if nb, ok := want.Neigh[datapath.NeighKey{VNI: s.VNI, IP: ip6}]; !ok || !nb.Proxy || len(want.Neigh) != 1 {
		t.Fatalf("neighbours = %v, want one proxy entry for %s", want.Neigh, ip6)
	}
	if p := want.Tunnel.Peers[0]; !slices.Contains(p.AllowedIPs, ip6) {
		t.Fatalf("peer allows %v, want %s among them", p.AllowedIPs, ip6)
	}
	if fw := want.Firewall; !slices.Equal(fw.Encrypted, []datapath.EncryptedNet{{VNI: s.VNI, Subnet: s.Subnet, Subnet6: s.Subnet6}}) {
		t.Fatalf("firewall = %+v", fw.Encrypted)
	}
	if i := slices.IndexFunc(want.HostFirewall.Networks, func(h datapath.HostNet) bool { return h.VNI == s.VNI }); i < 0 ||
		want.HostFirewall.Networks[i].Subnet6 != s.Subnet6 || want.HostFirewall.Networks[i].Tunnel != "vxwg0" {
		t.Fatalf("host firewall %+v", want.HostFirewall.Networks)
	}
	dp := fake.New()
	if _, err := reconcile.Sync(dp, want); err != nil {
		t.Fatal(err)
	}
	if ops, err := reconcile.Sync(dp, want); err != nil || len(ops) != 0 {
		t.Fatalf("second pass: %v %v, want nothing to do", ops, err)
	}
}
