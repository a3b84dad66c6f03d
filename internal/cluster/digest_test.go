package cluster

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestDigestAndDiffering(t *testing.T) {
	a, b := NewState("a"), NewState("b")
	var recs []Record
	for i := range 5 {
		recs = append(recs, epRecord("h1", i, 0), epRecord("h2", i, 0))
	}
	_, _ = a.Merge(recs)
	_, _ = b.Merge(slices.Clone(recs))
	if da, db := a.Digest(true), b.Digest(true); !reflect.DeepEqual(da, db) || da.Count != 10 || len(da.Origins) != 2 {
		t.Fatalf("equal states, digests %+v and %+v", da, db)
	}
	if got := a.Differing(*b.Digest(true)); got != nil {
		t.Errorf("equal states differ in %d records", len(got))
	}
	// b misses one record of h2 and has a newer one of h1's.
	_, _ = a.Merge([]Record{epRecord("h2", 7, 0)})
	newer := epRecord("h1", 2, 0)
	newer.Version, newer.Origin = 50, "h3"
	_, _ = b.Merge([]Record{newer})
	if a.Digest(false).Root == b.Digest(false).Root {
		t.Fatal("different states, one root")
	}
	if d := a.Digest(false); d.Origins != nil {
		t.Errorf("a summary carries %d origins", len(d.Origins))
	}
	toB := a.Differing(*b.Digest(true))
	toA := b.Differing(*a.Digest(true))
	origins := func(rs []Record) (o []string) {
		for _, r := range rs {
			o = append(o, r.Origin)
		}
		slices.Sort(o)
		return slices.Compact(o)
	}
	// a sends its records of h1 (same newest version, b's set lacks one:
	// all of them) and h2 (a is ahead: the newer ones alone); b sends h1
	// (same newest) and h3 (a has none), not h2 (a is ahead there).
	if got := origins(toB); !slices.Equal(got, []string{"h1", "h2"}) {
		t.Errorf("a sends records of %v, want h1 and h2", got)
	}
	for _, r := range toB {
		if r.Origin == "h2" && r.Key != EndpointKey("h2.web.7") {
			t.Errorf("a sends %s of h2, which b holds", r.Key)
		}
	}
	if got := origins(toA); !slices.Equal(got, []string{"h1", "h3"}) {
		t.Errorf("b sends records of %v, want h1 and h3", got)
	}
	_, _ = b.Merge(toB)
	_, _ = a.Merge(toA)
	if !reflect.DeepEqual(a.Digest(true), b.Digest(true)) {
		t.Errorf("after one exchange the digests still differ")
	}
	if !reflect.DeepEqual(strip(a.Snapshot()), strip(b.Snapshot())) {
		t.Errorf("equal digests, different states")
	}
}

func epRecord(origin string, i int, pad int) Record {
	v := fmt.Sprintf(`{"id":"%s.web.%d","network":"web","node":"%s","mac":"02:00:00:00:%02x:%02x","ip":"10.1.%d.%d","note":"%s"}`,
		origin, i, origin, i/256, i%256, i/256, i%256+1, strings.Repeat("x", pad))
	return Record{Key: EndpointKey(fmt.Sprintf("%s.web.%d", origin, i)), Value: []byte(v), Version: uint64(i + 1), Origin: origin}
}
