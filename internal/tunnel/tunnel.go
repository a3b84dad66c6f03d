// Package tunnel holds what vxnet's WireGuard tunnel needs beyond the
// kernel objects: the host's key pair (kept in the state directory), the
// pre-shared key a pair of hosts derives from the cluster key, the device
// configuration that takes a running device to a wanted one with the fewest
// changes (a restarted agent adopts a running tunnel without a handshake),
// and the userspace device (wireguard-go) for kernels without WireGuard.
package tunnel

import (
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/vxnet/vxnet/internal/datapath"
)

// KeyFile is the private key's file in the state directory.
const KeyFile = "tunnel.key"

// Keepalive keeps each pair's session warm (and, across NAT, its mapping
// open): the first packet after a quiet spell needs no handshake.
const Keepalive = 25 * time.Second

// LoadOrCreateKey returns the host's private key from dir, making and
// saving one (mode 0600) on first start.
func LoadOrCreateKey(dir string) (wgtypes.Key, error) {
	path := filepath.Join(dir, KeyFile)
	b, err := os.ReadFile(path)
	if err == nil {
		k, perr := wgtypes.ParseKey(strings.TrimSpace(string(b)))
		if perr != nil {
			return wgtypes.Key{}, fmt.Errorf("tunnel key %s is unreadable (remove it to make a new one): %w", path, perr)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return wgtypes.Key{}, fmt.Errorf("read tunnel key %s: %w", path, err)
	}
	return NewKey(dir)
}

// NewKey makes a new private key and saves it in dir, replacing the one
// there: every peer learns the new public key from the host's record.
func NewKey(dir string) (wgtypes.Key, error) {
	path := filepath.Join(dir, KeyFile)
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("make tunnel key: %w", err)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(k.String()+"\n"), 0o600); err != nil {
		return wgtypes.Key{}, fmt.Errorf("write tunnel key %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return wgtypes.Key{}, fmt.Errorf("save tunnel key %s: %w", path, err)
	}
	return k, nil
}

// PSK derives the pre-shared key of two hosts (their public keys, in
// either order) from the cluster key: a host without the cluster key
// cannot complete a handshake with any member, even with a member's
// record and its own key pair. No cluster key (etcd, insecure gossip): no
// pre-shared key.
func PSK(clusterKey []byte, a, b string) [32]byte {
	if len(clusterKey) == 0 {
		return [32]byte{}
	}
	pair := []string{a, b}
	slices.Sort(pair)
	k, err := hkdf.Key(sha256.New, clusterKey, nil, "vxnet wireguard psk v1\x00"+pair[0]+"\x00"+pair[1], 32)
	if err != nil {
		panic(fmt.Sprintf("hkdf: %v", err)) // only for lengths over 255*32
	}
	return [32]byte(k)
}

// Observe turns a device as wgctrl reads it into a datapath.Tunnel (the
// link's name, MTU and address are the caller's).
func Observe(d *wgtypes.Device) datapath.Tunnel {
	t := datapath.Tunnel{Dev: d.Name, Port: d.ListenPort, Userspace: d.Type == wgtypes.Userspace, Peers: []datapath.TunnelPeer{}}
	if d.PrivateKey != (wgtypes.Key{}) {
		t.Key = d.PublicKey.String()
	}
	for _, p := range d.Peers {
		tp := datapath.TunnelPeer{Key: p.PublicKey.String(), PSK: [32]byte(p.PresharedKey),
			LastHandshake: p.LastHandshakeTime, RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes}
		if p.Endpoint != nil {
			tp.Endpoint = netipUnmap(p.Endpoint.AddrPort())
		}
		tp.AllowedIPs = hostAddrs(p.AllowedIPs)
		t.Peers = append(t.Peers, tp)
	}
	datapath.SortPeers(t.Peers)
	return t
}

// Config returns the changes that take device have to want with private
// key priv, and whether there are any. Peers that are right are left
// alone (their sessions go on), the listen port is set only when it
// differs (setting it rebinds the socket), and peers nobody wants go.
func Config(want datapath.Tunnel, priv wgtypes.Key, have *wgtypes.Device) (wgtypes.Config, bool) {
	var cfg wgtypes.Config
	changed := false
	if have.PrivateKey != priv {
		cfg.PrivateKey = &priv
		changed = true
	}
	if have.ListenPort != want.Port {
		port := want.Port
		cfg.ListenPort = &port
		changed = true
	}
	cur := map[wgtypes.Key]wgtypes.Peer{}
	for _, p := range have.Peers {
		cur[p.PublicKey] = p
	}
	wanted := map[wgtypes.Key]bool{}
	for _, p := range want.Peers {
		k, err := wgtypes.ParseKey(p.Key)
		if err != nil {
			continue // validated before it got here
		}
		wanted[k] = true
		if c, ok := cur[k]; ok && peerIs(c, p) {
			continue
		}
		psk := wgtypes.Key(p.PSK)
		ka := Keepalive
		allowed := make([]net.IPNet, 0, len(p.AllowedIPs))
		for _, a := range p.AllowedIPs {
			allowed = append(allowed, net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())})
		}
		pc := wgtypes.PeerConfig{PublicKey: k, PresharedKey: &psk, PersistentKeepaliveInterval: &ka, ReplaceAllowedIPs: true,
			AllowedIPs: allowed}
		if p.Endpoint.IsValid() { // unset: left to what the peer's handshakes say
			pc.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
		}
		cfg.Peers = append(cfg.Peers, pc)
		changed = true
	}
	for _, p := range have.Peers {
		if !wanted[p.PublicKey] {
			cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true})
			changed = true
		}
	}
	return cfg, changed
}

func peerIs(c wgtypes.Peer, p datapath.TunnelPeer) bool {
	hosts := hostAddrs(c.AllowedIPs)
	endpoint := !p.Endpoint.IsValid() || (c.Endpoint != nil && netipUnmap(c.Endpoint.AddrPort()) == p.Endpoint)
	return [32]byte(c.PresharedKey) == p.PSK && c.PersistentKeepaliveInterval == Keepalive && endpoint &&
		len(hosts) == len(c.AllowedIPs) && slices.Equal(hosts, p.AllowedIPs)
}

// hostAddrs returns the single addresses among nets, sorted (a prefix that
// is not one address is left out: vxnet never sets one, and a peer that
// has one is configured again).
func hostAddrs(nets []net.IPNet) []netip.Addr {
	out := []netip.Addr{}
	for _, n := range nets {
		ones, bits := n.Mask.Size()
		a, ok := netip.AddrFromSlice(n.IP)
		if ok && ones == bits && bits > 0 {
			out = append(out, a.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

func netipUnmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
