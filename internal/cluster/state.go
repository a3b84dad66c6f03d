// Package cluster holds vxnet's replicated cluster state: a map of
// last-writer-wins records with Lamport versions and tombstones, and the
// backends that replicate it between agents (gossip).
package cluster

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vxnet/vxnet/internal/model"
)

// Key prefixes of the record kinds.
const (
	PrefixNetwork  = "net/"
	PrefixEndpoint = "ep/"
	PrefixBlock    = "block/"
	PrefixNode     = "node/"
	// PrefixHealth records hold a member's view of the overlay paths to
	// the others (its health matrix row).
	PrefixHealth = "health/"
)

// Newer reports whether r wins over o.
func (r Record) Newer(o Record) bool {
	if r.Version != o.Version {
		return r.Version > o.Version
	}
	if r.Origin != o.Origin {
		return r.Origin > o.Origin
	}
	// Same version and origin: a delete wins over a put.
	return r.Deleted && !o.Deleted
}

// knownKinds are the record kinds (key prefixes) this agent interprets.
var knownKinds = []string{PrefixNetwork, PrefixEndpoint, PrefixBlock, PrefixNode, PrefixHealth}

// keyRE is the shape of every record key: a kind of lower-case letters, a
// slash, a name. Kinds this agent does not know (from a newer one) are kept
// and passed on, never used.
var keyRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,15}/[^\x00-\x1f]+$`)

// validKey reports whether a key has the shape of a record key.
func validKey(k string) bool { return len(k) <= 256 && keyRE.MatchString(k) }

// knownKind reports whether this agent interprets records of key k.
func knownKind(k string) bool {
	for _, p := range knownKinds {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// checkEnvelope checks what every record needs whatever it holds: a known
// key, a version, an origin, and a value unless it is a tombstone. Merge
// applies it to everything it takes in; ValidateRecord adds the checks of
// the value for records from the network.
func checkEnvelope(r Record) error {
	if !validKey(r.Key) {
		return fmt.Errorf("record key %q: want KIND/NAME (net/, ep/, block/, node/ and kinds of newer versions)", r.Key)
	}
	if r.Version == 0 {
		return fmt.Errorf("record %s: version 0", r.Key)
	}
	if err := model.ValidateName("origin node", r.Origin); err != nil {
		return fmt.Errorf("record %s: %w", r.Key, err)
	}
	if !r.Deleted && len(r.Value) == 0 {
		return fmt.Errorf("record %s: no value", r.Key)
	}
	return nil
}

// State is the replicated map of one member.
type State struct {
	mu      sync.RWMutex
	self    string
	clock   uint64
	gen     uint64 // bumped on every change
	records map[string]Record
	now     func() time.Time

	epCache    []model.Endpoint // decoded endpoints as of epCacheGen
	epCacheGen uint64

	digest    *Digest // summary as of digestGen
	digestGen uint64

	superseded []Superseded // this member's networks another's replaced, newest last
}

// Superseded is a network this member created that another member's
// definition, written at the same time (before either saw the other),
// replaced: the higher version (then origin) wins on every member alike,
// and the member that lost says so.
type Superseded struct {
	Mine Record `json:"mine"`
	By   Record `json:"by"`
}

// maxSuperseded bounds the notices kept.
const maxSuperseded = 32

// Superseded returns the notices of this member's replaced networks.
func (s *State) Superseded() []Superseded {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return append([]Superseded(nil), s.superseded...)
}

// NewState returns an empty state for member self.
func NewState(self string) *State {
	return &State{self: self, records: map[string]Record{}, now: time.Now}
}

// Self returns this member's name.
func (s *State) Self() string { return s.self }

// Generation counts changes to this member's state; equal generations mean
// identical state.
func (s *State) Generation() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.gen
}

// Clock returns the Lamport clock.
func (s *State) Clock() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.clock
}

// Put writes a value as this member and returns the new record.
func (s *State) Put(key string, v any) (Record, error) { return s.PutFormat(key, v, 0) }

// PutFormat is Put of a record in format (0: the first; see WireFormat).
func (s *State) PutFormat(key string, v any, format int) (Record, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return Record{}, fmt.Errorf("encode %s: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clock++
	s.gen++
	r := Record{Key: key, Value: b, Version: s.clock, Origin: s.self, Format: format}
	s.records[key] = r
	return r, nil
}

// Prepare returns the record Put would write, without writing it: for a
// claim that must succeed elsewhere first (then Merge it).
func (s *State) Prepare(key string, v any) (Record, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return Record{}, fmt.Errorf("encode %s: %w", key, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return Record{Key: key, Value: b, Version: s.clock + 1, Origin: s.self}, nil
}

// Delete writes a tombstone as this member; ok is false when nothing was there.
func (s *State) Delete(key string) (Record, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.records[key]
	if !ok || cur.Deleted {
		return Record{}, false
	}
	s.clock++
	s.gen++
	r := Record{Key: key, Version: s.clock, Origin: s.self, Deleted: true, seen: s.now()}
	s.records[key] = r
	return r, true
}

// Merge applies records from another member and returns those that changed
// this member's state. Records without a valid envelope are refused.
func (s *State) Merge(recs []Record) (changed []Record, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var bad int
	for _, r := range recs {
		if checkEnvelope(r) != nil {
			bad++
			continue
		}
		if r.Version > s.clock {
			s.clock = r.Version
		}
		cur, ok := s.records[r.Key]
		if ok && !r.Newer(cur) {
			continue
		}
		if ok && !cur.Deleted && !r.Deleted && cur.Origin == s.self && r.Origin != s.self &&
			strings.HasPrefix(r.Key, PrefixNetwork) && !bytes.Equal(cur.Value, r.Value) {
			s.superseded = append(s.superseded, Superseded{Mine: cur, By: r})
			if len(s.superseded) > maxSuperseded {
				s.superseded = s.superseded[1:]
			}
		}
		if r.Deleted {
			r.Value = nil
			r.seen = s.now()
		}
		s.records[r.Key] = r
		s.gen++
		changed = append(changed, r)
	}
	if bad > 0 {
		err = fmt.Errorf("refused %d malformed records", bad)
	}
	return changed, err
}

// Restore loads records saved by this member (at start) and its clock.
func (s *State) Restore(recs []Record, clock uint64) {
	s.mu.Lock()
	if clock > s.clock {
		s.clock = clock
	}
	s.mu.Unlock()
	_, _ = s.Merge(recs)
}

// Get returns the live record of a key (not one of a newer format).
func (s *State) Get(key string) (Record, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.records[key]
	if !ok || r.Deleted || !r.readable() {
		return Record{}, false
	}
	return r, true
}

// List returns the live records under a prefix, sorted by key; records of
// a newer format than this agent reads are left out.
func (s *State) List(prefix string) []Record {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []Record
	for k, r := range s.records {
		if !r.Deleted && r.readable() && strings.HasPrefix(k, prefix) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(x, y Record) int { return cmp.Compare(x.Key, y.Key) })
	return out
}

// Snapshot returns every record, tombstones included, sorted by key.
func (s *State) Snapshot() []Record {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Record, 0, len(s.records))
	for _, r := range s.records {
		out = append(out, r)
	}
	slices.SortFunc(out, func(x, y Record) int { return cmp.Compare(x.Key, y.Key) })
	return out
}

// Unreadable lists the live records of a newer format than this agent
// reads, by origin: they are kept and passed on, never used.
func (s *State) Unreadable() map[string]int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]int{}
	for _, r := range s.records {
		if !r.Deleted && !r.readable() {
			out[r.Origin]++
		}
	}
	return out
}

// Len returns the number of records, tombstones included.
func (s *State) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.records)
}

// CollectTombstones drops tombstones older than age and returns how many.
func (s *State) CollectTombstones(age time.Duration) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	cut := s.now().Add(-age)
	for k, r := range s.records {
		if r.Deleted && r.seen.Before(cut) {
			delete(s.records, k)
			s.gen++
			n++
		}
	}
	return n
}

// Decode unmarshals a record's value.
func Decode[T any](r Record) (T, error) {
	var v T
	if err := json.Unmarshal(r.Value, &v); err != nil {
		return v, fmt.Errorf("record %s: %w", r.Key, err)
	}
	return v, nil
}
