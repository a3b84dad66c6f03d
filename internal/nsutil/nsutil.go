// Package nsutil creates, enters and removes named network namespaces
// (/run/netns/NAME) without moving the calling goroutine's thread for good.
package nsutil

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named namespaces are bind-mounted (as iproute2 does).
const Dir = "/run/netns"

// Path returns the path of a named namespace.
func Path(name string) string { return filepath.Join(Dir, name) }

// Create makes a new named network namespace; the caller's namespace is unchanged.
func Create(name string) (string, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return "", fmt.Errorf("get current namespace: %w", err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if err != nil {
		_ = netns.Set(orig)
		return "", fmt.Errorf("create namespace %s: %w", name, err)
	}
	ns.Close()
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the new namespace: never unlock it so the
		// runtime discards it.
		runtime.LockOSThread()
		return "", fmt.Errorf("return from namespace %s: %w", name, err)
	}
	return Path(name), nil
}

// Delete removes a named namespace; an absent one is no error.
func Delete(name string) error {
	p := Path(name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount namespace %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove namespace %s: %w", name, err)
	}
	return nil
}

// List returns the named namespaces whose names start with prefix.
func List(prefix string) ([]string, error) {
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", Dir, err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Handle returns a netlink handle working in the namespace at path (the
// one place a namespace's handle is opened); close it after use.
func Handle(path string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	return h, nil
}

// Do runs fn on a thread that is inside the namespace at path. Sockets opened
// in fn stay in that namespace after fn returns.
func Do(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", path, err)
	}
	defer target.Close()
	return DoIn(target, path, fn)
}

// DoIn runs fn on a thread inside the namespace target (named name in
// errors); when the caller is in it already, on the caller's thread.
func DoIn(target netns.NsHandle, name string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get current namespace: %w", err)
	}
	defer orig.Close()
	if orig.Equal(target) {
		return fn()
	}
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter namespace %s: %w", name, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread() // leave the thread locked: the runtime drops it
		return errors.Join(ferr, fmt.Errorf("leave namespace %s: %w", name, err))
	}
	return ferr
}

// Inode returns the namespace inode of a namespace file, to match processes.
func Inode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

// PIDsIn returns the processes whose network namespace is the one at path.
func PIDsIn(path string) ([]int, error) {
	ino, err := Inode(path)
	if err != nil {
		return nil, err
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	var pids []int
	for _, p := range procs {
		var pid int
		if _, err := fmt.Sscanf(p.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == ino {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
