package gossip

import (
	"testing"

	"github.com/vxnet/vxnet/internal/cluster"
)

// TestPackets: what a member behind a masquerading NAT is sent in one
// stream elsewhere comes to it in packets: a large state message splits
// into state messages (old news, not forwarded) of at most PackLimit bytes
// holding every record once; a digest's records go apart from it; a small
// message or one that does not split goes as it is.
func TestPackets(t *testing.T) {
	var recs []cluster.Record
	for i := range 40 {
		recs = append(recs, epRecord("h1", i, 100))
	}
	state, _ := cluster.Encode(cluster.Message{Kind: cluster.MsgState, Records: recs})
	digest, _ := cluster.Encode(cluster.Message{Kind: cluster.MsgDigest, From: "h1", Digest: &cluster.Digest{Full: true}, Records: recs})
	small, _ := cluster.Encode(cluster.Message{Kind: cluster.MsgState, Records: recs[:1]})
	for _, tc := range []struct {
		name       string
		msg        []byte
		digestPart bool
	}{
		{"state", state, false},
		{"digest with records", digest, true},
	} {
		out := packets(tc.msg)
		if len(out) < 2 {
			t.Fatalf("%s: %d bytes in %d packet(s)", tc.name, len(tc.msg), len(out))
		}
		seen := map[string]bool{}
		for i, b := range out {
			m, err := cluster.DecodeMessage(b)
			if err != nil {
				t.Fatalf("%s: packet %d: %v", tc.name, i, err)
			}
			if i == 0 && tc.digestPart {
				if m.Kind != cluster.MsgDigest || m.Digest == nil || len(m.Records) != 0 {
					t.Errorf("%s: first packet %+v, want the digest alone", tc.name, m)
				}
				continue
			}
			if m.Kind != cluster.MsgState || len(b) > PackLimit {
				t.Errorf("%s: packet %d is %s of %d bytes, want state of at most %d", tc.name, i, m.Kind, len(b), PackLimit)
			}
			for _, r := range m.Records {
				if seen[r.Key] {
					t.Errorf("%s: %s sent twice", tc.name, r.Key)
				}
				seen[r.Key] = true
			}
		}
		if len(seen) != len(recs) {
			t.Errorf("%s: %d of %d records sent", tc.name, len(seen), len(recs))
		}
	}
	if out := packets(small); len(out) != 1 || string(out[0]) != string(small) {
		t.Errorf("a small message was changed: %d packets", len(out))
	}
	if out := packets([]byte("not json at all, but long enough to need splitting if it were a message" + string(make([]byte, PackLimit)))); len(out) != 1 {
		t.Errorf("an undecodable message was split into %d", len(out))
	}
}
