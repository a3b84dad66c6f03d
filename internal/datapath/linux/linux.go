// Package linux implements datapath.Dataplane over netlink, in one network
// namespace, without changing the calling thread's namespace.
package linux

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vxnet/vxnet/internal/datapath"
)

// Dataplane programs one network namespace (a host).
type Dataplane struct {
	h   *netlink.Handle
	ns  netns.NsHandle
	log *slog.Logger
	// Changes counts kernel writes, so tests can prove a no-op pass is a no-op.
	Changes int
	// vxlanIdx caches each network's vxlan ifindex for the FDB and
	// neighbour writes: looking the device up per entry was half the cost
	// of programming many endpoints. Observe, EnsureNetwork and
	// DeleteNetwork refresh it, so it never outlives a pass.
	vxlanIdx map[uint32]int
	// nftRead is the lasting connection the firewall is read through;
	// writes, rare, each use a connection of their own.
	nftRead *nftables.Conn
	// ipt programs the host's iptables.
	ipt iptables
	// open remembers vxnet's openings in the host's filters.
	open openState
	// fast is the BPF fast path, nil unless EnableFastPath loaded it.
	fast *fastPath
	// tcx caches the programs at vxnet's devices (see readAttachments).
	tcx tcxCache
	// hops caches the next hops of the tunnels the program wraps for.
	hops nextHops
	// tun is what the WireGuard device needs (see SetTunnel).
	tun tunnelState
}

// HostFirewallMaxAge is how long Observe trusts its last reading of the
// host's iptables (reading them runs processes): rules someone flushed are
// noticed by the first pass after that, well within a resync interval.
const HostFirewallMaxAge = 2 * time.Second

var _ datapath.Dataplane = (*Dataplane)(nil)

// Open returns a Dataplane for the namespace at path, or for the caller's
// namespace when path is empty.
func Open(path string, log *slog.Logger) (*Dataplane, error) {
	var ns netns.NsHandle
	var err error
	if path == "" {
		ns, err = netns.Get()
	} else {
		ns, err = netns.GetFromPath(path)
	}
	if err != nil {
		return nil, fmt.Errorf("open network namespace %q: %w", path, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("netlink handle in namespace %q: %w", path, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Dataplane{h: h, ns: ns, log: log, vxlanIdx: map[uint32]int{},
		ipt: iptables{nsPath: path, maxAge: HostFirewallMaxAge}, tcx: tcxCache{maxAge: FastPathMaxAge}}, nil
}

// Close releases the namespace handle.
func (d *Dataplane) Close() error {
	d.closeReader()
	if d.fast != nil {
		d.fast.close() // the attachments keep the program and its maps alive
	}
	if d.tun.wg != nil {
		d.tun.wg.Close()
	}
	d.h.Close()
	return d.ns.Close()
}

// dumpAttempts bounds how often a dump is read again when the kernel
// flags it as interrupted (the table changed while it was being read).
const dumpAttempts = 5

// dump runs a netlink dump, reading again while the kernel reports it
// interrupted; what names the dump in the error.
func dump[T any](what string, read func() (T, error)) (T, error) {
	var v T
	var err error
	for range dumpAttempts {
		v, err = read()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		return v, fmt.Errorf("%s: interrupted %d times in a row (the table kept changing): %w", what, dumpAttempts, err)
	}
	if err != nil {
		return v, fmt.Errorf("%s: %w", what, err)
	}
	return v, nil
}

// changed counts and logs one kernel write; it is the dataplane's only
// debug-level log (tests read the log for writes).
func (d *Dataplane) changed(what string, args ...any) {
	d.Changes++
	d.log.Debug(what, args...)
}

type ownedLink struct {
	link netlink.Link
	kind string
	vni  uint32
	rest string
}

func parseOwned(l netlink.Link) (ownedLink, bool) {
	kind, name, ok := datapath.ParseAlias(l.Attrs().Alias)
	if !ok {
		return ownedLink{}, false
	}
	vniStr, rest, _ := strings.Cut(name, ":")
	vni, err := strconv.ParseUint(vniStr, 10, 32)
	if err != nil {
		return ownedLink{}, false
	}
	return ownedLink{link: l, kind: kind, vni: uint32(vni), rest: rest}, true
}

func aliasFor(kind string, vni uint32, rest string) string {
	return datapath.Alias(kind, fmt.Sprintf("%d:%s", vni, rest))
}

// Namespace returns the file descriptor of the namespace this Dataplane programs.
func (d *Dataplane) Namespace() int { return int(d.ns) }
