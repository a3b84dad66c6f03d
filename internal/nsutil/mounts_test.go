package nsutil_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/testutil"
)

// helperEnv makes the test binary run ensureHelper instead of the tests.
const helperEnv = "VXNET_NSUTIL_ENSURE"

type ensured struct {
	Path   string `json:"path"`
	OnHost bool   `json:"on_host"`
	Inode  uint64 `json:"inode"`
	Real   bool   `json:"real"`
	Err    string `json:"err,omitempty"`
}

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		var out ensured
		p, onHost, err := nsutil.Ensure(name)
		if err != nil {
			out.Err = err.Error()
		} else {
			out.Path, out.OnHost, out.Real = p, onHost, nsutil.IsNamespace(p)
			out.Inode, _ = nsutil.Inode(p)
		}
		_ = json.NewEncoder(os.Stdout).Encode(out)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// ensureIn runs nsutil.Ensure(name) in a child process started by argv
// (a wrapper that gives it a mount namespace of its own) or, with no
// wrapper, with Go's own CLONE_NEWNS (private propagation).
func ensureIn(t *testing.T, name string, wrapper ...string) ensured {
	t.Helper()
	argv := append(wrapper, os.Args[0], "-test.run=^$")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), helperEnv+"="+name)
	if len(wrapper) == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	}
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	var out ensured
	if err := json.Unmarshal(b, &out); err != nil || out.Err != "" {
		t.Fatalf("%v: %s %v", argv, b, err)
	}
	return out
}

func cleanupNamed(t *testing.T, name string) {
	t.Cleanup(func() {
		if err := nsutil.Delete(name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
}

// TestEnsureFromOwnMountNamespace: a process in a mount namespace of its own
// (as systemd gives a sandboxed unit, or `ip netns exec`) makes a named
// namespace that the host sees, the same one (inode), and that outlives
// the process; a placeholder a sandboxed process left (an empty file, no
// namespace) is replaced, not reused. Without CAP_SYS_CHROOT (the unit's
// case) the namespace is made in the process's own mount namespace and
// Ensure says so; the next run replaces the placeholder again.
func TestEnsureFromOwnMountNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name        string
		wrapper     []string
		placeholder bool
		onHost      bool
	}{
		{"private", nil, false, true},
		{"slave", []string{"unshare", "--mount", "--propagation", "slave"}, false, true},
		{"slave-over-placeholder", []string{"unshare", "--mount", "--propagation", "slave"}, true, true},
		{"private-over-placeholder", []string{"unshare", "--mount", "--propagation", "private"}, true, true},
		{"no-chroot-capability", []string{"unshare", "--mount", "--propagation", "slave", "setpriv", "--bounding-set", "-sys_chroot"}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("vxt%d-%s", os.Getpid(), strings.ReplaceAll(tc.name, "-", "")[:min(8, len(tc.name))])
			path := nsutil.Path(name)
			cleanupNamed(t, name)
			if tc.placeholder {
				if err := os.MkdirAll(nsutil.Dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, nil, 0o444); err != nil {
					t.Fatal(err)
				}
			}
			for run := 1; run <= 2; run++ { // the second run is the agent's restart
				got := ensureIn(t, name, tc.wrapper...)
				if !got.Real || got.Path != path {
					t.Fatalf("run %d: the child's %s is no namespace: %+v", run, path, got)
				}
				if got.OnHost != tc.onHost {
					t.Fatalf("run %d: on host %v, want %v", run, got.OnHost, tc.onHost)
				}
				hostIno, err := nsutil.Inode(path)
				if err != nil {
					t.Fatal(err)
				}
				if tc.onHost && (!nsutil.IsNamespace(path) || hostIno != got.Inode) {
					t.Fatalf("run %d: the host's %s (namespace %v, inode %d) is not the child's (inode %d)", run, path, nsutil.IsNamespace(path), hostIno, got.Inode)
				}
				if !tc.onHost && nsutil.IsNamespace(path) {
					t.Fatalf("run %d: Ensure said the host cannot see %s, but it does", run, path)
				}
			}
		})
	}
	t.Run("host", func(t *testing.T) {
		name := fmt.Sprintf("vxt%d-inhost", os.Getpid())
		cleanupNamed(t, name)
		p, onHost, err := nsutil.Ensure(name)
		if err != nil || !onHost || !nsutil.IsNamespace(p) {
			t.Fatalf("Ensure in the host's mount namespace: %s %v %v", p, onHost, err)
		}
		ino, _ := nsutil.Inode(p)
		again, _, err := nsutil.Ensure(name)
		if ino2, _ := nsutil.Inode(again); err != nil || ino2 != ino {
			t.Fatalf("a second Ensure replaced a working namespace: %v", err)
		}
	})
}

// TestEnsureRefusesForeignFile: a file under /run/netns that is neither a
// namespace nor an empty placeholder is someone else's: Ensure names it and
// leaves it.
func TestEnsureRefusesForeignFile(t *testing.T) {
	testutil.RequireRoot(t)
	name := fmt.Sprintf("vxt%d-foreign", os.Getpid())
	path := nsutil.Path(name)
	cleanupNamed(t, name)
	if err := os.MkdirAll(nsutil.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("not mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := nsutil.Ensure(name)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "want an empty placeholder or a namespace") {
		t.Fatalf("Ensure over a foreign file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "not mine" {
		t.Fatalf("the foreign file was changed: %q", b)
	}
}
