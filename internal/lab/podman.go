package lab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Podman is podman (CNI backend) on a lab host: its own storage, run and
// lock directories and CNI configuration; commands run in the host's
// network namespace, so the CNI plugins do too.
type Podman struct {
	Host    string
	Dir     string
	netns   string
	cgroups string
}

// StartPodman prepares podman on a host of an agent lab with the CNI
// plugins of pluginDirs (vxnet's first, then Debian's) and imports the
// image (as localhost/vxbox).
func (l *Lab) StartPodman(host string, pluginDirs ...string) (*Podman, error) {
	h, ok := l.Host(host)
	if !ok || h.Dir == "" {
		return nil, fmt.Errorf("host %q has no agent directory (podman needs an agent lab)", host)
	}
	p := &Podman{Host: host, Dir: filepath.Join(h.Dir, "podman"), netns: h.Netns, cgroups: l.cgroupParent(host)}
	for _, d := range []string{"net.d", "tmp"} {
		if err := os.MkdirAll(filepath.Join(p.Dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	quoted := make([]string, len(pluginDirs))
	for i, d := range pluginDirs {
		quoted[i] = fmt.Sprintf("%q", d)
	}
	conf := fmt.Sprintf(`[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = [%s]
network_config_dir = %q
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
tmp_dir = %q
runtime = "runc"
`, strings.Join(quoted, ", "), filepath.Join(p.Dir, "net.d"), filepath.Join(p.Dir, "tmp"))
	if err := os.WriteFile(filepath.Join(p.Dir, "containers.conf"), []byte(conf), 0o600); err != nil {
		return nil, err
	}
	img, err := busyboxImage()
	if err != nil {
		return nil, err
	}
	c := p.cmd("import", "-q", "-", "vxbox")
	c.Stdin = bytes.NewReader(img)
	if out, err := c.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("podman import on %s: %v: %s", host, err, out)
	}
	return p, nil
}

// AddNetwork writes a CNI network configuration list for podman.
func (p *Podman) AddNetwork(name string, conflist []byte) error {
	return os.WriteFile(filepath.Join(p.Dir, "net.d", name+".conflist"), conflist, 0o644)
}

func (p *Podman) cmd(args ...string) *exec.Cmd {
	full := append([]string{"--net=" + p.netns, "podman", "--root", filepath.Join(p.Dir, "root"),
		"--runroot", filepath.Join(p.Dir, "runroot")}, args...)
	c := exec.Command("nsenter", full...)
	c.Env = append(os.Environ(), "CONTAINERS_CONF="+filepath.Join(p.Dir, "containers.conf"))
	return c
}

// Run runs podman with args (run gets the lab's cgroup parent, so 'lab
// down' finds its containers even after a crash).
func (p *Podman) Run(args ...string) (string, error) {
	if len(args) > 0 && args[0] == "run" {
		args = append([]string{"run", "--cgroup-parent", p.cgroups}, args[1:]...)
	}
	out, err := p.cmd(args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("podman %s on %s: %w: %s", strings.Join(args, " "), p.Host, err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// Stop removes every container.
func (p *Podman) Stop() error {
	_, err := p.Run("rm", "-af", "-t", "0")
	return err
}
