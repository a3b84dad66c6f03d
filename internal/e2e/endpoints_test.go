package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/testutil"
)

// vxnetCLI runs the vxnet binary with args and returns its output.
func vxnetCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(testutil.Binary(t), args...).CombinedOutput()
	return string(out), err
}

// TestEndpointsCommand: `vxnet endpoints` (and `vxnet ps`) on any member
// lists every endpoint of a three-host lab with its host and address, as
// JSON in the documented fields, and one host's or one network's alone.
func TestEndpointsCommand(t *testing.T) {
	l := up(t, 3, 1, 2)
	h3, _ := l.Host("h3")
	var rows []api.EndpointRow
	var out string
	if err := waitCond(10*time.Second, func() error { // h3 has heard of every endpoint
		var err error
		if out, err = vxnetCLI(t, "endpoints", "--json", "--socket", h3.Socket); err != nil {
			return fmt.Errorf("vxnet endpoints --json: %v\n%s", err, out)
		}
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			return fmt.Errorf("%v\n%s", err, out)
		}
		if len(rows) != len(l.Containers) {
			return fmt.Errorf("%d rows for %d containers:\n%s", len(rows), len(l.Containers), out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	byIP := map[string]api.EndpointRow{}
	for _, r := range rows {
		byIP[r.IP] = r
	}
	for _, c := range l.Containers {
		r, ok := byIP[c.IP.String()]
		if !ok || r.Host != c.Host || r.Network != c.Network || r.From != api.FromAttach || r.MAC == "" || r.ID == "" {
			t.Errorf("container %s (%s on %s): row %+v", c.Name, c.IP, c.Host, r)
		}
	}
	// The documented field names, as a client parsing JSON reads them.
	var raw []map[string]any
	_ = json.Unmarshal([]byte(out), &raw)
	for _, f := range []string{"name", "network", "host", "ip", "mac", "from", "id"} {
		if _, ok := raw[0][f]; !ok {
			t.Errorf("field %q missing from %v", f, raw[0])
		}
	}
	out, err := vxnetCLI(t, "ps", "--host", "h2", "--socket", h3.Socket)
	if err != nil || strings.Count(out, "\n") != 1+2 || !strings.Contains(out, "NAME") || strings.Contains(out, " h1 ") || strings.Contains(out, " h3 ") {
		t.Errorf("vxnet ps --host h2: %v\n%s", err, out)
	}
	out, err = vxnetCLI(t, "endpoints", "--host", "h9", "--socket", h3.Socket)
	if err == nil || !strings.Contains(out, `unknown host "h9"`) {
		t.Errorf("unknown host: %v %s", err, out)
	}
	out, err = vxnetCLI(t, "endpoints", "--network", "nope", "--socket", h3.Socket)
	if err == nil || !strings.Contains(out, `unknown network "nope"`) {
		t.Errorf("unknown network: %v %s", err, out)
	}
}
