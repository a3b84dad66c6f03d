package linux_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/dptest"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/probe"
	"github.com/vxnet/vxnet/internal/testutil"
)

// TestSourceFollowsRoute: a network without a fixed source address (a
// host reached at several addresses) sends each peer's VXLAN from the
// address of the interface the route to that peer takes. The host has two
// links: one to a private peer, one to a public one; a frame for each
// peer's container leaves with the matching source. Over an IPv4 underlay
// and over an IPv6 one (the device's local address "::").
func TestSourceFollowsRoute(t *testing.T) {
	testutil.RequireRoot(t)
	p := netip.MustParsePrefix
	t.Run("IPv4", func(t *testing.T) {
		sourceFollowsRoute(t, netip.Addr{}, [2][2]netip.Prefix{
			{p("198.18.1.1/24"), p("198.18.1.2/24")}, {p("198.18.100.1/24"), p("198.18.100.2/24")}})
	})
	t.Run("IPv6", func(t *testing.T) {
		sourceFollowsRoute(t, netip.IPv6Unspecified(), [2][2]netip.Prefix{
			{p("2001:db8:1::1/64"), p("2001:db8:1::2/64")}, {p("2001:db8:100::1/64"), p("2001:db8:100::2/64")}})
	})
}

// sourceFollowsRoute runs TestSourceFollowsRoute for the vxlan device's
// local address local; links are the host's and the peer's addresses on
// the private link, then on the public one.
func sourceFollowsRoute(t *testing.T, local netip.Addr, links [2][2]netip.Prefix) {
	_, hostPath := testutil.Netns(t)
	_, privPath := testutil.Netns(t)
	_, pubPath := testutil.Netns(t)
	link := func(peerPath, name string, local, remote netip.Prefix) {
		t.Helper()
		peerNS, err := netns.GetFromPath(peerPath)
		if err != nil {
			t.Fatal(err)
		}
		defer peerNS.Close()
		h, err := nsutil.Handle(hostPath)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(peerNS)}); err != nil {
			t.Fatal(err)
		}
		for _, side := range []struct {
			path, dev string
			addr      netip.Prefix
		}{{hostPath, name, local}, {peerPath, "eth0", remote}} {
			sh, err := nsutil.Handle(side.path)
			if err != nil {
				t.Fatal(err)
			}
			l, err := sh.LinkByName(side.dev)
			if err == nil {
				// No duplicate address detection: a tentative address is
				// no source.
				err = sh.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: side.addr.Addr().AsSlice(), Mask: net.CIDRMask(side.addr.Bits(), side.addr.Addr().BitLen())},
					Flags: unix.IFA_F_NODAD})
			}
			if err == nil {
				err = sh.LinkSetUp(l)
			}
			sh.Close()
			if err != nil {
				t.Fatalf("%s in %s: %v", side.dev, side.path, err)
			}
		}
	}
	link(privPath, "priv0", links[0][0], links[0][1])
	link(pubPath, "pub0", links[1][0], links[1][1])
	for _, l := range links {
		if err := answers(hostPath, l[1].Addr()); err != nil {
			t.Fatalf("the peer at %s does not answer: %v", l[1].Addr(), err)
		}
	}

	dp, err := linux.Open(hostPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	s := dptest.Spec(7300)
	s.Local, s.Underlay = local, "" // no fixed source: the route's
	if err := dp.EnsureNetwork(s); err != nil {
		t.Fatal(err)
	}
	if got := observeNet(t, dp, 7300); got.Local != local || got.Underlay != "" {
		t.Fatalf("observed %+v, want local address %v and no underlay device", got, local)
	}
	_, ctr := testutil.Netns(t)
	if _, err := dp.Attach(datapath.EndpointSpec{ID: "src-1", VNI: 7300, Netns: ctr, IfName: "eth0", MAC: "02:00:00:00:73:01",
		IP: netip.MustParsePrefix("198.19.7.2/24"), Gateway: s.Gateway.Addr(), MTU: s.MTU}); err != nil {
		t.Fatal(err)
	}
	peers := []struct {
		ns      string
		vtep    netip.Addr
		ip      netip.Addr
		mac     string
		src     netip.Addr
		notFrom netip.Addr
	}{
		{privPath, links[0][1].Addr(), netip.MustParseAddr("198.19.7.10"), "02:00:00:00:73:10", links[0][0].Addr(), links[1][0].Addr()},
		{pubPath, links[1][1].Addr(), netip.MustParseAddr("198.19.7.20"), "02:00:00:00:73:20", links[1][0].Addr(), links[0][0].Addr()},
	}
	for _, p := range peers {
		if err := dp.SetFDB(datapath.FDB{VNI: 7300, MAC: p.mac, VTEP: p.vtep}); err != nil {
			t.Fatal(err)
		}
		if err := dp.SetNeigh(datapath.Neigh{VNI: 7300, IP: p.ip, MAC: p.mac}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range peers {
		capt, err := probe.StartCaptureOn(p.ns, "eth0", 4789)
		if err != nil {
			t.Fatal(err)
		}
		// No one answers: the echo request is what is looked at.
		_, _ = probe.Ping(ctr, p.ip, 56, false, 300*time.Millisecond)
		st := capt.Stop()
		if st.VXLAN == 0 || st.Addrs[p.src] == 0 || st.Addrs[p.notFrom] != 0 {
			t.Errorf("to %s: %d VXLAN frames, from %s %d times and from %s %d times; want them from %s only",
				p.vtep, st.VXLAN, p.src, st.Addrs[p.src], p.notFrom, st.Addrs[p.notFrom], p.src)
		}
	}
}

// answers waits until the host at hostPath reaches dst: an IPv6 address
// is usable once the kernel saw its link's carrier (its link watch runs up
// to a second late), even without duplicate address detection.
func answers(hostPath string, dst netip.Addr) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := probe.Ping(hostPath, dst, 56, false, 200*time.Millisecond)
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}

func observeNet(t *testing.T, dp *linux.Dataplane, vni uint32) datapath.NetworkSpec {
	t.Helper()
	obs, err := dp.Observe()
	if err != nil {
		t.Fatal(err)
	}
	return obs.Networks[vni]
}
