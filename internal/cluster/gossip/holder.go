package gossip

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// portHolder names the process that holds a local TCP or UDP port in the
// caller's network namespace ("dockerd (pid 812)"), or "" when it cannot
// tell (another namespace's process, no permission to look).
func portHolder(port int) string {
	inodes := map[string]bool{}
	for _, f := range []string{"tcp", "tcp6", "udp", "udp6"} {
		fh, err := os.Open("/proc/net/" + f)
		if err != nil {
			continue
		}
		for _, ino := range socketInodes(fh, port, strings.HasPrefix(f, "tcp")) {
			inodes[ino] = true
		}
		fh.Close()
	}
	if len(inodes) == 0 {
		return ""
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		fds, _ := os.ReadDir(filepath.Join(p, "fd"))
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(p, "fd", fd.Name()))
			if err != nil {
				continue
			}
			if ino, ok := strings.CutPrefix(link, "socket:["); ok && inodes[strings.TrimSuffix(ino, "]")] {
				comm, _ := os.ReadFile(filepath.Join(p, "comm"))
				return fmt.Sprintf("%s (pid %s)", strings.TrimSpace(string(comm)), filepath.Base(p))
			}
		}
	}
	return ""
}

// socketInodes reads a /proc/net/{tcp,udp}[6] table and returns the inodes
// of the sockets bound to port (for TCP, listening ones only).
func socketInodes(r io.Reader, port int, tcp bool) []string {
	var out []string
	sc := bufio.NewScanner(r)
	sc.Scan() // the header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		_, hexPort, ok := strings.Cut(f[1], ":")
		p, err := strconv.ParseUint(hexPort, 16, 16)
		if !ok || err != nil || int(p) != port {
			continue
		}
		if tcp && f[3] != "0A" { // TCP_LISTEN
			continue
		}
		out = append(out, f[9])
	}
	return out
}

// inUseError explains a gossip port that another program holds.
func inUseError(port, legacy int, err error) error {
	who := portHolder(port)
	if who == "" {
		who = "another program"
	}
	hint := ""
	if port == legacy {
		hint = " (Docker Swarm, Serf and Consul use it too)"
	}
	return fmt.Errorf("gossip port %d%s is held by %s: give vxnet a free one with --gossip-port (or \"gossip-port\" in the agent's config file), the same on every host is simplest: %w",
		port, hint, who, err)
}
