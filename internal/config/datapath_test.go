package config

import (
	"errors"
	"strings"
	"testing"
)

func TestChooseDatapath(t *testing.T) {
	loads := func() error { return nil }
	fails := func() error { return errors.New("load the TC program: operation not permitted") }
	cases := []struct {
		want     string
		enable   func() error
		mode     string
		reason   string // substring
		errMatch string // substring; "" means no error
	}{
		{"bridge", fails, DatapathBridge, "--datapath bridge", ""},
		{"bpf", loads, DatapathBPF, "--datapath bpf", ""},
		{"bpf", fails, "", "", "--datapath bpf: load the TC program: operation not permitted"},
		{"auto", loads, DatapathBPF, "auto: this kernel runs", ""},
		{"auto", fails, DatapathBridge, "does not load here: load the TC program", ""},
		{"", loads, DatapathBPF, "auto", ""},
		{"xdp", loads, "", "", `invalid --datapath "xdp": want bridge, bpf or auto`},
	}
	for _, c := range cases {
		t.Run(c.want, func(t *testing.T) {
			enabled := false
			got, err := ChooseDatapath(c.want, func() error { enabled = true; return c.enable() })
			if c.errMatch != "" {
				if err == nil || !strings.Contains(err.Error(), c.errMatch) {
					t.Fatalf("err = %v, want %q", err, c.errMatch)
				}
				return
			}
			if err != nil || got.Mode != c.mode || !strings.Contains(got.Reason, c.reason) {
				t.Fatalf("got %+v, %v; want mode %s reason ~%q", got, err, c.mode, c.reason)
			}
			if c.want == "bridge" && enabled {
				t.Fatal("--datapath bridge loaded the fast path")
			}
		})
	}
}
