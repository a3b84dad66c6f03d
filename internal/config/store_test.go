package config

import (
	"slices"
	"testing"
)

func TestParseStore(t *testing.T) {
	for _, tc := range []struct {
		store, join string
		want        []string
		err         string
	}{
		{"gossip", "10.0.0.1", nil, ""},
		{"", "", nil, ""},
		{"etcd://10.0.0.5:2379", "", []string{"10.0.0.5:2379"}, ""},
		{"etcd://10.0.0.5:2379, etcd1.lan:2379,[fd00::5]:2379", "", []string{"10.0.0.5:2379", "etcd1.lan:2379", "[fd00::5]:2379"}, ""},
		{"etcd://", "", nil, `invalid --store "etcd://": want gossip or etcd://HOST:PORT[,HOST:PORT...]`},
		{"consul://x:1", "", nil, `invalid --store "consul://x:1": want gossip or etcd://HOST:PORT[,HOST:PORT...]`},
		{"etcd://10.0.0.5", "", nil, `invalid --store "etcd://10.0.0.5": etcd endpoint "10.0.0.5" is not HOST:PORT`},
		{"etcd://10.0.0.5:2379", "10.0.0.1", nil, "--join 10.0.0.1: with --store etcd://10.0.0.5:2379 members find each other in etcd; --join is for the gossip store"},
	} {
		got, err := ParseStore(tc.store, tc.join)
		if (err == nil) != (tc.err == "") || (err != nil && err.Error() != tc.err) {
			t.Errorf("ParseStore(%q, %q) error %v, want %q", tc.store, tc.join, err, tc.err)
			continue
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("ParseStore(%q) = %v, want %v", tc.store, got, tc.want)
		}
	}
}
