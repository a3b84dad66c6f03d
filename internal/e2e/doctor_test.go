package e2e

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/doctor"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/testutil"
)

// doctorIn runs 'vxnet doctor --json' inside a namespace and returns its
// findings by check, and its error (the exit status).
func doctorIn(t *testing.T, ns string, args ...string) (map[string]doctor.Finding, error) {
	t.Helper()
	var out []byte
	var err error
	if derr := nsutil.Do(ns, func() error {
		out, err = exec.Command(testutil.Binary(t), append([]string{"doctor", "--json"}, args...)...).Output()
		return nil
	}); derr != nil {
		t.Fatal(derr)
	}
	var fs []doctor.Finding
	if jerr := json.Unmarshal(out, &fs); jerr != nil {
		t.Fatalf("doctor --json: %v\n%s", jerr, out)
	}
	byCheck := map[string]doctor.Finding{}
	for _, f := range fs {
		byCheck[f.Check] = f
	}
	return byCheck, err
}

// TestDoctor: on a healthy lab host the doctor finds nothing to fail; with
// the host dropping forwarded traffic and vxnet's rules removed it names
// that; with another program on the VXLAN port it names the program; and
// it fails (exit status) when the agent does not answer.
func TestDoctor(t *testing.T) {
	l := up(t, 2, 1, 1)
	h1, _ := l.Host("h1")
	out, err := doctorIn(t, h1.Netns, "--socket", h1.Socket)
	if err != nil || out["agent"].Level != doctor.OK {
		t.Fatalf("healthy host: %v\n%+v", err, out)
	}
	for _, f := range out {
		if f.Level == doctor.Fail {
			t.Errorf("healthy host: %+v", f)
		}
	}
	inNS(t, h1.Netns, "iptables", "-P", "FORWARD", "DROP")
	inNS(t, h1.Netns, "iptables", "-D", "FORWARD", "-j", "VXNET-FORWARD")
	out, err = doctorIn(t, h1.Netns, "--socket", h1.Socket)
	if f := out["forwarding"]; err == nil || f.Level != doctor.Fail || !strings.Contains(f.Evidence, "vxnet's VXNET-FORWARD rules are missing") {
		t.Errorf("FORWARD DROP without vxnet's rules: %v\n%+v", err, f)
	}
	// A host with no agent yet, and a program on the VXLAN port.
	_, ns := testutil.Netns(t)
	var pc net.PacketConn
	if err := nsutil.Do(ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp4", ":4789")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	out, err = doctorIn(t, ns, "--socket", "/run/vxnet-none.sock")
	self := "pid " + strconv.Itoa(os.Getpid())
	if f := out["vxlan-port"]; err == nil || out["agent"].Level != doctor.Fail || f.Level != doctor.Fail || !strings.HasPrefix(f.Evidence, "UDP 4789 is held by "+self+" (") {
		t.Errorf("a rogue program on UDP 4789: %v\n%+v", err, out)
	}
}
