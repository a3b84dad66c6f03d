package gossip

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/cluster/gossip/memnet"
	"github.com/vxnet/vxnet/internal/model"
)

// Members here gossip over an in-memory network (memnet): no socket, no
// root, nothing on any interface.

type member struct {
	*Gossip
	state   *cluster.State
	addr    string // host:port on the in-memory network
	changes atomic.Int64
}

// testNet is the in-memory network of one test, transports made up front.
type testNet struct {
	net  memnet.Network
	free []*memnet.Transport
}

func newNet(members int) *testNet {
	n := &testNet{}
	for range members {
		n.free = append(n.free, n.net.NewTransport())
	}
	return n
}

func (n *testNet) start(t *testing.T, name string, cfg Config) *member {
	t.Helper()
	tr := n.free[0]
	n.free = n.free[1:]
	ip, port, _ := tr.FinalAdvertiseAddr("", 0)
	m := &member{state: cluster.NewState(name), addr: net.JoinHostPort(ip.String(), fmt.Sprint(port))}
	cfg.Name, cfg.Addr, cfg.Port, cfg.Transport = name, netip.MustParseAddr(ip.String()), port, tr
	if cfg.Keys == nil {
		cfg.Insecure = true
	}
	cfg.OnChange = func() { m.changes.Add(1) }
	g, err := Start(cfg, m.state)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	m.Gossip = g
	t.Cleanup(func() { _ = g.Shutdown() })
	return m
}

// until polls cond (every 5 ms, 10 s at most): the event a test waits for.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
	}
}

func names(nodes []model.Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Name)
	}
	return out
}

func key(b byte) []byte { return []byte(strings.Repeat(string(rune('a'+b)), 32)) }

// TestReplicatesAndCalls: two members with one key join; a published
// record reaches the other; each lists both as alive; a request is
// answered (and an error of the answering side comes back as the error);
// traffic is counted.
func TestReplicatesAndCalls(t *testing.T) {
	keys := [][]byte{key(0)}
	n := newNet(2)
	a := n.start(t, "a", Config{Keys: keys, OnCall: func(op string, body json.RawMessage) (any, error) {
		if op != "echo" {
			return nil, fmt.Errorf("unknown operation %q", op)
		}
		return map[string]json.RawMessage{"echo": body}, nil
	}})
	b := n.start(t, "b", Config{Keys: keys})
	if n, err := b.Join([]string{a.addr}); err != nil || n != 1 {
		t.Fatalf("join: %d %v", n, err)
	}
	until(t, "both alive on both", func() bool {
		return slices.Equal(names(a.Alive()), []string{"a", "b"}) && slices.Equal(names(b.Alive()), []string{"a", "b"})
	})
	rec, err := a.state.Put(cluster.EndpointKey("a.web.1"), model.Endpoint{ID: "a.web.1", Network: "web", Node: "a", MAC: "02:00:00:00:00:01", IP: netip.MustParseAddr("10.0.0.2")})
	if err != nil {
		t.Fatal(err)
	}
	a.Publish(rec)
	until(t, "the record on b", func() bool { return len(b.state.Endpoints()) == 1 })
	if got := b.state.Endpoints()[0]; got.ID != "a.web.1" || got.Node != "a" {
		t.Fatalf("b holds %+v", got)
	}
	ans, err := b.Request("a", "echo", "hello", 5*time.Second)
	if err != nil || string(ans) != `{"echo":"hello"}` {
		t.Fatalf("request: %s %v", ans, err)
	}
	if _, err := b.Request("a", "bogus", nil, 5*time.Second); err == nil || !strings.Contains(err.Error(), `unknown operation "bogus"`) {
		t.Fatalf("a failing request: %v", err)
	}
	if _, err := a.Request("b", "echo", nil, 5*time.Second); err == nil || !strings.Contains(err.Error(), "answers no requests") {
		t.Fatalf("a request to a member without OnCall: %v", err)
	}
	if _, err := b.Request("nobody", "echo", nil, time.Second); err == nil || !strings.Contains(err.Error(), "member nobody is not reachable") {
		t.Fatalf("a request to no member: %v", err)
	}
	if tr := b.Traffic(); tr.InMessages == 0 || tr.OutMessages == 0 || tr.InBytes == 0 {
		t.Fatalf("traffic not counted: %+v", tr)
	}
	var ms []string
	for _, m := range a.Members() {
		ms = append(ms, m.Name+" "+m.State)
	}
	if !slices.Equal(ms, []string{"a alive", "b alive"}) {
		t.Fatalf("members of a: %v", ms)
	}
}

// TestFailedMemberGrace: a member that fails stays in Alive (its endpoints
// stay programmed) for the grace period, two probe intervals, then leaves
// it; the change at the end of the grace is announced (OnChange).
func TestFailedMemberGrace(t *testing.T) {
	probe := 300 * time.Millisecond
	n := newNet(2)
	a := n.start(t, "a", Config{ProbeInterval: probe})
	b := n.start(t, "b", Config{ProbeInterval: probe})
	if _, err := b.Join([]string{a.addr}); err != nil {
		t.Fatal(err)
	}
	until(t, "b alive on a", func() bool { return slices.Contains(names(a.Alive()), "b") })
	if err := b.Shutdown(); err != nil { // no leave: a finds out by probing
		t.Fatal(err)
	}
	var failedAt time.Time
	until(t, "b failed on a", func() bool {
		for _, m := range a.Members() {
			if m.Name == "b" && m.State == "failed" {
				failedAt = time.Now()
				return true
			}
		}
		return false
	})
	if alive := names(a.Alive()); !slices.Contains(alive, "b") {
		if time.Since(failedAt) < a.grace/2 {
			t.Fatalf("b left Alive at once when it failed (%v); its endpoints must stay for the grace (%s)", alive, a.grace)
		}
		t.Logf("the machine was too slow to see the grace (%s after the failure)", time.Since(failedAt))
	}
	before := a.changes.Load()
	until(t, "the change at the end of the grace", func() bool { return a.changes.Load() > before })
	until(t, "b out of Alive after the grace", func() bool { return !slices.Contains(names(a.Alive()), "b") })
	if d := time.Since(failedAt); d < a.grace/2 {
		t.Fatalf("b left Alive %s after failing, before the grace (%s) ended", d, a.grace)
	}
}

// TestKeys: the keyring is installed, used and removed; bad keys and
// operations are refused with their reason; a member with another key
// cannot join; no key is refused unless insecure.
func TestKeys(t *testing.T) {
	k1, k2 := key(1), key(2)
	n := newNet(3)
	a := n.start(t, "a", Config{Keys: [][]byte{k1}})
	if got := a.Keys(); len(got) != 1 || string(got[0]) != string(k1) {
		t.Fatalf("keys %q", got)
	}
	for _, tc := range []struct {
		op   string
		key  []byte
		want string
	}{
		{"install", []byte("short"), "invalid key of 5 bytes: want 16, 24 or 32"},
		{"rotate", k2, `unknown key operation "rotate": want install, use or remove`},
		{"remove", k1, "primary"},
	} {
		if err := a.KeyOp(tc.op, tc.key); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.op, err, tc.want)
		}
	}
	for _, op := range []string{"install", "use", "remove"} {
		k := k2
		if op == "remove" {
			k = k1
		}
		if err := a.KeyOp(op, k); err != nil {
			t.Fatalf("%s: %v", op, err)
		}
	}
	if got := a.Keys(); len(got) != 1 || string(got[0]) != string(k2) {
		t.Fatalf("keys after the rotation %q", got)
	}
	stranger := n.start(t, "s", Config{Keys: [][]byte{k1}})
	if _, err := stranger.Join([]string{a.addr}); err == nil {
		t.Fatal("a member with the old key joined")
	}
	insecure := n.start(t, "i", Config{})
	if err := insecure.KeyOp("install", k1); err == nil || !strings.Contains(err.Error(), "without encryption") {
		t.Fatalf("key op without a keyring: %v", err)
	}
	if insecure.Keys() != nil {
		t.Fatal("an insecure member lists keys")
	}
	if _, err := Start(Config{Name: "n", Addr: netip.MustParseAddr("127.0.0.1"), Port: 1}, cluster.NewState("n")); err == nil || !strings.Contains(err.Error(), "no cluster key") {
		t.Fatalf("start without a key: %v", err)
	}
	if cluster.Fingerprint(k1) == cluster.Fingerprint(k2) || strings.Contains(cluster.Fingerprint(k1), base64.StdEncoding.EncodeToString(k1)[:8]) {
		t.Fatal("fingerprints do not tell keys apart, or reveal them")
	}
}

// TestMalformedMessages: what does not decode is counted and dropped,
// never merged, whether it came as a packet or in a state exchange.
func TestMalformedMessages(t *testing.T) {
	a := newNet(1).start(t, "a", Config{})
	d := (*delegate)(a.Gossip)
	for _, msg := range [][]byte{[]byte("garbage"), {0x7b}, []byte(`{"kind":"records","records":[{"key":""}]}`)} {
		d.NotifyMsg(msg)
		d.MergeRemoteState(append(msg, ' '), false) // not a copy of the first (copies are dropped unread)
	}
	if n := a.MalformedMessages(); n != 6 {
		t.Fatalf("%d malformed messages counted, want 6", n)
	}
	if a.state.Len() != 0 {
		t.Fatalf("malformed messages left %d records", a.state.Len())
	}
}
