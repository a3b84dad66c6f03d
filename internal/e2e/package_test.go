package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestPackage builds the Debian package with the documented command and
// checks what it holds, the version stamped into the binary in it, and the
// systemd unit with systemd-analyze verify.
func TestPackage(t *testing.T) {
	root := repoRoot(t)
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(root, "scripts", "package.sh"), out)
	cmd.Env = append(os.Environ(), "VERSION=9.8.7")
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("package.sh: %v %s", err, b)
	}
	deb := strings.TrimSpace(string(b))
	if !strings.HasSuffix(deb, ".deb") || !strings.Contains(deb, "vxnet_9.8.7_") {
		t.Fatalf("package.sh printed %q", b)
	}
	list, err := exec.Command("dpkg-deb", "-c", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"./usr/bin/vxnet\n", "./usr/bin/vxnet-cni\n", "./lib/systemd/system/vxnet.service\n",
		"./usr/share/doc/vxnet/README.md\n", "./usr/share/doc/vxnet/agent.json.example\n"} {
		if !strings.Contains(string(list)+"\n", want) {
			t.Errorf("package lacks %s", strings.TrimSpace(want))
		}
	}
	if v, _ := exec.Command("dpkg-deb", "-f", deb, "Version").Output(); strings.TrimSpace(string(v)) != "9.8.7" {
		t.Errorf("package version %q", v)
	}
	x := t.TempDir()
	if b, err := exec.Command("dpkg-deb", "-x", deb, x).CombinedOutput(); err != nil {
		t.Fatalf("extract: %v %s", err, b)
	}
	if v, err := exec.Command(filepath.Join(x, "usr", "bin", "vxnet"), "version").Output(); err != nil || strings.TrimSpace(string(v)) != "vxnet 9.8.7 (record format 1)" {
		t.Errorf("vxnet version in the package: %q %v", v, err)
	}
	// The unit, pointed at the packaged binary (verify checks it exists).
	unit, err := os.ReadFile(filepath.Join(x, "lib", "systemd", "system", "vxnet.service"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "vxnet.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/bin/vxnet", filepath.Join(x, "usr", "bin", "vxnet"))), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput(); err != nil || strings.Contains(string(b), "vxnet.service") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, b)
	}
}
