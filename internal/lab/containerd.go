package lab

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vxnet/vxnet/internal/nsutil"
)

// Containerd is containerd on a lab host: its own root, state and socket,
// and `ctr` running containers with --cni from the host's network
// namespace. ctr reads CNI from fixed places (/etc/cni/net.d, /opt/cni/bin,
// its cache in /var/lib/cni): each ctr runs in a mount namespace of its
// own where those are the lab's directories, so the host's stay untouched.
type Containerd struct {
	Host   string
	Dir    string
	Socket string
	// Rootfs is a busybox root filesystem for `ctr run --rootfs`.
	Rootfs string
	// Cgroups is the cgroup parent of its containers ('lab down' kills
	// what is left in it): run them with --cgroup Cgroups/ID.
	Cgroups string
	netns   string
	pid     int
}

// StartContainerd starts containerd on a host of an agent lab, with the
// CNI plugins of pluginDirs (vxnet's first, then Debian's) for ctr.
func (l *Lab) StartContainerd(host string, pluginDirs ...string) (*Containerd, error) {
	h, ok := l.Host(host)
	if !ok || h.Dir == "" {
		return nil, fmt.Errorf("host %q has no agent directory (containerd needs an agent lab)", host)
	}
	c := &Containerd{Host: host, Dir: filepath.Join(h.Dir, "containerd"), netns: h.Netns, Cgroups: l.cgroupParent(host)}
	c.Socket, c.Rootfs = filepath.Join(c.Dir, "containerd.sock"), filepath.Join(c.Dir, "rootfs")
	for _, d := range []string{"root", "state", "net.d", "bin", "cache", "rootfs"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	// The plugins, first directory first (as a runtime's search path).
	for i := len(pluginDirs) - 1; i >= 0; i-- {
		ents, err := os.ReadDir(pluginDirs[i])
		if err != nil {
			return nil, fmt.Errorf("CNI plugins: %w", err)
		}
		for _, e := range ents {
			link := filepath.Join(c.Dir, "bin", e.Name())
			_ = os.Remove(link)
			if err := os.Symlink(filepath.Join(pluginDirs[i], e.Name()), link); err != nil {
				return nil, err
			}
		}
	}
	if err := writeRootfs(c.Rootfs); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n",
		filepath.Join(c.Dir, "root"), filepath.Join(c.Dir, "state"), c.Socket)
	confPath := filepath.Join(c.Dir, "config.toml")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(c.Dir, "containerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("containerd", "--config", confPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := nsutil.Do(h.Netns, cmd.Start); err != nil {
		return nil, fmt.Errorf("start containerd on %s: %w", host, err)
	}
	c.pid = cmd.Process.Pid
	go func() { _ = cmd.Wait() }() // reap
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := c.Ctr("version"); err == nil {
			return c, nil
		} else if time.Now().After(deadline) || syscall.Kill(c.pid, 0) != nil {
			b, _ := os.ReadFile(filepath.Join(c.Dir, "containerd.log"))
			_ = c.Stop()
			return nil, fmt.Errorf("containerd on %s did not come up (%v); its log:\n%s", host, err, tail(string(b), 1500))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// writeRootfs unpacks the busybox image into dir.
func writeRootfs(dir string) error {
	img, err := busyboxImage()
	if err != nil {
		return err
	}
	tr := tar.NewReader(bytes.NewReader(img))
	for {
		hd, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dir, filepath.Clean("/"+hd.Name))
		switch hd.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeSymlink:
			_ = os.Remove(p)
			err = os.Symlink(hd.Linkname, p)
		case tar.TypeReg:
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, b, os.FileMode(hd.Mode)&0o777)
			}
		}
		if err != nil {
			return fmt.Errorf("rootfs %s: %w", p, err)
		}
	}
}

// AddNetwork writes the CNI configuration ctr uses (it loads the first
// file of its directory: one network per containerd).
func (c *Containerd) AddNetwork(name string, conflist []byte) error {
	return os.WriteFile(filepath.Join(c.Dir, "net.d", "10-"+name+".conflist"), conflist, 0o644)
}

// Ctr runs ctr against this containerd in the host's network namespace,
// with the lab's CNI directories in place of the host's.
func (c *Containerd) Ctr(args ...string) (string, error) {
	script := strings.Join([]string{
		"set -e",
		"mount -t tmpfs -o size=1m vxnet-lab /opt", // /opt/cni/bin may not exist on the host
		"mkdir -p /opt/cni/bin /etc/cni/net.d /var/lib/cni",
		"mount --bind " + filepath.Join(c.Dir, "bin") + " /opt/cni/bin",
		"mount --bind " + filepath.Join(c.Dir, "net.d") + " /etc/cni/net.d",
		"mount --bind " + filepath.Join(c.Dir, "cache") + " /var/lib/cni",
		`exec ctr -a "$0" "$@"`,
	}, "\n")
	full := append([]string{"--net=" + c.netns, "unshare", "--mount", "--propagation", "private", "sh", "-c", script, c.Socket}, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s on %s: %w: %s", strings.Join(args, " "), c.Host, err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// Stop kills every task and stops containerd.
func (c *Containerd) Stop() error {
	if out, err := c.Ctr("tasks", "ls", "-q"); err == nil {
		for _, id := range strings.Fields(out) {
			_, _ = c.Ctr("tasks", "kill", "-s", "SIGKILL", id)
			_, _ = c.Ctr("tasks", "delete", "-f", id)
			_, _ = c.Ctr("containers", "delete", id)
		}
	}
	if c.pid == 0 {
		return nil
	}
	_ = syscall.Kill(c.pid, syscall.SIGTERM)
	waitGone([]int{c.pid}, 5*time.Second)
	_ = syscall.Kill(c.pid, syscall.SIGKILL)
	return nil
}
