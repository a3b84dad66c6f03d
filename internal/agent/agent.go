// Package agent is vxnet's per-host daemon: it joins the cluster, keeps the
// replicated state, serves the local API, and runs the reconcile loop that
// programs this host's kernel from the cluster state.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/docker"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/reconcile"
)

// Config configures an agent.
type Config struct {
	Name          string
	AdvertiseAddr netip.Addr
	Join          []string
	Keys          [][]byte
	Insecure      bool
	StateDir      string
	Socket        string
	VXLANPort     int
	GossipPort    int
	// ResyncInterval is the period of the full reconcile pass.
	ResyncInterval time.Duration
	// ProbeInterval tunes gossip failure detection.
	ProbeInterval time.Duration
	// DockerPluginSocket is where the Docker network and IPAM driver is
	// served (empty: not served).
	DockerPluginSocket string
	// DockerHost is the local dockerd's API socket: with it the agent keeps
	// the dockerd's vxnet networks equal to the cluster's.
	DockerHost string
	Log        *slog.Logger
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if err := model.ValidateName("node", c.Name); err != nil {
		return err
	}
	if !c.AdvertiseAddr.IsValid() {
		return errors.New("no advertise address: give --advertise-addr")
	}
	if err := model.ValidatePort("VXLAN port", c.VXLANPort); err != nil {
		return err
	}
	if err := model.ValidatePort("gossip port", c.GossipPort); err != nil {
		return err
	}
	if c.StateDir == "" || c.Socket == "" {
		return errors.New("state directory and socket path are required")
	}
	return nil
}

// Agent is a running agent.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	state    *cluster.State
	gossip   *cluster.Gossip
	store    *store
	dp       datapath.Dataplane
	underlay string
	mtu      int

	dirty   chan struct{}
	dockerc *docker.Client

	dpMu   sync.Mutex // serialises kernel programming
	apiMu  sync.Mutex // serialises allocations and local writes
	locals map[string]localEndpoint

	savedGen     atomic.Uint64 // state generation last written to the store
	savedMembers []string      // member addresses last written to the store
	rejoining    atomic.Bool

	statMu    sync.Mutex
	lastSync  time.Time
	lastDur   time.Duration
	syncErr   error
	addrErr   error // the advertise address is gone from this host
	conflicts []string
	syncs     atomic.Int64
	kernelOps atomic.Int64
}

// New prepares an agent: state, store, datapath, gossip. Call Run to serve.
func New(cfg Config) (*Agent, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ResyncInterval == 0 {
		cfg.ResyncInterval = 10 * time.Second
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	st, err := openStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Log, store: st, dirty: make(chan struct{}, 1)}
	if cfg.DockerHost != "" {
		a.dockerc = docker.NewClient(strings.TrimPrefix(cfg.DockerHost, "unix://"))
	}
	ok := false
	defer func() {
		if !ok {
			st.close()
		}
	}()
	name, err := st.identity(cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("node identity: %w", err)
	}
	if name != cfg.Name {
		return nil, fmt.Errorf("state directory %s belongs to node %q, not %q: use --name %s or another --state-dir", cfg.StateDir, name, cfg.Name, name)
	}
	a.state = cluster.NewState(name)
	saved, err := st.loadState()
	if err != nil {
		return nil, fmt.Errorf("load saved state: %w", err)
	}
	a.state.Restore(saved.Records, saved.Clock)
	if a.locals, err = st.locals(); err != nil {
		return nil, err
	}
	if len(cfg.Keys) > 0 {
		saved, err := loadKeyring(cfg.StateDir)
		if err != nil {
			return nil, err
		}
		if len(saved) > 0 {
			cfg.Log.Info("using the keyring saved by a key rotation", "keys", len(saved), "primary", cluster.Fingerprint(saved[0]))
			cfg.Keys = saved
		}
	}
	a.underlay, a.mtu, err = underlayOf(cfg.AdvertiseAddr)
	if err != nil {
		return nil, err
	}
	dp, err := linux.Open("", cfg.Log.With("component", "datapath"))
	if err != nil {
		return nil, err
	}
	a.dp = dp
	a.gossip, err = cluster.StartGossip(cluster.GossipConfig{
		Name: name, Addr: cfg.AdvertiseAddr, Port: cfg.GossipPort, Keys: cfg.Keys, Insecure: cfg.Insecure,
		OnChange: a.markDirty, Log: cfg.Log.With("component", "gossip"), ProbeInterval: cfg.ProbeInterval,
		OnSelfConflict: a.rejoinLater,
	}, a.state)
	if err != nil {
		dp.Close()
		return nil, err
	}
	ok = true
	return a, nil
}

// underlayOf finds the device holding addr and its MTU.
func underlayOf(addr netip.Addr) (string, int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return "", 0, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
				return l.Attrs().Name, l.Attrs().MTU, nil
			}
		}
	}
	return "", 0, fmt.Errorf("advertise address %s is not configured on any interface of this host", addr)
}

// hasAddr reports whether addr is configured on an interface of this host
// (one dump of every address).
func hasAddr(addr netip.Addr) (bool, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return false, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			return true, nil
		}
	}
	return false, nil
}

// checkAddr reports, in status and once in the log, when the advertise
// address is no longer on this host: peers keep sending VXLAN to it, so
// nothing reaches this host's containers until the agent restarts with its
// new address. Checked on every resync tick.
func (a *Agent) checkAddr() {
	ok, err := hasAddr(a.cfg.AdvertiseAddr)
	if err != nil {
		a.log.Warn("check advertise address", "err", err)
		return
	}
	var lost error
	if !ok {
		lost = fmt.Errorf("advertise address %s is no longer on any interface of this host: peers cannot reach it; restart the agent with its new address (--advertise-addr, or none to take the default route's)", a.cfg.AdvertiseAddr)
	}
	a.statMu.Lock()
	was := a.addrErr
	a.addrErr = lost
	a.statMu.Unlock()
	switch {
	case lost != nil && was == nil:
		a.log.Error("advertise address lost", "addr", a.cfg.AdvertiseAddr, "err", lost)
	case lost == nil && was != nil:
		a.log.Info("advertise address back", "addr", a.cfg.AdvertiseAddr)
	}
}

// DefaultAdvertiseAddr returns the preferred source address of the default route.
func DefaultAdvertiseAddr() (netip.Addr, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if a, ok := netip.AddrFromSlice(r.Src); ok && a.IsValid() && !a.IsUnspecified() {
			return a.Unmap(), nil
		}
		l, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err == nil && len(addrs) > 0 {
			a, _ := netip.AddrFromSlice(addrs[0].IP)
			return a.Unmap(), nil
		}
	}
	return netip.Addr{}, errors.New("no default route to take an address from: give --advertise-addr")
}

// rejoinLater joins again once the members have declared this node's old
// address dead and may accept the new one (one pending rejoin at a time).
func (a *Agent) rejoinLater() {
	if len(a.cfg.Join) == 0 || !a.rejoining.CompareAndSwap(false, true) {
		return
	}
	probe := a.cfg.ProbeInterval
	if probe == 0 {
		probe = time.Second
	}
	time.AfterFunc(8*probe, func() {
		defer a.rejoining.Store(false)
		if _, err := a.gossip.Join(a.cfg.Join); err != nil {
			a.log.Warn("rejoin after address change", "err", err)
			return
		}
		a.log.Info("rejoined the cluster with the new address")
	})
}

// persist writes the cluster state to the store unless it has not changed
// since the last write (the loop and the API both call it after changes).
func (a *Agent) persist() error {
	gen := a.state.Generation()
	if gen == a.savedGen.Load() {
		return nil
	}
	if err := a.store.saveState(a.state); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	a.savedGen.Store(gen)
	return nil
}

func (a *Agent) persistOrLog() {
	if err := a.persist(); err != nil {
		a.log.Error("persist", "err", err)
	}
}

// rememberMembers saves the other members' addresses when they changed.
func (a *Agent) rememberMembers() {
	var addrs []string
	for _, n := range a.gossip.Alive() {
		if n.Name != a.state.Self() {
			addrs = append(addrs, n.Addr.String())
		}
	}
	if len(addrs) == 0 || slices.Equal(addrs, a.savedMembers) {
		return
	}
	if err := a.store.saveMembers(addrs); err != nil {
		a.log.Error("save members", "err", err)
		return
	}
	a.savedMembers = addrs
}

func (a *Agent) markDirty() {
	select {
	case a.dirty <- struct{}{}:
	default:
	}
}

// Run joins the cluster, serves the API and reconciles until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	defer a.store.close()
	defer a.dp.(*linux.Dataplane).Close()
	ln, err := listenSocket(a.cfg.Socket)
	if err != nil {
		a.gossip.Shutdown()
		return err
	}
	srv := a.server()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("api server", "err", err)
		}
	}()
	if a.cfg.DockerPluginSocket != "" {
		ds := docker.NewServer(newDockerBackend(a), a.log.With("component", "docker"))
		if err := ds.Serve(a.cfg.DockerPluginSocket); err != nil {
			_ = srv.Close()
			a.gossip.Shutdown()
			return fmt.Errorf("docker plugin: %w", err)
		}
		defer ds.Close()
		a.log.Info("serving the Docker network and IPAM driver", "socket", a.cfg.DockerPluginSocket)
	}
	a.log.Info("agent started", "node", a.state.Self(), "addr", a.cfg.AdvertiseAddr, "underlay", a.underlay,
		"underlay_mtu", a.mtu, "socket", a.cfg.Socket, "encrypted", len(a.cfg.Keys) > 0)
	// Join the given members and the ones known before a restart.
	join := append([]string(nil), a.cfg.Join...)
	if known, err := a.store.members(); err == nil {
		for _, m := range known {
			if !slices.Contains(join, m) {
				join = append(join, m)
			}
		}
	}
	if len(join) > 0 {
		a.join(ctx, join)
	}
	loopDone := make(chan struct{})
	go func() { a.loop(ctx); close(loopDone) }()
	<-ctx.Done()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	<-loopDone
	a.persistOrLog()
	// Stop without leaving: the kernel keeps forwarding and peers keep our
	// endpoints until failure detection, so a restart is invisible.
	return a.gossip.Shutdown()
}

// join contacts the given members, retrying in the background until one
// answers. The first attempt is waited for (bounded) so that the first
// reconcile pass sees the cluster, not an empty one.
func (a *Agent) join(ctx context.Context, addrs []string) {
	first := make(chan struct{})
	go func() {
		defer close(first)
		backoff := 500 * time.Millisecond
		for attempt := 1; ; attempt++ {
			n, err := a.gossip.Join(addrs)
			if err == nil {
				a.log.Info("joined cluster", "contacted", n)
				return
			}
			a.log.Warn("join failed; retrying", "attempt", attempt, "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 10*time.Second)
		}
	}()
	select {
	case <-first:
	case <-time.After(5 * time.Second):
		a.log.Warn("no member answered yet; starting with the saved state")
	case <-ctx.Done():
	}
}

func (a *Agent) loop(ctx context.Context) {
	tick := time.NewTicker(a.cfg.ResyncInterval)
	defer tick.Stop()
	gc := time.NewTicker(time.Minute)
	defer gc.Stop()
	backoff := 100 * time.Millisecond
	a.markDirty()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.dirty:
		case <-tick.C:
			a.checkAddr()
		case <-gc.C:
			if n := a.state.CollectTombstones(10 * time.Minute); n > 0 {
				a.log.Debug("collected tombstones", "count", n)
			}
			continue
		}
		if err := a.sync(); err != nil {
			a.log.Warn("reconcile failed; will retry", "err", err, "retry_in", backoff)
			time.AfterFunc(backoff, a.markDirty)
			backoff = min(backoff*2, 10*time.Second)
		} else {
			backoff = 100 * time.Millisecond
		}
		a.gcLocal()
		a.rememberMembers()
		if a.dockerc != nil {
			a.syncDocker()
		}
		a.persistOrLog()
	}
}

// input builds the reconcile input from the cluster state.
func (a *Agent) input() (reconcile.Input, []cluster.Conflict) {
	nets, conflicts := a.state.Networks()
	return reconcile.Input{
		Node: a.state.Self(), Local: a.cfg.AdvertiseAddr, Port: a.cfg.VXLANPort, Underlay: a.underlay,
		UnderlayMTU: a.mtu, Networks: nets, Nodes: a.gossip.Alive(), Endpoints: a.state.Endpoints(),
	}, conflicts
}

// sync runs one reconcile pass.
func (a *Agent) sync() error {
	// The input is read under the datapath lock: an attach in flight
	// records its endpoint before it lets go of the datapath, so a pass can
	// never see its fresh port without its record and remove it.
	start := time.Now()
	a.dpMu.Lock()
	in, cconf := a.input()
	want, rconf := reconcile.Desired(in)
	ops, err := reconcile.Sync(a.dp, want)
	a.dpMu.Unlock()
	a.syncs.Add(1)
	a.kernelOps.Add(int64(len(ops)))
	if len(ops) > 0 {
		a.log.Debug("reconciled", "ops", len(ops))
	}
	var conflicts []string
	for _, c := range cconf {
		conflicts = append(conflicts, c.Detail)
	}
	for _, c := range rconf {
		conflicts = append(conflicts, c.String())
	}
	a.statMu.Lock()
	if len(conflicts) != len(a.conflicts) {
		for _, c := range conflicts {
			a.log.Warn("conflict in cluster state", "detail", c)
		}
	}
	a.lastSync, a.lastDur, a.syncErr, a.conflicts = time.Now(), time.Since(start), err, conflicts
	a.statMu.Unlock()
	return err
}

// prepareLocked runs a reconcile pass before a port of network n is added,
// so the firewall and then n's devices exist, and returns n's spec (dpMu
// held).
func (a *Agent) prepareLocked(n model.Network) (datapath.NetworkSpec, error) {
	in, _ := a.input()
	want, _ := reconcile.Desired(in)
	spec, ok := want.Networks[n.VNI]
	if !ok {
		return spec, &api.StatusError{Code: http.StatusConflict,
			Msg: fmt.Sprintf("network %s is not programmable on this host (see 'vxnet status' for conflicts)", n.Name)}
	}
	ops, err := reconcile.Sync(a.dp, want)
	a.kernelOps.Add(int64(len(ops)))
	return spec, err
}

// gcLocal removes local endpoints whose namespace is gone or whose network
// was removed.
func (a *Agent) gcLocal() {
	a.apiMu.Lock()
	defer a.apiMu.Unlock()
	for _, e := range a.state.Endpoints() {
		if e.Node != a.state.Self() {
			continue
		}
		le, known := a.locals[e.ID]
		_, netOK := a.state.Network(e.Network)
		gone := known && !namespaceMatches(le.Netns, e.ID)
		if netOK && !gone {
			continue
		}
		a.log.Info("removing stale endpoint", "endpoint", e.ID, "network_exists", netOK, "netns_exists", !gone)
		if err := a.removeEndpoint(e.ID); err != nil {
			a.log.Warn("remove stale endpoint", "endpoint", e.ID, "err", err)
		}
	}
}

// removeEndpoint detaches a local endpoint and deletes its record; apiMu held.
func (a *Agent) removeEndpoint(id string) error {
	a.dpMu.Lock()
	err := a.dp.Detach(id)
	r, deleted := a.state.Delete(cluster.EndpointKey(id))
	a.dpMu.Unlock()
	if deleted {
		a.gossip.Publish(r)
	}
	if err != nil {
		return err
	}
	delete(a.locals, id)
	if err := a.store.delLocal(id); err != nil {
		return err
	}
	a.markDirty()
	return a.persist()
}

func listenSocket(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("socket directory %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("socket directory %s: %w", dir, err)
	}
	if fi.Mode().Perm()&0o002 != 0 {
		return nil, fmt.Errorf("socket directory %s is world-writable (mode %o): refusing to serve the API there", dir, fi.Mode().Perm())
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s is in use by another agent", path)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}
