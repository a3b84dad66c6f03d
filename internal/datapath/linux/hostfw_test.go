package linux_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/testutil"
)

// save runs TOOL-save in the namespace.
func save(t *testing.T, path, tool string) string {
	t.Helper()
	var out []byte
	err := nsutil.Do(path, func() error {
		var err error
		out, err = exec.Command(tool + "-save").CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("%s-save: %v %s", tool, err, out)
	}
	return string(out)
}

// freshDataplane opens a dataplane in the namespace at path (closed when
// the test ends) that reads the host firewall and openings afresh on every
// Observe.
func freshDataplane(t *testing.T, path string) *linux.Dataplane {
	t.Helper()
	dp, err := linux.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	dp.SetHostFirewallMaxAge(0)
	return dp
}

// runIn runs a tool with args in the namespace at path, failing the test
// when it fails.
func runIn(t *testing.T, path, tool string, args ...string) {
	t.Helper()
	if err := nsutil.Do(path, func() error {
		if out, err := exec.Command(tool, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s %v: %v %s", tool, args, err, out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// The host firewall goes into the iptables backend the host's own rules
// are in (a drop in one backend is final whatever the other accepts), and
// leaves every rule it did not write alone.
func TestHostFirewallBackend(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct{ backend, other string }{
		{"iptables-legacy", "iptables-nft"},
		{"iptables-nft", "iptables-legacy"},
	} {
		t.Run(tc.backend, func(t *testing.T) {
			_, path := testutil.Netns(t)
			// The host's firewall, as ufw or dockerd leave it.
			runIn(t, path, tc.backend, "-P", "FORWARD", "DROP")
			runIn(t, path, tc.backend, "-A", "FORWARD", "-i", "lo", "-j", "ACCEPT")
			dp, err := linux.Open(path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer dp.Close()
			h := datapath.HostFirewall{Networks: []datapath.HostNet{{VNI: 4097, Subnet: netip.MustParsePrefix("198.19.7.0/24"), Egress: true}}}
			if err := dp.EnsureHostFirewall(h); err != nil {
				t.Fatal(err)
			}
			if got := dp.HostFirewallBackend(); got != tc.backend {
				t.Errorf("backend %q, want %q", got, tc.backend)
			}
			mine, other := save(t, path, tc.backend), save(t, path, tc.other)
			for _, want := range []string{"-A FORWARD -j VXNET-FORWARD", "-A FORWARD -i lo -j ACCEPT", ":FORWARD DROP",
				"-A VXNET-FORWARD -i vxbr4097 -o vxbr4097", "-A VXNET-POSTROUTING -s 198.19.7.0/24 ! -o vxbr4097"} {
				if !strings.Contains(mine, want) {
					t.Errorf("%s lacks %q:\n%s", tc.backend, want, mine)
				}
			}
			if strings.Contains(other, "VXNET") {
				t.Errorf("%s got vxnet rules too:\n%s", tc.other, other)
			}
			if err := dp.RemoveHostFirewall(); err != nil {
				t.Fatal(err)
			}
			after := save(t, path, tc.backend)
			if strings.Contains(after, "VXNET") || !strings.Contains(after, "-A FORWARD -i lo -j ACCEPT") || !strings.Contains(after, ":FORWARD DROP") {
				t.Errorf("after removal:\n%s", after)
			}
		})
	}
}

// With Docker's DOCKER-USER chain in FORWARD, vxnet's jump goes right after
// it, so what users put there for containers applies to vxnet's too.
func TestHostFirewallAfterDockerUser(t *testing.T) {
	testutil.RequireRoot(t)
	_, path := testutil.Netns(t)
	for _, args := range [][]string{{"-N", "DOCKER-USER"}, {"-A", "FORWARD", "-j", "DOCKER-USER"}, {"-A", "FORWARD", "-j", "ACCEPT"}} {
		runIn(t, path, "iptables-nft", args...)
	}
	dp, err := linux.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	if err := dp.EnsureHostFirewall(datapath.HostFirewall{Networks: []datapath.HostNet{{VNI: 9, Subnet: netip.MustParsePrefix("198.19.9.0/24")}}}); err != nil {
		t.Fatal(err)
	}
	var fwd []string
	for _, l := range strings.Split(save(t, path, "iptables-nft"), "\n") {
		if strings.HasPrefix(l, "-A FORWARD ") {
			fwd = append(fwd, l)
		}
	}
	want := []string{"-A FORWARD -j DOCKER-USER", "-A FORWARD -j VXNET-FORWARD", "-A FORWARD -j ACCEPT"}
	if strings.Join(fwd, "\n") != strings.Join(want, "\n") {
		t.Errorf("FORWARD\n%s\nwant\n%s", strings.Join(fwd, "\n"), strings.Join(want, "\n"))
	}
}

// A dual-stack network's rules go into the host's ip6tables too (same
// backend), read back equal to what was written; rules taken away there
// make the reading incomplete; without IPv6 networks the chains go, and
// IPv6 forwarding is on with the host's router advertisements still taken.
func TestHostFirewallIPv6(t *testing.T) {
	testutil.RequireRoot(t)
	_, path := testutil.Netns(t)
	runIn(t, path, "ip6tables-nft", "-P", "FORWARD", "DROP")
	dp := freshDataplane(t, path)
	h := datapath.HostFirewall{
		Networks: []datapath.HostNet{
			{VNI: 4097, Subnet: netip.MustParsePrefix("198.19.7.0/24"), Gateway: netip.MustParseAddr("198.19.7.1"), Egress: true,
				Subnet6: netip.MustParsePrefix("fd00:7::/64"), Gateway6: netip.MustParseAddr("fd00:7::1")},
			{VNI: 4098, Subnet: netip.MustParsePrefix("198.19.8.0/24")},
			{VNI: 4099, Subnet6: netip.MustParsePrefix("fd00:9::/64"), Gateway6: netip.MustParseAddr("fd00:9::1")}, // IPv6-only
		},
		DNSPort: 53533,
		Ports:   []datapath.PublishedPort{{VNI: 4097, Proto: "tcp", HostPort: 8080, IP: netip.MustParseAddr("198.19.7.5"), Port: 80, IP6: netip.MustParseAddr("fd00:7::5")}},
	}
	if err := dp.EnsureHostFirewall(h); err != nil {
		t.Fatal(err)
	}
	v6 := save(t, path, "ip6tables-nft")
	for _, want := range []string{"-A FORWARD -j VXNET-FORWARD", ":FORWARD DROP", "-A VXNET-FORWARD -i vxbr4097 -o vxbr4097",
		"-A VXNET-POSTROUTING -s fd00:7::/64 ! -o vxbr4097", "--to-destination [fd00:7::5]:80", "-A VXNET-FORWARD -d fd00:7::5/128 -o vxbr4097 -p tcp",
		// names at the IPv6 gateways, the IPv6-only network's too
		"-A VXNET-DNS -i vxbr4097 -p udp -m udp --dport 53", "--to-destination [fd00:7::1]:53533", "-A VXNET-INPUT -d fd00:7::1/128 -i vxbr4097 -p tcp -m tcp --dport 53533",
		"--to-destination [fd00:9::1]:53533", "-A VXNET-INPUT -d fd00:9::1/128 -i vxbr4099 -p udp -m udp --dport 53533"} {
		if !strings.Contains(v6, want) {
			t.Errorf("ip6tables lacks %q:\n%s", want, v6)
		}
	}
	if strings.Contains(v6, "vxbr4098") {
		t.Errorf("an IPv4-only network in ip6tables:\n%s", v6)
	}
	if v4 := save(t, path, "iptables-nft"); strings.Contains(v4, "vxbr4099") || !strings.Contains(v4, "--to-destination 198.19.7.1:53533") {
		t.Errorf("iptables: want the IPv4 gateway's redirect, nothing of the IPv6-only network:\n%s", v4)
	}
	o, err := dp.Observe()
	if err != nil {
		t.Fatal(err)
	}
	if o.HostFirewall == nil || !o.HostFirewall.Equal(h) {
		t.Fatalf("read back %+v\nwant %+v", o.HostFirewall, h)
	}
	var fwd, ra string
	if err := nsutil.Do(path, func() error {
		b1, err1 := os.ReadFile("/proc/sys/net/ipv6/conf/all/forwarding")
		b2, err2 := os.ReadFile("/proc/sys/net/ipv6/conf/lo/accept_ra")
		fwd, ra = strings.TrimSpace(string(b1)), strings.TrimSpace(string(b2))
		return errors.Join(err1, err2)
	}); err != nil || fwd != "1" || ra != "2" {
		t.Errorf("IPv6 forwarding %q, accept_ra of lo %q (%v); want 1 and 2", fwd, ra, err)
	}
	// Someone deletes the IPv6 DNAT: incomplete, equal to nothing wanted.
	runIn(t, path, "ip6tables-nft", "-t", "nat", "-F", "VXNET-DNAT")
	if o, err = dp.Observe(); err != nil || o.HostFirewall == nil || !o.HostFirewall.Incomplete {
		t.Fatalf("after flushing ip6tables VXNET-DNAT: %+v %v; want incomplete", o.HostFirewall, err)
	}
	// No dual-stack network any more: the IPv6 chains go, IPv4 stays.
	h4 := datapath.HostFirewall{Networks: []datapath.HostNet{{VNI: 4098, Subnet: netip.MustParsePrefix("198.19.8.0/24")}}}
	if err := dp.EnsureHostFirewall(h4); err != nil {
		t.Fatal(err)
	}
	if v6 := save(t, path, "ip6tables-nft"); strings.Contains(v6, "VXNET") {
		t.Errorf("ip6tables after the last dual-stack network went:\n%s", v6)
	}
	if o, err = dp.Observe(); err != nil || o.HostFirewall == nil || !o.HostFirewall.Equal(h4) {
		t.Fatalf("read back %+v %v; want %+v", o.HostFirewall, err, h4)
	}
}
