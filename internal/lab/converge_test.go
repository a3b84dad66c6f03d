package lab

import (
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	for _, tc := range []struct {
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{nil, 50, 0},
		{ms(5), 99, 5 * time.Millisecond},
		{ms(4, 1, 3, 2), 50, 2 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 90, 9 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
		{ms(10, 1), 0, 1 * time.Millisecond},
	} {
		if got := Percentile(tc.in, tc.p); got != tc.want {
			t.Errorf("Percentile(%v, %v) = %v, want %v", tc.in, tc.p, got, tc.want)
		}
	}
}

// TestSubnet6Def: the dual-stack lab's IPv6 subnets mirror its IPv4 ones.
func TestSubnet6Def(t *testing.T) {
	if got := Subnet6Def(2).String(); got != "fd00:198:19:2::/64" {
		t.Fatalf("Subnet6Def(2) = %s", got)
	}
	if got := containerIP6(2, 11); got.String() != "fd00:198:19:2::b" || !Subnet6Def(2).Contains(got) {
		t.Fatalf("containerIP6(2, 11) = %s", got)
	}
}
