package lab

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vxnet/vxnet/internal/nsutil"
)

// Probes of a lab namespace's kernel state, for tests and benchmarks.

// WaitLink waits until a link is present (or absent) in a namespace.
func WaitLink(nsPath, name string, present bool, timeout time.Duration) error {
	h, err := nsutil.Handle(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	deadline := time.Now().Add(timeout)
	for {
		_, err := h.LinkByName(name)
		if (err == nil) == present {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear", name)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// SetLinkState sets a link in a namespace up or down.
func SetLinkState(nsPath, name string, up bool) error {
	h, err := nsutil.Handle(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	if up {
		return h.LinkSetUp(l)
	}
	return h.LinkSetDown(l)
}

// HasVTEP reports whether any FDB entry in a namespace points at vtep.
func HasVTEP(nsPath string, vtep netip.Addr) bool {
	h, err := nsutil.Handle(nsPath)
	if err != nil {
		return false
	}
	defer h.Close()
	fdbs, err := h.NeighList(0, 7 /* AF_BRIDGE */)
	if err != nil {
		return false
	}
	for _, f := range fdbs {
		if f.IP != nil && f.IP.Equal(vtep.AsSlice()) {
			return true
		}
	}
	return false
}

// NeighCount counts the IPv4 neighbour entries of a device in a namespace.
func NeighCount(nsPath, dev string) (int, error) {
	h, err := nsutil.Handle(nsPath)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return 0, err
	}
	ns, err := h.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
	return len(ns), err
}
