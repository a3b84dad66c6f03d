package e2e

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
	if v, err := exec.Command(filepath.Join(x, "usr", "bin", "vxnet"), "version").Output(); err != nil || strings.TrimSpace(string(v)) != "vxnet 9.8.7 (record format 2)" {
		t.Errorf("vxnet version in the package: %q %v", v, err)
	}
	// Static and stripped: no C library to depend on, whatever the
	// target's glibc; no symbol table.
	var binBytes int64
	for _, bin := range []string{"vxnet", "vxnet-cni"} {
		p := filepath.Join(x, "usr", "bin", bin)
		checkStaticStripped(t, p)
		if fi, err := os.Stat(p); err == nil {
			binBytes += fi.Size()
		}
	}
	field := func(name string) string {
		v, err := exec.Command("dpkg-deb", "-f", deb, name).Output()
		if err != nil {
			t.Fatalf("dpkg-deb -f %s: %v", name, err)
		}
		return strings.TrimSpace(string(v))
	}
	// Installed-Size in KiB: at least the binaries (apt shows it).
	if kib, err := strconv.ParseInt(field("Installed-Size"), 10, 64); err != nil || kib*1024 < binBytes {
		t.Errorf("Installed-Size %q KiB, binaries alone %d bytes", field("Installed-Size"), binBytes)
	}
	// Depends names what the agent runs (iptables) and nothing that is
	// always true or missing; with static binaries no libc6.
	if d := field("Depends"); d != "iptables" {
		t.Errorf("Depends: %q, want iptables", d)
	}
	if b, err := exec.Command("dpkg-deb", "-I", deb).Output(); err != nil || !strings.Contains(string(b), "Installed-Size:") {
		t.Errorf("dpkg-deb -I: %v\n%s", err, b)
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
	// The health namespace is made unsandboxed, in the host's mount
	// namespace, before the sandboxed agent starts.
	if !strings.Contains(string(unit), "\nExecStartPre=+/usr/bin/vxnet agent --config /etc/vxnet/agent.json --prepare\n") {
		t.Errorf("the unit does not prepare the host (ExecStartPre=+ ... --prepare):\n%s", unit)
	}
}

// checkStaticStripped fails unless the ELF file at p asks for no dynamic
// loader and no shared library, and has no symbol table.
func checkStaticStripped(t *testing.T, p string) {
	t.Helper()
	f, err := elf.Open(p)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP || prog.Type == elf.PT_DYNAMIC {
			t.Errorf("%s is dynamically linked (%s)", p, prog.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs %v", p, libs)
	}
	if f.Section(".symtab") != nil {
		t.Errorf("%s is not stripped (has .symtab)", p)
	}
}
