package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"time"

	"github.com/vxnet/vxnet/internal/model"
)

// WireFormat is the highest record format this agent interprets. A record
// carries its format (field "f"; absent means 1). A newer agent writes a
// higher format only for a change that an older agent must not interpret
// half way; such records are kept, stored and passed on by older agents,
// never used by them, and counted in their status. Fields a newer agent
// adds without raising the format (in a record or in its value) are kept
// and passed on unchanged, and ignored.
//
// Format 2: encrypted networks. An agent that does not know them would
// carry such a network's traffic in VXLAN, in clear: it must not use the
// network at all (nor, so, its endpoints).
const WireFormat = 2

// FormatEncrypted is the format of an encrypted network's record.
const FormatEncrypted = 2

// NetworkFormat is the format a network's record is written in.
func NetworkFormat(n model.Network) int {
	if n.Encrypted {
		return FormatEncrypted
	}
	return 0
}

// Record is one replicated value. The record with the higher Version wins;
// on a tie the higher Origin wins, so every member picks the same one.
type Record struct {
	Key     string          `json:"k"`
	Value   json.RawMessage `json:"v,omitempty"`
	Version uint64          `json:"n"`
	Origin  string          `json:"o"`
	Deleted bool            `json:"d,omitempty"`
	// Format is the record's format (0 and 1 both mean the first).
	Format int `json:"f,omitempty"`
	// extra holds fields of a newer format this agent does not know, to
	// pass them on unchanged.
	extra map[string]json.RawMessage
	// seen is when this member learnt a tombstone, for collection.
	seen time.Time
}

// readable reports whether this agent may interpret the record: a format
// and a kind it knows.
func (r Record) readable() bool { return r.Format <= WireFormat && knownKind(r.Key) }

// recordFields is Record without its methods, for the JSON codec.
type recordFields Record

// UnmarshalJSON decodes a record, keeping fields it does not know. Bulk
// decoders (DecodeMessage, the store) first try plainRecords, which costs
// one decode; this is their fallback.
func (r *Record) UnmarshalJSON(b []byte) error {
	var f recordFields
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	for _, k := range []string{"k", "v", "n", "o", "d", "f"} {
		delete(all, k)
	}
	f.extra = nil
	if len(all) > 0 {
		f.extra = all
	}
	*r = Record(f)
	return nil
}

// MarshalJSON encodes a record with the unknown fields it arrived with.
func (r Record) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal(recordFields(r))
	if err != nil || len(r.extra) == 0 {
		return b, err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, err
	}
	out := maps.Clone(r.extra)
	maps.Copy(out, all) // known fields win
	return json.Marshal(out)
}

// plainRecords is a list of records without the per-record codec: the
// common case, where no record has a field this agent does not know.
type plainRecords []recordFields

// records converts to Records.
func (p plainRecords) records() []Record {
	out := make([]Record, len(p))
	for i, f := range p {
		out[i] = Record(f)
	}
	return out
}

// plain returns recs as plainRecords when none carries unknown fields.
func plain(recs []Record) (plainRecords, bool) {
	out := make(plainRecords, len(recs))
	for i, r := range recs {
		if len(r.extra) > 0 {
			return nil, false
		}
		out[i] = recordFields(r)
	}
	return out, true
}

// decodeStrict decodes b into v refusing unknown fields: the fast path of
// the bulk decoders, which fall back to the tolerant codec when it fails.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// MarshalRecords encodes records as a JSON array (for the agent's store).
func MarshalRecords(recs []Record) ([]byte, error) {
	if p, ok := plain(recs); ok {
		return json.Marshal(p)
	}
	return json.Marshal(recs)
}

// UnmarshalRecords decodes a JSON array of records, keeping the fields this
// agent does not know.
func UnmarshalRecords(b []byte) ([]Record, error) {
	var p plainRecords
	if decodeStrict(b, &p) == nil {
		return p.records(), nil
	}
	var out []Record
	err := json.Unmarshal(b, &out)
	return out, err
}
