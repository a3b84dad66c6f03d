package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// A binary of this module, built once per test process.
type built struct {
	once sync.Once
	path string
	err  error
}

var vxnetBin, benchBin built

func (b *built) get(t testing.TB, env, name, pkg string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return p
	}
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", name+"-bin")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", b.path, pkg)
		cmd.Stderr = os.Stderr
		b.err = cmd.Run()
	})
	if b.err != nil {
		t.Fatalf("build %s: %v", name, b.err)
	}
	return b.path
}

// Binary returns the path of a vxnet binary: $VXNET_BINARY, or one built
// once per test process from this module.
func Binary(t testing.TB) string {
	t.Helper()
	return vxnetBin.get(t, "VXNET_BINARY", "vxnet", "github.com/vxnet/vxnet/cmd/vxnet")
}

// BenchBinary returns the path of the vxnet-bench binary (the benchmark
// rigs, e.g. its synthetic member): $VXNET_BENCH_BINARY, or one built once
// per test process.
func BenchBinary(t testing.TB) string {
	t.Helper()
	return benchBin.get(t, "VXNET_BENCH_BINARY", "vxnet-bench", "github.com/vxnet/vxnet/cmd/vxnet-bench")
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
