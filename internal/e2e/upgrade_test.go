package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/config"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/lab/labtest"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/testutil"
)

// compatBaseline is the first commit whose records survive a rolling
// upgrade (unknown fields and kinds kept and passed on): agents of later
// versions must work beside it. Endpoint records of this version carry a
// field it does not know ("since").
const compatBaseline = "47d2920"

// TestMixedVersions: an agent of the baseline release and agents of this
// one share a cluster: containers on both reach each other, and a record
// with a field the old agent does not know comes out of it unchanged (a
// new agent that can only learn it from the old one gets it whole).
func TestMixedVersions(t *testing.T) {
	testutil.RequireRoot(t)
	old := testutil.BinaryAt(t, compatBaseline, "baseline-"+compatBaseline)
	l := up(t, 3, 1, 0)
	// h1 runs the old release; h3 comes later, knowing nobody but h1.
	if err := l.KillAgent("h1", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgentWith("h1", old); err != nil {
		t.Fatal(err)
	}
	if err := l.KillAgent("h3", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h3, _ := l.Host("h3")
	if err := os.RemoveAll(filepath.Join(h3.Dir, "state")); err != nil {
		t.Fatal(err)
	}
	if err := waitCond(10*time.Second, func() error {
		if n := aliveCount(t, l, "h2"); n != 2 {
			return fmt.Errorf("h2 sees %d alive members, want 2", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c1, c2 := newContainer(t, l, "old1"), newContainer(t, l, "new2")
	a1, err := client(l, "h1").Attach(api.AttachRequest{Network: "net1", Netns: c1})
	if err != nil {
		t.Fatal(err)
	}
	a2, err := client(l, "h2").Attach(api.AttachRequest{Network: "net1", Netns: c2, Name: "new2"})
	if err != nil {
		t.Fatal(err)
	}
	pingUntil(t, c1, netip.MustParsePrefix(a2.IP).Addr(), 10*time.Second)
	pingUntil(t, c2, netip.MustParsePrefix(a1.IP).Addr(), 10*time.Second)

	// The versions in the cluster, as every member sees them.
	if err := waitCond(10*time.Second, func() error {
		s, err := client(l, "h2").Status()
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, n := range s.Nodes {
			got[n.Name] = n.Version
		}
		if got["h1"] != "baseline-"+compatBaseline || got["h2"] != s.Version {
			return fmt.Errorf("versions %v", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// An encrypted network made on h2 reaches h1, which does not know
	// encrypted networks: it keeps the record unused (counted as of a newer
	// format) and never carries the network, in clear or otherwise.
	secret, err := client(l, "h2").CreateNetwork(api.NetworkCreate{Name: "secret", Subnet: "198.19.99.0/24", Encrypted: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := waitCond(10*time.Second, func() error {
		s, err := client(l, "h1").Status()
		if err != nil {
			return err
		}
		if s.Unreadable["h2"] == 0 {
			return fmt.Errorf("h1 has no record of h2 it cannot read yet: %+v", s.Unreadable)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	h1, _ := l.Host("h1")
	hh, err := nsutil.Handle(h1.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	if _, err := hh.LinkByName(datapath.BridgeName(secret.VNI)); err == nil {
		t.Fatalf("h1 (an older release) made a bridge for the encrypted network %s", secret.Name)
	}

	// h2 goes; h3 starts afresh and can learn h2's endpoint only from h1.
	var since time.Time
	if s, err := client(l, "h2").StatusWithEndpoints(); err == nil {
		for _, e := range s.Endpoints {
			if e.ID == a2.ID {
				since = e.Since
			}
		}
	}
	if err := l.KillAgent("h2", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent("h3"); err != nil {
		t.Fatal(err)
	}
	if err := waitCond(15*time.Second, func() error {
		s, err := api.NewClient(h3.Socket).StatusWithEndpoints()
		if err != nil {
			return err
		}
		for _, e := range s.Endpoints {
			if e.ID == a2.ID {
				if e.Since.IsZero() || (!since.IsZero() && !e.Since.Equal(since)) || e.Name != "new2" {
					return fmt.Errorf("h2's endpoint reached h3 through h1 as %+v (since %v)", e, since)
				}
				return nil
			}
		}
		return fmt.Errorf("h3 does not know h2's endpoint %s", a2.ID)
	}); err != nil {
		t.Fatal(err)
	}
}

// TestRollingUpgrade: agents of the baseline release, on their default
// gossip port (7946, Docker Swarm's), carry a ping flow; they are replaced
// by this release, with its defaults, one host at a time: no reply lost, no
// kernel write by any new agent beyond what this release adds, every
// host's state carried over, and every host still on 7946. A new host of
// this release (default 7947) then joins them with an address alone; on a
// host where another program holds the port, the agent says who.
func TestRollingUpgrade(t *testing.T) {
	testutil.RequireRoot(t)
	old := testutil.BinaryAt(t, compatBaseline, "baseline-"+compatBaseline)
	l := upCfg(t, lab.Config{Hosts: 3, Networks: 1, PerHost: 1, DefaultGossipPort: true})
	// The lab starts this release; put the old one everywhere first, as
	// an old install has it (no record of the gossip port).
	for _, h := range l.Hosts {
		if err := l.KillAgent(h.Name, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(h.Dir, "state", config.GossipPortFile)); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range l.Hosts {
		if err := l.StartAgentWith(h.Name, old); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.WaitConverged(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	a, b := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h2-n1-c1")
	pingUntil(t, a.Netns, b.IP, 5*time.Second)
	before := map[string]string{}
	for _, h := range l.Hosts {
		o, err := l.Observe(h.Name)
		if err != nil {
			t.Fatal(err)
		}
		o = withoutHealth(o)
		before[h.Name] = fmt.Sprint(o.Networks, o.FDB, o.Neigh, o.Ports)
	}
	flow := startPingFlow(a.Netns, b.IP)
	for _, h := range l.Hosts {
		if err := l.KillAgent(h.Name, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		logPath := filepath.Join(h.Dir, "agent.log")
		st, err := os.Stat(logPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.StartAgent(h.Name); err != nil { // this release
			t.Fatal(err)
		}
		if err := waitCond(10*time.Second, func() error {
			s, err := client(l, h.Name).Status()
			if err != nil {
				return err
			}
			if s.Syncs == 0 {
				return fmt.Errorf("%s has made no pass yet", h.Name)
			}
			if s.SyncError != "" {
				return fmt.Errorf("the upgraded agent of %s fails its passes: %s", h.Name, s.SyncError)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// This release adds the health network (its bridge, vxlan device,
		// entries and endpoint, and its VNI in the firewalls, rewritten
		// atomically) and its openings in the host's filters: those are
		// its only kernel writes, all made once a pass writes nothing.
		waitQuietPass(t, l, h.Name)
		if bad := nonHealthWrites(t, logPath, st.Size(), h.Name); len(bad) > 0 {
			t.Fatalf("the upgraded agent of %s changed the kernel beyond the health network:\n%s", h.Name, strings.Join(bad, "\n"))
		}
	}
	if sent, lost := flow.stop(); lost != 0 || sent < 20 {
		t.Fatalf("lost %d of %d echo replies across the upgrade", lost, sent)
	}
	for _, h := range l.Hosts {
		o, err := l.Observe(h.Name)
		if err != nil {
			t.Fatal(err)
		}
		o = withoutHealth(o)
		if got := fmt.Sprint(o.Networks, o.FDB, o.Neigh, o.Ports); got != before[h.Name] {
			t.Errorf("%s's kernel changed across the upgrade:\n%s\nwant\n%s", h.Name, got, before[h.Name])
		}
		s, err := client(l, h.Name).Status()
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Networks) != 1 || s.Networks[0].Local != 1 || s.Networks[0].Remote != 2 {
			t.Errorf("%s after the upgrade: %+v", h.Name, s.Networks)
		}
		if got := gossipPortOf(t, h); got != config.LegacyGossipPort {
			t.Errorf("%s gossips on %d after the upgrade, want %d (the cluster's)", h.Name, got, config.LegacyGossipPort)
		}
	}

	// A new host of this release: h3 wiped and started afresh.
	h3, _ := l.Host("h3")
	if err := l.KillAgent("h3", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(h3.Dir, "state")); err != nil {
		t.Fatal(err)
	}
	// As a reinstalled host comes back: after the others saw it go (until
	// then they hold its name at its old port and refuse the new one).
	if err := waitCond(20*time.Second, func() error {
		if n := aliveCount(t, l, "h1"); n != 2 {
			return fmt.Errorf("h1 sees %d alive members, want 2", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Another program holds the new default port there first.
	var ln net.Listener
	if err := nsutil.Do(h3.Netns, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(h3.Addr, config.GossipPort).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	err := l.StartAgent("h3")
	ln.Close()
	holder := fmt.Sprintf("gossip port %d is held by %s (pid %d)", config.GossipPort, filepath.Base(os.Args[0])[:min(15, len(filepath.Base(os.Args[0])))], os.Getpid())
	if err == nil || !strings.Contains(err.Error(), holder) {
		t.Fatalf("agent start on a host whose gossip port is held: %v; want %q", err, holder)
	}
	if err := l.StartAgent("h3"); err != nil {
		t.Fatal(err)
	}
	// The others hold h3's name at its old port, dead: they take the new
	// port once memberlist lets a dead name be reclaimed, at the latest at
	// the next full exchange (push/pull, 15 s).
	started := time.Now()
	if err := waitCond(40*time.Second, func() error {
		for _, h := range []string{"h1", "h3"} {
			if n := aliveCount(t, l, h); n != 3 {
				return fmt.Errorf("%s sees %d alive members, want 3", h, n)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("the fresh h3 (port %d) is a member on every host %s after it started", config.GossipPort, time.Since(started).Round(100*time.Millisecond))
	if got := gossipPortOf(t, h3); got != config.GossipPort {
		t.Errorf("the new host gossips on %d, want the new default %d", got, config.GossipPort)
	}
	c3 := newContainer(t, l, "fresh3")
	var a3 api.Attachment
	if err := waitCond(10*time.Second, func() error { // once h3 has the cluster's state
		var err error
		a3, err = client(l, "h3").Attach(api.AttachRequest{Network: "net1", Netns: c3})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	pingUntil(t, a.Netns, netip.MustParsePrefix(a3.IP).Addr(), 10*time.Second)
}

// gossipPortOf reads the gossip port an agent recorded.
func gossipPortOf(t *testing.T, h lab.Host) int { return stateInt(t, h, config.GossipPortFile) }

// stateInt reads a number an agent (or its tunnel device) keeps in a file
// of its state directory.
func stateInt(t *testing.T, h lab.Host, file string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.Dir, "state", file))
	if err != nil {
		t.Fatalf("%s of %s: %v", file, h.Name, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s of %s: %v", file, h.Name, err)
	}
	return n
}

// TestUninstall: on a host with networks, a Docker container and vxnet's
// host firewall, 'vxnet uninstall --purge' (agent stopped) leaves no vxnet
// link, entry, table, rule, socket or state, keeps a device and a table
// vxnet did not make, and is safe to run twice.
func TestUninstall(t *testing.T) {
	requireDocker(t)
	l := up(t, 2, 1, 1)
	h1, _ := l.Host("h1")
	d1 := startDocker(t, l, "h1")
	mustDocker(t, d1, "network", "create", "-d", "vxnet", "--ipam-driver", "vxnet", "--subnet", "172.27.0.0/24", "dnet")
	mustDocker(t, d1, "run", "-d", "--name", "u1", "--net", "dnet", "-p", "8080:80", lab.DockerImage, "sleep", "600")
	inNS(t, h1.Netns, "ip", "link", "add", "mine0", "type", "bridge")
	inNS(t, h1.Netns, "nft", "add", "table", "inet", "mine")
	if err := l.KillAgent("h1", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(h1.Dir, "state")
	uninstall := func() string {
		return inNS(t, h1.Netns, testutil.Binary(t), "uninstall", "--purge", "--socket", h1.Socket,
			"--state-dir", stateDir, "--docker-plugin-socket", h1.PluginSocket(), "--health-netns", l.HealthNetns("h1"))
	}
	out := uninstall()
	for _, want := range []string{"removed delete-network vni 4097", "removed remove-firewall", "removed remove-host-firewall", "removed " + stateDir,
		"removed delete-network vni 16777215", "removed namespace " + nsutil.Path(l.HealthNetns("h1"))} {
		if !strings.Contains(out, want) {
			t.Errorf("uninstall said:\n%s\nwant a line %q", out, want)
		}
	}
	o, err := l.Observe("h1")
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Networks) != 0 || len(o.Ports) != 0 || len(o.FDB) != 0 || len(o.Neigh) != 0 || o.Firewall != nil || o.HostFirewall != nil {
		t.Errorf("left on h1: %+v", o)
	}
	if links := inNS(t, h1.Netns, "ip", "-o", "link"); strings.Contains(links, "vxnet:") || !strings.Contains(links, "mine0") {
		t.Errorf("links after uninstall:\n%s", links)
	}
	if ids, _ := ingressPrograms(t, h1, "eth0"); len(ids) != 0 { // the fast path's, at the underlay
		t.Errorf("programs %v left at the underlay's ingress after uninstall", ids)
	}
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		if rules := inNS(t, h1.Netns, tool); strings.Contains(rules, "VXNET") {
			t.Errorf("%s after uninstall:\n%s", tool, rules)
		}
	}
	if tables := inNS(t, h1.Netns, "nft", "list", "tables"); strings.Contains(tables, "inet vxnet") || !strings.Contains(tables, "inet mine") {
		t.Errorf("nftables after uninstall:\n%s", tables)
	}
	for _, p := range []string{stateDir, h1.PluginSocket(), nsutil.Path(l.HealthNetns("h1"))} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s is still there", p)
		}
	}
	if again := uninstall(); !strings.Contains(again, "no vxnet devices, entries or rules on this host") {
		t.Errorf("second uninstall said:\n%s", again)
	}
	// A running agent is not uninstalled under its feet.
	h2, _ := l.Host("h2")
	cmd := exec.Command(testutil.Binary(t), "uninstall", "--socket", h2.Socket)
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "is running: stop it first") {
		t.Errorf("uninstall beside a running agent: %v %s", err, b)
	}
	// A reinstall: the agent starts afresh and serves Docker again (so the
	// dockerd's cleanup does not wait on a plugin that is gone).
	if err := l.StartAgent("h1"); err != nil {
		t.Fatal(err)
	}
	mustDocker(t, d1, "rm", "-f", "u1")
}

// withoutHealth drops the health network's part of an observed kernel state.
func withoutHealth(o datapath.Observed) datapath.Observed {
	delete(o.Networks, model.HealthVNI)
	o.FDB = slices.DeleteFunc(o.FDB, func(f datapath.FDB) bool { return f.VNI == model.HealthVNI })
	o.Neigh = slices.DeleteFunc(o.Neigh, func(n datapath.Neigh) bool { return n.VNI == model.HealthVNI })
	o.Ports = slices.DeleteFunc(o.Ports, func(p datapath.Port) bool { return p.VNI == model.HealthVNI })
	return o
}

// nonHealthWrites returns the kernel changes an agent logged from offset
// on that are not about the health network.
func nonHealthWrites(t *testing.T, logPath string, offset int64, node string) []string {
	t.Helper()
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	healthIf := datapath.HostIfName(node + ".health")
	var bad []string
	for _, line := range strings.Split(string(b[offset:]), "\n") {
		// The dataplane logs each kernel write, and only those, at debug
		// level (Dataplane.changed).
		if !strings.Contains(line, "component=datapath") || !strings.Contains(line, "level=DEBUG") {
			continue
		}
		switch {
		case strings.Contains(line, fmt.Sprint(model.HealthVNI)), strings.Contains(line, healthIf),
			strings.Contains(line, `msg="installed firewall"`), strings.Contains(line, `msg="installed host firewall"`),
			strings.Contains(line, `msg="opened the host's filters"`):
		default:
			bad = append(bad, line)
		}
	}
	return bad
}
