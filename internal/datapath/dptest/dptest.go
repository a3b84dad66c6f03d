// Package dptest is the contract suite every datapath.Dataplane must pass:
// the linux implementation in a fresh namespace and the in-memory fake run
// the same assertions, so the fake cannot drift from the kernel.
package dptest

import (
	"cmp"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
)

// Harness adapts one implementation to the suite.
type Harness struct {
	// New returns a fresh, empty Dataplane, cleaned up with t.
	New func(t *testing.T) datapath.Dataplane
	// Container returns the path of a container network namespace.
	Container func(t *testing.T) string
	// Changes returns the implementation's write counter.
	Changes func(dp datapath.Dataplane) int
	// AddForeign creates a device vxnet did not create, with that name.
	AddForeign func(t *testing.T, dp datapath.Dataplane, name string)
	// FlushHostFirewall empties vxnet's filter chain in the host firewall,
	// as someone flushing the host's iptables would, and makes the next
	// Observe read the host again.
	FlushHostFirewall func(t *testing.T, dp datapath.Dataplane)
	// EnableFast loads the BPF fast path; UnhookByHand takes its program
	// off a device as someone deleting the filter would.
	EnableFast   func(t *testing.T, dp datapath.Dataplane)
	UnhookByHand func(t *testing.T, dp datapath.Dataplane, dev string)
	// Tunnel gives dp a key pair (and a way to run a userspace device
	// where the kernel has no WireGuard) and returns the public key.
	Tunnel func(t *testing.T, dp datapath.Dataplane) string
}

// Spec returns a valid network spec for a VNI.
func Spec(vni uint32) datapath.NetworkSpec {
	return datapath.NetworkSpec{
		Name: "n" + strings.Repeat("x", 1), VNI: vni, Port: 4789,
		Local: netip.MustParseAddr("198.18.0.1"), MTU: 1450,
		Gateway:    netip.MustParsePrefix("198.19.7.1/24"),
		Gateway6:   netip.MustParsePrefix("fd00:7::1/64"),
		GatewayMAC: model.GatewayMAC(vni).String(),
	}
}

// Run runs the contract suite.
func Run(t *testing.T, h Harness) {
	t.Run("EnsureNetworkObserved", func(t *testing.T) {
		dp := h.New(t)
		s := Spec(4097)
		must(t, dp.EnsureNetwork(s))
		obs := observe(t, dp)
		if got := obs.Networks[4097]; got != s {
			t.Fatalf("observed network = %+v, want %+v", got, s)
		}
	})
	t.Run("EnsureIsIdempotent", func(t *testing.T) {
		dp := h.New(t)
		s := Spec(4098)
		must(t, dp.EnsureNetwork(s))
		before := h.Changes(dp)
		must(t, dp.EnsureNetwork(s))
		if d := h.Changes(dp) - before; d != 0 {
			t.Fatalf("second EnsureNetwork made %d kernel changes, want 0", d)
		}
	})
	t.Run("EnsureCorrectsDrift", func(t *testing.T) {
		dp := h.New(t)
		s := Spec(4099)
		must(t, dp.EnsureNetwork(s))
		s.MTU, s.Port = 1400, 4790
		s.Gateway = netip.MustParsePrefix("198.19.8.1/24")
		must(t, dp.EnsureNetwork(s))
		if got := observe(t, dp).Networks[4099]; got != s {
			t.Fatalf("after change observed %+v, want %+v", got, s)
		}
	})
	t.Run("FDBAndNeigh", func(t *testing.T) {
		dp := h.New(t)
		must(t, dp.EnsureNetwork(Spec(5000)))
		vtepA, vtepB := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3")
		u := datapath.FDB{VNI: 5000, MAC: "02:00:00:00:00:0a", VTEP: vtepA}
		fl := []datapath.FDB{{VNI: 5000, MAC: datapath.ZeroMAC, VTEP: vtepA}, {VNI: 5000, MAC: datapath.ZeroMAC, VTEP: vtepB}}
		n4 := datapath.Neigh{VNI: 5000, IP: netip.MustParseAddr("198.19.7.10"), MAC: u.MAC}
		n6 := datapath.Neigh{VNI: 5000, IP: netip.MustParseAddr("fd00:7::10"), MAC: u.MAC}
		for _, f := range append([]datapath.FDB{u}, fl...) {
			must(t, dp.SetFDB(f))
		}
		must(t, dp.SetNeigh(n4))
		must(t, dp.SetNeigh(n6))
		before := h.Changes(dp)
		must(t, dp.SetFDB(fl[0])) // flood entry already there: no error, no change
		if d := h.Changes(dp) - before; d != 0 {
			t.Errorf("re-adding a flood entry made %d changes", d)
		}
		obs := observe(t, dp)
		wantFDB := append([]datapath.FDB{u}, fl...)
		if !sameFDB(obs.FDB, wantFDB) {
			t.Fatalf("fdb = %v, want %v", obs.FDB, wantFDB)
		}
		if !sameNeigh(obs.Neigh, []datapath.Neigh{n4, n6}) {
			t.Fatalf("neigh = %v, want %v", obs.Neigh, []datapath.Neigh{n4, n6})
		}
		// Move the MAC to another VTEP: replaced, not duplicated.
		u2 := u
		u2.VTEP = vtepB
		must(t, dp.SetFDB(u2))
		must(t, dp.DelFDB(fl[0]))
		must(t, dp.DelNeigh(n6))
		obs = observe(t, dp)
		if want := []datapath.FDB{u2, fl[1]}; !sameFDB(obs.FDB, want) {
			t.Fatalf("after replace fdb = %v, want %v", obs.FDB, want)
		}
		if !sameNeigh(obs.Neigh, []datapath.Neigh{n4}) {
			t.Fatalf("after delete neigh = %v", obs.Neigh)
		}
		must(t, dp.DelNeigh(n6)) // absent: no error
	})
	t.Run("EntriesNeedNetwork", func(t *testing.T) {
		dp := h.New(t)
		err := dp.SetFDB(datapath.FDB{VNI: 777, MAC: "02:00:00:00:00:01", VTEP: netip.MustParseAddr("198.18.0.2")})
		if err == nil || !strings.Contains(err.Error(), "VNI 777") {
			t.Fatalf("SetFDB on absent network: err = %v, want one naming VNI 777", err)
		}
	})
	t.Run("ForeignDeviceUntouched", func(t *testing.T) {
		dp := h.New(t)
		h.AddForeign(t, dp, datapath.BridgeName(6000))
		err := dp.EnsureNetwork(Spec(6000))
		var no *datapath.NotOwnedError
		if !errors.As(err, &no) || no.Device != datapath.BridgeName(6000) {
			t.Fatalf("EnsureNetwork over a foreign device: err = %v, want NotOwnedError", err)
		}
		if err := dp.DeleteNetwork(6000); !errors.As(err, &no) {
			t.Fatalf("DeleteNetwork over a foreign device: err = %v, want NotOwnedError", err)
		}
		if _, ok := observe(t, dp).Networks[6000]; ok {
			t.Fatal("a foreign device is reported as a vxnet network")
		}
	})
	t.Run("FastPath", func(t *testing.T) { fastPath(t, h) })
	t.Run("AttachDetach", func(t *testing.T) {
		dp := h.New(t)
		s := Spec(7000)
		must(t, dp.EnsureNetwork(s))
		ctr := h.Container(t)
		e := datapath.EndpointSpec{ID: "ctr-1", VNI: 7000, Netns: ctr, IfName: "eth0", MAC: "02:00:00:00:70:01",
			IP: netip.MustParsePrefix("198.19.7.2/24"), Gateway: s.Gateway.Addr(), MTU: s.MTU}
		p, err := dp.Attach(e)
		must(t, err)
		if p.HostIf != datapath.HostIfName("ctr-1") || p.VNI != 7000 {
			t.Fatalf("port = %+v", p)
		}
		before := h.Changes(dp)
		if _, err := dp.Attach(e); err != nil {
			t.Fatalf("re-attach: %v", err)
		}
		if d := h.Changes(dp) - before; d != 0 {
			t.Fatalf("re-attach made %d changes", d)
		}
		if got := observe(t, dp).Ports; !reflect.DeepEqual(got, []datapath.Port{p}) {
			t.Fatalf("ports = %v, want [%v]", got, p)
		}
		bad := e
		bad.ID, bad.Netns = "ctr-2", "/run/netns/vxnet-does-not-exist"
		if _, err := dp.Attach(bad); err == nil || !strings.Contains(err.Error(), bad.Netns) {
			t.Fatalf("attach to missing namespace: err = %v, want one naming the path", err)
		}
		// A container end left on the host for the runtime to move (Docker).
		hp := e
		hp.ID, hp.Netns, hp.IfName, hp.MAC = "ctr-3", "", "vxc-test3", "02:00:00:00:70:03"
		p3, err := dp.Attach(hp)
		must(t, err)
		if p3.HostIf != datapath.HostIfName("ctr-3") || len(observe(t, dp).Ports) != 2 {
			t.Fatalf("host-peer attach: %+v, ports %v", p3, observe(t, dp).Ports)
		}
		must(t, dp.Detach("ctr-3"))
		must(t, dp.Detach("ctr-1"))
		must(t, dp.Detach("ctr-1"))
		if got := observe(t, dp).Ports; len(got) != 0 {
			t.Fatalf("ports after detach = %v", got)
		}
	})
	t.Run("Firewall", func(t *testing.T) {
		dp := h.New(t)
		if got := observe(t, dp).Firewall; got != nil {
			t.Fatalf("a fresh host reports a firewall %+v", got)
		}
		a, b := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3")
		c := netip.MustParseAddr("2001:2::3") // members of both families
		must(t, dp.EnsureFirewall(datapath.Firewall{Isolate: []uint32{4097, 12}, Port: 4789, VTEPs: []netip.Addr{b}}))
		want := datapath.Firewall{Isolate: []uint32{12, 99, 4097}, Port: 4790, VTEPs: []netip.Addr{a, b, c}}
		must(t, dp.EnsureFirewall(datapath.Firewall{Isolate: []uint32{12, 4097, 99}, Port: 4790, VTEPs: []netip.Addr{c, b, a}}))
		if got := observe(t, dp).Firewall; got == nil || !got.Equal(want) {
			t.Fatalf("firewall = %+v, want %+v", got, want)
		}
		must(t, dp.EnsureFirewall(datapath.Firewall{Isolate: []uint32{7}, Port: 4789}))
		if got := observe(t, dp).Firewall; got == nil || len(got.VTEPs) != 0 || !got.Equal(datapath.Firewall{Isolate: []uint32{7}, Port: 4789}) {
			t.Fatalf("firewall with no peers = %+v", got)
		}
		internal := datapath.Firewall{Isolate: []uint32{7, 8}, Port: 4789, Internal: []uint32{8}}
		must(t, dp.EnsureFirewall(internal))
		if got := observe(t, dp).Firewall; got == nil || !got.Equal(internal) {
			t.Fatalf("firewall with an internal network = %+v, want %+v", got, internal)
		}
		enc := datapath.Firewall{Isolate: []uint32{7, 8, 9, 10}, Port: 4789, VTEPs: []netip.Addr{a}, TunnelDev: "vxwgtest",
			Encrypted: []datapath.EncryptedNet{{VNI: 8, Subnet: netip.MustParsePrefix("198.19.8.0/24")},
				{VNI: 9, Subnet: netip.MustParsePrefix("198.19.9.0/24"), Subnet6: netip.MustParsePrefix("fd00:9::/64")}, // dual stack
				{VNI: 10, Subnet6: netip.MustParsePrefix("fd00:a::/64")},                                                // IPv6 only
			}}
		must(t, dp.EnsureFirewall(enc))
		if got := observe(t, dp).Firewall; got == nil || !got.Equal(enc) {
			t.Fatalf("firewall with encrypted networks = %+v, want %+v", got, enc)
		}
		notrack := datapath.Firewall{Isolate: []uint32{7}, Port: 4789, VTEPs: []netip.Addr{a, c}, Notrack: true}
		must(t, dp.EnsureFirewall(notrack))
		if got := observe(t, dp).Firewall; got == nil || !got.Equal(notrack) {
			t.Fatalf("firewall with notrack = %+v, want %+v", got, notrack)
		}
		must(t, dp.RemoveFirewall())
		must(t, dp.RemoveFirewall())
		if got := observe(t, dp).Firewall; got != nil {
			t.Fatalf("firewall still observed after RemoveFirewall: %+v", got)
		}
	})
	t.Run("HostFirewall", func(t *testing.T) {
		dp := h.New(t)
		if got := observe(t, dp).HostFirewall; got != nil {
			t.Fatalf("a fresh host reports host firewall rules %+v", got)
		}
		web := datapath.HostNet{VNI: 4097, Subnet: netip.MustParsePrefix("198.19.7.0/24"), Gateway: netip.MustParseAddr("198.19.7.1"), Egress: true}
		db := datapath.HostNet{VNI: 4098, Subnet: netip.MustParsePrefix("198.19.8.0/24"), Gateway: netip.MustParseAddr("198.19.8.1")}
		port := datapath.PublishedPort{VNI: 4097, Proto: "tcp", HostPort: 8080, IP: netip.MustParseAddr("198.19.7.5"), Port: 80}
		udp := datapath.PublishedPort{VNI: 4097, Proto: "udp", HostPort: 5353, IP: netip.MustParseAddr("198.19.7.6"), Port: 53}
		secret := datapath.HostNet{VNI: 4099, Subnet: netip.MustParsePrefix("198.19.9.0/24"), Gateway: netip.MustParseAddr("198.19.9.1"), Egress: true, Tunnel: "vxwgtest"}
		for _, want := range []datapath.HostFirewall{
			{Networks: []datapath.HostNet{web}},
			{Networks: []datapath.HostNet{web, secret}},
			{Networks: []datapath.HostNet{web, db}, Ports: []datapath.PublishedPort{port, udp}},
			{Networks: []datapath.HostNet{web, db}, Ports: []datapath.PublishedPort{port}, DNSPort: 53535},
			{Networks: []datapath.HostNet{db}},
		} {
			must(t, dp.EnsureHostFirewall(want))
			if got := observe(t, dp).HostFirewall; got == nil || !got.Equal(want) {
				t.Fatalf("host firewall = %+v, want %+v", got, want)
			}
		}
		want := datapath.HostFirewall{Networks: []datapath.HostNet{web}, Ports: []datapath.PublishedPort{port}}
		must(t, dp.EnsureHostFirewall(want))
		h.FlushHostFirewall(t, dp)
		if got := observe(t, dp).HostFirewall; got != nil && got.Equal(want) {
			t.Fatalf("flushed host firewall still reads as installed: %+v", got)
		}
		must(t, dp.EnsureHostFirewall(want))
		if got := observe(t, dp).HostFirewall; got == nil || !got.Equal(want) {
			t.Fatalf("host firewall after a flush and ensure = %+v, want %+v", got, want)
		}
		must(t, dp.RemoveHostFirewall())
		must(t, dp.RemoveHostFirewall())
		if got := observe(t, dp).HostFirewall; got != nil {
			t.Fatalf("host firewall still observed after RemoveHostFirewall: %+v", got)
		}
	})
	t.Run("Openings", func(t *testing.T) {
		dp := h.New(t)
		if got := observe(t, dp).Openings; got != nil {
			t.Fatalf("a fresh host reports openings %+v", got)
		}
		a, b := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3")
		for _, want := range []datapath.Openings{
			{VXLANPort: 4789, VTEPs: []netip.Addr{a}, GossipPort: 7946},
			{VXLANPort: 4789, VTEPs: []netip.Addr{a, b}, GossipPort: 7946, DNSPort: 53533},
			{VXLANPort: 4789, VTEPs: []netip.Addr{a, b}, GossipPort: 7946, TunnelPort: 51830, TunnelDev: "vxwgtest"},
			{VXLANPort: 4790},
		} {
			must(t, dp.EnsureOpenings(want))
			if got := observe(t, dp).Openings; got == nil || !got.Equal(want) {
				t.Fatalf("openings = %+v, want %+v", got, want)
			}
		}
		must(t, dp.RemoveOpenings())
		must(t, dp.RemoveOpenings())
		if got := observe(t, dp).Openings; got != nil {
			t.Fatalf("openings still observed after RemoveOpenings: %+v", got)
		}
	})
	t.Run("Tunnel", func(t *testing.T) { tunnelContract(t, h) })
	t.Run("ReplacedDeviceTakesEntries", func(t *testing.T) {
		// A vxlan device re-created for a changed port gets the entries
		// written after it, with no observation in between.
		dp := h.New(t)
		spec := Spec(8100)
		must(t, dp.EnsureNetwork(spec))
		must(t, dp.SetFDB(datapath.FDB{VNI: 8100, MAC: "02:00:00:00:00:0d", VTEP: netip.MustParseAddr("198.18.0.4")}))
		spec.Port++
		must(t, dp.EnsureNetwork(spec))
		f := datapath.FDB{VNI: 8100, MAC: "02:00:00:00:00:0e", VTEP: netip.MustParseAddr("198.18.0.5")}
		must(t, dp.SetFDB(f))
		if obs := observe(t, dp); !sameFDB(obs.FDB, []datapath.FDB{f}) {
			t.Fatalf("fdb after the device was replaced = %v, want %v", obs.FDB, f)
		}
	})
	t.Run("DeleteNetwork", func(t *testing.T) {
		dp := h.New(t)
		must(t, dp.EnsureNetwork(Spec(8000)))
		must(t, dp.SetFDB(datapath.FDB{VNI: 8000, MAC: "02:00:00:00:00:0b", VTEP: netip.MustParseAddr("198.18.0.4")}))
		must(t, dp.DeleteNetwork(8000))
		must(t, dp.DeleteNetwork(8000))
		// Nothing of the deleted network is remembered: entries need it again.
		if err := dp.SetFDB(datapath.FDB{VNI: 8000, MAC: "02:00:00:00:00:0c", VTEP: netip.MustParseAddr("198.18.0.4")}); err == nil || !strings.Contains(err.Error(), "VNI 8000") {
			t.Fatalf("SetFDB after delete: err = %v, want one naming VNI 8000", err)
		}
		obs := observe(t, dp)
		if len(obs.Networks) != 0 || len(obs.FDB) != 0 {
			t.Fatalf("after delete: %+v", obs)
		}
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func observe(t *testing.T, dp datapath.Dataplane) datapath.Observed {
	t.Helper()
	o, err := dp.Observe()
	must(t, err)
	return o
}

func sameFDB(a, b []datapath.FDB) bool {
	key := func(s []datapath.FDB) []string {
		var out []string
		for _, f := range s {
			out = append(out, f.String())
		}
		slices.Sort(out)
		return out
	}
	return reflect.DeepEqual(key(a), key(b))
}

func sameNeigh(a, b []datapath.Neigh) bool {
	key := func(s []datapath.Neigh) []string {
		var out []string
		for _, n := range s {
			out = append(out, n.String())
		}
		slices.Sort(out)
		return out
	}
	return reflect.DeepEqual(key(a), key(b))
}

func fastPath(t *testing.T, h Harness) {
	dp := h.New(t)
	s := Spec(7100)
	must(t, dp.EnsureNetwork(s))
	vx := datapath.VxlanName(7100)
	if obs := observe(t, dp); obs.FastPath != nil {
		t.Fatalf("fast path observed before it was loaded: %+v", obs.FastPath)
	}
	if err := dp.SetFastHook(datapath.FastHook{Dev: vx, VNI: 7100, Vxlan: true}); err == nil || !strings.Contains(err.Error(), "not loaded") {
		t.Fatalf("hook without the fast path: err = %v, want one saying it is not loaded", err)
	}
	h.EnableFast(t, dp)
	if obs := observe(t, dp); obs.FastPath == nil || len(obs.FastPath.Hooks)+len(obs.FastPath.Entries) != 0 {
		t.Fatalf("fresh fast path observed %+v, want empty", obs.FastPath)
	}
	e := datapath.EndpointSpec{ID: "fast-1", VNI: 7100, Netns: h.Container(t), IfName: "eth0", MAC: "02:00:00:00:71:01",
		IP: netip.MustParsePrefix("198.19.7.2/24"), Gateway: s.Gateway.Addr(), MTU: s.MTU}
	p, err := dp.Attach(e)
	must(t, err)
	hooks := []datapath.FastHook{{Dev: p.HostIf, VNI: 7100}, {Dev: vx, VNI: 7100, Vxlan: true}}
	entries := []datapath.FastEntry{{VNI: 7100, MAC: "02:00:00:00:71:01", Dev: p.HostIf},
		{VNI: 7100, MAC: "02:00:00:00:71:09", Dev: vx, Remote: true}}
	for _, e := range entries {
		must(t, dp.SetFastEntry(e))
		must(t, dp.SetFastEntry(e))
	}
	for _, hk := range hooks {
		must(t, dp.SetFastHook(hk))
		must(t, dp.SetFastHook(hk))
	}
	check := func(what string, wantHooks []datapath.FastHook, wantEntries []datapath.FastEntry) {
		t.Helper()
		fp := observe(t, dp).FastPath
		var got []datapath.FastHook
		for _, hk := range fp.Hooks {
			if hk.Stale {
				t.Fatalf("%s: hook %+v is stale", what, hk)
			}
			got = append(got, hk.Want())
		}
		slices.SortFunc(got, func(x, y datapath.FastHook) int { return cmp.Compare(y.Dev, x.Dev) })
		if !reflect.DeepEqual(got, wantHooks) || !reflect.DeepEqual(fp.Entries, wantEntries) {
			t.Fatalf("%s: observed hooks %+v entries %+v, want %+v %+v", what, got, fp.Entries, wantHooks, wantEntries)
		}
	}
	check("after set", hooks, entries)
	// With the fast path, an FDB entry is whole with its static twin on
	// the bridge; it reads back as set.
	fdb := datapath.FDB{VNI: 7100, MAC: "02:00:00:00:71:09", VTEP: netip.MustParseAddr("198.18.0.9")}
	must(t, dp.SetFDB(fdb))
	if got := observe(t, dp).FDB; !reflect.DeepEqual(got, []datapath.FDB{fdb}) {
		t.Fatalf("fdb with the fast path: observed %v, want [%v]", got, fdb)
	}
	h.UnhookByHand(t, dp, p.HostIf)
	stale := false
	for _, hk := range observe(t, dp).FastPath.Hooks {
		stale = stale || hk.Dev == p.HostIf && hk.Stale
	}
	if !stale {
		t.Fatalf("a hook taken off by hand is not reported stale: %+v", observe(t, dp).FastPath.Hooks)
	}
	must(t, dp.SetFastHook(hooks[0]))
	check("after re-hook", hooks, entries)
	if err := dp.SetFastEntry(datapath.FastEntry{VNI: 7100, MAC: "zz", Dev: vx}); err == nil || !strings.Contains(err.Error(), `"zz"`) {
		t.Fatalf("bad MAC: err = %v, want one naming it", err)
	}
	if err := dp.SetFastEntry(datapath.FastEntry{VNI: 7100, MAC: "02:00:00:00:71:02", Dev: "vxvnothere"}); err == nil {
		t.Fatal("an entry for a device that does not exist was accepted")
	}
	must(t, dp.DelFastEntry(entries[1]))
	must(t, dp.DelFastEntry(entries[1]))
	check("after delete", hooks, entries[:1])
	// A port's hook goes with it; its entry is left pointing at no device
	// (a pass removes it); the network's hook and entries go with it.
	must(t, dp.Detach("fast-1"))
	orphan := entries[0]
	orphan.Dev = ""
	check("after detach", hooks[1:], []datapath.FastEntry{orphan})
	must(t, dp.DelFastEntry(orphan))
	must(t, dp.SetFastEntry(entries[1]))
	must(t, dp.DeleteNetwork(7100))
	if fp := observe(t, dp).FastPath; len(fp.Hooks)+len(fp.Entries) != 0 {
		t.Fatalf("after the network went: %+v", fp)
	}
	must(t, dp.DelFastHook(datapath.FastHook{Dev: vx, VNI: 7100}))
}

// tunnelContract: the WireGuard device as set, adopted as it is (no write
// when nothing differs), peers changed in place, an encrypted network
// routed through it, routes into it, and all of it removed.
func tunnelContract(t *testing.T, h Harness) {
	dp := h.New(t)
	key := h.Tunnel(t, dp)
	peerA, peerB := "hRBn4bcprTjPYSOWtv6cxFamDXaA/fsnMK+r2Bk/CVk=", "WzJmL6DrZ7ivYdWrs5tMOVIYOOCSC/3LCzd5ML1i+XI="
	tun := datapath.Tunnel{Dev: "vxwgtest", Port: 51830, MTU: 1440, Addr: model.TunnelAddr(key), Key: key,
		Peers: []datapath.TunnelPeer{
			{Key: peerA, Endpoint: netip.MustParseAddrPort("198.18.0.2:51830"), PSK: [32]byte{1},
				AllowedIPs: []netip.Addr{netip.MustParseAddr("198.19.9.5"), model.TunnelAddr(peerA)}},
			{Key: peerB, Endpoint: netip.MustParseAddrPort("198.18.0.3:51830"),
				AllowedIPs: []netip.Addr{model.TunnelAddr(peerB)}},
		}}
	datapath.SortPeers(tun.Peers)
	for i := range tun.Peers {
		slices.SortFunc(tun.Peers[i].AllowedIPs, netip.Addr.Compare)
	}
	must(t, dp.EnsureTunnel(tun))
	if got := observe(t, dp).Tunnel; got == nil || !got.Equal(tun) {
		t.Fatalf("tunnel = %+v, want %+v", got, tun)
	}
	before := h.Changes(dp)
	must(t, dp.EnsureTunnel(tun))
	if n := h.Changes(dp) - before; n != 0 {
		t.Fatalf("ensuring the tunnel as it is made %d writes, want none", n)
	}
	tun.Peers = tun.Peers[:1]
	tun.Peers[0].AllowedIPs = append(slices.Clone(tun.Peers[0].AllowedIPs), netip.MustParseAddr("198.19.9.200"))
	slices.SortFunc(tun.Peers[0].AllowedIPs, netip.Addr.Compare)
	must(t, dp.EnsureTunnel(tun))
	if got := observe(t, dp).Tunnel; got == nil || !got.Equal(tun) {
		t.Fatalf("tunnel after a peer changed and one went = %+v, want %+v", got, tun)
	}
	spec := Spec(4099)
	spec.Port, spec.Local, spec.Gateway6, spec.MTU, spec.Tunnel = 0, netip.Addr{}, netip.Prefix{}, 1440, tun.Dev
	must(t, dp.EnsureNetwork(spec))
	if got := observe(t, dp).Networks[4099]; got != spec {
		t.Fatalf("routed network = %+v, want %+v", got, spec)
	}
	r := datapath.Route{VNI: 4099, IP: netip.MustParseAddr("198.19.9.5"), Dev: tun.Dev}
	must(t, dp.SetRoute(r))
	must(t, dp.SetRoute(r))
	if got := observe(t, dp).Routes; len(got) != 1 || got[0].IP != r.IP || got[0].Dev != r.Dev {
		t.Fatalf("routes = %+v, want %v", got, r)
	}
	must(t, dp.DelRoute(r))
	must(t, dp.DelRoute(r))
	if got := observe(t, dp).Routes; len(got) != 0 {
		t.Fatalf("routes after DelRoute = %+v", got)
	}
	must(t, dp.SetRoute(r))
	must(t, dp.RemoveTunnel(tun.Dev))
	must(t, dp.RemoveTunnel(tun.Dev))
	obs := observe(t, dp)
	if obs.Tunnel != nil || len(obs.Routes) != 0 {
		t.Fatalf("after RemoveTunnel: tunnel %+v, routes %+v", obs.Tunnel, obs.Routes)
	}
}
