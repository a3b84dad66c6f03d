package linux_test

import (
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/dptest"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/testutil"
)

func TestContract(t *testing.T) {
	testutil.RequireRoot(t)
	dptest.Run(t, dptest.Harness{
		New: func(t *testing.T) datapath.Dataplane {
			_, path := testutil.Netns(t)
			dp, err := linux.Open(path, nil)
			if err != nil {
				t.Fatal(err)
			}
			dp.SetHostFirewallMaxAge(0) // the contract reads what is in the kernel
			dp.SetFastPathMaxAge(0)
			t.Cleanup(func() { dp.Close() })
			return dp
		},
		Container: func(t *testing.T) string { _, p := testutil.Netns(t); return p },
		Changes:   func(dp datapath.Dataplane) int { return dp.(*linux.Dataplane).Changes },
		AddForeign: func(t *testing.T, dp datapath.Dataplane, name string) {
			// The Dataplane's namespace is the newest one testutil made; make
			// a plain bridge there through a separate handle.
			h := handleOf(t, dp)
			attrs := netlink.NewLinkAttrs()
			attrs.Name = name
			if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
				t.Fatal(err)
			}
		},
		FlushHostFirewall: func(t *testing.T, dp datapath.Dataplane) {
			d := dp.(*linux.Dataplane)
			if out, err := d.RunIptables("-w", "-F", "VXNET-FORWARD"); err != nil {
				t.Fatalf("flush: %v %s", err, out)
			}
			d.RereadHostFirewall()
		},
		EnableFast: func(t *testing.T, dp datapath.Dataplane) {
			if err := dp.(*linux.Dataplane).EnableFastPath(); err != nil {
				t.Fatal(err)
			}
		},
		UnhookByHand: func(t *testing.T, dp datapath.Dataplane, dev string) {
			unhook(t, dp.(*linux.Dataplane).Namespace(), dev)
		},
		Tunnel: giveTunnel,
	})
}

func handleOf(t *testing.T, dp datapath.Dataplane) *netlink.Handle {
	t.Helper()
	ns := dp.(*linux.Dataplane).Namespace()
	h, err := netlink.NewHandleAt(netns.NsHandle(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// inTestNS runs fn on a thread in the namespace nsfd.
func inTestNS(t *testing.T, nsfd int, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(netns.NsHandle(nsfd)); err != nil {
		t.Fatal(err)
	}
	defer netns.Set(orig)
	fn()
}

// tcxIngress returns the IDs of the programs at a device's TCX ingress
// (call within inTestNS), and the device's ifindex.
func tcxIngress(t *testing.T, dev string) ([]ebpf.ProgramID, int) {
	t.Helper()
	l, err := netlink.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	q, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		t.Fatal(err)
	}
	var ids []ebpf.ProgramID
	for _, ap := range q.Programs {
		ids = append(ids, ap.ID)
	}
	return ids, l.Attrs().Index
}

// unhook takes every program off dev's TCX ingress in the namespace nsfd,
// as someone with bpftool would.
func unhook(t *testing.T, nsfd int, dev string) {
	t.Helper()
	inTestNS(t, nsfd, func() {
		ids, idx := tcxIngress(t, dev)
		for _, id := range ids {
			p, err := ebpf.NewProgramFromID(id)
			if err != nil {
				t.Fatal(err)
			}
			err = link.RawDetachProgram(link.RawDetachProgramOptions{Target: idx, Program: p, Attach: ebpf.AttachTCXIngress})
			p.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
	})
}
