package agent

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/fake"
	"github.com/vxnet/vxnet/internal/docker"
	"github.com/vxnet/vxnet/internal/model"
)

// bus joins in-process replicators: a Publish reaches every other member's
// state at once, or is held until flush (to make two writes cross).
type bus struct {
	mu      sync.Mutex
	members map[string]*busMember
	holding bool
	held    []func()
	// claims, when set, is a consistent store members claim records in
	// (as etcd): their replicators are Claimers; claimErr makes every
	// claim fail (the store unreachable).
	claims   map[string]cluster.Record
	claimErr error
}

// claimingMember is a bus member whose store can claim records.
type claimingMember struct{ *busMember }

func (m claimingMember) Claim(rec cluster.Record) (bool, cluster.Record, error) {
	m.bus.mu.Lock()
	defer m.bus.mu.Unlock()
	if m.bus.claimErr != nil {
		return false, cluster.Record{}, m.bus.claimErr
	}
	cur, ok := m.bus.claims[rec.Key]
	if ok && !cur.Deleted && cur.Origin != m.name {
		return false, cur, nil
	}
	if ok && !rec.Newer(cur) {
		return false, cur, nil
	}
	m.bus.claims[rec.Key] = rec
	return true, rec, nil
}

func newBus() *bus { return &bus{members: map[string]*busMember{}} }

type busMember struct {
	bus     *bus
	name    string
	addr    netip.Addr
	state   *cluster.State
	cfg     ReplicatorConfig
	keys    [][]byte
	down    bool
	joins   int
	traffic cluster.Traffic // guarded by bus.mu
}

// start is a Deps.StartReplicator for a member of the bus.
func (b *bus) start(name string, addr netip.Addr) func(ReplicatorConfig) (Replicator, error) {
	return func(rc ReplicatorConfig) (Replicator, error) {
		m := &busMember{bus: b, name: name, addr: addr, state: rc.State, cfg: rc, keys: rc.Keys}
		b.mu.Lock()
		b.members[name] = m
		strong := b.claims != nil
		b.mu.Unlock()
		if strong {
			return claimingMember{m}, nil
		}
		return m, nil
	}
}

// hold keeps every publish until flush.
func (b *bus) hold() {
	b.mu.Lock()
	b.holding = true
	b.mu.Unlock()
}

func (b *bus) flush() {
	b.mu.Lock()
	held := b.held
	b.held, b.holding = nil, false
	b.mu.Unlock()
	for _, f := range held {
		f()
	}
}

func (m *busMember) peers() []*busMember {
	m.bus.mu.Lock()
	defer m.bus.mu.Unlock()
	var out []*busMember
	for _, o := range m.bus.members {
		if o != m && !o.down {
			out = append(out, o)
		}
	}
	return out
}

func (m *busMember) Join(addrs []string) (int, error) {
	m.joins++
	peers := m.peers()
	if len(peers) == 0 {
		return 0, errors.New("no member answered")
	}
	for _, o := range peers {
		if _, err := o.state.Merge(m.wire(m.state.Snapshot())); err != nil {
			return 0, err
		}
		if _, err := m.state.Merge(o.wire(o.state.Snapshot())); err != nil {
			return 0, err
		}
		o.cfg.OnChange()
	}
	m.cfg.OnChange()
	return len(peers), nil
}

// wire passes records through the real message codec, as gossip does: a
// record the receivers would refuse fails the test.
func (m *busMember) wire(recs []cluster.Record) []cluster.Record {
	b, err := cluster.Encode(cluster.Message{Kind: cluster.MsgRecords, Records: recs})
	if err == nil {
		var msg cluster.Message
		if msg, err = cluster.DecodeMessage(b); err == nil {
			return msg.Records
		}
	}
	panic(fmt.Sprintf("%s sent records its peers refuse: %v", m.name, err))
}

func (m *busMember) Publish(recs ...cluster.Record) {
	if len(recs) == 0 {
		return
	}
	recs = m.wire(recs)
	peers := m.peers()
	m.bus.mu.Lock()
	for _, o := range peers {
		m.traffic.OutMessages++
		o.traffic.InMessages++
	}
	m.bus.mu.Unlock()
	deliver := func() {
		for _, o := range m.peers() {
			if ch, _ := o.state.Merge(recs); len(ch) > 0 {
				o.cfg.OnChange()
			}
		}
	}
	m.bus.mu.Lock()
	if m.bus.holding {
		m.bus.held = append(m.bus.held, deliver)
		m.bus.mu.Unlock()
		return
	}
	m.bus.mu.Unlock()
	deliver()
}

func (m *busMember) Request(node, op string, body any, timeout time.Duration) (json.RawMessage, error) {
	for _, o := range m.peers() {
		if o.name != node {
			continue
		}
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		if o.cfg.OnCall == nil {
			return nil, errors.New("no call handler")
		}
		out, err := o.cfg.OnCall(op, b)
		if err != nil {
			return nil, fmt.Errorf("%s on %s: %w", op, node, err)
		}
		return json.Marshal(out)
	}
	return nil, fmt.Errorf("member %s is not reachable", node)
}

func (m *busMember) Alive() []model.Node {
	out := []model.Node{{Name: m.name, Addr: m.addr}}
	for _, o := range m.peers() {
		out = append(out, model.Node{Name: o.name, Addr: o.addr})
	}
	slices.SortFunc(out, func(x, y model.Node) int { return cmp.Compare(x.Name, y.Name) })
	return out
}

func (m *busMember) Members() []cluster.Member {
	var out []cluster.Member
	for _, n := range m.Alive() {
		out = append(out, cluster.Member{Name: n.Name, Addr: n.Addr, State: "alive"})
	}
	return out
}

func (m *busMember) MalformedMessages() int64 { return 0 }

func (m *busMember) Traffic() cluster.Traffic {
	m.bus.mu.Lock()
	defer m.bus.mu.Unlock()
	return m.traffic
}

func (m *busMember) KeyOp(op string, key []byte) error {
	switch op {
	case "install":
		m.keys = append(m.keys, key)
	case "use":
		i := slices.IndexFunc(m.keys, func(k []byte) bool { return string(k) == string(key) })
		if i < 0 {
			return errors.New("key is not in the keyring")
		}
		m.keys[0], m.keys[i] = m.keys[i], m.keys[0]
	case "remove":
		if len(m.keys) > 0 && string(m.keys[0]) == string(key) {
			return errors.New("removing the primary key is not allowed")
		}
		m.keys = slices.DeleteFunc(m.keys, func(k []byte) bool { return string(k) == string(key) })
	default:
		return fmt.Errorf("unknown key operation %q", op)
	}
	return nil
}

func (m *busMember) Keys() [][]byte { return m.keys }

func (m *busMember) Shutdown() error {
	m.bus.mu.Lock()
	m.down = true
	m.bus.mu.Unlock()
	return nil
}

// fakeHost answers address questions from fields.
type fakeHost struct {
	mu      sync.Mutex
	mtu     int
	missing bool            // the advertise address has gone
	taken   map[uint16]bool // host ports something listens on
}

func (h *fakeHost) OriginalDst(proto string, client, local netip.AddrPort) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("no redirected connections here")
}

func (h *fakeHost) PortFree(proto string, port uint16) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.taken[port] {
		return fmt.Errorf("host port %d/%s is in use on this host: address already in use", port, proto)
	}
	return nil
}

func (h *fakeHost) Underlay(addr netip.Addr) (string, int, error) {
	if h.mtu == 0 {
		return "", 0, fmt.Errorf("advertise address %s is not configured on any interface of this host", addr)
	}
	return "eth0", h.mtu, nil
}

func (h *fakeHost) HasAddr(netip.Addr) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.missing, nil
}

// failingDP makes chosen dataplane calls fail.
type failingDP struct {
	*fake.Dataplane
	attach error
}

func (d *failingDP) Attach(e datapath.EndpointSpec) (datapath.Port, error) {
	if d.attach != nil {
		return datapath.Port{}, d.attach
	}
	return d.Dataplane.Attach(e)
}

// fakeDockerd is a dockerd's network list and containers.
type fakeDockerd struct {
	mu         sync.Mutex
	networks   map[string]docker.NetworkInspect // by ID
	containers map[string]docker.ContainerInfo
	down       bool
}

func (f *fakeDockerd) Container(id string) (docker.ContainerInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[id]
	if !ok {
		return c, docker.ErrNotFound
	}
	return c, nil
}

func newFakeDockerd() *fakeDockerd { return &fakeDockerd{networks: map[string]docker.NetworkInspect{}} }

func (f *fakeDockerd) Networks(driver string) ([]docker.NetworkInspect, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, fmt.Errorf("dockerd: %w", docker.ErrNoDaemon)
	}
	var out []docker.NetworkInspect
	for _, n := range f.networks {
		if n.Driver == driver {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(x, y docker.NetworkInspect) int { return cmp.Compare(x.ID, y.ID) })
	return out, nil
}

func (f *fakeDockerd) Network(id string) (docker.NetworkInspect, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.networks {
		if n.ID == id || n.Name == id {
			return n, nil
		}
	}
	return docker.NetworkInspect{}, docker.ErrNotFound
}

func (f *fakeDockerd) CreateNetwork(nc docker.NetworkCreate) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := fmt.Sprintf("%064d", len(f.networks)+1)
	f.add(id, nc.Name, nc.Subnet)
	return nil
}

// add records a network (f.mu held or not shared yet).
func (f *fakeDockerd) add(id, name, subnet string) {
	n := docker.NetworkInspect{ID: id, Name: name, Driver: "vxnet"}
	n.IPAM.Driver = "vxnet"
	n.IPAM.Config = append(n.IPAM.Config, struct{ Subnet, Gateway string }{Subnet: subnet})
	f.networks[id] = n
}

func (f *fakeDockerd) RemoveNetwork(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.networks[id]; !ok {
		return docker.ErrNotFound
	}
	delete(f.networks, id)
	return nil
}

func (f *fakeDockerd) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, n := range f.networks {
		out = append(out, n.Name)
	}
	slices.Sort(out)
	return out
}

// testNode is one agent on the bus with fakes for every side effect.
type testNode struct {
	*Agent
	dp   *fake.Dataplane
	host *fakeHost
	dir  string
}

type nodeOpt func(*Config, *Deps)

func withDockerd(d docker.Dockerd) nodeOpt { return func(_ *Config, deps *Deps) { deps.Dockerd = d } }

func withDataplane(dp datapath.Dataplane) nodeOpt {
	return func(_ *Config, deps *Deps) { deps.Dataplane = dp }
}

// newNode starts agent name (host index i) on bus b; its state directory
// is dir (a new one when empty).
func newNode(t *testing.T, b *bus, name string, i int, dir string, opts ...nodeOpt) *testNode {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	addr := netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})
	cfg := Config{Name: name, AdvertiseAddr: addr, StateDir: dir, Socket: filepath.Join(dir, "vxnet.sock"),
		VXLANPort: 4789, GossipPort: 7946, Insecure: true}
	dp := fake.New()
	host := &fakeHost{mtu: 1500}
	deps := Deps{Dataplane: dp, HostNet: host, StartReplicator: b.start(name, addr)}
	for _, o := range opts {
		o(&cfg, &deps)
	}
	a, err := New(cfg, deps)
	if err != nil {
		t.Fatalf("new agent %s: %v", name, err)
	}
	t.Cleanup(func() { a.store.close() })
	return &testNode{Agent: a, dp: dp, host: host, dir: dir}
}

// netns makes a file that stands for a container's namespace (its inode
// names the endpoint, as a namespace's does).
func netns(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// joinedPair starts h1 and h2 on one bus, joined.
func joinedPair(t *testing.T) (*bus, *testNode, *testNode) {
	t.Helper()
	b := newBus()
	h1, h2 := newNode(t, b, "h1", 1, ""), newNode(t, b, "h2", 2, "")
	if _, err := h2.repl.(Joiner).Join(nil); err != nil {
		t.Fatal(err)
	}
	return b, h1, h2
}

// eventually polls cond until it holds, failing the test after 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
	}
}
