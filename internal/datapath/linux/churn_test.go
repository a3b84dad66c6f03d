package linux_test

import (
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/reconcile"
	"github.com/vxnet/vxnet/internal/testutil"
)

// TestObserveWhileLinksChurn: other software adds and removes devices and
// neighbour entries in the namespace (containers starting on a busy host)
// while a pass reads the kernel; the kernel may flag such dumps as
// interrupted, and a pass must then read again, not fail or see less.
func TestObserveWhileLinksChurn(t *testing.T) {
	_, path := testutil.Netns(t)
	dp, err := linux.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	want, _ := reconcile.Desired(manyEndpoints(1000))
	if _, err := reconcile.Sync(dp, want); err != nil {
		t.Fatal(err)
	}
	h := handleOf(t, dp)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			attrs := netlink.NewLinkAttrs()
			attrs.Name = fmt.Sprintf("churn%d", i%8)
			d := &netlink.Dummy{LinkAttrs: attrs}
			_ = h.LinkAdd(d)
			_ = h.LinkDel(d)
			if l, err := h.LinkByName(datapath.VxlanName(9000)); err == nil {
				n := &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
					IP: net.IPv4(10, 200, byte(i>>8), byte(i)), HardwareAddr: net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}}
				_ = h.NeighSet(n)
				_ = h.NeighDel(n)
			}
		}
	}()
	var failed []error
	for i := 0; i < 100; i++ {
		obs, err := dp.Observe()
		if err != nil {
			failed = append(failed, err)
			continue
		}
		if _, ok := obs.Networks[9000]; !ok {
			failed = append(failed, fmt.Errorf("network 7000 missing from %v", obs.Networks))
		}
	}
	close(stop)
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d of 100 observations failed while links churned; first: %v", len(failed), failed[0])
	}
}
