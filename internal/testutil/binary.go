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

// BinaryAt builds the vxnet binary of an earlier commit of this repository
// (from git, into a temporary directory) with its version stamped as
// version, for tests that mix releases.
func BinaryAt(t testing.TB, commit, version string) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	archive := exec.Command("sh", "-c", "cd \"$(git rev-parse --show-toplevel)\" && git archive "+commit+" | tar -x -C "+src)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("commit %s of this repository (a full clone is needed): %v %s", commit, err, out)
	}
	bin := filepath.Join(dir, "vxnet")
	build := exec.Command("go", "build", "-ldflags", "-X github.com/vxnet/vxnet/internal/version.Version="+version, "-o", bin, "./cmd/vxnet")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build commit %s: %v %s", commit, err, out)
	}
	return bin
}
