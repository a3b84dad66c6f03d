package lab

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vxnet/vxnet/internal/nsutil"
)

// Dockerd is a real Docker daemon running in a lab host's namespace, in a
// private mount namespace where the host's vxnet plugin directory is
// bind-mounted on /run/docker/plugins.
type Dockerd struct {
	Host   string
	Dir    string
	Socket string
	PID    int
}

// DockerImage is the image every lab dockerd gets: busybox and its applets.
const DockerImage = "vxbox:latest"

// PluginSocket is the agent's Docker plugin socket of a host.
func (h Host) PluginSocket() string { return filepath.Join(h.Dir, "plugins", "vxnet.sock") }

func (l *Lab) cgroupParent(host string) string { return l.Prefix + host }

// StartDocker starts dockerd on a host of an agent lab, with its defaults
// as users run it (iptables on: FORWARD policy DROP, br_netfilter, its own
// NAT) plus extra flags, and imports the image. Its upstream DNS server is
// the lab's outside machine, never this machine's resolver.
func (l *Lab) StartDocker(host string, extra ...string) (*Dockerd, error) {
	h, ok := l.Host(host)
	if !ok || h.Dir == "" {
		return nil, fmt.Errorf("host %q has no agent directory (docker needs an agent lab)", host)
	}
	d := &Dockerd{Host: host, Dir: filepath.Join(h.Dir, "docker")}
	d.Socket = filepath.Join(d.Dir, "docker.sock")
	if err := os.MkdirAll(filepath.Join(h.Dir, "plugins"), 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return nil, err
	}
	// A fresh host does not forward IP: dockerd turns forwarding on and,
	// because it did, sets the FORWARD policy to DROP. Start it from there,
	// as on a user's host (a lab host forwards from the start).
	if err := nsutil.Do(h.Netns, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("0\n"), 0o644)
	}); err != nil {
		return nil, fmt.Errorf("reset forwarding on %s: %w", host, err)
	}
	script := strings.Join([]string{
		"set -e",
		"mkdir -p /run/docker/plugins",
		"mount --bind " + filepath.Join(h.Dir, "plugins") + " /run/docker/plugins",
		"exec dockerd --data-root " + filepath.Join(d.Dir, "data") + " --exec-root " + filepath.Join(d.Dir, "exec") +
			" -H unix://" + d.Socket + " --pidfile " + filepath.Join(d.Dir, "docker.pid") +
			" --dns " + OutsideAddr.String() + " --cgroup-parent " + l.cgroupParent(host) +
			" " + strings.Join(extra, " "),
	}, "\n")
	logf, err := os.OpenFile(filepath.Join(d.Dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := nsutil.Do(h.Netns, cmd.Start); err != nil {
		return nil, fmt.Errorf("start dockerd on %s: %w", host, err)
	}
	d.PID = cmd.Process.Pid
	go func() { _ = cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if out, err := d.Docker("version", "--format", "{{.Server.Version}}"); err == nil && strings.TrimSpace(out) != "" {
			break
		}
		if syscall.Kill(d.PID, 0) != nil || time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(d.Dir, "dockerd.log"))
			return nil, fmt.Errorf("dockerd on %s did not come up:\n%s", host, tail(string(b), 3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	img, err := busyboxImage()
	if err != nil {
		return nil, err
	}
	c := exec.Command("docker", "-H", "unix://"+d.Socket, "import", "-", DockerImage)
	c.Stdin = bytes.NewReader(img)
	if out, err := c.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("docker import on %s: %v: %s", host, err, out)
	}
	return d, nil
}

// Docker runs the docker CLI against this daemon.
func (d *Dockerd) Docker(args ...string) (string, error) {
	c := exec.Command("docker", append([]string{"-H", "unix://" + d.Socket}, args...)...)
	out, err := c.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s on %s: %w: %s", strings.Join(args, " "), d.Host, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// WaitNetwork waits up to timeout until the vxnet network name is in this
// daemon's network list (present) or gone from it (not present): the
// agent puts the cluster's networks into its dockerd.
func (d *Dockerd) WaitNetwork(name string, present bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		out, err := d.Docker("network", "ls", "--filter", "driver=vxnet", "--format", "{{.Name}}")
		found := err == nil && slices.Contains(strings.Fields(out), name)
		if err == nil && found == present {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return err
			}
			return fmt.Errorf("docker network %s present=%v on %s after %s, want %v", name, found, d.Host, timeout, present)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop removes every container and stops the daemon.
func (d *Dockerd) Stop() error {
	if out, err := d.Docker("ps", "-aq"); err == nil {
		if ids := strings.Fields(out); len(ids) > 0 {
			_, _ = d.Docker(append([]string{"rm", "-f"}, ids...)...)
		}
	}
	return d.Kill(syscall.SIGTERM)
}

// Kill signals dockerd and waits for it to exit.
func (d *Dockerd) Kill(sig syscall.Signal) error {
	if err := syscall.Kill(d.PID, sig); err != nil {
		return fmt.Errorf("signal dockerd of %s: %w", d.Host, err)
	}
	waitGone([]int{d.PID}, 30*time.Second)
	return nil
}

// busyboxImage is a root file system tarball of /bin/busybox and its
// applets, for docker import and podman import.
func busyboxImage() ([]byte, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox (install busybox-static): %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/"}
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb))}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bb); err != nil {
		return nil, err
	}
	for _, a := range []string{"sh", "ping", "ip", "nc", "sleep", "cat", "ls", "ifconfig", "echo", "true", "wget", "hostname", "arp", "nslookup", "httpd", "mkdir"} {
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// killCgroups kills every process in the lab's container cgroups (Docker
// containers run in their own network namespaces, so they are not found
// by namespace).
func killCgroups(prefix string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + prefix + "*")
	unified, _ := filepath.Glob("/sys/fs/cgroup/" + prefix + "*")
	for _, root := range append(roots, unified...) {
		_ = filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
			if err != nil || info.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			return nil
		})
	}
	time.Sleep(100 * time.Millisecond)
	for _, root := range append(roots, unified...) {
		// Remove the (now empty) cgroup directories, deepest first.
		var dirs []string
		_ = filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
			if err == nil && info.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			_ = syscall.Rmdir(dirs[i])
		}
	}
}
