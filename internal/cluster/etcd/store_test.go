package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/model"
)

// These tests run a real etcd (Debian's etcd-server), one member, its data
// in a temporary directory, on unix sockets there (no network listener in
// any namespace, no root). etcd names a unix socket by the host:port of
// its URL, in its working directory; the test works in the same directory,
// so the client's endpoint names the same file.

// runEtcd starts etcd and returns its client URL; it is stopped (by PID)
// when the test ends.
func runEtcd(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("VXNET_REQUIRE_ROOT") == "1" { // CI: never skip silently
			t.Fatal("no etcd binary (Debian's etcd-server): scripts/deps.sh installs it")
		}
		t.Skip("skipping: no etcd binary (apt-get install etcd-server)")
	}
	dir := t.TempDir()
	t.Chdir(dir)
	const client, peer = "unix://etcd-client:1", "unix://etcd-peer:2"
	cmd := exec.Command(bin, "--name", "t", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "t="+peer)
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		_ = cmd.Wait()
	})
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{client}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "ready")
		cancel()
		if err == nil {
			return client
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not answer: %v", err)
		}
	}
}

type testMember struct {
	*Store
	state   *cluster.State
	changes atomic.Int64
}

func startMember(t *testing.T, url, name string, i int, onCall func(string, json.RawMessage) (any, error)) *testMember {
	t.Helper()
	m := &testMember{state: cluster.NewState(name)}
	s, err := Start(Config{Name: name, Addr: netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), Endpoints: []string{url}, TTL: 2 * time.Second,
		OnChange: func() { m.changes.Add(1) }, OnCall: onCall}, m.state)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	m.Store = s
	t.Cleanup(func() { _ = s.Shutdown() })
	return m
}

func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
	}
}

// TestStore: two members on one etcd see each other, a published record
// reaches the other, a request is answered through etcd, a record in etcd
// that does not decode is counted and not taken, and a member whose lease
// ends leaves Alive.
func TestStore(t *testing.T) {
	url := runEtcd(t)
	a := startMember(t, url, "a", 1, func(op string, body json.RawMessage) (any, error) {
		if op != "echo" {
			return nil, fmt.Errorf("unknown operation %q", op)
		}
		return body, nil
	})
	b := startMember(t, url, "b", 2, nil)
	alive := func(m *testMember) []string {
		var out []string
		for _, n := range m.Alive() {
			out = append(out, n.Name)
		}
		return out
	}
	until(t, "both members on both", func() bool {
		return slices.Equal(alive(a), []string{"a", "b"}) && slices.Equal(alive(b), []string{"a", "b"})
	})
	rec, err := a.state.Put(cluster.EndpointKey("a.web.1"), model.Endpoint{ID: "a.web.1", Network: "web", Node: "a", MAC: "02:00:00:00:00:01", IP: netip.MustParseAddr("10.0.0.2")})
	if err != nil {
		t.Fatal(err)
	}
	a.Publish(rec)
	until(t, "a's record on b", func() bool { return len(b.state.Endpoints()) == 1 })
	if a.Pending() != 0 {
		t.Fatalf("%d records still pending with etcd up", a.Pending())
	}
	ans, err := b.Request("a", "echo", "hi", 5*time.Second)
	if err != nil || string(ans) != `"hi"` {
		t.Fatalf("request through etcd: %s %v", ans, err)
	}
	if _, err := b.Request("a", "bogus", nil, 5*time.Second); err == nil || !strings.Contains(err.Error(), `unknown operation "bogus"`) {
		t.Fatalf("a failing request: %v", err)
	}
	// A record someone else wrote that does not decode.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(context.Background(), "/vxnet/records/ep/x", "{not json"); err != nil {
		t.Fatal(err)
	}
	until(t, "the malformed record counted on b", func() bool { return b.MalformedMessages() > 0 })
	if _, ok := b.state.Get("ep/x"); ok {
		t.Fatal("b took a record that does not decode")
	}
	if tr := b.Traffic(); tr.InMessages == 0 {
		t.Fatalf("traffic not counted: %+v", tr)
	}
	var states []string
	for _, m := range a.Members() {
		states = append(states, m.Name+" "+m.State)
	}
	if !slices.Equal(states, []string{"a alive", "b alive"}) {
		t.Fatalf("members of a: %v", states)
	}
	// b stops: its lease ends (TTL), then the grace; then it is gone.
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	until(t, "b out of a's Alive after its lease and the grace", func() bool { return !slices.Contains(alive(a), "b") })
}

// TestClaimRespectsLiveOwner: a block claimed by one member cannot be
// claimed by another while its record is live (the other learns the
// holder); once the owner deletes it, the other claims it; an owner claims
// its own block again with a newer record.
func TestClaimRespectsLiveOwner(t *testing.T) {
	url := runEtcd(t)
	a := startMember(t, url, "a", 1, nil)
	b := startMember(t, url, "b", 2, nil)
	key := cluster.BlockKey("web", netip.MustParsePrefix("10.0.0.0/26"))
	blockOf := func(m *testMember, node string) cluster.Record {
		t.Helper()
		r, err := m.state.Put(key, cluster.Block{Network: "web", CIDR: netip.MustParsePrefix("10.0.0.0/26"), Node: node})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	won, _, err := a.Claim(blockOf(a, "a"))
	if err != nil || !won {
		t.Fatalf("a's first claim: %v %v", won, err)
	}
	theirs := blockOf(b, "b")
	won, holder, err := b.Claim(theirs)
	if err != nil || won {
		t.Fatalf("b took a's live block: won %v, err %v", won, err)
	}
	if holder.Origin != "a" {
		t.Fatalf("b was told the holder is %q, want a", holder.Origin)
	}
	again, err := a.state.Put(key, cluster.Block{Network: "web", CIDR: netip.MustParsePrefix("10.0.0.0/26"), Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if won, _, err := a.Claim(again); err != nil || !won {
		t.Fatalf("the owner's newer claim: %v %v", won, err)
	}
	del, ok := a.state.Delete(key)
	if !ok {
		t.Fatal("delete")
	}
	a.Publish(del)
	until(t, "the released block reaches b", func() bool {
		for _, r := range b.state.Snapshot() {
			if r.Key == key && r.Deleted && r.Origin == "a" {
				return true
			}
		}
		return false
	})
	mine := blockOf(b, "b")
	if won, holder, err := b.Claim(mine); err != nil || !won {
		t.Fatalf("b's claim of the released block: won %v (holder %+v), %v", won, holder, err)
	}
}
