package nsutil

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Named network namespaces are bind mounts of a namespace file on an empty
// file under Dir. A mount lives in a mount namespace: one made by a process
// that runs in a mount namespace of its own (a systemd unit with
// PrivateTmp= or ProtectSystem=, a program under `ip netns exec`) is seen
// by that process alone, is gone with it, and leaves the host an empty
// placeholder file that is no namespace. Ensure makes named namespaces in
// the host's mount namespace, where `ip netns` and the next run see them.

// hostPID is a process in the host's mount namespace: PID 1 (the init
// system, which starts services), or, where PID 1 cannot be inspected (a
// sandbox whose PID 1 is no init), the parent process (the shell or
// supervisor that started us; `ip netns exec` execs its command).
func hostPID() int {
	if _, err := Inode("/proc/1/ns/mnt"); err == nil {
		return 1
	}
	return os.Getppid()
}

func hostMountNS() string { return fmt.Sprintf("/proc/%d/ns/mnt", hostPID()) }
func hostRoot() string    { return fmt.Sprintf("/proc/%d/root", hostPID()) }

// IsNamespace reports whether path is a mounted namespace file (what `ip
// netns add` leaves), not a placeholder without a namespace on it.
func IsNamespace(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// InHostMounts reports whether the caller runs in the host's mount namespace.
func InHostMounts() (bool, error) {
	own, err := Inode("/proc/self/ns/mnt")
	if err != nil {
		return false, err
	}
	host, err := Inode(hostMountNS())
	if err != nil {
		return false, fmt.Errorf("the host's mount namespace: %w", err)
	}
	return own == host, nil
}

// OnHost reports whether the named namespace at path, as the caller sees
// it, is the one the host sees there (same namespace inode).
func OnHost(path string) bool {
	if !IsNamespace(path) {
		return false
	}
	hostView := hostRoot() + path
	if !IsNamespace(hostView) {
		return false
	}
	a, err1 := Inode(path)
	b, err2 := Inode(hostView)
	return err1 == nil && err2 == nil && a == b
}

// Ensure returns the path of the named namespace, making it when there is
// none (a placeholder left by a namespace whose mount namespace is gone is
// replaced). When the caller runs in a mount namespace of its own, the
// namespace is made in the host's, so that it outlives the caller and `ip
// netns` on the host shows it; when that is refused (entering a mount
// namespace takes CAP_SYS_ADMIN and CAP_SYS_CHROOT, which a sandboxed
// service may lack), it is made in the caller's own, and onHost says so.
func Ensure(name string) (path string, onHost bool, err error) {
	path = Path(name)
	if IsNamespace(path) {
		return path, OnHost(path), nil
	}
	inHost, err := InHostMounts()
	if err != nil {
		inHost = false // the host's mount namespace cannot be read: try to enter it, else stay
	}
	if inHost {
		if err := removePlaceholder(path); err != nil {
			return "", false, err
		}
		if _, err := Create(name); err != nil {
			return "", false, err
		}
		return path, true, nil
	}
	hostErr := createInHostMounts(name)
	if hostErr == nil {
		if IsNamespace(path) { // propagated to our mount namespace (slave or shared)
			return path, OnHost(path), nil
		}
		// Our mount namespace receives no mounts from the host's (private
		// propagation): mount the host's namespace file here too.
		if err := bindHostNamespace(path); err == nil {
			return path, OnHost(path), nil
		}
	}
	if err := removePlaceholder(path); err != nil {
		return "", false, errors.Join(err, hostErr)
	}
	if _, err := Create(name); err != nil {
		return "", false, errors.Join(err, hostErr)
	}
	return path, false, nil
}

// removePlaceholder removes path when it is an empty regular file with no
// namespace mounted on it; anything else there is an error.
func removePlaceholder(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("namespace file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() != 0 || IsNamespace(path) {
		return fmt.Errorf("namespace file %s: want an empty placeholder or a namespace, found %s of %d bytes", path, fi.Mode(), fi.Size())
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the placeholder %s (no namespace on it): %w", path, err)
	}
	return nil
}

// createInHostMounts makes the named namespace from a thread that has
// entered the host's mount namespace. The thread has its own file-system
// context (unshare CLONE_FS, which setns of a mount namespace needs) and
// a new network namespace, so it is never handed back to the Go runtime:
// it ends with its goroutine.
func createInHostMounts(name string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		errc <- func() error {
			fd, err := unix.Open(hostMountNS(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("open the host's mount namespace: %w", err)
			}
			defer unix.Close(fd)
			if err := unix.Unshare(unix.CLONE_FS); err != nil {
				return fmt.Errorf("unshare the file-system context: %w", err)
			}
			if err := unix.Setns(fd, unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("enter the host's mount namespace: %w", err)
			}
			p := Path(name)
			if IsNamespace(p) {
				return nil
			}
			if err := removePlaceholder(p); err != nil {
				return err
			}
			if err := os.MkdirAll(Dir, 0o755); err != nil {
				return fmt.Errorf("create %s: %w", Dir, err)
			}
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("create namespace %s: %w", name, err)
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL, 0o444)
			if err != nil {
				return fmt.Errorf("create namespace %s: %w", name, err)
			}
			f.Close()
			if err := unix.Mount("/proc/thread-self/ns/net", p, "none", unix.MS_BIND, ""); err != nil {
				_ = os.Remove(p)
				return fmt.Errorf("mount namespace %s: %w", name, err)
			}
			return nil
		}()
	}()
	return <-errc
}

// bindHostNamespace mounts, in the caller's mount namespace, the namespace
// the host has at path (a namespace file may be bound across mount
// namespaces).
func bindHostNamespace(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL, 0o444)
		if err != nil {
			return err
		}
		f.Close()
	}
	if err := unix.Mount(hostRoot()+path, path, "none", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("mount the host's %s here: %w", path, err)
	}
	return nil
}
