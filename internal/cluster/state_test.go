package cluster

import (
	"bytes"
	"encoding/json"
	"math/rand"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/model"
)

func TestNewer(t *testing.T) {
	for _, tc := range []struct {
		a, b Record
		want bool
	}{
		{Record{Version: 2, Origin: "a"}, Record{Version: 1, Origin: "z"}, true},
		{Record{Version: 1, Origin: "z"}, Record{Version: 2, Origin: "a"}, false},
		{Record{Version: 3, Origin: "b"}, Record{Version: 3, Origin: "a"}, true},
		{Record{Version: 3, Origin: "a"}, Record{Version: 3, Origin: "b"}, false},
		{Record{Version: 3, Origin: "a", Deleted: true}, Record{Version: 3, Origin: "a"}, true},
		{Record{Version: 3, Origin: "a"}, Record{Version: 3, Origin: "a"}, false},
	} {
		if got := tc.a.Newer(tc.b); got != tc.want {
			t.Errorf("%+v.Newer(%+v) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestPutDeleteMerge(t *testing.T) {
	a, b := NewState("a"), NewState("b")
	r1, _ := a.Put("net/web", "v1")
	if _, err := b.Merge([]Record{r1}); err != nil {
		t.Fatal(err)
	}
	// b writes after seeing a's record: its clock is ahead, so it wins.
	r2, _ := b.Put("net/web", "v2")
	if r2.Version <= r1.Version {
		t.Fatalf("Lamport clock did not advance: %d after %d", r2.Version, r1.Version)
	}
	changed, _ := a.Merge([]Record{r2})
	if len(changed) != 1 {
		t.Fatalf("newer record not applied")
	}
	// An old record arriving late changes nothing.
	if changed, _ := a.Merge([]Record{r1}); len(changed) != 0 {
		t.Fatalf("older record applied: %v", changed)
	}
	del, ok := a.Delete("net/web")
	if !ok {
		t.Fatal("delete found nothing")
	}
	_, _ = b.Merge([]Record{del})
	if _, ok := b.Get("net/web"); ok {
		t.Fatal("tombstone not applied")
	}
	if _, ok := a.Delete("net/web"); ok {
		t.Fatal("deleting a tombstone reported a change")
	}
	// Re-creation after delete wins over the tombstone.
	r3, _ := b.Put("net/web", "v3")
	_, _ = a.Merge([]Record{r3})
	if got, _ := a.Get("net/web"); string(got.Value) != `"v3"` {
		t.Fatalf("after re-create a has %s", got.Value)
	}
}

func TestMergeRefusesMalformed(t *testing.T) {
	s := NewState("a")
	_, err := s.Merge([]Record{{Key: "Bogus/x", Value: []byte(`1`), Version: 1, Origin: "b"}, {Key: "net/", Value: []byte(`1`), Version: 1, Origin: "b"},
		{Key: "net/x", Version: 1, Origin: "b"}, {Key: "net/y", Value: []byte(`1`), Version: 0, Origin: "b"}})
	if err == nil || !strings.Contains(err.Error(), "refused 4 malformed records") || s.Len() != 0 {
		t.Fatalf("err = %v, len = %d", err, s.Len())
	}
	// A kind this version does not know (from a newer one) is kept, not used.
	if _, err := s.Merge([]Record{{Key: "bogus/x", Value: []byte(`1`), Version: 1, Origin: "b"}}); err != nil || s.Len() != 1 || len(s.List("bogus/")) != 0 {
		t.Fatalf("unknown kind: err = %v, len = %d", err, s.Len())
	}
}

// Members that see the same records in any order, duplicated, end equal.
func TestConvergesInAnyOrder(t *testing.T) {
	writers := []*State{NewState("a"), NewState("b"), NewState("c")}
	var all []Record
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 300; i++ {
		w := writers[rng.Intn(3)]
		key := []string{"net/x", "net/y", "ep/1", "ep/2", "block/x/10.0.0.0/28"}[rng.Intn(5)]
		if rng.Intn(4) == 0 {
			if r, ok := w.Delete(key); ok {
				all = append(all, r)
			}
		} else {
			r, _ := w.Put(key, i)
			all = append(all, r)
		}
		// Some records reach the other writers along the way.
		if rng.Intn(2) == 0 {
			for _, o := range writers {
				_, _ = o.Merge(all[rng.Intn(len(all)):])
			}
		}
	}
	var snaps [][]Record
	for i := 0; i < 4; i++ {
		s := NewState("r")
		shuffled := append([]Record(nil), all...)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		_, _ = s.Merge(append(shuffled, shuffled[:len(shuffled)/2]...))
		snaps = append(snaps, strip(s.Snapshot()))
	}
	for _, w := range writers {
		_, _ = w.Merge(all)
		snaps = append(snaps, strip(w.Snapshot()))
	}
	for i := 1; i < len(snaps); i++ {
		if !reflect.DeepEqual(snaps[0], snaps[i]) {
			t.Fatalf("replica %d differs:\n%v\n%v", i, snaps[0], snaps[i])
		}
	}
}

func strip(rs []Record) []Record {
	for i := range rs {
		rs[i].seen = time.Time{}
	}
	return rs
}

func TestCollectTombstones(t *testing.T) {
	s := NewState("a")
	now := time.Unix(1000, 0)
	s.now = func() time.Time { return now }
	_, _ = s.Put("ep/1", 1)
	s.Delete("ep/1")
	_, _ = s.Put("ep/2", 2)
	now = now.Add(5 * time.Minute)
	if n := s.CollectTombstones(10 * time.Minute); n != 0 {
		t.Fatalf("collected %d young tombstones", n)
	}
	now = now.Add(6 * time.Minute)
	if n := s.CollectTombstones(10 * time.Minute); n != 1 || s.Len() != 1 {
		t.Fatalf("collected %d, len %d", n, s.Len())
	}
}

func network(name string, vni uint32, subnet string) model.Network {
	n := model.Network{Name: name, VNI: vni, Subnet: netip.MustParsePrefix(subnet)}
	n.Normalize()
	return n
}

func TestNetworksResolveClashes(t *testing.T) {
	a, b := NewState("a"), NewState("b")
	r1, _ := a.Put(NetworkKey("web"), network("web", 100, "10.1.0.0/16"))
	r2, _ := b.Put(NetworkKey("api"), network("api", 100, "10.2.0.0/16"))     // same VNI, same moment
	r3, _ := b.Put(NetworkKey("db"), network("db", 300, "10.1.5.0/24"))       // overlapping subnet, later
	r4, _ := a.Put(NetworkKey("cache"), network("cache", 400, "10.4.0.0/24")) // fine
	for _, s := range []*State{a, b} {
		_, _ = s.Merge([]Record{r1, r2, r3, r4})
	}
	for _, s := range []*State{a, b} {
		nets, conflicts := s.Networks()
		var names []string
		for _, n := range nets {
			names = append(names, n.Name)
		}
		// web (a, v1) and api (b, v1) tie on version: origin a sorts first, so web keeps VNI 100.
		if strings.Join(names, ",") != "cache,web" || len(conflicts) != 2 {
			t.Fatalf("%s: networks %v conflicts %v", s.Self(), names, conflicts)
		}
		if !strings.Contains(conflicts[0].Detail+conflicts[1].Detail, `VNI 100 is already used by network "web"`) {
			t.Fatalf("conflicts %v", conflicts)
		}
	}
}

func TestDecodeMessage(t *testing.T) {
	good, _ := json.Marshal(network("web", 100, "10.1.0.0/16"))
	ep, _ := json.Marshal(model.Endpoint{ID: "h1.web.1", Network: "web", Node: "h1", MAC: "02:00:00:00:00:01", IP: netip.MustParseAddr("10.1.0.5")})
	msg := func(recs ...Record) []byte {
		b, _ := Encode(Message{Kind: MsgRecords, Records: recs})
		return b
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"valid", msg(Record{Key: "net/web", Value: good, Version: 1, Origin: "h1"}, Record{Key: "ep/h1.web.1", Value: ep, Version: 2, Origin: "h1"}), ""},
		{"tombstone", msg(Record{Key: "ep/x", Version: 3, Origin: "h1", Deleted: true}), ""},
		{"empty", nil, "empty message"},
		{"not json", []byte("\x00\x01garbage"), "malformed message"},
		{"trailing", append(msg(), []byte(" {}")...), "trailing data"},
		{"unknown message field (newer agent)", []byte(`{"kind":"records","records":[],"since":1}`), ""},
		{"unknown kind", []byte(`{"kind":"shutdown","records":[]}`), `unknown message kind "shutdown": want "records", "state", "digest", "request" or "response"`},
		{"request", []byte(`{"kind":"request","records":[],"call":{"id":"h1.1","from":"h1","op":"trace-capture","body":{"x":1}}}`), ""},
		{"request without op", []byte(`{"kind":"request","records":[],"call":{"id":"h1.1","from":"h1"}}`), "request message without a call ID and operation"},
		{"response from a bad name", []byte(`{"kind":"response","records":[],"call":{"id":"h1.1","from":"../x","op":"trace-capture"}}`), "response message: invalid node name"},
		{"bad key", msg(Record{Key: "../etc/passwd", Value: good, Version: 1, Origin: "h1"}), `record key "../etc/passwd": want KIND/NAME`},
		{"no kind", msg(Record{Key: "passwd", Value: good, Version: 1, Origin: "h1"}), `record key "passwd"`},
		{"key mismatch", msg(Record{Key: "net/other", Value: good, Version: 1, Origin: "h1"}), `holds network "web"`},
		{"invalid network", msg(Record{Key: "net/web", Value: []byte(`{"name":"web","vni":0,"subnet":"10.1.0.0/16","gateway":"10.1.0.1"}`), Version: 1, Origin: "h1"}), "invalid VNI 0"},
		{"bad origin", msg(Record{Key: "net/web", Value: good, Version: 1, Origin: "../x"}), "invalid origin node name"},
		{"bad mac", msg(Record{Key: "ep/e", Value: []byte(`{"id":"e","network":"web","node":"h1","mac":"ff:ff:ff:ff:ff:ff","ip":"10.1.0.5"}`), Version: 1, Origin: "h1"}), "multicast bit"},
		{"zero version", msg(Record{Key: "net/web", Value: good, Origin: "h1"}), "version 0"},
		{"health view", msg(Record{Key: "health/h1", Value: []byte(`{"node":"h1","peers":[{"node":"h2","state":"ok"}]}`), Version: 4, Origin: "h1"},
			Record{Key: "ep/h1.web.1", Value: ep, Version: 2, Origin: "h1"}), ""},
		{"health view of another node", msg(Record{Key: "health/h1", Value: []byte(`{"node":"h9"}`), Version: 4, Origin: "h1"}), `record health/h1 holds the health view of "h9"`},
		{"digest summary", []byte(`{"kind":"digest","records":[],"from":"h1","digest":{"root":7,"count":2}}`), ""},
		{"digest with origins and records", []byte(`{"kind":"digest","records":[{"k":"ep/x","n":2,"o":"h2","d":true}],"from":"h1","digest":{"root":7,"count":1,"full":true,"origins":[{"o":"h2","c":1,"h":7}],"reply":true}}`), ""},
		{"digest without digest", []byte(`{"kind":"digest","records":[],"from":"h1"}`), "digest message without its digest"},
		{"digest from a bad name", []byte(`{"kind":"digest","records":[],"from":"../x","digest":{"root":7,"count":2}}`), "digest message: invalid node name"},
		{"digest of an empty origin", []byte(`{"kind":"digest","records":[],"from":"h1","digest":{"root":7,"count":2,"origins":[{"o":"h2","c":0,"h":7}]}}`), "origin h2 with 0 records: want at least 1"},
		{"block key mismatch", msg(Record{Key: "block/web/10.1.0.0/26", Value: []byte(`{"network":"web","cidr":"10.1.0.64/26","node":"h1"}`), Version: 1, Origin: "h1"}), "holds block 10.1.0.64/26"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeMessage(tc.in)
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func FuzzDecodeMessage(f *testing.F) {
	good, _ := json.Marshal(network("web", 100, "10.1.0.0/16"))
	b, _ := Encode(Message{Kind: MsgRecords, Records: []Record{{Key: "net/web", Value: good, Version: 1, Origin: "h1"}}})
	f.Add(b)
	f.Add([]byte(`{"kind":"state","records":[{"k":"ep/x","n":2,"o":"h2","d":true}]}`))
	f.Add([]byte(`{"kind":"records","records":[{"k":"block/web/10.1.0.0/26","v":{"network":"web","cidr":"10.1.0.0/26","node":"h1"},"n":1,"o":"h1"}]}`))
	f.Add([]byte(newerMessage))
	f.Add([]byte(`{"kind":"digest","records":[],"from":"h1","digest":{"root":7,"count":1,"origins":[{"o":"h2","c":1,"h":7}],"reply":true}}`))
	f.Add([]byte(`{"kind":"records","records":[{"k":"health/h1","v":{"node":"h1","peers":[{"node":"h2","state":"mtu","rtt_ms":0.4}]},"n":3,"o":"h1"}]}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := DecodeMessage(in)
		if err != nil {
			return
		}
		// Whatever decodes must merge without error and survive a round trip.
		s := NewState("fuzz")
		if _, err := s.Merge(m.Records); err != nil {
			t.Fatalf("valid message failed to merge: %v", err)
		}
		out, err := Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := DecodeMessage(out)
		if err != nil {
			t.Fatalf("re-encoded message refused: %v", err)
		}
		// One round trip reaches the encoding that every agent passes on
		// unchanged (whitespace inside values is compacted, nothing else).
		if len(m2.Records) != len(m.Records) {
			t.Fatalf("round trip changed the record count: %d -> %d", len(m.Records), len(m2.Records))
		}
		if out2, err := Encode(m2); err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("decode -> encode -> decode -> encode changed the message:\n%s\n%s (%v)", out, out2, err)
		}
		s.Networks()
		s.Endpoints()
	})
}

func TestEndpointsCacheFollowsChanges(t *testing.T) {
	s := NewState("a")
	e := model.Endpoint{ID: "e1", Network: "web", Node: "a", MAC: "02:00:00:00:00:01", IP: netip.MustParseAddr("10.0.0.2")}
	g0 := s.Generation()
	_, _ = s.Put(EndpointKey("e1"), e)
	if len(s.Endpoints()) != 1 || s.Generation() == g0 {
		t.Fatal("endpoint not listed after put")
	}
	g1 := s.Generation()
	if len(s.Endpoints()) != 1 || s.Generation() != g1 {
		t.Fatal("reading changed the generation")
	}
	e.ID = "e2"
	r, _ := NewState("b").Put(EndpointKey("e2"), e)
	_, _ = s.Merge([]Record{r})
	if len(s.Endpoints()) != 2 {
		t.Fatal("cache not invalidated by merge")
	}
	s.Delete(EndpointKey("e1"))
	if got := s.Endpoints(); len(got) != 1 || got[0].ID != "e2" {
		t.Fatalf("cache not invalidated by delete: %v", got)
	}
}

// A member whose network another member's concurrent create replaced
// keeps a notice; the member whose network was kept, and updates of a
// network by its own creator, leave none.
func TestSupersededNotice(t *testing.T) {
	a, b := NewState("a"), NewState("b")
	ra, _ := a.Put(NetworkKey("web"), network("web", 100, "10.1.0.0/16"))
	rb, _ := b.Put(NetworkKey("web"), network("web", 100, "10.2.0.0/16")) // same version: origin b wins
	_, _ = a.Merge([]Record{rb})
	_, _ = b.Merge([]Record{ra})
	if got := a.Superseded(); len(got) != 1 || got[0].Mine.Origin != "a" || got[0].By.Origin != "b" {
		t.Fatalf("a's notices %+v", got)
	}
	if got := b.Superseded(); len(got) != 0 {
		t.Fatalf("b's notices %+v", got)
	}
	n := network("web", 100, "10.2.0.0/16")
	n.DockerName = "web"
	upd, _ := b.Put(NetworkKey("web"), n)
	c := NewState("c")
	_, _ = c.Merge([]Record{rb})
	_, _ = c.Merge([]Record{upd})
	if got := c.Superseded(); len(got) != 0 {
		t.Fatalf("an update reads as a replacement on c: %+v", got)
	}
}

// Health views change no host's kernel, so they wake no reconcile pass;
// every other kind, known or not, may.
func TestAffectsKernel(t *testing.T) {
	for key, want := range map[string]bool{
		"health/h1": false, "ep/h1.web.1": true, "net/web": true, "block/web/10.1.0.0/26": true, "node/h1": true, "policy/x": true,
	} {
		if got := AffectsKernel(Record{Key: key}); got != want {
			t.Errorf("AffectsKernel(%s) = %v, want %v", key, got, want)
		}
	}
}
