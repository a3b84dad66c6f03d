package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Binary returns the path of a vxnet binary: $VXNET_BINARY, or one built
// once per test process from this module.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("VXNET_BINARY"); p != "" {
		return p
	}
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vxnet-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "vxnet")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/vxnet/vxnet/cmd/vxnet")
		cmd.Stderr = os.Stderr
		binErr = cmd.Run()
	})
	if binErr != nil {
		t.Fatalf("build vxnet: %v", binErr)
	}
	return binPath
}
