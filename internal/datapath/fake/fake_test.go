package fake_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/dptest"
	"github.com/vxnet/vxnet/internal/datapath/fake"
)

func TestContract(t *testing.T) {
	dptest.Run(t, dptest.Harness{
		New: func(t *testing.T) datapath.Dataplane { return fake.New() },
		Container: func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "netns")
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		},
		Changes:           func(dp datapath.Dataplane) int { return dp.(*fake.Dataplane).Changes },
		AddForeign:        func(t *testing.T, dp datapath.Dataplane, name string) { dp.(*fake.Dataplane).Foreign[name] = true },
		FlushHostFirewall: func(t *testing.T, dp datapath.Dataplane) { dp.(*fake.Dataplane).FlushHostFirewall() },
		EnableFast:        func(t *testing.T, dp datapath.Dataplane) { dp.(*fake.Dataplane).EnableFastPath() },
		UnhookByHand:      func(t *testing.T, dp datapath.Dataplane, dev string) { dp.(*fake.Dataplane).UnhookByHand(dev) },
		Tunnel: func(t *testing.T, dp datapath.Dataplane) string {
			return "sTbDT0hPBs8ZUGtnWfbpJHWuVd4PW8Wn6Fa0v7sKfXI="
		},
	})
}
