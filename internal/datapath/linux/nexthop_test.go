package linux

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/dptest"
	"github.com/vxnet/vxnet/internal/testutil"
)

func TestHopOf(t *testing.T) {
	k := hopKey{vtep: [4]byte{198, 18, 0, 2}, local: [4]byte{198, 18, 0, 1}, under: 7}
	for _, c := range []struct {
		name string
		r    netlink.Route
		want [4]byte
	}{
		{"on link: the VTEP itself", netlink.Route{LinkIndex: 7, Type: unix.RTN_UNICAST}, k.vtep},
		{"via a gateway", netlink.Route{LinkIndex: 7, Type: unix.RTN_UNICAST, Gw: net.IPv4(198, 18, 0, 254)}, [4]byte{198, 18, 0, 254}},
		{"another device", netlink.Route{LinkIndex: 8, Type: unix.RTN_UNICAST}, [4]byte{}},
		{"local", netlink.Route{LinkIndex: 7, Type: unix.RTN_LOCAL}, [4]byte{}},
		{"IPv6 gateway", netlink.Route{LinkIndex: 7, Type: unix.RTN_UNICAST, Gw: net.ParseIP("fe80::1")}, [4]byte{}},
		{"IPv6 via", netlink.Route{LinkIndex: 7, Type: unix.RTN_UNICAST, Via: &netlink.Via{AddrFamily: unix.AF_INET6, Addr: net.ParseIP("fe80::1")}}, [4]byte{}},
		{"unspecified gateway", netlink.Route{LinkIndex: 7, Type: unix.RTN_UNICAST, Gw: net.IPv4zero}, [4]byte{}},
	} {
		if got := hopOf(c.r, k); got != c.want {
			t.Errorf("%s: next hop %v, want %v", c.name, got, c.want)
		}
	}
}

// TestNextHopFollowsRoutes: a wrapped entry carries the next hop the
// routes give (the VTEP on link, then a gateway), a route change is
// noticed by WatchRoutes (the cache is trusted for an hour here) and
// reported by Observe, and the entry written again carries the new hop;
// a route the program cannot follow (a local one) leaves the lookup to the
// kernel. (The kernel's lookup is bound to the underlay device, so a
// blackhole, or the VTEP's address on another device, gives the VTEP on
// link, as the kernel's lookup for every frame would.)
func TestNextHopFollowsRoutes(t *testing.T) {
	testutil.RequireRoot(t)
	ns, path := testutil.Netns(t)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	ip("link", "add", "u0", "type", "veth", "peer", "name", "u1")
	ip("addr", "add", "198.18.0.1/24", "dev", "u0")
	ip("link", "set", "u0", "up")
	d, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.SetFastPathMaxAge(time.Hour)
	s := dptest.Spec(7310)
	s.Underlay = "u0"
	if err := d.EnsureNetwork(s); err != nil {
		t.Fatal(err)
	}
	if err := d.EnableFastPath(); err != nil {
		t.Fatal(err)
	}
	e := datapath.FastEntry{VNI: 7310, MAC: "02:31:00:00:10:02", Dev: datapath.VxlanName(7310), Remote: true,
		VTEP: netip.MustParseAddr("198.18.0.2")}
	hop := func() [4]byte {
		t.Helper()
		k, _ := fastKey(e.VNI, e.MAC)
		var v macVal
		if err := d.fast.macs.Lookup(k, &v); err != nil {
			t.Fatal(err)
		}
		if v.Local == [4]byte{} {
			t.Fatal("the entry is not wrapped by the program")
		}
		return v.NH
	}
	// reported says whether Observe reports the entry as it was written
	// (with its VTEP) or for writing again (without).
	reported := func() bool {
		t.Helper()
		obs, err := d.Observe()
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range obs.FastPath.Entries {
			if o.Key() == e.Key() {
				return o.VTEP.IsValid()
			}
		}
		t.Fatalf("entry %s not observed", e)
		return false
	}
	// write writes the entry and checks its next hop, and that Observe
	// then reports it as written.
	write := func(want [4]byte, what string) {
		t.Helper()
		if err := d.SetFastEntry(e); err != nil {
			t.Fatal(err)
		}
		if got := hop(); got != want {
			t.Fatalf("next hop %v, want %v (%s)", got, want, what)
		}
		if !reported() {
			t.Fatalf("the entry written with %s is reported for writing again", what)
		}
	}
	write([4]byte{198, 18, 0, 2}, "the VTEP on link")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changed := make(chan struct{}, 16)
	watchErr := make(chan error, 1)
	go func() { watchErr <- d.WatchRoutes(ctx, func() { changed <- struct{}{} }) }()
	// called says whether WatchRoutes called back within limit.
	called := func(limit time.Duration) bool {
		t.Helper()
		select {
		case <-changed:
			return true
		case err := <-watchErr:
			t.Fatalf("WatchRoutes ended: %v", err)
		case <-time.After(limit):
		}
		return false
	}
	// The subscription is up once a change made after it is seen:
	// change a route no entry uses until one is.
	for i := 0; ; i++ {
		ip("route", "replace", "198.18.77.0/24", "dev", "u0")
		if called(2 * time.Second) {
			break
		}
		if i == 3 {
			t.Fatal("WatchRoutes never called after route changes")
		}
	}
	// move changes the routes, waits for the call back and checks that
	// Observe reports the entry for writing again.
	move := func(what string, args ...string) {
		t.Helper()
		ip(args...)
		if !called(5 * time.Second) {
			t.Fatalf("no call after %s", what)
		}
		if reported() {
			t.Fatalf("after %s, Observe still reports the entry as written", what)
		}
	}
	move("a route via a gateway", "route", "add", "198.18.0.2/32", "via", "198.18.0.254", "dev", "u0")
	write([4]byte{198, 18, 0, 254}, "the gateway 198.18.0.254")
	// A local route for the VTEP's address on the underlay (the kernel
	// answers through lo): nothing the program may use.
	move("a local route", "route", "add", "local", "198.18.0.2/32", "dev", "u0", "table", "local")
	write([4]byte{}, "no next hop for a local VTEP (the kernel decides)")
	cancel()
	if err := <-watchErr; err != nil {
		t.Fatalf("WatchRoutes after cancel: %v", err)
	}
}
