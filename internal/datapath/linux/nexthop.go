package linux

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The program hands bpf_redirect_neigh the next hop of a wrapped frame, so
// that the kernel does not look its route up again for every frame (the
// lookup was about a third of what vxnet's own code cost per packet in the
// profile of docs/BENCHMARKS.md). The next hop is what the host's routes
// give for the tunnel's addresses now; the cache below is dropped after
// tcxCache.maxAge and whenever a route changes (WatchRoutes), and Observe
// reports an entry whose next hop moved, so that the pass writes it again.

// hopKey is a tunnel: its VTEP, local address and underlay device.
type hopKey struct {
	vtep, local [4]byte
	under       uint32
}

// nextHops caches next hops between passes.
type nextHops struct {
	at   time.Time
	hops map[hopKey][4]byte
	// stale is set by WatchRoutes (another goroutine).
	stale atomic.Bool
}

// nextHop is the IPv4 next hop of frames to the VTEP from local out of the
// underlay device under: the route's gateway, else the VTEP itself (on
// link). It is zero, which leaves the lookup to the kernel for every
// frame, when the route leaves by another device, is not unicast, has an
// IPv6 gateway, or cannot be read.
func (d *Dataplane) nextHop(vtep, local [4]byte, under uint32) [4]byte {
	c := &d.hops
	if c.stale.Swap(false) || c.hops == nil || time.Since(c.at) > d.tcx.maxAge {
		c.hops, c.at = map[hopKey][4]byte{}, time.Now()
	}
	k := hopKey{vtep: vtep, local: local, under: under}
	nh, ok := c.hops[k]
	if !ok {
		nh = routeNextHop(d.h, k)
		c.hops[k] = nh
	}
	return nh
}

// routeGetter is the part of a netlink handle routeNextHop uses.
type routeGetter interface {
	RouteGetWithOptions(dst net.IP, o *netlink.RouteGetOptions) ([]netlink.Route, error)
}

// routeNextHop asks the kernel the question bpf_redirect_neigh would ask
// for every frame (output route to the VTEP from the local address,
// bound to the underlay device) and reads the next hop from the answer.
func routeNextHop(h routeGetter, k hopKey) [4]byte {
	rs, err := h.RouteGetWithOptions(net.IP(k.vtep[:]), &netlink.RouteGetOptions{OifIndex: int(k.under), SrcAddr: net.IP(k.local[:])})
	if err != nil || len(rs) != 1 {
		return [4]byte{}
	}
	return hopOf(rs[0], k)
}

// hopOf is the next hop route r gives for tunnel k (zero: none the
// program may use).
func hopOf(r netlink.Route, k hopKey) [4]byte {
	if r.LinkIndex != int(k.under) || r.Type != unix.RTN_UNICAST || r.Via != nil {
		return [4]byte{}
	}
	if r.Gw == nil {
		return k.vtep
	}
	gw, ok := netip.AddrFromSlice(r.Gw)
	if gw = gw.Unmap(); !ok || !gw.Is4() || gw.IsUnspecified() {
		return [4]byte{}
	}
	return gw.As4()
}

// WatchRoutes calls changed after routes of the namespace change (once
// for the changes of each routeSettle), so that a pass gives the fast path's entries
// their new next hops at once rather than at the next resync.
func (d *Dataplane) WatchRoutes(ctx context.Context, changed func()) error {
	ch := make(chan netlink.RouteUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	ns := d.ns
	failed := make(chan error, 1)
	if err := netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{Namespace: &ns,
		ErrorCallback: func(err error) {
			select {
			case failed <- err:
			default:
			}
		}}); err != nil {
		return fmt.Errorf("watch the routes: %w", err)
	}
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-failed:
			return fmt.Errorf("watch the routes: %w", err)
		case _, ok := <-ch:
			if !ok {
				return errors.New("watch the routes: the subscription closed")
			}
			d.hops.stale.Store(true)
			if settle == nil {
				settle = time.After(routeSettle)
			}
		case <-settle:
			settle = nil
			changed()
		}
	}
}

// routeSettle gathers route changes into one pass: a host whose routes
// keep changing gets one pass a second from them, not one per change.
const routeSettle = time.Second
