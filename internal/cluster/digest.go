package cluster

import (
	"cmp"
	"errors"
	"hash/fnv"
	"slices"
)

// Digest summarises a state for anti-entropy: for each origin the number
// of its records and a sum of their hashes (key, version, deletion), and
// the sum of all. Two members with equal roots hold the same records.
type Digest struct {
	Root  uint64 `json:"root"`
	Count int    `json:"count"`
	// Full says Origins is given (a member without records has none).
	Full    bool           `json:"full,omitempty"`
	Origins []OriginDigest `json:"origins,omitempty"`
	// Reply asks the receiver for its records of the origins that differ
	// and its own full digest.
	Reply bool `json:"reply,omitempty"`
	// Recheck marks a summary sent a moment after a difference: if it
	// still differs, the receiver starts the exchange.
	Recheck bool `json:"recheck,omitempty"`
}

// OriginDigest summarises the records written by one member.
type OriginDigest struct {
	Origin string `json:"o"`
	Count  int    `json:"c"`
	Sum    uint64 `json:"h"`
	// Max is the highest version among them.
	Max uint64 `json:"n,omitempty"`
}

func recordHash(r Record) uint64 {
	h := fnv.New64a()
	h.Write([]byte(r.Key))
	var b [10]byte
	for i := range 8 {
		b[i] = byte(r.Version >> (8 * i))
	}
	if r.Deleted {
		b[8] = 1
	}
	h.Write(b[:9])
	h.Write([]byte(r.Origin))
	return h.Sum64()
}

// Digest returns the summary of this state, with the per-origin part when
// full is set. It is computed once per change of the state.
func (s *State) Digest(full bool) *Digest {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.digest == nil || s.digestGen != s.gen {
		by := map[string]*OriginDigest{}
		d := &Digest{}
		for _, r := range s.records {
			o := by[r.Origin]
			if o == nil {
				o = &OriginDigest{Origin: r.Origin}
				by[r.Origin] = o
			}
			h := recordHash(r)
			o.Count++
			o.Sum += h
			o.Max = max(o.Max, r.Version)
			d.Root += h
			d.Count++
		}
		d.Origins = make([]OriginDigest, 0, len(by))
		for _, o := range by {
			d.Origins = append(d.Origins, *o)
		}
		slices.SortFunc(d.Origins, func(x, y OriginDigest) int { return cmp.Compare(x.Origin, y.Origin) })
		s.digest, s.digestGen = d, s.gen
	}
	out := *s.digest
	out.Full = full
	if !full {
		out.Origins = nil
	}
	return &out
}

// Differing returns what the holder of d may lack of this member's records,
// by origin: for an origin it holds nothing of, or holds the same newest
// version of (something older went missing), every record; for one where
// this member is ahead, the records newer than the holder's newest (a later
// round sends the rest if that was not all); for one where the holder is
// ahead, nothing (the holder sends).
func (s *State) Differing(d Digest) []Record {
	theirs := make(map[string]OriginDigest, len(d.Origins))
	for _, o := range d.Origins {
		theirs[o.Origin] = o
	}
	mine := s.Digest(true)
	since := map[string]uint64{} // send records of the origin above this version
	for _, o := range mine.Origins {
		t, ok := theirs[o.Origin]
		switch {
		case !ok:
			since[o.Origin] = 0
		case t == o:
		case o.Max > t.Max:
			since[o.Origin] = t.Max
		case o.Max == t.Max:
			since[o.Origin] = 0
		}
	}
	if len(since) == 0 {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []Record
	for _, r := range s.records {
		if v, ok := since[r.Origin]; ok && r.Version > v {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(x, y Record) int { return cmp.Compare(x.Key, y.Key) })
	return out
}

// errNoDigest refuses a digest message without its digest.
var errNoDigest = errors.New(`digest message without its digest: want "digest":{"root":...,"count":...}`)
