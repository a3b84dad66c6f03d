package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/doctor"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/lab/labtest"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/testutil"
	"github.com/vxnet/vxnet/internal/unixhttp"
)

// healthOf returns what host's agent says of the path to peer.
func healthOf(l *lab.Lab, host, peer string) (health.Peer, error) {
	h, err := client(l, host).Health(false)
	if err != nil {
		return health.Peer{}, err
	}
	for _, p := range h.Peers {
		if p.Node == peer {
			return p, nil
		}
	}
	return health.Peer{}, fmt.Errorf("%s has no verdict on %s (%+v)", host, peer, h)
}

// waitHealth waits until every pair in want has the given state, and
// returns how long that took.
func waitHealth(t *testing.T, l *lab.Lab, timeout time.Duration, want map[[2]string]health.Verdict) time.Duration {
	t.Helper()
	start := time.Now()
	err := waitCond(timeout, func() error {
		for pair, st := range want {
			p, err := healthOf(l, pair[0], pair[1])
			if err != nil {
				return err
			}
			if p.State != st {
				return fmt.Errorf("%s sees %s %s (%s), want %s", pair[0], pair[1], p.State, p.Cause, st)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

func allPairs(hosts []string, st health.Verdict) map[[2]string]health.Verdict {
	out := map[[2]string]health.Verdict{}
	for _, a := range hosts {
		for _, b := range hosts {
			if a != b {
				out[[2]string{a, b}] = st
			}
		}
	}
	return out
}

// TestHealth puts the lab's faults on the underlay and checks that the
// health probes find each within 10 s and the doctor names its cause:
// VXLAN dropped between one pair of hosts only (a rule in the underlay
// switch), a black hole for full-size frames on one host's underlay link
// (its switch port's MTU lowered: small frames pass, full-size ones are
// dropped without a word), Docker's FORWARD DROP without vxnet's rules, a
// program on the VXLAN port, and the health namespace deleted by hand.
// Gossip keeps working through all of them, so membership alone would say
// all is well.
func TestHealth(t *testing.T) {
	l := up(t, 3, 1, 1)
	hosts := []string{"h1", "h2", "h3"}
	waitHealth(t, l, 20*time.Second, allPairs(hosts, health.OK))
	h1, _ := l.Host("h1")
	h2, _ := l.Host("h2")
	h3, _ := l.Host("h3")
	sw := nsutil.Path(l.Switch)

	c1, c3 := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h3-n1-c1")
	step(t, "TraceHealthy", func(t *testing.T) {
		res, err := client(l, "h1").Trace(api.TraceRequest{Src: c1.IP.String(), Dst: c3.IP.String()})
		if err != nil {
			t.Fatal(err)
		}
		var walked []string
		for _, h := range res.Hops {
			seen := fmt.Sprint(h.Seen)
			if h.Bypassed {
				seen = "bypassed"
			}
			walked = append(walked, fmt.Sprintf("%s %s %s %s", h.Host, h.Point, h.Dir, seen))
			if !h.Seen && !h.Bypassed {
				t.Errorf("hop not seen on a healthy path: %+v", h)
			}
		}
		// On the fast path the programs wrap and unwrap the frames
		// themselves: the vxlan devices see nothing, either way.
		vx := "true"
		if onFastPath(t, l, "h1") {
			vx = "bypassed"
		}
		want := []string{"h1 container veth request true", "h1 vxlan request " + vx, "h1 underlay request true",
			"h3 underlay request true", "h3 vxlan request " + vx, "h3 destination veth request true",
			"h3 destination veth reply true", "h3 vxlan reply " + vx, "h3 underlay reply true",
			"h1 underlay reply true", "h1 vxlan reply " + vx, "h1 container veth reply true"}
		if strings.Join(walked, "\n") != strings.Join(want, "\n") || !res.Replied || res.Vanished != "" {
			t.Fatalf("walk:\n%s\nwant\n%s\n(replied %v, vanished %q)", strings.Join(walked, "\n"), strings.Join(want, "\n"), res.Replied, res.Vanished)
		}
		wantEncap := fmt.Sprintf("VXLAN VNI %d, %s -> %s", res.VNI, h1.Addr, h3.Addr)
		if !strings.HasPrefix(res.Hops[2].Detail, wantEncap) || !strings.HasPrefix(res.Hops[3].Detail, wantEncap) {
			t.Fatalf("underlay hops %q / %q, want %q", res.Hops[2].Detail, res.Hops[3].Detail, wantEncap)
		}
	})

	step(t, "VXLANDroppedBetweenOnePair", func(t *testing.T) {
		rules := fmt.Sprintf(`table bridge vxtest {
	chain cut {
		type filter hook forward priority 0;
		ip saddr %[1]s ip daddr %[2]s udp dport %[3]d drop
		ip saddr %[2]s ip daddr %[1]s udp dport %[3]d drop
	}
}
`, h1.Addr, h3.Addr, lab.VXLANPort)
		nftIn(t, sw, rules)
		took := waitHealth(t, l, 10*time.Second, map[[2]string]health.Verdict{
			{"h1", "h3"}: health.Unreachable, {"h3", "h1"}: health.Unreachable,
			{"h1", "h2"}: health.OK, {"h2", "h3"}: health.OK, {"h2", "h1"}: health.OK})
		t.Logf("found in %s", took.Round(time.Millisecond))
		out, err := doctorIn(t, h1.Netns, "--socket", h1.Socket)
		f := out["overlay-paths"]
		wantEv := fmt.Sprintf("the overlay path to h3 (%s) is unreachable", h3.Addr)
		wantFix := fmt.Sprintf("let UDP %d (VXLAN) through between %s and h3 (%s)", lab.VXLANPort, h1.Addr, h3.Addr)
		if err == nil || f.Level != doctor.Fail || !strings.Contains(f.Evidence, wantEv) || !strings.Contains(f.Evidence, "while gossip reaches it") || !strings.Contains(f.Fix, wantFix) {
			t.Fatalf("doctor on h1 (exit %v): %+v\nwant evidence %q and fix %q", err, f, wantEv, wantFix)
		}
		// The cluster's matrix, from another member: the broken pair and
		// only it.
		err = waitCond(10*time.Second, func() error {
			m := healthMatrix(t, l, "h2")
			if m["h1"]["h3"] != health.Unreachable || m["h3"]["h1"] != health.Unreachable || m["h1"]["h2"] != health.OK || m["h3"]["h2"] != health.OK {
				return fmt.Errorf("h2's cluster matrix: %v", m)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		// The trace shows where the frame dies: sent by h1, never on h3.
		res, err := client(l, "h1").Trace(api.TraceRequest{Src: c1.IP.String(), Dst: c3.IP.String()})
		if err != nil {
			t.Fatal(err)
		}
		wantWhy := fmt.Sprintf("lost on the underlay between h1 and h3: a firewall or the network drops UDP %d between the two hosts", lab.VXLANPort)
		if res.Replied || !strings.HasPrefix(res.Vanished, "h3 underlay (eth0, request)") || !strings.HasPrefix(res.Why, wantWhy) || !res.Hops[2].Seen {
			t.Fatalf("trace across the cut: vanished %q, why %q, hops %+v", res.Vanished, res.Why, res.Hops)
		}
		// The live page, in a real browser, from h1's agent: the grid shows
		// the broken pair and only it.
		page := fmt.Sprintf("http://%s/", netip.AddrPortFrom(h1.Addr, lab.MetricsPort))
		err = waitCond(20*time.Second, func() error {
			dom := browse(t, h1.Netns, "--dump-dom", page)
			for _, want := range []string{
				`<td class="cell unreachable" data-from="h1" data-to="h3"`, `<td class="cell unreachable" data-from="h3" data-to="h1"`,
				`<td class="cell ok" data-from="h1" data-to="h2"`, `<td class="cell ok" data-from="h2" data-to="h3"`,
				`<td>198.19.1.`, `<td>attach</td>`, // an endpoint row, attached through the API
				`<td>VXLAN</td>`, // how the network is carried
			} {
				if !strings.Contains(dom, want) {
					return fmt.Errorf("the page lacks %s; its DOM:\n%s", want, tailLines(dom, 40))
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if shot := os.Getenv("VXNET_SCREENSHOT"); shot != "" {
			browse(t, h1.Netns, "--window-size=1100,760", "--screenshot="+shot, page)
			t.Logf("screenshot of the page in %s", shot)
		}
		nftIn(t, sw, "delete table bridge vxtest\n")
		waitHealth(t, l, 15*time.Second, allPairs(hosts, health.OK))
	})

	step(t, "MTUBlackHole", func(t *testing.T) {
		inNS(t, sw, "ip", "link", "set", "dev", "h2", "mtu", "1400")
		defer inNS(t, sw, "ip", "link", "set", "dev", "h2", "mtu", fmt.Sprint(lab.UnderlayMTU))
		took := waitHealth(t, l, 10*time.Second, map[[2]string]health.Verdict{
			{"h1", "h2"}: health.MTU, {"h3", "h2"}: health.MTU, {"h2", "h1"}: health.MTU,
			{"h1", "h3"}: health.OK})
		t.Logf("found in %s", took.Round(time.Millisecond))
		// Small packets still pass: ping works, which is why this fault hides.
		c2 := labtest.Container(t, l, "h2-n1-c1")
		pingUntil(t, c1.Netns, c2.IP, 3*time.Second)
		// A full-size trace dies on the underlay (here on the reply's way
		// out of h2, through the narrow port); a small one makes it.
		c2addr := c2.IP.String()
		res, err := client(l, "h1").Trace(api.TraceRequest{Src: c1.IP.String(), Dst: c2addr, Size: 1422})
		if err != nil {
			t.Fatal(err)
		}
		if res.Replied || !strings.Contains(res.Vanished, " underlay (eth0, ") || !strings.Contains(res.Why, "lost on the underlay between") ||
			!strings.Contains(res.Why, "h2") || !strings.Contains(res.Why, "or the path MTU is below 1500 bytes") {
			t.Fatalf("full-size trace into the black hole: vanished %q, why %q", res.Vanished, res.Why)
		}
		if res, err := client(l, "h1").Trace(api.TraceRequest{Src: c1.IP.String(), Dst: c2addr}); err != nil || !res.Replied {
			t.Fatalf("small trace through the black hole: %+v, %v", res, err)
		}
		out, err := doctorIn(t, h1.Netns, "--socket", h1.Socket)
		f := out["overlay-paths"]
		want := fmt.Sprintf("full-size frames to h2 (%s) are lost: probes of 1450 bytes with DF (1500 on the wire with VXLAN's 50) go unanswered while small ones pass", h2.Addr)
		if err == nil || f.Level != doctor.Fail || !strings.Contains(f.Evidence, want) {
			t.Fatalf("doctor on h1 (exit %v): %+v\nwant %q", err, f, want)
		}
	})
	waitHealth(t, l, 15*time.Second, allPairs(hosts, health.OK))

	step(t, "ForwardDropWithoutVxnetRules", func(t *testing.T) {
		// Docker's FORWARD DROP, with vxnet's jump gone (another tool
		// flushed FORWARD): h2's bridged traffic is dropped in both
		// directions, and the next pass puts the jump back.
		inNS(t, h2.Netns, "iptables", "-P", "FORWARD", "DROP")
		defer inNS(t, h2.Netns, "iptables", "-P", "FORWARD", "ACCEPT")
		// A tool that keeps flushing (a firewall manager reloading): vxnet
		// puts its jump back on its next pass, the tool takes it out again.
		stop := make(chan struct{})
		flushed := make(chan struct{})
		go func() {
			defer close(flushed)
			for {
				_ = nsutil.Do(h2.Netns, func() error {
					return exec.Command("iptables", "-D", "FORWARD", "-j", "VXNET-FORWARD").Run()
				})
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
		stopFlushing := func() {
			select {
			case <-stop:
			default:
				close(stop)
				<-flushed
			}
		}
		defer stopFlushing()
		if onFastPath(t, l, "h2") {
			// The probes are unicast inside the health network: on the
			// fast path they never meet the FORWARD chain, and stay ok:
			// after more rounds than a verdict takes, the verdict on h2
			// has not changed since before the flush.
			flushed := time.Now()
			if err := waitCond(15*time.Second, func() error {
				h, err := client(l, "h1").Health(false)
				if err != nil {
					return err
				}
				if h.At.Before(flushed.Add(4 * time.Second)) {
					return fmt.Errorf("h1's last probe round was at %s", h.At.Format(time.StampMilli))
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			p, err := healthOf(l, "h1", "h2")
			if err != nil || p.State != health.OK || p.Since.After(flushed) {
				t.Fatalf("h1 sees h2 %+v (%v): on the fast path the flush must not change the verdict", p, err)
			}
		} else {
			waitHealth(t, l, 10*time.Second, map[[2]string]health.Verdict{{"h1", "h2"}: health.Unreachable, {"h1", "h3"}: health.OK})
		}
		out, _ := doctorIn(t, h2.Netns, "--socket", h2.Socket)
		if f := out["forwarding"]; f.Level != doctor.Fail || !strings.Contains(f.Evidence, "vxnet's VXNET-FORWARD rules are missing") {
			t.Fatalf("doctor on h2: %+v", f)
		}
		stopFlushing()
		// vxnet restores its rules within a resync, and the path heals.
		waitHealth(t, l, 20*time.Second, map[[2]string]health.Verdict{{"h1", "h2"}: health.OK, {"h2", "h1"}: health.OK})
	})

	step(t, "RoguePortHolder", func(t *testing.T) {
		// A program on h3 took the VXLAN port while vxnet's devices were
		// gone (another overlay, a test tool): h3's agent cannot make them
		// again, its peers find h3 unreachable, and its doctor names the
		// program.
		if err := l.KillAgent("h3", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for _, vni := range []uint32{l.Networks[0].VNI, model.HealthVNI} {
			inNS(t, h3.Netns, "ip", "link", "del", datapath.VxlanName(vni))
		}
		var pc net.PacketConn
		if err := nsutil.Do(h3.Netns, func() error {
			var err error
			pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", lab.VXLANPort))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		closed := false
		defer func() {
			if !closed {
				pc.Close()
			}
		}()
		if err := l.StartAgent("h3"); err != nil {
			t.Fatal(err)
		}
		took := waitHealth(t, l, 10*time.Second, map[[2]string]health.Verdict{
			{"h1", "h3"}: health.Unreachable, {"h2", "h3"}: health.Unreachable, {"h1", "h2"}: health.OK})
		t.Logf("found in %s", took.Round(time.Millisecond))
		out, err := doctorIn(t, h3.Netns, "--socket", h3.Socket)
		want := fmt.Sprintf("UDP %d is held by pid %d (", lab.VXLANPort, os.Getpid())
		if f := out["vxlan-port"]; err == nil || f.Level != doctor.Fail || !strings.HasPrefix(f.Evidence, want) {
			t.Fatalf("doctor on h3 (exit %v): %+v, want evidence starting %q", err, f, want)
		}
		pc.Close()
		closed = true
		waitHealth(t, l, 40*time.Second, allPairs(hosts, health.OK))
	})

	step(t, "HealthNamespaceDeleted", func(t *testing.T) {
		// Someone removes h2's health namespace: its peers see h2's
		// endpoint go, h2's agent makes both again, and the paths heal.
		deleted := time.Now()
		if err := nsutil.Delete(l.HealthNetns("h2")); err != nil {
			t.Fatal(err)
		}
		// h2's next loop turn sweeps the endpoint whose namespace is gone
		// (a pass, then the sweep, at the latest at the resync).
		waitPassAfter(t, l, "h2", deleted)
		if err := waitCond(10*time.Second, func() error {
			if p, err := healthOf(l, "h1", "h2"); err == nil && p.State == health.OK {
				return errors.New("h1 still sees h2 ok")
			}
			return nil // unreachable, or no verdict once h2's endpoint is gone
		}); err != nil {
			t.Fatal(err)
		}
		waitHealth(t, l, 40*time.Second, allPairs(hosts, health.OK))
	})
}

// nftIn loads an nft ruleset inside a namespace.
func nftIn(t *testing.T, ns, rules string) {
	t.Helper()
	var out []byte
	err := nsutil.Do(ns, func() error {
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("nft: %v: %s\n%s", err, out, rules)
	}
}

// healthMatrix runs 'vxnet health --all --json' against host's agent and
// returns the states by prober and probed.
func healthMatrix(t *testing.T, l *lab.Lab, host string) map[string]map[string]health.Verdict {
	t.Helper()
	h, _ := l.Host(host)
	out, err := exec.Command(testutil.Binary(t), "health", "--all", "--json", "--socket", h.Socket).Output()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	var hv api.Health
	if err := json.Unmarshal(out, &hv); err != nil {
		t.Fatalf("health --all --json: %v\n%s", err, out)
	}
	m := map[string]map[string]health.Verdict{}
	for _, r := range hv.All {
		m[r.Node] = map[string]health.Verdict{}
		for _, p := range r.Peers {
			m[r.Node][p.Node] = p.State
		}
	}
	return m
}

// browse runs headless Chromium inside a namespace on url with the given
// flags (--dump-dom, --screenshot=FILE) and returns what it printed.
func browse(t *testing.T, ns string, args ...string) string {
	t.Helper()
	bin := "/usr/lib/chromium/chromium" // the Debian wrapper's /dev/shm check misfires here
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("VXNET_REQUIRE_ROOT") == "1" {
			t.Fatal("chromium is not installed (apt-get install chromium)")
		}
		t.Skip("skipping: chromium is not installed")
	}
	dir := t.TempDir()
	flags := append([]string{"--headless=new", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + filepath.Join(dir, "profile"),
		"--virtual-time-budget=3000", "--hide-scrollbars", "--disable-dev-shm-usage"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := nsutil.Do(ns, func() error {
		cmd := exec.CommandContext(ctx, bin, flags...)
		cmd.Env = append(os.Environ(), "TMPDIR="+dir, "XDG_CONFIG_HOME="+filepath.Join(dir, "cfg"), "XDG_CACHE_HOME="+filepath.Join(dir, "cache"))
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		return cmd.Run()
	})
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, tailLines(stderr.String(), 20))
	}
	return stdout.String()
}

// TestHealthSandboxedRestart runs the agents the way the packaged unit does
// (a mount namespace of its own, slave propagation, the unit's capabilities,
// 'vxnet agent --prepare' first, as its ExecStartPre=+) and, separately,
// under 'ip netns exec'; restarts it (SIGTERM, as systemctl restart and
// every upgrade do) and kills it with -9 and starts it again. Each time the
// health matrix comes back to ok both ways, and the host's /run/netns holds
// the health namespace as a real namespace, the one the agent uses (same
// inode), with the health endpoint in it. A namespace made inside the
// agent's own mount namespace would leave the host an empty file, which
// the next agent reused and failed on forever.
func TestHealthSandboxedRestart(t *testing.T) {
	for _, sandbox := range []string{lab.SandboxUnit, lab.SandboxNetnsExec} {
		t.Run(sandbox, func(t *testing.T) {
			l := upCfg(t, lab.Config{Hosts: 2, Networks: 1, PerHost: 1, Sandbox: sandbox})
			name := l.HealthNetns("h2")
			checkHealthNamespaceOnHost(t, l, "h1", l.HealthNetns("h1"))
			for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGTERM, syscall.SIGKILL} {
				if err := l.KillAgent("h2", sig); err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				if err := l.StartAgent("h2"); err != nil {
					t.Fatal(err)
				}
				took := waitHealth(t, l, 15*time.Second, allPairs([]string{"h1", "h2"}, health.OK))
				h, err := client(l, "h2").Health(false)
				if err != nil {
					t.Fatal(err)
				}
				if h.At.Before(start) || h.Error != "" || h.Warning != "" {
					t.Fatalf("start %d (%s): h2's own view is as of %s (started %s), error %q, warning %q", i+1, sig, h.At, start, h.Error, h.Warning)
				}
				t.Logf("start %d after %s: health ok both ways %s after the agent answered", i+1, sig, took.Round(time.Millisecond))
				checkHealthNamespaceOnHost(t, l, "h2", name)
				// The Docker plugin socket (a file, not a mount) is the
				// host's too: dockerd, outside the sandbox, activates it.
				h2, _ := l.Host("h2")
				res, err := unixhttp.New(h2.PluginSocket()).Call("POST", "/Plugin.Activate", nil, 4096)
				if err != nil || res.Code != 200 || !strings.Contains(string(res.Body), "NetworkDriver") {
					t.Fatalf("start %d: the Docker plugin socket %s, seen from the host: %v %+v", i+1, h2.PluginSocket(), err, res)
				}
			}
		})
	}
}

// checkHealthNamespaceOnHost checks that the host's /run/netns/NAME is a
// namespace, the one host's agent sees there, that `ip netns list` names
// it and that the health endpoint is inside.
func checkHealthNamespaceOnHost(t *testing.T, l *lab.Lab, host, name string) {
	t.Helper()
	path := nsutil.Path(name)
	if !nsutil.IsNamespace(path) {
		t.Fatalf("the host's %s is no namespace (an empty file left by a mount namespace that is gone?)", path)
	}
	h, _ := l.Host(host)
	hostIno, err := nsutil.Inode(path)
	if err != nil {
		t.Fatal(err)
	}
	agentIno, err := nsutil.Inode(fmt.Sprintf("/proc/%d/root%s", h.PID, path))
	if err != nil {
		t.Fatal(err)
	}
	if hostIno != agentIno {
		t.Fatalf("the host's %s is namespace %d, the agent's %d", path, hostIno, agentIno)
	}
	list, err := exec.Command("ip", "netns", "list").Output()
	if err != nil || !strings.Contains(string(list), name) {
		t.Fatalf("ip netns list does not name %s: %v\n%s", name, err, list)
	}
	addrs, err := exec.Command("ip", "netns", "exec", name, "ip", "-o", "-4", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(addrs), "inet 100.127.") {
		t.Fatalf("no health endpoint in the host's %s: %v\n%s", name, err, addrs)
	}
}
