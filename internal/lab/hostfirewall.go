package lab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vxnet/vxnet/internal/nsutil"
)

// The host firewalls a lab host can have before vxnet starts
// (Config.HostFirewall): the common kinds vxnet must work next to.
const (
	// FirewallUFW is ufw's defaults, in iptables and ip6tables: INPUT and
	// FORWARD drop, loopback, replies and ICMP accepted.
	FirewallUFW = "ufw"
	// FirewallNftables is a native nftables table (inet filter), the
	// tightened Debian ruleset: input and forward drop by default.
	FirewallNftables = "nftables"
	// FirewallFirewalld is a real firewalld (each host's own, on a D-Bus of
	// its own) with its default zone (public).
	FirewallFirewalld = "firewalld"
)

// HostFirewalls lists the kinds.
var HostFirewalls = []string{FirewallUFW, FirewallNftables, FirewallFirewalld}

// nativeRuleset is the owner's own nftables ruleset of FirewallNftables.
const nativeRuleset = `table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		ct state invalid drop
		iifname "lo" accept
		meta l4proto { icmp, ipv6-icmp } accept
		tcp dport 22 accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
	}
	chain output {
		type filter hook output priority filter; policy accept;
	}
}
`

// busConfig is the D-Bus of one host's firewalld: a system bus that
// only that firewalld and its clients use.
const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`

func (l *Lab) hostRun(h Host, stdin string, name string, args ...string) error {
	var out bytes.Buffer
	err := nsutil.Do(h.Netns, func() error {
		cmd := exec.Command(name, args...)
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = &out, &out
		return cmd.Run()
	})
	if err != nil {
		return fmt.Errorf("%s: %s %s: %w: %s", h.Name, name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// applyHostFirewall gives host h the firewall of kind, with bridged frames
// passing the IP hooks (br_netfilter, as on every Docker host).
func (l *Lab) applyHostFirewall(h *Host, kind string) error {
	if err := l.hostRun(*h, "", "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"); err != nil {
		return err
	}
	switch kind {
	case FirewallUFW:
		// Both families, as ufw does by default (IPV6=yes).
		for _, tool := range []struct{ name, icmp string }{{"iptables", "icmp"}, {"ip6tables", "ipv6-icmp"}} {
			for _, r := range [][]string{
				{"-A", "INPUT", "-i", "lo", "-j", "ACCEPT"},
				{"-A", "INPUT", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
				{"-A", "INPUT", "-p", tool.icmp, "-j", "ACCEPT"},
				{"-P", "INPUT", "DROP"},
				{"-P", "FORWARD", "DROP"},
			} {
				if err := l.hostRun(*h, "", tool.name, r...); err != nil {
					return err
				}
			}
		}
		return nil
	case FirewallNftables:
		return l.hostRun(*h, nativeRuleset, "nft", "-f", "-")
	case FirewallFirewalld:
		return l.startFirewalld(h)
	}
	return fmt.Errorf("invalid host firewall %q: want one of %s", kind, strings.Join(HostFirewalls, ", "))
}

// firewalldBus is the D-Bus address of a host's firewalld.
func firewalldBus(h Host) string { return "unix:path=" + filepath.Join(h.Dir, "firewalld", "bus") }

// startFirewalld runs a D-Bus daemon and firewalld in the host's
// namespace and waits until firewalld has loaded its ruleset.
func (l *Lab) startFirewalld(h *Host) error {
	dir := filepath.Join(h.Dir, "firewalld")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	conf := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, busConfig, filepath.Join(dir, "bus")), 0o600); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(dir, "firewalld.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	for _, argv := range [][]string{
		{"dbus-daemon", "--config-file=" + conf, "--nofork", "--nopidfile"},
		{"firewalld", "--nofork", "--nopid"},
	} {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+firewalldBus(*h))
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := nsutil.Do(h.Netns, cmd.Start); err != nil {
			return fmt.Errorf("start %s on %s: %w", argv[0], h.Name, err)
		}
		go func() { _ = cmd.Wait() }() // reap
		if argv[0] == "dbus-daemon" {
			if err := waitFile(filepath.Join(dir, "bus"), 10*time.Second); err != nil {
				return fmt.Errorf("D-Bus of %s's firewalld: %w", h.Name, err)
			}
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := l.FirewallCmd(*h, "--state")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "firewalld.log"))
			return fmt.Errorf("firewalld of %s did not come up: %w; its log:\n%s", h.Name, err, tail(string(b), 2000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// FirewallCmd runs firewall-cmd against a host's firewalld.
func (l *Lab) FirewallCmd(h Host, args ...string) error {
	return l.hostRun(h, "", "env", append([]string{"DBUS_SYSTEM_BUS_ADDRESS=" + firewalldBus(h), "firewall-cmd"}, args...)...)
}

func waitFile(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
