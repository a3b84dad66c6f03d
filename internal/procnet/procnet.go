// Package procnet reads what /proc says of sockets: the inodes bound to a
// port in the caller's network namespace, and the processes holding them.
package procnet

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Process is a process holding a socket.
type Process struct {
	PID  int
	Comm string
}

// Inodes reads a /proc/net/{tcp,udp}[6] table and returns the inodes of
// the sockets bound to port (with listening, TCP listeners only).
func Inodes(r io.Reader, port int, listening bool) []string {
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
		if !ok || err != nil || (port != 0 && int(p) != port) {
			continue
		}
		if listening && f[3] != "0A" { // TCP_LISTEN
			continue
		}
		out = append(out, f[9])
	}
	return out
}

// Holders names the processes holding the given socket inodes, by inode
// (those this process may not look into are missing).
func Holders(inodes map[string]bool) map[string]Process {
	out := map[string]Process{}
	if len(inodes) == 0 {
		return out
	}
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		target, err := os.Readlink(fd)
		if err != nil {
			continue
		}
		ino, ok := strings.CutPrefix(target, "socket:[")
		if ino = strings.TrimSuffix(ino, "]"); !ok || !inodes[ino] {
			continue
		}
		pid, _ := strconv.Atoi(strings.Split(fd, "/")[2])
		comm, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
		out[ino] = Process{PID: pid, Comm: strings.TrimSpace(string(comm))}
	}
	return out
}
