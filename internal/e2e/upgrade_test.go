package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/testutil"
)

// compatBaseline is the first commit whose records survive a rolling
// upgrade (unknown fields and kinds kept and passed on): agents of later
// versions must work beside it. Endpoint records of this version carry a
// field it does not know ("since").
const compatBaseline = "47d2920"

// TestMixedVersions: an agent of the baseline release and agents of this
// one share a cluster: containers on both reach each other, and a record
// with a field the old agent does not know comes out of it unchanged (a
// new agent that can only learn it from the old one gets it whole).
func TestMixedVersions(t *testing.T) {
	testutil.RequireRoot(t)
	old := testutil.BinaryAt(t, compatBaseline, "baseline-"+compatBaseline)
	l := up(t, 3, 1, 0)
	// h1 runs the old release; h3 comes later, knowing nobody but h1.
	if err := l.KillAgent("h1", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgentWith("h1", old); err != nil {
		t.Fatal(err)
	}
	if err := l.KillAgent("h3", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h3, _ := l.Host("h3")
	if err := os.RemoveAll(filepath.Join(h3.Dir, "state")); err != nil {
		t.Fatal(err)
	}
	if err := waitCond(10*time.Second, func() error {
		if n := aliveCount(t, l, "h2"); n != 2 {
			return fmt.Errorf("h2 sees %d alive members, want 2", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c1, c2 := newContainer(t, l, "old1"), newContainer(t, l, "new2")
	a1, err := client(l, "h1").Attach(api.AttachRequest{Network: "net1", Netns: c1})
	if err != nil {
		t.Fatal(err)
	}
	a2, err := client(l, "h2").Attach(api.AttachRequest{Network: "net1", Netns: c2, Name: "new2"})
	if err != nil {
		t.Fatal(err)
	}
	pingUntil(t, c1, netip.MustParsePrefix(a2.IP).Addr(), 10*time.Second)
	pingUntil(t, c2, netip.MustParsePrefix(a1.IP).Addr(), 10*time.Second)

	// The versions in the cluster, as every member sees them.
	if err := waitCond(10*time.Second, func() error {
		s, err := client(l, "h2").Status()
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, n := range s.Nodes {
			got[n.Name] = n.Version
		}
		if got["h1"] != "baseline-"+compatBaseline || got["h2"] != s.Version {
			return fmt.Errorf("versions %v", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// h2 goes; h3 starts afresh and can learn h2's endpoint only from h1.
	var since time.Time
	if s, err := client(l, "h2").StatusWithEndpoints(); err == nil {
		for _, e := range s.Endpoints {
			if e.ID == a2.ID {
				since = e.Since
			}
		}
	}
	if err := l.KillAgent("h2", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent("h3"); err != nil {
		t.Fatal(err)
	}
	if err := waitCond(15*time.Second, func() error {
		s, err := api.NewClient(h3.Socket).StatusWithEndpoints()
		if err != nil {
			return err
		}
		for _, e := range s.Endpoints {
			if e.ID == a2.ID {
				if e.Since.IsZero() || (!since.IsZero() && !e.Since.Equal(since)) || e.Name != "new2" {
					return fmt.Errorf("h2's endpoint reached h3 through h1 as %+v (since %v)", e, since)
				}
				return nil
			}
		}
		return fmt.Errorf("h3 does not know h2's endpoint %s", a2.ID)
	}); err != nil {
		t.Fatal(err)
	}
}
