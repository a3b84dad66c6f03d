package cluster

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/model"
)

// A newer agent's message: an unknown message field, a record with an
// unknown field, values with fields this agent does not know, a record of
// a newer format and one of a kind this agent does not know. This agent takes what it can read,
// ignores what it does not know, and passes everything on unchanged.
const newerMessage = `{"kind":"records","since":7,"records":[
 {"k":"ep/h9.web.1","v":{"id":"h9.web.1","network":"web","node":"h9","mac":"02:00:00:00:00:09","ip":"10.1.0.9","labels":{"app":"web"},"health":{"probe":"tcp:80"}},"n":5,"o":"h9","ttl":30},
 {"k":"ep/h9.web.2","v":{"id":"h9.web.2","network":"web","node":"h9","mac":"02:00:00:00:00:0a","ip":"10.1.0.10"},"n":6,"o":"h9","f":9},
 {"k":"net/web","v":{"name":"web","vni":100,"subnet":"10.1.0.0/16","gateway":"10.1.0.1","qos":"gold"},"n":4,"o":"h9"},
 {"k":"quota/web","v":{"endpoints":100},"n":7,"o":"h9"}]}`

func TestForwardCompatibleRecords(t *testing.T) {
	m, err := DecodeMessage([]byte(newerMessage))
	if err != nil {
		t.Fatalf("newer message refused: %v", err)
	}
	old := NewState("h1")
	if _, err := old.Merge(m.Records); err != nil {
		t.Fatal(err)
	}
	// What it reads: the network and the endpoint of the known format.
	eps := old.Endpoints()
	if len(eps) != 1 || eps[0].ID != "h9.web.1" || eps[0].IP.String() != "10.1.0.9" {
		t.Fatalf("endpoints %+v: want h9.web.1 only", eps)
	}
	if nets, _ := old.Networks(); len(nets) != 1 || nets[0].Name != "web" {
		t.Fatalf("networks %+v", nets)
	}
	if u := old.Unreadable(); !reflect.DeepEqual(u, map[string]int{"h9": 2}) {
		t.Errorf("unreadable %v, want 2 records of h9 (a newer format, an unknown kind)", u)
	}
	if _, ok := old.Get(EndpointKey("h9.web.2")); ok {
		t.Error("a record of a newer format is readable")
	}
	// What it passes on (gossip, full state, its store) is what it got.
	out, err := Encode(Message{Kind: MsgState, Records: old.Snapshot()})
	if err != nil {
		t.Fatal(err)
	}
	var sent, got struct {
		Records []map[string]any `json:"records"`
	}
	if err := json.Unmarshal(out, &sent); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(newerMessage), &got); err != nil {
		t.Fatal(err)
	}
	byKey := func(rs []map[string]any) map[string]map[string]any {
		out := map[string]map[string]any{}
		for _, r := range rs {
			out[r["k"].(string)] = r
		}
		return out
	}
	if s, g := byKey(sent.Records), byKey(got.Records); !reflect.DeepEqual(s, g) {
		t.Errorf("passed on\n %v\nreceived\n %v", s, g)
	}
	// A newer agent receiving it from the old one gets the same records.
	m2, err := DecodeMessage(out)
	if err != nil {
		t.Fatal(err)
	}
	newer := NewState("h9b")
	if _, err := newer.Merge(m2.Records); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(newer.Snapshot(), old.Snapshot()) {
		t.Error("records changed on the way through the old agent")
	}
}

func TestRecordJSONRoundTrip(t *testing.T) {
	for _, in := range []string{
		`{"k":"net/web","v":{"name":"web"},"n":1,"o":"h1"}`,
		`{"k":"ep/x","n":3,"o":"h2","d":true}`,
		`{"k":"ep/x","n":3,"o":"h2","d":true,"f":3,"why":"gone"}`,
		`{"k":"ep/x","v":{"a":1},"n":3,"o":"h2","extra":{"deep":[1,2]},"z":null}`,
	} {
		var r Record
		if err := json.Unmarshal([]byte(in), &r); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var a, b any
		_ = json.Unmarshal([]byte(in), &a)
		_ = json.Unmarshal(out, &b)
		if !reflect.DeepEqual(a, b) {
			t.Errorf("round trip\n %s\n %s", in, out)
		}
	}
	var r Record
	if err := json.Unmarshal([]byte(`{"k":5}`), &r); err == nil || !strings.Contains(err.Error(), "cannot unmarshal number") {
		t.Errorf("wrong type for a known field: %v", err)
	}
}

func TestUnknownKindIsNotMalformed(t *testing.T) {
	_, err := DecodeMessage([]byte(`{"kind":"snapshot-v9","records":[]}`))
	if !errors.Is(err, ErrUnknownKind) {
		t.Errorf("err = %v, want ErrUnknownKind", err)
	}
	_, err = DecodeMessage([]byte(`{"kind":"records","records":[{"k":"net/x"}]}`))
	if err == nil || errors.Is(err, ErrUnknownKind) {
		t.Errorf("a malformed record: %v", err)
	}
}

// TestEncryptedNetworkFormat: an encrypted network's record is of a format
// the releases before encrypted networks (format 1) do not use, so none of
// them carries its traffic in clear; other networks keep the first format.
func TestEncryptedNetworkFormat(t *testing.T) {
	s := NewState("h1")
	enc, err := s.PutFormat(NetworkKey("secret"), model.Network{Name: "secret", Encrypted: true}, NetworkFormat(model.Network{Encrypted: true}))
	if err != nil {
		t.Fatal(err)
	}
	clear, err := s.PutFormat(NetworkKey("web"), model.Network{Name: "web"}, NetworkFormat(model.Network{}))
	if err != nil {
		t.Fatal(err)
	}
	if enc.Format <= 1 || enc.Format > WireFormat || clear.Format > 1 {
		t.Fatalf("formats: encrypted %d, clear %d (this agent reads up to %d)", enc.Format, clear.Format, WireFormat)
	}
	b, _ := json.Marshal(enc)
	if !strings.Contains(string(b), `"f":2`) {
		t.Fatalf("encoded %s: want the format on the wire", b)
	}
	if _, ok := s.Get(NetworkKey("secret")); !ok {
		t.Fatal("this agent cannot read the encrypted network's record")
	}
}
