package linux_test

import (
	"net/netip"
	"testing"

	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/testutil"
)

// The address an agent advertises when given none: the default route's
// (its link's global address): IPv4's where there is one, else IPv6's (an
// IPv6-only host); no default route at all is a clear error.
func TestDefaultAdvertiseAddr(t *testing.T) {
	testutil.RequireRoot(t)
	_, path := testutil.Netns(t)
	addr := func() (netip.Addr, error) {
		var a netip.Addr
		err := nsutil.Do(path, func() error {
			var err error
			a, err = linux.DefaultAdvertiseAddr()
			return err
		})
		return a, err
	}
	if a, err := addr(); err == nil || err.Error() != "no default route to take an address from: give --advertise-addr" {
		t.Fatalf("no default route: %v %v", a, err)
	}
	runIn(t, path, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	runIn(t, path, "ip", "link", "set", "eth0", "up")
	runIn(t, path, "ip", "link", "set", "eth1", "up")
	runIn(t, path, "ip", "addr", "add", "fe80::5/64", "dev", "eth0", "nodad")
	runIn(t, path, "ip", "addr", "add", "2001:db8::5/64", "dev", "eth0", "nodad")
	runIn(t, path, "ip", "-6", "route", "add", "default", "via", "2001:db8::1", "dev", "eth0")
	if a, err := addr(); err != nil || a != netip.MustParseAddr("2001:db8::5") {
		t.Fatalf("an IPv6-only host: %v %v, want 2001:db8::5", a, err)
	}
	runIn(t, path, "ip", "addr", "add", "198.18.0.5/24", "dev", "eth0")
	runIn(t, path, "ip", "route", "add", "default", "via", "198.18.0.1")
	if a, err := addr(); err != nil || a != netip.MustParseAddr("198.18.0.5") {
		t.Fatalf("a dual-stack host: %v %v, want 198.18.0.5", a, err)
	}
}
