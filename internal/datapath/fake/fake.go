// Package fake is an in-memory datapath.Dataplane for unit tests. It keeps the
// linux implementation's semantics (idempotence, ownership, errors for absent
// networks); the dptest contract suite keeps the two from drifting.
package fake

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
)

// Dataplane is the in-memory fake.
type Dataplane struct {
	mu       sync.Mutex
	networks map[uint32]datapath.NetworkSpec
	fdb      map[datapath.FDBKey]datapath.FDB
	neigh    map[datapath.NeighKey]datapath.Neigh
	ports    map[string]datapath.Port
	firewall *datapath.Firewall
	hostFW   *datapath.HostFirewall
	openings *datapath.Openings
	tunnel   *datapath.Tunnel
	routes   map[netip.Addr]datapath.Route
	// fast is nil until EnableFastPath; hooks by device, entries by key.
	fast *fastPath
	// Foreign holds device names vxnet did not create; ForeignVXLAN the
	// VXLAN devices among them (Observe reports them).
	Foreign      map[string]bool
	ForeignVXLAN []model.ForeignVXLAN
	// Changes counts writes.
	Changes int
}

var _ datapath.Dataplane = (*Dataplane)(nil)

// New returns an empty fake.
func New() *Dataplane {
	return &Dataplane{
		networks: map[uint32]datapath.NetworkSpec{},
		fdb:      map[datapath.FDBKey]datapath.FDB{},
		neigh:    map[datapath.NeighKey]datapath.Neigh{},
		ports:    map[string]datapath.Port{},
		routes:   map[netip.Addr]datapath.Route{},
		Foreign:  map[string]bool{},
	}
}

// Observe returns a copy of the state, sorted for stable comparisons.
func (d *Dataplane) Observe() (datapath.Observed, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	o := datapath.Observed{Networks: map[uint32]datapath.NetworkSpec{}, Foreign: slices.Clone(d.ForeignVXLAN)}
	for k, v := range d.networks {
		o.Networks[k] = v
	}
	for _, f := range d.fdb {
		o.FDB = append(o.FDB, f)
	}
	for _, n := range d.neigh {
		o.Neigh = append(o.Neigh, n)
	}
	for _, p := range d.ports {
		o.Ports = append(o.Ports, p)
	}
	if d.firewall != nil {
		f := *d.firewall
		o.Firewall = &f
	}
	if d.hostFW != nil {
		h := *d.hostFW
		o.HostFirewall = &h
	}
	if d.openings != nil {
		op := *d.openings
		o.Openings = &op
	}
	if d.tunnel != nil {
		t := *d.tunnel
		t.Peers = slices.Clone(t.Peers)
		o.Tunnel = &t
	}
	for _, r := range d.routes {
		o.Routes = append(o.Routes, r)
	}
	slices.SortFunc(o.Routes, func(a, b datapath.Route) int { return a.IP.Compare(b.IP) })
	if d.fast != nil {
		o.FastPath = &datapath.FastPath{}
		for _, h := range d.fast.hooks {
			o.FastPath.Hooks = append(o.FastPath.Hooks, h)
		}
		for _, e := range d.fast.entries {
			o.FastPath.Entries = append(o.FastPath.Entries, e)
		}
		slices.SortFunc(o.FastPath.Hooks, func(a, b datapath.FastHook) int { return cmp.Compare(a.Dev, b.Dev) })
		slices.SortFunc(o.FastPath.Entries, func(a, b datapath.FastEntry) int { return a.Key().Compare(b.Key()) })
	}
	slices.SortFunc(o.FDB, func(a, b datapath.FDB) int { return a.Key().Compare(b.Key()) })
	slices.SortFunc(o.Neigh, func(a, b datapath.Neigh) int { return a.Key().Compare(b.Key()) })
	slices.SortFunc(o.Ports, func(x, y datapath.Port) int { return cmp.Compare(x.ID, y.ID) })
	return o, nil
}

// EnsureNetwork records the network.
func (d *Dataplane) EnsureNetwork(s datapath.NetworkSpec) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range []string{datapath.BridgeName(s.VNI), datapath.VxlanName(s.VNI)} {
		if d.Foreign[n] {
			return &datapath.NotOwnedError{Device: n}
		}
	}
	if _, err := net.ParseMAC(s.GatewayMAC); err != nil {
		return fmt.Errorf("network %s: gateway MAC %q: %w", s.Name, s.GatewayMAC, err)
	}
	cur, ok := d.networks[s.VNI]
	if ok && cur == s {
		return nil
	}
	if ok && (cur.Port != s.Port || cur.Local != s.Local || (s.Underlay != "" && cur.Underlay != s.Underlay)) {
		// The kernel fixes these at creation: the device is replaced and
		// its entries go with it.
		d.dropEntries(s.VNI)
	}
	d.networks[s.VNI] = s
	d.Changes++
	return nil
}

// DeleteNetwork forgets the network and its entries (as deleting the device does).
func (d *Dataplane) DeleteNetwork(vni uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range []string{datapath.BridgeName(vni), datapath.VxlanName(vni)} {
		if d.Foreign[n] {
			return &datapath.NotOwnedError{Device: n}
		}
	}
	if _, ok := d.networks[vni]; !ok {
		return nil
	}
	delete(d.networks, vni)
	d.dropEntries(vni)
	d.Changes++
	return nil
}

func (d *Dataplane) dropEntries(vni uint32) {
	for k, f := range d.fdb {
		if f.VNI == vni {
			delete(d.fdb, k)
		}
	}
	for k, n := range d.neigh {
		if n.VNI == vni {
			delete(d.neigh, k)
		}
	}
	d.forgetFast(datapath.VxlanName(vni), true)
}

func (d *Dataplane) need(vni uint32) error {
	if _, ok := d.networks[vni]; !ok {
		return fmt.Errorf("network with VNI %d is not set up on this host (no %s)", vni, datapath.VxlanName(vni))
	}
	return nil
}

// SetFDB adds or replaces an entry.
func (d *Dataplane) SetFDB(f datapath.FDB) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.need(f.VNI); err != nil {
		return err
	}
	if _, err := net.ParseMAC(f.MAC); err != nil {
		return fmt.Errorf("%s: invalid MAC: %w", f, err)
	}
	if cur, ok := d.fdb[f.Key()]; ok && cur == f {
		return nil
	}
	d.fdb[f.Key()] = f
	d.Changes++
	return nil
}

// DelFDB removes an entry.
func (d *Dataplane) DelFDB(f datapath.FDB) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.need(f.VNI); err != nil {
		return err
	}
	if _, ok := d.fdb[f.Key()]; ok {
		delete(d.fdb, f.Key())
		d.Changes++
	}
	return nil
}

// SetNeigh adds or replaces an entry.
func (d *Dataplane) SetNeigh(n datapath.Neigh) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.need(n.VNI); err != nil {
		return err
	}
	if _, err := net.ParseMAC(n.MAC); err != nil && !n.Proxy {
		return fmt.Errorf("%s: invalid MAC: %w", n, err)
	}
	if n.Proxy && (!n.IP.Is6() || n.IP.Is4In6()) {
		return fmt.Errorf("%s: proxy entries are for IPv6 addresses", n)
	}
	if cur, ok := d.neigh[n.Key()]; ok && cur == n {
		return nil
	}
	d.neigh[n.Key()] = n
	d.Changes++
	return nil
}

// DelNeigh removes an entry.
func (d *Dataplane) DelNeigh(n datapath.Neigh) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.need(n.VNI); err != nil {
		return err
	}
	if _, ok := d.neigh[n.Key()]; ok {
		delete(d.neigh, n.Key())
		d.Changes++
	}
	return nil
}

// Attach records a port; the namespace path must exist.
func (d *Dataplane) Attach(e datapath.EndpointSpec) (datapath.Port, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := datapath.Port{ID: e.ID, VNI: e.VNI, HostIf: datapath.HostIfName(e.ID)}
	if _, err := net.ParseMAC(e.MAC); err != nil {
		return p, fmt.Errorf("endpoint %s: invalid MAC %q: %w", e.ID, e.MAC, err)
	}
	if e.Netns != "" {
		if _, err := os.Stat(e.Netns); err != nil {
			return p, fmt.Errorf("network namespace %s does not exist: %w", e.Netns, err)
		}
	}
	if err := d.need(e.VNI); err != nil {
		return p, err
	}
	if cur, ok := d.ports[e.ID]; ok {
		if cur.VNI != e.VNI {
			return p, fmt.Errorf("interface %s already belongs to endpoint %q", p.HostIf, e.ID)
		}
		return cur, nil
	}
	d.ports[e.ID] = p
	d.Changes++
	return p, nil
}

// Detach forgets a port.
func (d *Dataplane) Detach(id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p, ok := d.ports[id]; ok {
		delete(d.ports, id)
		d.forgetFast(p.HostIf, false)
		d.Changes++
	}
	return nil
}

// EnsureFirewall records the firewall.
func (d *Dataplane) EnsureFirewall(f datapath.Firewall) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	f.Isolate = append([]uint32(nil), f.Isolate...)
	f.VTEPs = append([]netip.Addr(nil), f.VTEPs...)
	f.Internal = slices.Clone(f.Internal)
	slices.Sort(f.Internal)
	slices.Sort(f.Isolate)
	slices.SortFunc(f.VTEPs, netip.Addr.Compare)
	d.firewall = &f
	d.Changes++
	return nil
}

// RemoveFirewall forgets the firewall.
func (d *Dataplane) RemoveFirewall() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.firewall != nil {
		d.firewall = nil
		d.Changes++
	}
	return nil
}

// EnsureHostFirewall records the host firewall rules.
func (d *Dataplane) EnsureHostFirewall(h datapath.HostFirewall) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	h.Networks, h.Ports = slices.Clone(h.Networks), slices.Clone(h.Ports)
	d.hostFW = &h
	d.Changes++
	return nil
}

// RemoveHostFirewall forgets the host firewall rules.
func (d *Dataplane) RemoveHostFirewall() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.hostFW != nil {
		d.hostFW = nil
		d.Changes++
	}
	return nil
}

// EnsureOpenings records the openings.
func (d *Dataplane) EnsureOpenings(o datapath.Openings) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	o.VTEPs = slices.Clone(o.VTEPs)
	d.openings = &o
	d.Changes++
	return nil
}

// RemoveOpenings forgets the openings.
func (d *Dataplane) RemoveOpenings() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.openings != nil {
		d.openings = nil
		d.Changes++
	}
	return nil
}

// EnsureTunnel records the tunnel.
func (d *Dataplane) EnsureTunnel(t datapath.Tunnel) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.Foreign[t.Dev] {
		return &datapath.NotOwnedError{Device: t.Dev}
	}
	t.Peers = slices.Clone(t.Peers)
	datapath.SortPeers(t.Peers)
	if d.tunnel != nil && d.tunnel.Equal(t) {
		return nil // adopted as it is
	}
	d.tunnel = &t
	d.Changes++
	return nil
}

// SetRoute records a route; the tunnel device must exist.
func (d *Dataplane) SetRoute(r datapath.Route) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tunnel == nil || d.tunnel.Dev != r.Dev {
		return fmt.Errorf("route %s: no device %s", r.IP, r.Dev)
	}
	d.routes[r.IP] = r
	d.Changes++
	return nil
}

// DelRoute forgets a route.
func (d *Dataplane) DelRoute(r datapath.Route) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.routes[r.IP]; ok {
		delete(d.routes, r.IP)
		d.Changes++
	}
	return nil
}

// RemoveTunnel forgets the tunnel.
func (d *Dataplane) RemoveTunnel(dev string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tunnel != nil && d.tunnel.Dev == dev {
		d.tunnel = nil
		clear(d.routes) // they go with the device
		d.Changes++
	}
	return nil
}

// FlushHostFirewall drops the host firewall rules as someone flushing the
// host's iptables would: vxnet's record of them is gone too.
func (d *Dataplane) FlushHostFirewall() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hostFW = nil
}

type fastPath struct {
	hooks   map[string]datapath.FastHook
	entries map[datapath.FastKey]datapath.FastEntry
}

// EnableFastPath turns the fake's fast path on.
func (d *Dataplane) EnableFastPath() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fast == nil {
		d.fast = &fastPath{hooks: map[string]datapath.FastHook{}, entries: map[datapath.FastKey]datapath.FastEntry{}}
	}
}

// UnhookByHand marks dev's hook stale, as someone deleting the filter
// would.
func (d *Dataplane) UnhookByHand(dev string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if h, ok := d.fast.hooks[dev]; ok {
		h.Stale = true
		d.fast.hooks[dev] = h
	}
}

// device reports whether dev is a device the fake holds.
func (d *Dataplane) device(dev string) bool {
	for vni := range d.networks {
		if dev == datapath.VxlanName(vni) || dev == datapath.BridgeName(vni) {
			return true
		}
	}
	for _, p := range d.ports {
		if p.HostIf == dev {
			return true
		}
	}
	return false
}

// forgetFast drops the hook on dev and the entries pointing at it (as
// the linux dataplane does: deleted with a network, left pointing at
// nothing with a port).
func (d *Dataplane) forgetFast(dev string, entries bool) {
	if d.fast == nil {
		return
	}
	delete(d.fast.hooks, dev)
	for k, e := range d.fast.entries {
		if e.Dev == dev && entries {
			delete(d.fast.entries, k)
		} else if e.Dev == dev {
			e.Dev = ""
			d.fast.entries[k] = e
		}
	}
}

var errNoFast = fmt.Errorf("the BPF fast path is not loaded (datapath bridge)")

// SetFastHook records a hook on an existing device.
func (d *Dataplane) SetFastHook(h datapath.FastHook) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fast == nil {
		return errNoFast
	}
	if !h.Underlay && !d.device(h.Dev) { // the underlay is the host's
		return fmt.Errorf("hook %s: Link not found", h.Dev)
	}
	h = h.Want()
	if cur, ok := d.fast.hooks[h.Dev]; ok && cur == h {
		return nil
	}
	d.fast.hooks[h.Dev] = h
	d.Changes++
	return nil
}

// DelFastHook forgets a hook.
func (d *Dataplane) DelFastHook(h datapath.FastHook) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fast == nil {
		return nil
	}
	if _, ok := d.fast.hooks[h.Dev]; ok {
		delete(d.fast.hooks, h.Dev)
		d.Changes++
	}
	return nil
}

// SetFastEntry records an entry pointing at an existing device.
func (d *Dataplane) SetFastEntry(e datapath.FastEntry) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fast == nil {
		return errNoFast
	}
	if hw, err := net.ParseMAC(e.MAC); err != nil || len(hw) != 6 {
		return fmt.Errorf("%s: invalid MAC %q: want six octets such as 02:42:ac:11:00:02", e, e.MAC)
	}
	if !d.device(e.Dev) {
		return fmt.Errorf("%s: Link not found", e)
	}
	if cur, ok := d.fast.entries[e.Key()]; ok && cur == e {
		return nil
	}
	d.fast.entries[e.Key()] = e
	d.Changes++
	return nil
}

// DelFastEntry forgets an entry.
func (d *Dataplane) DelFastEntry(e datapath.FastEntry) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fast == nil {
		return nil
	}
	if _, ok := d.fast.entries[e.Key()]; ok {
		delete(d.fast.entries, e.Key())
		d.Changes++
	}
	return nil
}
