package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestBuild: the command line (and the defaults) become the agent's
// configuration; bad values are named with what is accepted.
func TestBuild(t *testing.T) {
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	host := Env{Hostname: func() (string, error) { return "box", nil },
		DefaultAddr: func() (netip.Addr, error) { return netip.MustParseAddr("10.0.0.9"), nil },
		HasAddr: func(a netip.Addr) bool {
			return slices.Contains([]netip.Addr{netip.MustParseAddr("10.0.0.9"), netip.MustParseAddr("10.1.0.9"), netip.MustParseAddr("fd19::4")}, a)
		},
		HasDocker: func() bool { return true }}
	state := t.TempDir() // no record: the defaults
	for _, tc := range []struct {
		args  []string
		check func(Agent) bool
		err   string
	}{
		{[]string{"--key-file", key, "--state-dir", state}, func(c Agent) bool {
			return c.Name == "box" && c.AdvertiseAddr == netip.MustParseAddr("10.0.0.9") && len(c.Keys) == 1 && c.StateDir == state &&
				c.Socket == Socket && c.VXLANPort == VXLANPort && c.GossipPort == GossipPort && c.DockerPluginSocket == PluginSocket &&
				c.HealthSubnet == netip.MustParsePrefix(HealthSubnet) && c.HealthNetns == HealthNetns && c.DNSPort == DNSPort
		}, ""},
		{[]string{"--insecure", "--name", "h1", "--advertise-addr", "fd19::4", "--join", "a, b,", "--docker-plugin-socket", "none", "--health-subnet", "off"},
			func(c Agent) bool {
				return c.Name == "h1" && c.AdvertiseAddr.Is6() && slices.Equal(c.Join, []string{"a", "b"}) && c.DockerPluginSocket == "" && !c.HealthSubnet.IsValid() && c.Keys == nil
			}, ""},
		{[]string{"--insecure", "--state-dir", state, "--gossip-port", "7000"}, func(c Agent) bool { return c.GossipPort == 7000 }, ""},
		// Reached at two of its own addresses and a NAT's: gossip listens
		// at the second own one too.
		{[]string{"--insecure", "--advertise-addr", "10.0.0.9,10.1.0.9,203.0.113.9"}, func(c Agent) bool {
			return c.AdvertiseAddr == netip.MustParseAddr("10.0.0.9") && slices.Equal(c.Binds, []netip.Addr{netip.MustParseAddr("10.1.0.9")})
		}, ""},
		{[]string{"--store", "etcd://10.0.0.5:2379"}, func(c Agent) bool { return slices.Equal(c.Etcd, []string{"10.0.0.5:2379"}) }, ""},
		{nil, nil, "no cluster key: give --key-file"},
		{[]string{"--insecure", "--advertise-addr", "host1"}, nil, `invalid --advertise-addr "host1": want an IP address`},
		{[]string{"--insecure", "--health-subnet", "100.127.0.0/30"}, nil, `invalid --health-subnet "100.127.0.0/30"`},
		{[]string{"--key-file", filepath.Join(t.TempDir(), "none")}, nil, "key file"},
	} {
		fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
		var f Flags
		f.Register(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		if err := f.ApplyConfigFile(fs); err != nil {
			t.Fatal(err)
		}
		c, err := f.Build(host, nil)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: err %v, want %q", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil || !tc.check(c) {
			t.Errorf("%v: %+v, %v", tc.args, c, err)
		}
	}
	var f Flags
	f.Register(pflag.NewFlagSet("agent", pflag.ContinueOnError))
	bad := Env{Hostname: func() (string, error) { return "", errors.New("no name") }}
	if _, err := f.Build(bad, nil); err == nil || !strings.Contains(err.Error(), "give --name") {
		t.Errorf("no hostname: %v", err)
	}
}

// TestAdvertised: the host's own address and the addresses it is reached
// at, from --advertise-addr and the host's addresses.
func TestAdvertised(t *testing.T) {
	host := Env{DefaultAddr: func() (netip.Addr, error) { return netip.MustParseAddr("10.0.0.9"), nil },
		HasAddr: func(a netip.Addr) bool {
			return a == netip.MustParseAddr("10.0.0.9") || a == netip.MustParseAddr("10.1.0.9")
		}}
	noRoute := host
	noRoute.DefaultAddr = func() (netip.Addr, error) { return netip.Addr{}, errors.New("no default route") }
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name  string
		given []string
		env   Env
		local netip.Addr
		addrs []netip.Addr
		err   string
	}{
		{"default route", nil, host, a("10.0.0.9"), nil, ""},
		{"one of the host's", []string{"10.1.0.9"}, host, a("10.1.0.9"), nil, ""},
		{"public only: own address first", []string{"203.0.113.9"}, host, a("10.0.0.9"), []netip.Addr{a("10.0.0.9"), a("203.0.113.9")}, ""},
		{"private then public", []string{"10.1.0.9", "203.0.113.9"}, host, a("10.1.0.9"), []netip.Addr{a("10.1.0.9"), a("203.0.113.9")}, ""},
		{"comma separated", []string{"10.1.0.9, 203.0.113.9"}, host, a("10.1.0.9"), []netip.Addr{a("10.1.0.9"), a("203.0.113.9")}, ""},
		{"public first keeps the order", []string{"203.0.113.9", "10.1.0.9"}, host, a("10.1.0.9"), []netip.Addr{a("203.0.113.9"), a("10.1.0.9")}, ""},
		{"twice", []string{"10.1.0.9", "10.1.0.9"}, host, netip.Addr{}, nil, "given twice"},
		{"loopback", []string{"127.0.0.1"}, host, netip.Addr{}, nil, "want a unicast address"},
		{"mixed families", []string{"10.1.0.9", "2001:db8::9"}, host, netip.Addr{}, nil, "one family"},
		{"none on the host, no route", []string{"203.0.113.9"}, noRoute, netip.Addr{}, nil, "no address given is on this host"},
		{"too many", []string{"1.0.0.1,1.0.0.2,1.0.0.3,1.0.0.4,1.0.0.5,1.0.0.6,1.0.0.7,1.0.0.8,1.0.0.9"}, host, netip.Addr{}, nil, "at most 8"},
	} {
		local, addrs, err := advertised(tc.given, tc.env)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || local != tc.local || !slices.Equal(addrs, tc.addrs) {
			t.Errorf("%s: %v %v %v, want %v %v", tc.name, local, addrs, err, tc.local, tc.addrs)
		}
		c := Agent{AdvertiseAddr: local, Addrs: addrs}
		if want := local; len(addrs) > 0 {
			want = addrs[len(addrs)-1]
			if c.Identity() != want {
				t.Errorf("%s: identity %v, want %v", tc.name, c.Identity(), want)
			}
		} else if c.Identity() != want {
			t.Errorf("%s: identity %v, want %v", tc.name, c.Identity(), want)
		}
	}
}

// TestGossipPortFor: a node keeps the gossip port it ran on; one upgraded
// from a release before the new default keeps the old default; a new one
// takes the new default.
func TestGossipPortFor(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  int
	}{
		{"new node", nil, GossipPort},
		{"upgraded from an earlier release", map[string]string{"vxnet.db": ""}, LegacyGossipPort},
		{"recorded", map[string]string{"vxnet.db": "", GossipPortFile: "7000\n"}, 7000},
		{"recorded default", map[string]string{GossipPortFile: "7947"}, GossipPort},
		{"unreadable record", map[string]string{"vxnet.db": "", GossipPortFile: "many"}, LegacyGossipPort},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, body := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if got, why := GossipPortFor(dir); got != tc.want || why == "" {
				t.Errorf("port %d (%s), want %d", got, why, tc.want)
			}
		})
	}
	dir := t.TempDir()
	if err := RecordGossipPort(dir, 7946); err != nil {
		t.Fatal(err)
	}
	if got, _ := GossipPortFor(dir); got != 7946 {
		t.Errorf("after recording 7946: %d", got)
	}
}
