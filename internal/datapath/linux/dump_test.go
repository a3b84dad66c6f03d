package linux

import (
	"errors"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestDumpReadsAgainWhenInterrupted(t *testing.T) {
	other := errors.New("permission denied")
	for _, tc := range []struct {
		name        string
		interrupted int   // reads flagged as interrupted before a clean one
		fail        error // error of the clean read
		wantReads   int
		wantErr     string
	}{
		{"clean", 0, nil, 1, ""},
		{"interrupted once", 1, nil, 2, ""},
		{"interrupted up to the limit", dumpAttempts - 1, nil, dumpAttempts, ""},
		{"interrupted every time", 99, nil, dumpAttempts, "list links: interrupted 5 times in a row (the table kept changing)"},
		{"other error", 0, other, 1, "list links: permission denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reads := 0
			v, err := dump("list links", func() (int, error) {
				reads++
				if reads <= tc.interrupted {
					return -1, netlink.ErrDumpInterrupted
				}
				return 42, tc.fail
			})
			if reads != tc.wantReads {
				t.Errorf("reads = %d; want %d", reads, tc.wantReads)
			}
			if tc.wantErr == "" {
				if err != nil || v != 42 {
					t.Fatalf("dump = %d, %v; want 42, nil", v, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v; want one containing %q", err, tc.wantErr)
			}
		})
	}
}
