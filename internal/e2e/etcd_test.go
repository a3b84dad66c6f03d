package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/lab/labtest"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/probe"
	"github.com/vxnet/vxnet/internal/testutil"
)

// TestEtcd runs the agents with --store etcd:// against a three-member
// etcd cluster (Debian's etcd-server) in namespaces on the underlay: the
// lab matrix holds (cross-host reachability, isolation between networks),
// trace works over etcd's request channel, a member killed mid-run and a
// partitioned one lose no attach and give no address twice, a dead agent's
// endpoints are withdrawn when its lease ends, and two agents with one
// name are refused.
func TestEtcd(t *testing.T) {
	l := upCfg(t, lab.Config{Hosts: 3, Networks: 2, PerHost: 1, Etcd: 3})
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range l.Etcd {
				b, _ := os.ReadFile(filepath.Join(e.Dir, "etcd.log"))
				t.Logf("log of %s (tail):\n%s", e.Name, tailLines(string(b), 15))
			}
		}
	})
	m := l.Matrix(time.Second)
	if !lab.MatrixOK(m) {
		var sb strings.Builder
		l.PrintMatrix(&sb, m)
		t.Fatalf("lab matrix over etcd:\n%s", sb.String())
	}
	if n := aliveCount(t, l, "h1"); n != 3 {
		t.Fatalf("h1 sees %d live members, want 3", n)
	}

	c1, c3 := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h3-n1-c1")
	step(t, "Trace", func(t *testing.T) {
		// The far host's taps are asked for through etcd.
		res, err := client(l, "h1").Trace(api.TraceRequest{Src: c1.IP.String(), Dst: c3.IP.String()})
		if err != nil {
			t.Fatal(err)
		}
		// Hop 4: h3's vxlan device, passed by where the fast path unwraps.
		if !res.Replied || len(res.Hops) != 12 || res.Hops[4].Host != "h3" || !res.Hops[4].Seen && !res.Hops[4].Bypassed {
			t.Fatalf("trace over etcd: replied %v, %d hops, %+v", res.Replied, len(res.Hops), res.Hops)
		}
	})

	// attachMany attaches n containers per host at once to net1 and
	// returns their addresses by name; every address must be new.
	seen := map[string]string{}
	attachMany := func(t *testing.T, round string, n int) []lab.Container {
		var mu sync.Mutex
		var wg sync.WaitGroup
		var out []lab.Container
		var errs []error
		for _, h := range l.Hosts {
			for i := range n {
				name := fmt.Sprintf("%s-%s-%d", h.Name, round, i)
				path := newContainer(t, l, name)
				wg.Add(1)
				go func() {
					defer wg.Done()
					att, err := client(l, h.Name).Attach(api.AttachRequest{Network: "net1", Netns: path})
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						errs = append(errs, fmt.Errorf("attach %s on %s: %w", name, h.Name, err))
						return
					}
					if other, dup := seen[att.IP]; dup {
						errs = append(errs, fmt.Errorf("address %s given to %s and to %s", att.IP, other, name))
					}
					seen[att.IP] = name
					pfx, err := netip.ParsePrefix(att.IP)
					if err != nil {
						errs = append(errs, fmt.Errorf("attach %s: address %q: %w", name, att.IP, err))
						return
					}
					out = append(out, lab.Container{Name: name, Host: h.Name, Netns: path, IP: pfx.Addr()})
				}()
			}
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		return out
	}
	reachAll := func(t *testing.T, cs []lab.Container) {
		t.Helper()
		for _, c := range cs {
			if err := waitCond(15*time.Second, func() error {
				_, err := probe.Ping(c1.Netns, c.IP, 56, false, 300*time.Millisecond)
				return err
			}); err != nil {
				for _, h := range l.Hosts {
					b, _ := os.ReadFile(filepath.Join(h.Dir, "agent.log"))
					var etcdLines []string
					for _, line := range strings.Split(string(b), "\n") {
						if strings.Contains(line, "etcd") {
							etcdLines = append(etcdLines, line)
						}
					}
					t.Logf("%s's etcd log lines:\n%s", h.Name, tailLines(strings.Join(etcdLines, "\n"), 10))
				}
				t.Fatalf("%s (%s on %s) not reachable from h1: %v", c.Name, c.IP, c.Host, err)
			}
		}
	}

	step(t, "EtcdMemberKilled", func(t *testing.T) {
		flow := startPingFlow(c1.Netns, c3.IP)
		if err := l.KillEtcd(0); err != nil {
			t.Fatal(err)
		}
		atKill := flow.sent.Load()
		// Attaches after the kill succeed: the store has a leader again
		// (elected anew if the dead member led), and the flow ran all along.
		cs := attachMany(t, "k", 5)
		reachAll(t, cs)
		if err := waitCond(10*time.Second, func() error {
			if n := flow.sent.Load() - atKill; n < 100 {
				return fmt.Errorf("the flow sent %d pings since the kill", n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if sent, lost := flow.stop(); lost > 0 {
			t.Errorf("a running flow lost %d of %d pings while an etcd member died", lost, sent)
		}
		if err := l.StartEtcd(0); err != nil {
			t.Fatal(err)
		}
	})

	step(t, "EtcdMemberPartitioned", func(t *testing.T) {
		setUnderlay(t, l, "etcd2", false)
		cs := attachMany(t, "p", 5)
		reachAll(t, cs)
		setUnderlay(t, l, "etcd2", true)
	})

	step(t, "AgentDiesLeaseEnds", func(t *testing.T) {
		h3, _ := l.Host("h3")
		if err := l.KillAgent("h3", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitForwards(t, l, "h1", h3.Addr, false, 30*time.Second)
		t.Logf("h3's endpoints withdrawn from h1 %s after its agent died (lease 5 s, grace 2 s)", time.Since(start).Round(time.Millisecond))
		if err := l.StartAgent("h3"); err != nil {
			t.Fatal(err)
		}
		waitForwards(t, l, "h1", h3.Addr, true, 30*time.Second)
		pingUntil(t, c1.Netns, c3.IP, 10*time.Second)
	})

	step(t, "DuplicateName", func(t *testing.T) {
		// A second agent named h1 at another address: etcd holds the name
		// for a live member (after the lease of a member that moved would
		// have run out), so it exits before programming anything.
		sh, err := l.AddSyntheticHost(202)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		tlsf := l.EtcdFiles()
		run := func(name string, args ...string) (string, error) {
			var out bytes.Buffer
			dir := filepath.Join(dir, name)
			all := append([]string{"agent", "--name", name, "--advertise-addr", sh.Addr.String(),
				"--store", "etcd://" + strings.Join(l.EtcdEndpoints(), ","), "--health-subnet", "off",
				"--state-dir", filepath.Join(dir, "state"), "--socket", filepath.Join(dir, "vxnet.sock"),
				"--gossip-port", fmt.Sprint(lab.GossipPort), "--vxlan-port", fmt.Sprint(lab.VXLANPort)}, args...)
			cmd := exec.Command(testutil.Binary(t), all...)
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := nsutil.Do(sh.Netns, cmd.Start); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				return out.String(), err
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-done
				t.Fatalf("agent %s still runs after 30 s; its output:\n%s", name, tailLines(out.String(), 20))
				return "", nil
			}
		}
		// Without a client certificate etcd refuses the agent.
		outNoCert, err := run("h9", "--etcd-cacert", tlsf.CA)
		if err == nil || !strings.Contains(outNoCert, "remote error: tls: bad certificate; no client certificate given: --etcd-cert and --etcd-key") {
			t.Fatalf("an agent without a client certificate: %v\n%s", err, tailLines(outNoCert, 10))
		}
		t.Logf("without a client certificate: %s", tailLines(outNoCert, 1))
		outStr, err := run("h1", "--etcd-cacert", tlsf.CA, "--etcd-cert", tlsf.ClientCert, "--etcd-key", tlsf.ClientKey)
		want := fmt.Sprintf(`member name already in use: a live member at 198.18.0.1 holds "h1" in etcd (this agent advertises %s): give each host its own --name`, sh.Addr)
		if err == nil || !strings.Contains(outStr, want) {
			t.Fatalf("second agent named h1 ended with %v; its output lacks %q:\n%s", err, want, tailLines(outStr, 20))
		}
		if n := aliveCount(t, l, "h2"); n != 3 {
			t.Fatalf("h2 sees %d live members after the impostor, want 3", n)
		}
		pingUntil(t, labtest.Container(t, l, "h2-n1-c1").Netns, c1.IP, 3*time.Second)
	})
}
