package gossip

import (
	"fmt"
	"os"
	"strings"

	"github.com/vxnet/vxnet/internal/procnet"
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
		for _, ino := range procnet.Inodes(fh, port, strings.HasPrefix(f, "tcp")) {
			inodes[ino] = true
		}
		fh.Close()
	}
	for _, p := range procnet.Holders(inodes) {
		return fmt.Sprintf("%s (pid %d)", p.Comm, p.PID)
	}
	return ""
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
