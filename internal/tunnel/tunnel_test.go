package tunnel

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/vxnet/vxnet/internal/datapath"
)

func TestPSK(t *testing.T) {
	a, b, c := "key-a", "key-b", "key-c"
	k1, k2 := []byte("cluster key one, 32 bytes long!!"), []byte("cluster key two, 32 bytes long!!")
	tests := []struct {
		name      string
		x, y      [32]byte
		wantEqual bool
	}{
		{"either order", PSK(k1, a, b), PSK(k1, b, a), true},
		{"another pair", PSK(k1, a, b), PSK(k1, a, c), false},
		{"another cluster key", PSK(k1, a, b), PSK(k2, a, b), false},
		{"no cluster key: none", PSK(nil, a, b), [32]byte{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if (tt.x == tt.y) != tt.wantEqual {
				t.Fatalf("equal = %v, want %v", tt.x == tt.y, tt.wantEqual)
			}
		})
	}
	if PSK(k1, a, b) == ([32]byte{}) {
		t.Fatal("a pre-shared key from a cluster key is zero")
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := t.TempDir()
	k, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	again, err := LoadOrCreateKey(dir)
	if err != nil || again != k {
		t.Fatalf("reloaded key differs (err %v)", err)
	}
	if err := os.WriteFile(filepath.Join(dir, KeyFile), []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(dir); err == nil || !strings.Contains(err.Error(), "remove it to make a new one") {
		t.Fatalf("bad key file: err = %v, want one saying how to recover", err)
	}
}

func TestConfig(t *testing.T) {
	priv, _ := wgtypes.GeneratePrivateKey()
	other, _ := wgtypes.GeneratePrivateKey()
	peer, gone := mustKey(t), mustKey(t)
	ip1, ip2 := netip.MustParseAddr("198.19.9.5"), netip.MustParseAddr("fd76:786e:6574:7775::1")
	want := datapath.Tunnel{Dev: "vxwg0", Port: 51830, Peers: []datapath.TunnelPeer{{Key: peer.String(),
		Endpoint: netip.MustParseAddrPort("198.18.0.2:51830"), PSK: [32]byte{7}, AllowedIPs: []netip.Addr{ip1, ip2}}}}
	// running is a device as wgctrl reads it when it is exactly want.
	running := func() *wgtypes.Device {
		return &wgtypes.Device{Name: "vxwg0", PrivateKey: priv, PublicKey: priv.PublicKey(), ListenPort: 51830, Peers: []wgtypes.Peer{{
			PublicKey: peer, PresharedKey: wgtypes.Key{7}, PersistentKeepaliveInterval: Keepalive,
			Endpoint:          &net.UDPAddr{IP: net.ParseIP("198.18.0.2"), Port: 51830},
			AllowedIPs:        []net.IPNet{{IP: ip2.AsSlice(), Mask: net.CIDRMask(128, 128)}, {IP: ip1.AsSlice(), Mask: net.CIDRMask(32, 32)}},
			LastHandshakeTime: time.Now(), ReceiveBytes: 100}}}
	}
	tests := []struct {
		name        string
		change      func(d *wgtypes.Device)
		wantChanged bool
		check       func(t *testing.T, c wgtypes.Config)
	}{
		{"as wanted: nothing", func(*wgtypes.Device) {}, false, nil},
		{"another private key", func(d *wgtypes.Device) { d.PrivateKey = other }, true, func(t *testing.T, c wgtypes.Config) {
			if c.PrivateKey == nil || *c.PrivateKey != priv || c.ListenPort != nil || len(c.Peers) != 0 {
				t.Fatalf("config %+v: want the private key alone", c)
			}
		}},
		{"another port", func(d *wgtypes.Device) { d.ListenPort = 1 }, true, func(t *testing.T, c wgtypes.Config) {
			if c.ListenPort == nil || *c.ListenPort != 51830 || c.PrivateKey != nil {
				t.Fatalf("config %+v: want the port alone", c)
			}
		}},
		{"a peer's address missing", func(d *wgtypes.Device) { d.Peers[0].AllowedIPs = d.Peers[0].AllowedIPs[:1] }, true, func(t *testing.T, c wgtypes.Config) {
			if len(c.Peers) != 1 || !c.Peers[0].ReplaceAllowedIPs || len(c.Peers[0].AllowedIPs) != 2 {
				t.Fatalf("config %+v: want the peer with both addresses, replacing", c)
			}
		}},
		{"a prefix nobody set among a peer's addresses", func(d *wgtypes.Device) {
			d.Peers[0].AllowedIPs = append(d.Peers[0].AllowedIPs, net.IPNet{IP: net.IPv4(10, 0, 0, 0).To4(), Mask: net.CIDRMask(8, 32)})
		}, true, nil},
		{"another pre-shared key", func(d *wgtypes.Device) { d.Peers[0].PresharedKey = wgtypes.Key{8} }, true, nil},
		{"the peer roamed", func(d *wgtypes.Device) { d.Peers[0].Endpoint.Port = 9 }, true, nil},
		{"a peer nobody wants", func(d *wgtypes.Device) { d.Peers = append(d.Peers, wgtypes.Peer{PublicKey: gone}) }, true, func(t *testing.T, c wgtypes.Config) {
			if len(c.Peers) != 1 || c.Peers[0].PublicKey != gone || !c.Peers[0].Remove {
				t.Fatalf("config %+v: want the unwanted peer removed, the other left alone", c)
			}
		}},
		{"a new peer", func(d *wgtypes.Device) { d.Peers = nil }, true, func(t *testing.T, c wgtypes.Config) {
			if len(c.Peers) != 1 || c.Peers[0].PublicKey != peer || c.Peers[0].PresharedKey == nil || *c.Peers[0].PresharedKey != (wgtypes.Key{7}) ||
				c.Peers[0].PersistentKeepaliveInterval == nil || *c.Peers[0].PersistentKeepaliveInterval != Keepalive {
				t.Fatalf("config %+v: want the peer added with its key and keepalive", c)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := running()
			tt.change(d)
			c, changed := Config(want, priv, d)
			if changed != tt.wantChanged {
				t.Fatalf("changed = %v, want %v (config %+v)", changed, tt.wantChanged, c)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
	if got := Observe(running()); !got.Equal(datapath.Tunnel{Dev: "vxwg0", Port: 51830, Key: priv.PublicKey().String(), Peers: want.Peers}) {
		t.Fatalf("Observe = %+v", got)
	}
}

func mustKey(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}
