package lab

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vxnet/vxnet/internal/nsutil"
)

// EtcdAddr is the underlay address of the lab's i-th (1-based) etcd member.
func EtcdAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(210 + i)}) }

// EtcdEndpoints returns the client endpoints (HOST:PORT) of the lab's etcd.
func (l *Lab) EtcdEndpoints() []string {
	var out []string
	for _, e := range l.Etcd {
		out = append(out, e.Addr.String()+":2379")
	}
	return out
}

// StartEtcd starts etcd member i (0-based) in its namespace (Debian's
// etcd-server); its data stays in the lab directory across restarts.
func (l *Lab) StartEtcd(i int) error {
	if _, err := exec.LookPath("etcd"); err != nil {
		return fmt.Errorf("etcd not found: install Debian's etcd-server (scripts/deps.sh does): %w", err)
	}
	e := &l.Etcd[i]
	var peers []string
	for _, o := range l.Etcd {
		peers = append(peers, fmt.Sprintf("%s=http://%s:2380", o.Name, o.Addr))
	}
	if err := os.MkdirAll(e.Dir, 0o700); err != nil {
		return err
	}
	state := "new"
	if _, err := os.Stat(filepath.Join(e.Dir, "data", "member")); err == nil {
		state = "existing"
	}
	a := e.Addr.String()
	cert, key := l.etcdServerFiles(e.Name)
	// Clients over TLS with certificates (as etcd is run in production);
	// the members' own traffic plain, on the lab's underlay.
	cmd := exec.Command("etcd", "--name", e.Name, "--data-dir", filepath.Join(e.Dir, "data"),
		"--listen-client-urls", "https://"+a+":2379", "--advertise-client-urls", "https://"+a+":2379",
		"--cert-file", cert, "--key-file", key, "--client-cert-auth", "--trusted-ca-file", l.EtcdFiles().CA,
		"--listen-peer-urls", "http://"+a+":2380", "--initial-advertise-peer-urls", "http://"+a+":2380",
		"--initial-cluster", strings.Join(peers, ","), "--initial-cluster-state", state,
		"--initial-cluster-token", l.Prefix+"etcd",
		// Faster elections than the defaults (100 ms / 1 s), as on a LAN.
		"--heartbeat-interval", "100", "--election-timeout", "500")
	logf, err := os.OpenFile(filepath.Join(e.Dir, "etcd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := nsutil.Do(e.Netns, cmd.Start); err != nil {
		return fmt.Errorf("start %s: %w", e.Name, err)
	}
	e.PID = cmd.Process.Pid
	go func() { _ = cmd.Wait() }()
	return l.save()
}

// KillEtcd kills etcd member i (0-based) with SIGKILL and waits for it.
func (l *Lab) KillEtcd(i int) error {
	e := &l.Etcd[i]
	if e.PID == 0 {
		return fmt.Errorf("%s is not running", e.Name)
	}
	_ = syscall.Kill(e.PID, syscall.SIGKILL)
	waitGone([]int{e.PID}, 5*time.Second)
	e.PID = 0
	return l.save()
}

// WaitEtcd waits until every running etcd member serves clients and the
// cluster has a leader, read from their logs (this process makes no
// connection: it does not live in the lab's namespaces).
func (l *Lab) WaitEtcd(timeout time.Duration) error {
	if len(l.Etcd) == 0 {
		return nil
	}
	deadline := time.Now().Add(timeout)
	for {
		ready, leader := 0, false
		running := 0
		for _, e := range l.Etcd {
			if e.PID == 0 {
				continue
			}
			running++
			b, _ := os.ReadFile(filepath.Join(e.Dir, "etcd.log"))
			if strings.Contains(string(b), "ready to serve client requests") {
				ready++
			}
			if strings.Contains(string(b), "elected leader") || strings.Contains(string(b), "became leader") {
				leader = true
			}
		}
		if ready == running && leader {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd of lab %s: %d of %d members ready, leader elected: %v after %s", l.Name, ready, running, leader, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
