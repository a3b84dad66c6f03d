package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/fake"
	"github.com/vxnet/vxnet/internal/dns"
	"github.com/vxnet/vxnet/internal/ipam"
	"github.com/vxnet/vxnet/internal/model"
)

func mustCreate(t *testing.T, n *testNode, name, subnet string) api.NetworkInfo {
	t.Helper()
	info, err := n.CreateNetwork(api.NetworkCreate{Name: name, Subnet: subnet})
	if err != nil {
		t.Fatalf("create %s on %s: %v", name, n.state.Self(), err)
	}
	return info
}

func mustAttach(t *testing.T, n *testNode, r api.AttachRequest) api.Attachment {
	t.Helper()
	att, err := n.Attach(r)
	if err != nil {
		t.Fatalf("attach %+v on %s: %v", r, n.state.Self(), err)
	}
	return att
}

// wantErr checks an error's kind and its whole message.
func wantErr(t *testing.T, err, kind error, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v %q", kind, msg)
	}
	if !errors.Is(err, kind) {
		t.Errorf("error %q is not %v", err, kind)
	}
	if err.Error() != msg {
		t.Errorf("error\n %q\nwant\n %q", err, msg)
	}
}

// observe returns what the fake kernel holds.
func observe(t *testing.T, dp datapath.Dataplane) datapath.Observed {
	t.Helper()
	o, err := dp.Observe()
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func portIDs(o datapath.Observed) []string {
	var ids []string
	for _, p := range o.Ports {
		ids = append(ids, p.ID)
	}
	return ids
}

func TestAttachDetach(t *testing.T) {
	b := newBus()
	h1, h2 := newNode(t, b, "h1", 1, ""), newNode(t, b, "h2", 2, "")
	if _, err := h2.repl.(Joiner).Join([]string{"198.18.0.1"}); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, h1, "web", "10.20.0.0/16")
	ns := netns(t, "c1")
	att := mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: ns})
	ino, _ := nsInode(ns)
	wantID := fmt.Sprintf("h1.web.%x", ino)
	if att.ID != wantID || att.IfName != "eth0" || att.MTU != 1450 || att.Gateway != "10.20.0.1" ||
		att.HostIf != datapath.HostIfName(wantID) || att.Netns != ns {
		t.Errorf("attachment %+v", att)
	}
	ip := netip.MustParsePrefix(att.IP)
	if ip.Bits() != 16 || !netip.MustParsePrefix("10.20.0.0/16").Contains(ip.Addr()) {
		t.Errorf("address %s not from the subnet", att.IP)
	}
	// The port is in the kernel before attach returns, and the record is
	// on the other member.
	if got := portIDs(observe(t, h1.dp)); !slices.Equal(got, []string{wantID}) {
		t.Errorf("ports %v, want [%s]", got, wantID)
	}
	eps := h2.state.Endpoints()
	if len(eps) != 1 || eps[0].ID != wantID || eps[0].IP != ip.Addr() || eps[0].Node != "h1" {
		t.Fatalf("h2 sees %+v", eps)
	}
	// h2 programs the remote endpoint after one pass.
	if err := h2.sync(); err != nil {
		t.Fatal(err)
	}
	o := observe(t, h2.dp)
	if len(o.FDB) != 1 || o.FDB[0].MAC != att.MAC || o.FDB[0].VTEP != netip.MustParseAddr("198.18.0.1") {
		t.Errorf("h2 fdb %v", o.FDB)
	}
	if len(o.Neigh) != 1 || o.Neigh[0].IP != ip.Addr() {
		t.Errorf("h2 neigh %v", o.Neigh)
	}
	// Attach again: the same endpoint, nothing new.
	again := mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: ns})
	if !reflect.DeepEqual(again, att) {
		t.Errorf("second attach %+v, want %+v", again, att)
	}
	if n := len(h1.state.Endpoints()); n != 1 {
		t.Errorf("%d endpoints after a repeated attach", n)
	}
	if err := h1.Detach(api.DetachRequest{Network: "web", Netns: ns}); err != nil {
		t.Fatal(err)
	}
	if got := portIDs(observe(t, h1.dp)); len(got) != 0 {
		t.Errorf("ports after detach: %v", got)
	}
	if n := len(h2.state.Endpoints()); n != 0 {
		t.Errorf("h2 still sees %d endpoints", n)
	}
	err := h1.Detach(api.DetachRequest{Network: "web", Netns: ns})
	wantErr(t, err, model.ErrNotFound, "namespace "+ns+" is not attached to network web on this host")
}

func TestAttachErrors(t *testing.T) {
	b := newBus()
	h1 := newNode(t, b, "h1", 1, "")
	mustCreate(t, h1, "web", "10.20.0.0/24")
	taken := mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: netns(t, "a"), IP: "10.20.0.11", MAC: "02:00:00:00:00:11"})
	if _, err := h1.CreateNetwork(api.NetworkCreate{Name: "dual", Subnet: "10.30.0.0/24", Subnet6: "fd00:30::/64"}); err != nil {
		t.Fatal(err)
	}
	taken6 := mustAttach(t, h1, api.AttachRequest{Network: "dual", Netns: netns(t, "a6"), IP6: "fd00:30::11"})
	if taken6.IP6 != "fd00:30::11/64" || taken6.Gateway6 != "fd00:30::1" || !strings.HasPrefix(taken6.IP, "10.30.0.") {
		t.Fatalf("dual-stack attachment %+v", taken6)
	}
	if _, err := h1.CreateNetwork(api.NetworkCreate{Name: "six", Subnet6: "fd00:60::/64"}); err != nil {
		t.Fatal(err)
	}
	only6 := mustAttach(t, h1, api.AttachRequest{Network: "six", Netns: netns(t, "a60")})
	if only6.IP != "" || only6.Gateway != "" || !strings.HasPrefix(only6.IP6, "fd00:60::") || only6.Gateway6 != "fd00:60::1" ||
		only6.MAC != ipam.MACFor(netip.MustParsePrefix(only6.IP6).Addr()) {
		t.Fatalf("IPv6-only attachment %+v", only6)
	}
	other := netns(t, "b")
	for _, tc := range []struct {
		name string
		req  api.AttachRequest
		kind error
		msg  string
	}{
		{"unknown network", api.AttachRequest{Network: "db", Netns: other}, model.ErrNotFound, `unknown network "db" (known: dual, six, web)`},
		{"no netns", api.AttachRequest{Network: "web"}, model.ErrInvalid, "--netns is required: a network namespace path (/run/netns/NAME, /proc/PID/ns/net) or a PID"},
		{"missing netns", api.AttachRequest{Network: "web", Netns: "/run/netns/does-not-exist"}, model.ErrInvalid, "network namespace /run/netns/does-not-exist does not exist"},
		{"bad pid", api.AttachRequest{Network: "web", Netns: "-3"}, model.ErrInvalid, "invalid PID -3"},
		{"bad address", api.AttachRequest{Network: "web", Netns: other, IP: "10.20.0"}, model.ErrInvalid, `invalid address "10.20.0": want an IPv4 address inside 10.20.0.0/24`},
		{"ipv6 address", api.AttachRequest{Network: "web", Netns: other, IP: "fd00::5"}, model.ErrInvalid, `invalid address "fd00::5": want an IPv4 address inside 10.20.0.0/24`},
		{"outside", api.AttachRequest{Network: "web", Netns: other, IP: "10.21.0.5"}, model.ErrConflict, "address 10.21.0.5 is outside IPv4 subnet 10.20.0.0/24 of network web"},
		{"taken", api.AttachRequest{Network: "web", Netns: other, IP: "10.20.0.11"}, model.ErrConflict, "address 10.20.0.11 is already in use on network web by endpoint " + taken.ID},
		{"gateway", api.AttachRequest{Network: "web", Netns: other, IP: "10.20.0.1"}, model.ErrConflict, "address 10.20.0.1 is the gateway of network web"},
		{"bad mac", api.AttachRequest{Network: "web", Netns: other, MAC: "zz"}, model.ErrInvalid, `invalid MAC "zz": want six hex octets such as 02:42:ac:11:00:02`},
		{"mac taken", api.AttachRequest{Network: "web", Netns: other, MAC: "02:00:00:00:00:11"}, model.ErrConflict, "MAC 02:00:00:00:00:11 is already in use on network web by endpoint " + taken.ID},
		{"other address for an attached namespace", api.AttachRequest{Network: "web", Netns: taken.Netns, IP: "10.20.0.12"}, model.ErrConflict,
			"namespace " + taken.Netns + " is already attached to network web with address 10.20.0.11, not 10.20.0.12"},
		{"ipv4 address on an IPv6-only network", api.AttachRequest{Network: "six", Netns: other, IP: "10.0.0.5"}, model.ErrInvalid,
			"network six is IPv6-only: no IPv4 address (10.0.0.5) can be given on it; give --ip6"},
		{"ipv6 address on an IPv4 network", api.AttachRequest{Network: "web", Netns: other, IP6: "fd00::5"}, model.ErrInvalid,
			"network web has no IPv6 subnet: no IPv6 address (fd00::5) can be given on it; create the network with --subnet6"},
		{"bad ipv6 address", api.AttachRequest{Network: "dual", Netns: other, IP6: "10.30.0.5"}, model.ErrInvalid, `invalid address "10.30.0.5": want an IPv6 address inside fd00:30::/64`},
		{"ipv6 outside", api.AttachRequest{Network: "dual", Netns: other, IP6: "fd00:31::5"}, model.ErrConflict, "address fd00:31::5 is outside IPv6 subnet fd00:30::/64 of network dual"},
		{"ipv6 gateway", api.AttachRequest{Network: "dual", Netns: other, IP6: "fd00:30::1"}, model.ErrConflict, "address fd00:30::1 is the gateway of network dual"},
		{"ipv6 taken", api.AttachRequest{Network: "dual", Netns: other, IP6: "fd00:30::11"}, model.ErrConflict, "address fd00:30::11 is already in use on network dual by endpoint " + taken6.ID},
		{"other ipv6 address for an attached namespace", api.AttachRequest{Network: "dual", Netns: taken6.Netns, IP6: "fd00:30::12"}, model.ErrConflict,
			"namespace " + taken6.Netns + " is already attached to network dual with IPv6 address fd00:30::11, not fd00:30::12"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h1.Attach(tc.req)
			wantErr(t, err, tc.kind, tc.msg)
		})
	}
	// Nothing was left behind by the refused requests.
	if n := len(h1.state.Endpoints()); n != 3 {
		t.Errorf("%d endpoints, want 3", n)
	}
	if got := portIDs(observe(t, h1.dp)); !slices.Equal(got, []string{taken6.ID, only6.ID, taken.ID}) {
		t.Errorf("ports %v", got)
	}
}

func TestAttachRollsBackWhenTheKernelFails(t *testing.T) {
	b := newBus()
	dp := &failingDP{Dataplane: fake.New(), attach: errors.New("veth: no space left")}
	h1 := newNode(t, b, "h1", 1, "", withDataplane(dp))
	h2 := newNode(t, b, "h2", 2, "")
	if _, err := h1.repl.(Joiner).Join(nil); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, h1, "web", "10.20.0.0/16")
	ns := netns(t, "c1")
	_, err := h1.Attach(api.AttachRequest{Network: "web", Netns: ns})
	if err == nil || err.Error() != "attach namespace "+ns+" to web: veth: no space left" {
		t.Fatalf("err = %v", err)
	}
	if n := len(h1.state.Endpoints()) + len(h2.state.Endpoints()); n != 0 {
		t.Errorf("%d endpoint records after a failed attach", n)
	}
	if len(h1.own.locals) != 0 {
		t.Errorf("local endpoints %v", h1.own.locals)
	}
	// The block claimed for it stays, on both members: it is valid and the
	// next attach uses it.
	b1, b2 := h1.state.Blocks("web"), h2.state.Blocks("web")
	if len(b1) != 1 || len(b2) != 1 || b1[0] != b2[0] || b1[0].Node != "h1" {
		t.Fatalf("blocks h1 %v h2 %v", b1, b2)
	}
	dp.attach = nil
	att := mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: ns})
	if !b1[0].CIDR.Contains(netip.MustParsePrefix(att.IP).Addr()) {
		t.Errorf("address %s not from the claimed block %s", att.IP, b1[0].CIDR)
	}
	if n := len(h1.state.Blocks("web")); n != 1 {
		t.Errorf("%d blocks, want the one claimed before", n)
	}
}

func TestBlockClaimsAndBorrowing(t *testing.T) {
	_, h1, h2 := joinedPair(t)
	// A /27 has 8 blocks of /30; of its 32 addresses the network, the
	// broadcast address and the gateway are reserved: 29 to hand out.
	mustCreate(t, h1, "tiny", "10.30.0.0/27")
	var got []netip.Addr
	attach := func(n *testNode, name string) (netip.Addr, error) {
		att, err := n.Attach(api.AttachRequest{Network: "tiny", Netns: netns(t, name)})
		if err != nil {
			return netip.Addr{}, err
		}
		return netip.MustParsePrefix(att.IP).Addr(), nil
	}
	ip1, err := attach(h1, "a")
	if err != nil {
		t.Fatal(err)
	}
	ip2, err := attach(h2, "b")
	if err != nil {
		t.Fatal(err)
	}
	blocks := h1.state.Blocks("tiny")
	if len(blocks) != 2 || blocks[0].Node == blocks[1].Node {
		t.Fatalf("blocks %v: want one per node", blocks)
	}
	for _, bl := range blocks {
		ip := map[string]netip.Addr{"h1": ip1, "h2": ip2}[bl.Node]
		if !bl.CIDR.Contains(ip) {
			t.Errorf("%s's address %s is outside its block %s", bl.Node, ip, bl.CIDR)
		}
	}
	got = append(got, ip1, ip2)
	// Fill the subnet from h1: it claims the remaining blocks, then fails
	// with a clear error once nothing is left.
	for i := 0; ; i++ {
		ip, err := attach(h1, fmt.Sprintf("c%d", i))
		if err != nil {
			wantErr(t, err, model.ErrConflict, fmt.Sprintf("network tiny: no free address left in 10.30.0.0/27 (%d endpoints)", len(got)))
			break
		}
		if slices.Contains(got, ip) {
			t.Fatalf("address %s handed out twice", ip)
		}
		got = append(got, ip)
		if i > 40 {
			t.Fatal("allocation never ran out")
		}
	}
	// 32 addresses less network, broadcast and gateway.
	if len(got) != 29 {
		t.Errorf("%d addresses allocated, want 29", len(got))
	}
	// With every block claimed, h2 borrows a freed address of h1's blocks.
	var victim model.Endpoint
	for _, e := range h1.state.Endpoints() {
		if e.Node == "h1" {
			victim = e
			break
		}
	}
	h1.mu.Lock()
	err = h1.removeEndpointLocked(victim.ID)
	h1.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	ip, err := attach(h2, "borrower")
	if err != nil || ip != victim.IP {
		t.Errorf("borrow: %v, %v; want %s", ip, err, victim.IP)
	}
}

func TestRemoveNetwork(t *testing.T) {
	_, h1, h2 := joinedPair(t)
	mustCreate(t, h1, "web", "10.20.0.0/16")
	mustCreate(t, h1, "empty", "10.21.0.0/16")
	a1 := mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: netns(t, "a")})
	a2 := mustAttach(t, h2, api.AttachRequest{Network: "web", Netns: netns(t, "b")})

	wantErr(t, h1.RemoveNetwork("nope", false), model.ErrNotFound, `unknown network "nope" (known: empty, web)`)
	eps := []string{a1.ID + "@h1", a2.ID + "@h2"}
	slices.Sort(eps)
	wantErr(t, h2.RemoveNetwork("web", false), model.ErrConflict,
		"network web still has 2 endpoints ("+strings.Join(eps, ", ")+"): detach them first, or use --force")

	// An empty network goes at once, with its block claims.
	if err := h1.RemoveNetwork("empty", false); err != nil {
		t.Fatal(err)
	}
	if _, ok := h2.state.Network("empty"); ok {
		t.Error("h2 still has network empty")
	}
	// Forced: the network goes; each host drops its own endpoints and
	// devices on its next pass.
	if err := h2.RemoveNetwork("web", true); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*testNode{h1, h2} {
		if err := n.step(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*testNode{h1, h2} {
		o := observe(t, n.dp)
		if len(o.Ports) != 0 || len(o.Networks) != 0 || o.Firewall != nil {
			t.Errorf("%s keeps %+v", n.state.Self(), o)
		}
		if eps := n.state.Endpoints(); len(eps) != 0 {
			t.Errorf("%s keeps endpoints %v", n.state.Self(), eps)
		}
		if bl := n.state.Blocks("web"); len(bl) != 1 || bl[0].Node != "h1" {
			// h2 removed the network, so only its own claim went with it.
			t.Errorf("%s blocks %v: want h1's claim only", n.state.Self(), bl)
		}
	}
	if err := h1.RemoveNetwork("web", false); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("second removal: %v", err)
	}
}

func TestCreateNetworkErrors(t *testing.T) {
	b := newBus()
	h1 := newNode(t, b, "h1", 1, "")
	mustCreate(t, h1, "web", "10.20.0.0/16")
	for _, tc := range []struct {
		req  api.NetworkCreate
		kind error
		msg  string
	}{
		{api.NetworkCreate{Name: "db", Subnet: "10.20.5.0/24"}, model.ErrConflict, `subnet 10.20.5.0/24 overlaps subnet 10.20.0.0/16 of network "web"`},
		{api.NetworkCreate{Name: "web", Subnet: "10.30.0.0/16"}, model.ErrConflict, fmt.Sprintf(`network name "web" is already in use (VNI %d, subnet 10.20.0.0/16)`, DeriveVNI("web"))},
		{api.NetworkCreate{Name: "db", Subnet: "10.30.0.0/16", VNI: DeriveVNI("web")}, model.ErrConflict, fmt.Sprintf(`VNI %d is already used by network "web"; pick another VNI`, DeriveVNI("web"))},
		{api.NetworkCreate{Name: "db", Subnet: "10.30.0.0/16", MTU: 1500}, model.ErrInvalid, "network db: MTU 1500 does not fit: underlay MTU 1500 minus 50 bytes of VXLAN overhead leaves at most 1450"},
		{api.NetworkCreate{Name: "db"}, model.ErrInvalid, "network db: --subnet is required (for example 10.20.0.0/16), or --subnet6 alone for an IPv6-only network"},
	} {
		_, err := h1.CreateNetwork(tc.req)
		wantErr(t, err, tc.kind, tc.msg)
	}
	// The same definition again is agreement, not a conflict.
	info, err := h1.CreateNetwork(api.NetworkCreate{Name: "web", Subnet: "10.20.0.0/16"})
	if err != nil || info.Origin != "h1" || info.EffectiveMTU != 1450 {
		t.Errorf("repeat create: %+v, %v", info, err)
	}
	if _, err := h1.Network("nope"); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("inspect unknown: %v", err)
	}
	if nets := h1.Networks(); len(nets) != 1 || nets[0].Name != "web" {
		t.Errorf("networks %+v", nets)
	}
}

// With a store that claims (etcd), two members that cannot see each other's
// records (publishes held back) never take the same address block: the
// second claim is refused, the member learns the holder and takes the next
// block. Over gossip the same moves give both the first block (the
// conflict TestPartitionDuplicateReported shows resolved).
func TestClaimedBlocksNeverTwice(t *testing.T) {
	for _, strong := range []bool{true, false} {
		t.Run(map[bool]string{true: "Claimer", false: "Gossip"}[strong], func(t *testing.T) {
			b := newBus()
			if strong {
				b.claims = map[string]cluster.Record{}
			}
			// A second member whose first choice of block is h1's.
			subnet := netip.MustParsePrefix("10.40.0.0/24")
			first, _ := ipam.FreeBlock(subnet, "h1", nil)
			other := ""
			for i := 2; other == ""; i++ {
				if b, _ := ipam.FreeBlock(subnet, fmt.Sprintf("h%d", i), nil); b == first {
					other = fmt.Sprintf("h%d", i)
				}
			}
			h1 := newNode(t, b, "h1", 1, "")
			h2 := newNode(t, b, other, 2, "")
			if _, err := h2.repl.(Joiner).Join([]string{"198.18.0.1"}); err != nil {
				t.Fatal(err)
			}
			mustCreate(t, h1, "web", subnet.String())
			b.hold()
			a1 := mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: netns(t, "a")})
			a2 := mustAttach(t, h2, api.AttachRequest{Network: "web", Netns: netns(t, "b")})
			b.flush()
			same := a1.IP == a2.IP
			if strong && same {
				t.Fatalf("both members got %s with a claiming store", a1.IP)
			}
			if !strong && !same {
				t.Fatalf("without claims the blind members got different addresses (%s, %s): the test no longer shows the race", a1.IP, a2.IP)
			}
			if strong {
				blocks := h2.state.Blocks("web")
				if len(blocks) != 2 || blocks[0].Node == blocks[1].Node {
					t.Fatalf("h2 sees blocks %+v, want one per member", blocks)
				}
			}
		})
	}
}

// With a claiming store that does not answer, an attach that needs a new
// address block fails with the store's error and keeps nothing; an attach
// from a block the member holds does not need the store.
func TestClaimFailure(t *testing.T) {
	b := newBus()
	b.claims = map[string]cluster.Record{}
	h1 := newNode(t, b, "h1", 1, "")
	mustCreate(t, h1, "web", "10.40.0.0/24")
	mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: netns(t, "a")})
	b.mu.Lock()
	b.claimErr = errors.New("claim block/web/10.40.0.0/26 in etcd: context deadline exceeded")
	b.mu.Unlock()
	mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: netns(t, "b")})
	mustCreate(t, h1, "db", "10.41.0.0/24")
	_, err := h1.Attach(api.AttachRequest{Network: "db", Netns: netns(t, "c")})
	if err == nil || !strings.Contains(err.Error(), "network db: claim address block 10.41.0.") || !strings.Contains(err.Error(), "in etcd: context deadline exceeded") {
		t.Fatalf("attach needing a block while the store is down: %v", err)
	}
	obs, err := h1.dp.Observe()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(h1.state.Blocks("db")); n != 0 || len(obs.Ports) != 2 || len(h1.state.Endpoints()) != 2 {
		t.Fatalf("a failed claim kept %d blocks, %d ports and %d endpoint records; want 0, 2 and 2", n, len(obs.Ports), len(h1.state.Endpoints()))
	}
}

// Two members create one name with different definitions at the same
// moment (each before the other's record reaches it): both creates return,
// every member keeps the same definition (the higher version, then the
// higher origin: h2's here, the versions tie), and the member whose
// network lost says so in its status.
func TestConcurrentCreate(t *testing.T) {
	b, h1, h2 := joinedPair(t)
	b.hold()
	for _, c := range []struct {
		n      *testNode
		subnet string
	}{{h1, "10.20.0.0/16"}, {h2, "10.30.0.0/16"}} {
		if _, err := c.n.CreateNetwork(api.NetworkCreate{Name: "web", Subnet: c.subnet}); err != nil {
			t.Fatalf("create on %s: %v", c.n.state.Self(), err)
		}
	}
	b.flush()
	for _, n := range []*testNode{h1, h2} {
		if w, ok := n.state.Network("web"); !ok || w.Subnet != netip.MustParsePrefix("10.30.0.0/16") {
			t.Errorf("%s keeps %+v", n.state.Self(), w)
		}
		if err := n.sync(); err != nil {
			t.Fatal(err)
		}
	}
	vni := DeriveVNI("web")
	want := []string{fmt.Sprintf("network web created here (VNI %d, subnet 10.20.0.0/16) was replaced by the definition node h2 created at the same time (VNI %d, subnet 10.30.0.0/16)", vni, vni)}
	if got := h1.Status(false).Conflicts; !slices.Equal(got, want) {
		t.Errorf("h1 conflicts %q, want %q", got, want)
	}
	if got := h2.Status(false).Conflicts; len(got) != 0 {
		t.Errorf("h2 (whose network was kept) reports %q", got)
	}
	// Once the records have met, a create that clashes is refused at once.
	_, err := h1.CreateNetwork(api.NetworkCreate{Name: "web", Subnet: "10.20.0.0/16"})
	wantErr(t, err, model.ErrConflict, fmt.Sprintf(`network name "web" is already in use (VNI %d, subnet 10.30.0.0/16)`, vni))
}

// A state directory belongs to one node name.
func TestStateDirIdentity(t *testing.T) {
	h1 := newNode(t, newBus(), "h1", 1, "")
	h1.store.close()
	cfg := h1.cfg
	cfg.Name = "other"
	_, err := New(cfg, Deps{Dataplane: fake.New(), HostNet: h1.host, StartReplicator: newBus().start("other", cfg.AdvertiseAddr)})
	if err == nil || err.Error() != fmt.Sprintf(`state directory %s belongs to node "h1", not "other": use --name h1 or another --state-dir`, h1.dir) {
		t.Errorf("other name on the same state: %v", err)
	}
	_, err = New(h1.cfg, Deps{Dataplane: fake.New(), HostNet: &fakeHost{}, StartReplicator: newBus().start("h1", cfg.AdvertiseAddr)})
	if err == nil || err.Error() != "advertise address 198.18.0.1 is not configured on any interface of this host" {
		t.Errorf("advertise address not on the host: %v", err)
	}
}

// A restarted agent finds its endpoints, blocks and clock in its store and
// changes nothing in the kernel.
func TestRestartReprogramsNothing(t *testing.T) {
	b := newBus()
	h1 := newNode(t, b, "h1", 1, "")
	mustCreate(t, h1, "web", "10.20.0.0/16")
	ns := netns(t, "c1")
	att := mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: ns, IfName: "net1"})
	if err := h1.step(); err != nil {
		t.Fatal(err)
	}
	clock := h1.state.Clock()
	before := observe(t, h1.dp)
	h1.store.close()
	// The same host after a restart: same kernel (the fake), same dir.
	again := newNode(t, newBus(), "h1", 1, h1.dir, withDataplane(h1.dp))
	if again.state.Clock() != clock {
		t.Errorf("clock %d after restart, want %d", again.state.Clock(), clock)
	}
	if err := again.step(); err != nil {
		t.Fatal(err)
	}
	if ops := again.stats.kernelOps.Load(); again.stats.syncs.Load() != 1 || ops != 0 {
		t.Errorf("first pass after restart: %d passes, %d kernel writes; want 1 and 0", again.stats.syncs.Load(), ops)
	}
	if after := observe(t, h1.dp); !reflect.DeepEqual(after, before) {
		t.Errorf("kernel changed:\n%v\n%v", before, after)
	}
	// The endpoint is still known by its namespace, with its interface name.
	same := mustAttach(t, again, api.AttachRequest{Network: "web", Netns: ns})
	if !reflect.DeepEqual(same, att) {
		t.Errorf("after restart %+v, want %+v", same, att)
	}
}

// Published ports are checked on this host (taken by another endpoint, by
// a process of the host, on an internal network) and programmed into the
// host firewall of this host only.
func TestPublishedPorts(t *testing.T) {
	_, h1, h2 := joinedPair(t)
	mustCreate(t, h1, "web", "10.20.0.0/16")
	if _, err := h1.CreateNetwork(api.NetworkCreate{Name: "priv", Subnet: "10.21.0.0/16", Internal: true}); err != nil {
		t.Fatal(err)
	}
	h1.host.taken = map[uint16]bool{22: true}
	a := mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: netns(t, "a"), Publish: []string{"8080:80", "53:5353/udp"}})
	if !slices.Equal(a.Published, []string{"8080:80/tcp", "53:5353/udp"}) {
		t.Errorf("published %v", a.Published)
	}
	for _, tc := range []struct {
		req  api.AttachRequest
		kind error
		msg  string
	}{
		{api.AttachRequest{Network: "web", Publish: []string{"8080:81"}}, model.ErrConflict, "host port 8080/tcp is already published on this host by endpoint " + a.ID},
		{api.AttachRequest{Network: "web", Publish: []string{"22:22"}}, model.ErrConflict, "host port 22/tcp is in use on this host: address already in use"},
		{api.AttachRequest{Network: "web", Publish: []string{"80"}}, model.ErrInvalid, `invalid published port "80": want HOSTPORT:PORT[/tcp|/udp], for example 8080:80/tcp`},
		{api.AttachRequest{Network: "web", Publish: []string{"80:80/sctp"}}, model.ErrInvalid, `invalid published port "80:80/sctp": protocol "sctp", want tcp or udp`},
		{api.AttachRequest{Network: "web", Publish: []string{"80:80", "80:81"}}, model.ErrInvalid, "host port 80/tcp is published twice"},
		{api.AttachRequest{Network: "priv", Publish: []string{"80:80"}}, model.ErrInvalid, "network priv is internal: it publishes no ports"},
	} {
		tc.req.Netns = netns(t, "x")
		_, err := h1.Attach(tc.req)
		wantErr(t, err, tc.kind, tc.msg)
	}
	// The same host port on another host is fine: ports are per host.
	mustAttach(t, h2, api.AttachRequest{Network: "web", Netns: netns(t, "b"), Publish: []string{"8080:80"}})
	for _, n := range []*testNode{h1, h2} {
		if err := n.step(); err != nil {
			t.Fatal(err)
		}
	}
	fw := observe(t, h1.dp).HostFirewall
	ip := netip.MustParsePrefix(a.IP).Addr()
	vni := DeriveVNI("web")
	want := []datapath.PublishedPort{{VNI: vni, Proto: "tcp", HostPort: 8080, IP: ip, Port: 80}, {VNI: vni, Proto: "udp", HostPort: 53, IP: ip, Port: 5353}}
	if fw == nil || !slices.Equal(fw.Ports, want) {
		t.Fatalf("h1 host firewall %+v, want ports %v", fw, want)
	}
	if len(fw.Networks) != 2 || fw.Networks[0].Egress == fw.Networks[1].Egress {
		t.Errorf("networks %+v: want web with egress and priv without", fw.Networks)
	}
	if fw := observe(t, h2.dp).HostFirewall; fw == nil || len(fw.Ports) != 1 || fw.Ports[0].HostPort != 8080 {
		t.Errorf("h2 host firewall %+v", fw)
	}
	// Detach: the ports go with the endpoint.
	if err := h1.Detach(api.DetachRequest{Network: "web", Netns: a.Netns}); err != nil {
		t.Fatal(err)
	}
	if err := h1.step(); err != nil {
		t.Fatal(err)
	}
	if fw := observe(t, h1.dp).HostFirewall; fw == nil || len(fw.Ports) != 0 {
		t.Errorf("ports left after detach: %+v", fw)
	}
}

// Names resolve within the querier's network, on every host, to every live
// endpoint with that name or alias; NAME.NETWORK too; other names go
// upstream; a querier on no network is refused.
func TestResolveNames(t *testing.T) {
	_, h1, h2 := joinedPair(t)
	mustCreate(t, h1, "web", "10.20.0.0/16")
	mustCreate(t, h1, "db", "10.21.0.0/16")
	a := mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: netns(t, "a"), Name: "c1", Aliases: []string{"api"}})
	b := mustAttach(t, h2, api.AttachRequest{Network: "web", Netns: netns(t, "b"), Name: "c2"})
	dup := mustAttach(t, h2, api.AttachRequest{Network: "web", Netns: netns(t, "c"), Name: "c1"})
	other := mustAttach(t, h2, api.AttachRequest{Network: "db", Netns: netns(t, "d"), Name: "c3"})
	ip := func(att api.Attachment) netip.Addr { return netip.MustParsePrefix(att.IP).Addr() }
	both := []netip.Addr{ip(a), ip(dup)}
	slices.SortFunc(both, netip.Addr.Compare)
	for _, tc := range []struct {
		src     netip.Addr
		name    string
		verdict dns.Verdict
		ips     []netip.Addr
	}{
		{ip(b), "c1", dns.Answer, both},
		{ip(b), "api", dns.Answer, []netip.Addr{ip(a)}},
		{ip(a), "c2", dns.Answer, []netip.Addr{ip(b)}},
		{ip(a), "c2.web", dns.Answer, []netip.Addr{ip(b)}},
		{ip(a), "nope.web", dns.Answer, nil},
		{ip(a), "c3", dns.Forward, nil},     // another network's container: not ours to answer
		{ip(other), "c1", dns.Forward, nil}, // isolation: db does not see web's names
		{ip(a), "example.org", dns.Forward, nil},
		{netip.MustParseAddr("192.0.2.9"), "c1", dns.Refuse, nil},
	} {
		v, ips := h2.Resolve(tc.src, tc.name)
		if v != tc.verdict || !slices.Equal(ips, tc.ips) {
			t.Errorf("%s asks %s: %v %v, want %v %v", tc.src, tc.name, v, ips, tc.verdict, tc.ips)
		}
	}
	// A host that is gone takes its names with it.
	h2.repl.Shutdown()
	if v, ips := h1.Resolve(ip(a), "c1"); v != dns.Answer || !slices.Equal(ips, []netip.Addr{ip(a)}) {
		t.Errorf("after h2 went: %v %v", v, ips)
	}
	_, err := h1.Attach(api.AttachRequest{Network: "web", Netns: netns(t, "e"), Name: "bad.name"})
	wantErr(t, err, model.ErrInvalid, `invalid container name "bad.name": want one DNS label of letters, digits, '-' and '_' (up to 63 characters)`)
}

// A restarted agent answers the names of other hosts' containers from its
// saved state until its first join has answered (or given up): a restart
// must not turn them into upstream lookups; after that, only live hosts'
// names answer.
func TestRestartedResolverAnswersBeforeJoin(t *testing.T) {
	_, h1, h2 := joinedPair(t)
	mustCreate(t, h1, "web", "10.20.0.0/16")
	a := mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: netns(t, "a"), Name: "c1"})
	b := mustAttach(t, h2, api.AttachRequest{Network: "web", Netns: netns(t, "b"), Name: "c2"})
	if err := h2.step(); err != nil { // persists the state
		t.Fatal(err)
	}
	h2.store.close()
	// h2 again, alone on a bus of its own: no member is alive but itself.
	again := newNode(t, newBus(), "h2", 2, h2.dir, withDataplane(h2.dp))
	src, c1 := netip.MustParsePrefix(b.IP).Addr(), netip.MustParsePrefix(a.IP).Addr()
	if v, ips := again.Resolve(src, "c1"); v != dns.Answer || !slices.Equal(ips, []netip.Addr{c1}) {
		t.Fatalf("before the first join: c1 is %v %v, want %v", v, ips, c1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the join gives up at once
	again.joinKnown(ctx)
	if v, ips := again.Resolve(src, "c1"); v != dns.Forward {
		t.Fatalf("after the join gave up with h1 not alive: c1 is %v %v, want it forwarded", v, ips)
	}
}

// Names answer IPv6 queriers too: on a dual-stack network and on an
// IPv6-only one, whose queries are redirected at the IPv6 gateway.
func TestResolveNamesIPv6(t *testing.T) {
	_, h1, h2 := joinedPair(t)
	for _, c := range []api.NetworkCreate{{Name: "dual", Subnet: "10.30.0.0/24", Subnet6: "fd00:30::/64"}, {Name: "six", Subnet6: "fd00:60::/64"}} {
		if _, err := h1.CreateNetwork(c); err != nil {
			t.Fatal(err)
		}
	}
	ip := func(s string) netip.Addr { return netip.MustParsePrefix(s).Addr() }
	a := mustAttach(t, h1, api.AttachRequest{Network: "dual", Netns: netns(t, "a"), Name: "a"})
	b := mustAttach(t, h2, api.AttachRequest{Network: "dual", Netns: netns(t, "b"), Name: "b"})
	c := mustAttach(t, h1, api.AttachRequest{Network: "six", Netns: netns(t, "c"), Name: "c"})
	d := mustAttach(t, h2, api.AttachRequest{Network: "six", Netns: netns(t, "d"), Name: "d"})
	for _, tc := range []struct {
		src     netip.Addr
		name    string
		verdict dns.Verdict
		ips     []netip.Addr
		gw      string // where src's queries are redirected to
	}{
		{ip(b.IP6), "a", dns.Answer, []netip.Addr{ip(a.IP), ip(a.IP6)}, "fd00:30::1"},
		{ip(b.IP), "a", dns.Answer, []netip.Addr{ip(a.IP), ip(a.IP6)}, "10.30.0.1"},
		{ip(d.IP6), "c", dns.Answer, []netip.Addr{ip(c.IP6)}, "fd00:60::1"},
		{ip(d.IP6), "c.six", dns.Answer, []netip.Addr{ip(c.IP6)}, "fd00:60::1"},
		{ip(d.IP6), "a", dns.Forward, nil, "fd00:60::1"}, // isolation: six does not see dual's names
		{netip.MustParseAddr("fd00:99::9"), "c", dns.Refuse, nil, ""},
	} {
		v, ips := h2.Resolve(tc.src, tc.name)
		if v != tc.verdict || !slices.Equal(ips, tc.ips) {
			t.Errorf("%s asks %s: %v %v, want %v %v", tc.src, tc.name, v, ips, tc.verdict, tc.ips)
		}
		gw, ok := h2.RedirectedTo(tc.src)
		if want, err := netip.ParseAddr(tc.gw); ok != (err == nil) || gw != want {
			t.Errorf("queries of %s are redirected to %v (%v), want %q", tc.src, gw, ok, tc.gw)
		}
	}
}

// A state file that is not a bbolt database, and one another agent holds,
// stop the start with a clear error and change nothing.
func TestStoreFaults(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "vxnet.db"), []byte("this is not a database"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Name: "h1", AdvertiseAddr: netip.MustParseAddr("198.18.0.1"), StateDir: dir, Socket: filepath.Join(dir, "s"),
		VXLANPort: 4789, GossipPort: 7946, Insecure: true}
	deps := Deps{Dataplane: fake.New(), HostNet: &fakeHost{mtu: 1500}, StartReplicator: newBus().start("h1", cfg.AdvertiseAddr)}
	_, err := New(cfg, deps)
	if err == nil || !strings.HasPrefix(err.Error(), "open "+filepath.Join(dir, "vxnet.db")+": ") {
		t.Errorf("corrupt state: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "vxnet.db")); string(b) != "this is not a database" {
		t.Error("the corrupt file was changed")
	}
	h1 := newNode(t, newBus(), "h1", 1, "")
	cfg.StateDir = h1.dir
	start := time.Now()
	_, err = New(cfg, deps)
	want := "open " + filepath.Join(h1.dir, "vxnet.db") + ": timeout (is another agent using this state directory?)"
	if err == nil || err.Error() != want {
		t.Errorf("state held by another agent: %v, want %q", err, want)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("waited %s for the lock", d)
	}
}

// Many attaches at once on one agent, while reconcile passes run all the
// time: every one gets its own address and MAC, and every port is in the
// kernel (a pass that read the state just before an attach recorded its
// endpoint once removed the fresh port: the defect BENCHMARKS names).
func TestConcurrentAttaches(t *testing.T) {
	_, h1, h2 := joinedPair(t)
	mustCreate(t, h1, "web", "10.20.0.0/24")
	stop := make(chan struct{})
	type ran struct {
		passes int
		err    error // the first failed pass
	}
	passes := make(chan ran)
	for _, node := range []*testNode{h1, h2} {
		go func() {
			var r ran
			for {
				select {
				case <-stop:
					passes <- r
					return
				default:
				}
				if err := node.sync(); err != nil && r.err == nil {
					r.err = fmt.Errorf("a pass on %s beside the attaches: %w", node.state.Self(), err)
				}
				r.passes++
			}
		}()
	}
	const n = 40
	atts := make([]api.Attachment, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := []*testNode{h1, h2}[i%2]
			atts[i], errs[i] = node.Attach(api.AttachRequest{Network: "web", Netns: netns(t, fmt.Sprintf("c%d", i))})
		}()
	}
	wg.Wait()
	close(stop)
	r1, r2 := <-passes, <-passes
	if p := r1.passes + r2.passes; p < n {
		t.Errorf("only %d passes ran beside the attaches", p)
	}
	for _, r := range []ran{r1, r2} {
		if r.err != nil {
			t.Error(r.err)
		}
	}
	ips, macs := map[string]bool{}, map[string]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if ips[atts[i].IP] || macs[atts[i].MAC] {
			t.Fatalf("address %s or MAC %s handed out twice", atts[i].IP, atts[i].MAC)
		}
		ips[atts[i].IP], macs[atts[i].MAC] = true, true
	}
	if got := len(observe(t, h1.dp).Ports) + len(observe(t, h2.dp).Ports); got != n {
		t.Errorf("%d ports in the kernels, want %d", got, n)
	}
}

// A runtime's container (CNI) is one endpoint per container and interface,
// found again by them (not by namespace inode), kept while its namespace
// path exists, and detached by container ID.
func TestContainerEndpoints(t *testing.T) {
	_, h1, _ := joinedPair(t)
	mustCreate(t, h1, "web", "10.20.0.0/16")
	ns := netns(t, "pod")
	a := mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: ns, ContainerID: "abc", IfName: "eth0"})
	again := mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: ns, ContainerID: "abc", IfName: "eth0"})
	if again.ID != a.ID || again.IP != a.IP {
		t.Fatalf("ADD again: %+v, want %+v", again, a)
	}
	if err := h1.step(); err != nil {
		t.Fatal(err)
	}
	eps := h1.LocalEndpoints()
	if len(eps) != 1 || eps[0].ContainerID != "abc" || eps[0].IfName != "eth0" || eps[0].IP+"/16" != a.IP {
		t.Fatalf("local endpoints %+v", eps)
	}
	err := h1.Detach(api.DetachRequest{Network: "web", ContainerID: "nope", IfName: "eth0"})
	wantErr(t, err, model.ErrNotFound, "container nope (interface eth0) is not attached to network web on this host")
	if err := h1.Detach(api.DetachRequest{Network: "web", ContainerID: "abc", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if len(h1.LocalEndpoints()) != 0 {
		t.Fatal("endpoint left after detach by container")
	}
	// Its namespace removed without DEL: the loop collects it.
	mustAttach(t, h1, api.AttachRequest{Network: "web", Netns: ns, ContainerID: "abc"})
	if err := os.Remove(ns); err != nil {
		t.Fatal(err)
	}
	if err := h1.step(); err != nil {
		t.Fatal(err)
	}
	if n := len(h1.LocalEndpoints()); n != 0 {
		t.Fatalf("%d endpoints after their namespace went", n)
	}
}

// storeOnly is a replicator that does only what every store does (as the
// etcd store): no Join, no keyring, no claims.
type storeOnly struct{ Replicator }

// TestStoreWithoutKeyring: on a store without cluster keys (etcd), key
// operations are refused with a message that says why, the keyring lists
// nothing, and the agent starts without joining anyone.
func TestStoreWithoutKeyring(t *testing.T) {
	b := newBus()
	h1 := newNode(t, b, "h1", 1, "", func(cfg *Config, deps *Deps) {
		start := deps.StartReplicator
		cfg.Join = []string{"198.18.0.9"} // would be contacted, were there a Join
		deps.StartReplicator = func(rc ReplicatorConfig) (Replicator, error) {
			r, err := start(rc)
			return storeOnly{r}, err
		}
	})
	if _, ok := h1.repl.(Joiner); ok {
		t.Fatal("the test's store can join: it proves nothing")
	}
	_, err := h1.KeyOp(api.KeyRequest{Op: "install", Key: "MDEyMzQ1Njc4OWFiY2RlZg=="})
	if err == nil || !strings.Contains(err.Error(), "the etcd store has no cluster keys: connections to etcd are secured by etcd's own TLS") || !errors.Is(err, model.ErrInvalid) {
		t.Fatalf("key install on a store without keys: %v", err)
	}
	if k := h1.Keyring(); k.Primary != "" || len(k.Keys) != 0 {
		t.Fatalf("keyring of a store without keys: %+v", k)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h1.join(ctx, h1.cfg.Join) // returns at once: nothing to join
	b.mu.Lock()
	joins := b.members["h1"].joins
	b.mu.Unlock()
	if joins != 0 {
		t.Fatalf("the agent joined %d times through a store that has no Join", joins)
	}
}
