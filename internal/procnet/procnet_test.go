package procnet

import (
	"slices"
	"strings"
	"testing"
)

func TestInodes(t *testing.T) {
	const tcp = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F0A 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F0A 0200007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0
`
	const udp = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:1F0A 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5151 2 0000000000000000 0
`
	for _, tc := range []struct {
		name  string
		table string
		port  int
		tcp   bool
		want  []string
	}{
		{"tcp listener only", tcp, 7946, true, []string{"4242"}},
		{"other port", tcp, 22, true, []string{"99"}},
		{"none", tcp, 7947, true, nil},
		{"udp", udp, 7946, false, []string{"5151"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Inodes(strings.NewReader(tc.table), tc.port, tc.tcp); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
