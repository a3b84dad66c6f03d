package health

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestJudge(t *testing.T) {
	ok := Result{Small: true, Big: true, RTT: time.Millisecond}
	smallOnly := Result{Small: true}
	lost := Result{}
	cases := []struct {
		name  string
		in    []Result
		want  Verdict
		cause string
	}{
		{"too few rounds", []Result{ok, ok}, Unknown, ""},
		{"too few rounds, even lost", []Result{lost, lost}, Unknown, ""},
		{"all answered", []Result{ok, ok, ok}, OK, ""},
		{"three small lost", []Result{ok, ok, lost, lost, lost}, Unreachable, "the last 3 probes through the overlay went unanswered"},
		{"full-size lost, small answered", []Result{ok, smallOnly, smallOnly, smallOnly}, MTU, "last 3 full-size probes (1422 bytes, DF) were lost"},
		{"one loss in the window", []Result{ok, lost, ok, ok}, Degraded, "lost 1 of 4 small and 1 of 4 full-size probes"},
		{"two full-size lost only", []Result{ok, smallOnly, smallOnly, ok}, Degraded, "lost 0 of 4 small and 2 of 4 full-size probes"},
		{"recovered after the window", []Result{lost, lost, lost, ok, ok, ok, ok, ok, ok, ok, ok, ok, ok}, OK, ""},
		{"recovering", []Result{lost, lost, lost, ok, ok, ok}, Degraded, "lost 3 of 6 small"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr := &Tracker{BigSize: 1422}
			var st Verdict
			for _, r := range c.in {
				tr.Record("h2", netip.MustParseAddr("10.0.0.2"), r, time.Now())
			}
			p := tr.Peers()[0]
			st = p.State
			if st != c.want || !strings.Contains(p.Cause, c.cause) {
				t.Fatalf("state %s (%q), want %s (%q)", st, p.Cause, c.want, c.cause)
			}
			if c.want == OK && p.Cause != "" {
				t.Fatalf("ok with a cause %q", p.Cause)
			}
		})
	}
}

func TestRecordReportsChanges(t *testing.T) {
	tr := &Tracker{}
	a := netip.MustParseAddr("10.0.0.2")
	t0 := time.Unix(1000, 0)
	var changes []Change
	seq := []Result{{Small: true, Big: true, RTT: 2 * time.Millisecond}, {Small: true, Big: true, RTT: 4 * time.Millisecond},
		{Small: true, Big: true, RTT: 2 * time.Millisecond}, {}, {}, {}}
	for i, r := range seq {
		if c, ok := tr.Record("h2", a, r, t0.Add(time.Duration(i)*time.Second)); ok {
			changes = append(changes, c)
		}
	}
	if len(changes) != 3 || changes[0].To != OK || changes[1].To != Degraded || changes[2].To != Unreachable || changes[2].From != Degraded {
		t.Fatalf("changes %+v, want unknown->ok->degraded->unreachable", changes)
	}
	p := tr.Peers()[0]
	if !p.Since.Equal(t0.Add(5*time.Second)) || p.Loss != 0.5 || p.Probes != 6 {
		t.Fatalf("peer %+v", p)
	}
	// RTT: moving average of answered small probes only: 2, then 2.6, 2.42.
	if p.RTTms != 2.42 {
		t.Fatalf("rtt %v ms, want 2.42", p.RTTms)
	}
	// A peer whose health endpoint moved starts over; a gone one is dropped.
	if _, ok := tr.Record("h2", netip.MustParseAddr("10.0.0.9"), Result{Small: true, Big: true}, t0); ok {
		t.Fatal("a new address should start as unknown, no change")
	}
	if p := tr.Peers()[0]; p.Probes != 1 || p.State != Unknown {
		t.Fatalf("after the move: %+v", p)
	}
	tr.Forget(map[string]bool{})
	if len(tr.Peers()) != 0 {
		t.Fatal("Forget kept a peer")
	}
}
