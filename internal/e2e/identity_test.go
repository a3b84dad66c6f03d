package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/lab/labtest"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/testutil"
)

// TestDuplicateName starts a second agent under a name a live member
// already has (a cloned machine, a copied config): it must refuse to run,
// with the error naming the other agent and the fix, before it programs
// anything; the member that had the name keeps it and keeps forwarding.
// (A host that changed its address and comes back under its name is the
// other case of the same conflict: TestUnderlayAddressChange.)
func TestDuplicateName(t *testing.T) {
	l := up(t, 3, 1, 1)
	a, b := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h2-n1-c1")
	pingUntil(t, b.Netns, a.IP, 3*time.Second)
	h1, _ := l.Host("h1")
	h2, _ := l.Host("h2")
	flow := startPingFlow(b.Netns, a.IP)

	sh, err := l.AddSyntheticHost(201)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var out bytes.Buffer
	cmd := exec.Command(testutil.Binary(t), "agent", "--name", "h1", "--advertise-addr", sh.Addr.String(),
		"--key-file", l.KeyFile(), "--state-dir", filepath.Join(dir, "state"), "--socket", filepath.Join(dir, "vxnet.sock"),
		"--gossip-port", fmt.Sprint(lab.GossipPort), "--vxlan-port", fmt.Sprint(lab.VXLANPort),
		"--probe-interval", lab.DefaultProbeInterval.String(), "--join", h2.Addr.String())
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := nsutil.Do(sh.Netns, cmd.Start); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("a second agent named h1 still runs after 20 s; its output:\n%s", tailLines(out.String(), 20))
	}
	refused := time.Now()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("second agent named h1 ended with %v, want a non-zero exit; output:\n%s", err, tailLines(out.String(), 20))
	}
	want := fmt.Sprintf(`member name already in use: an agent at %s answers as "h1" (this agent advertises %s): give each host its own --name`, h1.Addr, sh.Addr)
	if !strings.Contains(out.String(), want) {
		t.Fatalf("second agent's output lacks %q:\n%s", want, tailLines(out.String(), 20))
	}
	// It programmed nothing: its namespace has only the links the lab made.
	nh, err := nsutil.Handle(sh.Netns)
	if err != nil {
		t.Fatal(err)
	}
	links, err := nh.LinkList()
	nh.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 2 {
		var names []string
		for _, ln := range links {
			names = append(names, ln.Attrs().Name)
		}
		t.Fatalf("the refused agent left links %v in its namespace, want only lo and the underlay", names)
	}
	// The members keep h1 at its own address and nothing moved: both have
	// heard from it since the refusal.
	for _, h := range []string{"h2", "h3"} {
		waitContactAfter(t, l, h, refused)
	}
	for _, h := range []string{"h2", "h3"} {
		s, err := client(l, h).Status()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, m := range s.Members {
			if m.Name == "h1" {
				found = true
				if m.Addr != h1.Addr || m.State != "alive" {
					t.Fatalf("%s sees h1 as %s at %s, want alive at %s", h, m.State, m.Addr, h1.Addr)
				}
			}
		}
		if !found {
			t.Fatalf("%s no longer lists h1: %+v", h, s.Members)
		}
		if !hasVTEP(t, l, h, h1.Addr) || hasVTEP(t, l, h, sh.Addr) {
			t.Fatalf("%s's FDB should point at h1 (%s) and never at the impostor (%s)", h, h1.Addr, sh.Addr)
		}
	}
	if sent, lost := flow.stop(); lost != 0 || sent < 10 {
		t.Fatalf("lost %d of %d echo replies to h1 while an impostor tried its name", lost, sent)
	}
}

// TestBriefCutChangesNothing cuts one host off the underlay until a member
// declares it failed, then heals the cut at once: the host is back within
// the grace of two probe intervals, so the others' kernels stay exactly as
// they were (no withdrawal and re-add of its endpoints), and traffic resumes.
func TestBriefCutChangesNothing(t *testing.T) {
	l := up(t, 3, 1, 1)
	a, c := labtest.Container(t, l, "h1-n1-c1"), labtest.Container(t, l, "h3-n1-c1")
	pingUntil(t, a.Netns, c.IP, 3*time.Second)
	if err := l.WaitConverged(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	before := map[string]int64{}
	for _, h := range []string{"h1", "h2"} {
		waitQuietPass(t, l, h) // the last passes settled
	}
	for _, h := range []string{"h1", "h2"} {
		s, err := client(l, h).Status()
		if err != nil {
			t.Fatal(err)
		}
		if s.Syncs == 0 {
			t.Fatalf("%s has made no reconcile pass: nothing to compare", h)
		}
		before[h] = s.KernelOps
	}
	setUnderlay(t, l, "h3", false)
	cut := time.Now()
	failedOn := ""
	for failedOn == "" && time.Since(cut) < 20*lab.DefaultProbeInterval {
		for _, h := range []string{"h1", "h2"} {
			if s, err := client(l, h).Status(); err == nil {
				for _, m := range s.Members {
					if m.Name == "h3" && m.State == "failed" {
						failedOn = h
					}
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	detected := time.Now()
	setUnderlay(t, l, "h3", true)
	if failedOn == "" {
		t.Fatalf("no member declared h3 failed within %s of the cut", 20*lab.DefaultProbeInterval)
	}
	t.Logf("h3 cut off for %s, until %s declared it failed", time.Since(cut).Round(time.Millisecond), failedOn)
	pingUntil(t, a.Netns, c.IP, 5*time.Second)
	// A pass on each past the grace after the failure: any withdrawal the
	// cut could have caused would have happened by then.
	for _, h := range []string{"h1", "h2"} {
		waitPassAfter(t, l, h, detected.Add(2*lab.DefaultProbeInterval))
	}
	for _, h := range []string{"h1", "h2"} {
		s, err := client(l, h).Status()
		if err != nil {
			t.Fatal(err)
		}
		if s.KernelOps != before[h] {
			t.Fatalf("%s changed its kernel %d times for a cut healed within the grace", h, s.KernelOps-before[h])
		}
		for _, m := range s.Members {
			if m.Name == "h3" && m.State != "alive" {
				t.Fatalf("%s sees h3 %s after the cut healed", h, m.State)
			}
		}
	}
}
