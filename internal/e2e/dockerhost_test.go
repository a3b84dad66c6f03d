package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/nsutil"
)

// serveDNS runs the outside machine's DNS server: outside.example is its
// own address, everything else NXDOMAIN.
func serveDNS(t *testing.T, ns string, self netip.Addr) {
	t.Helper()
	var pc net.PacketConn
	if err := nsutil.Do(ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp4", ":53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		switch {
		case q.Name == "outside.example." && q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: self.AsSlice()})
		case q.Name == "outside.example.":
		default:
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
}

// retryDocker runs a docker command until it succeeds and its output holds want.
func retryDocker(t *testing.T, d *lab.Dockerd, want string, args ...string) string {
	t.Helper()
	var out string
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		out, err = d.Docker(args...)
		if err == nil && strings.Contains(out, want) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker %v on %s: %v\n%s\nwant it to say %q", args, d.Host, err, out, want)
		}
	}
}

// TestDockerRealHost: Docker as users run it (dockerd defaults: iptables
// on, FORWARD DROP) on hosts whose INPUT drops (ufw's default; vxnet opens
// VXLAN and gossip itself), with an outside machine that is no member: containers
// reach it through their host, NATed; --internal networks do not; -p
// publishes at the host's address; containers resolve each other by name
// and alias across hosts, NAME.NETWORK too, and names outside the cluster
// through their own upstream server.
func TestDockerRealHost(t *testing.T) {
	requireDocker(t)
	l := upCfg(t, lab.Config{Hosts: 2, Networks: 1, Outside: true})
	// Both hosts drop what comes in unasked, as ufw's default does.
	for _, h := range l.Hosts {
		dropInput(t, h)
	}
	out := *l.Outside
	serveDNS(t, out.Netns, out.Addr)
	serveTCP(t, out.Netns, ":80", "outside")
	d1, d2 := startDocker(t, l, "h1"), startDocker(t, l, "h2")
	mustDocker(t, d1, "network", "create", "-d", "vxnet", "--ipam-driver", "vxnet", "--subnet", "172.30.0.0/24", "vxlan-net")
	waitDockerNetwork(t, d2, "vxlan-net", true)
	mustDocker(t, d1, "run", "-d", "--name", "c1", "--net", "vxlan-net", "--network-alias", "db", lab.DockerImage, "sleep", "600")
	mustDocker(t, d2, "run", "-d", "--name", "c2", "--net", "vxlan-net", lab.DockerImage, "sleep", "600")
	ip := func(d *lab.Dockerd, c string) string {
		return mustDocker(t, d, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", c)
	}
	c1IP, c2IP := ip(d1, "c1"), ip(d2, "c2")
	pingFrom(t, d2, "c2", c1IP)

	step(t, "DockerNameInVxnet", func(t *testing.T) {
		// vxnet shows and takes the network by its Docker name.
		h1 := l.Hosts[0]
		if out, err := vxnetCLI(t, "network", "ls", "--socket", h1.Socket); err != nil || !strings.Contains(out, "vxlan-net (docker-") {
			t.Errorf("network ls: %v\n%s", err, out)
		}
		if out, err := vxnetCLI(t, "network", "inspect", "vxlan-net", "--socket", h1.Socket); err != nil || !strings.Contains(out, `"dockerName": "vxlan-net"`) {
			t.Errorf("network inspect vxlan-net: %v\n%s", err, out)
		}
		var rows []api.EndpointRow
		if err := waitCond(5*time.Second, func() error {
			out, err := vxnetCLI(t, "endpoints", "--network", "vxlan-net", "--json", "--socket", h1.Socket)
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 2 {
				return fmt.Errorf("rows %+v (%v), want c1 and c2", rows, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if r.Network != "vxlan-net" || !strings.HasPrefix(r.NetworkID, "docker-") || r.From != api.FromDocker ||
				(r.Name != "c1" && r.Name != "c2") || (r.Name == "c1" && (r.Host != "h1" || r.IP != c1IP)) || (r.Name == "c2" && (r.Host != "h2" || r.IP != c2IP)) {
				t.Errorf("row %+v", r)
			}
		}
	})
	step(t, "NamesAcrossHosts", func(t *testing.T) {
		retryDocker(t, d2, "1 packets received", "exec", "c2", "ping", "-c", "1", "-W", "1", "c1")
		retryDocker(t, d1, "1 packets received", "exec", "c1", "ping", "-c", "1", "-W", "1", "c2")
		retryDocker(t, d1, c2IP, "exec", "c1", "nslookup", "c2")
		retryDocker(t, d2, c1IP, "exec", "c2", "nslookup", "c1.vxlan-net")
		retryDocker(t, d2, c1IP, "exec", "c2", "nslookup", "db")
		if out, err := d2.Docker("exec", "c2", "nslookup", "nope.vxlan-net"); err == nil || !strings.Contains(out, "NXDOMAIN") {
			t.Errorf("a name that does not exist: %v\n%s", err, out)
		}
		retryDocker(t, d2, out.Addr.String(), "exec", "c2", "nslookup", "outside.example")
		if out, err := d2.Docker("exec", "c2", "nslookup", "elsewhere.example"); err == nil || !strings.Contains(out, "NXDOMAIN") {
			t.Errorf("a name the outside DNS does not know: %v\n%s", err, out)
		}
		// Two containers with one name: both addresses. (Both on host 1:
		// Docker's own resolver answers a name its dockerd knows, alone.)
		mustDocker(t, d1, "run", "-d", "--name", "c3", "--net", "vxlan-net", "--network-alias", "db", lab.DockerImage, "sleep", "600")
		c3IP := ip(d1, "c3")
		got := retryDocker(t, d2, c3IP, "exec", "c2", "nslookup", "db.vxlan-net")
		if !strings.Contains(got, c1IP) {
			t.Errorf("db.vxlan-net from h2: want both %s and %s:\n%s", c1IP, c3IP, got)
		}
		mustDocker(t, d1, "rm", "-f", "c3")
	})
	step(t, "Egress", func(t *testing.T) {
		got := retryDocker(t, d1, "hello from outside", "exec", "c1", "sh", "-c", "nc "+out.Addr.String()+" 80 </dev/null")
		if !strings.Contains(got, "you are "+l.Hosts[0].Addr.String()) {
			t.Errorf("the outside saw: %s", got)
		}
		mustDocker(t, d1, "network", "create", "-d", "vxnet", "--ipam-driver", "vxnet", "--internal", "--subnet", "172.31.0.0/24", "priv")
		waitDockerNetwork(t, d2, "priv", true)
		mustDocker(t, d1, "run", "-d", "--name", "p1", "--net", "priv", lab.DockerImage, "sleep", "600")
		mustDocker(t, d2, "run", "-d", "--name", "p2", "--net", "priv", lab.DockerImage, "sleep", "600")
		pingFrom(t, d1, "p1", ip(d2, "p2")) // the internal network works inside
		if got, err := d1.Docker("exec", "p1", "sh", "-c", "nc -w 2 "+out.Addr.String()+" 80 </dev/null"); err == nil && strings.Contains(got, "hello") {
			t.Errorf("a container of an --internal network reached the outside: %s", got)
		}
		mustDocker(t, d1, "rm", "-f", "p1")
		mustDocker(t, d2, "rm", "-f", "p2")
	})
	step(t, "PublishedPort", func(t *testing.T) {
		mustDocker(t, d1, "run", "-d", "--name", "web", "--net", "vxlan-net", "-p", "8080:80", lab.DockerImage,
			"sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && httpd -f -p 80 -h /www")
		hostPort := netip.AddrPortFrom(l.Hosts[0].Addr, 8080).String()
		if err := waitCond(10*time.Second, func() error {
			got, err := dialHTTP(out.Netns, hostPort)
			if err != nil {
				return err
			}
			if !strings.Contains(got, "hello-from-web") {
				return errf("answer %q", got)
			}
			return nil
		}); err != nil {
			t.Fatalf("from the outside at %s: %v", hostPort, err)
		}
		webIP := ip(d1, "web")
		retryDocker(t, d2, "hello-from-web", "exec", "c2", "wget", "-q", "-O", "-", "http://"+webIP+"/")
		got, err := d1.Docker("run", "-d", "--name", "web2", "--net", "vxlan-net", "-p", "8080:80", lab.DockerImage, "sleep", "600")
		if err == nil || !strings.Contains(got, "host port 8080/tcp is already published on this host by endpoint") {
			t.Errorf("a second container on host port 8080: %v\n%s", err, got)
		}
		_, _ = d1.Docker("rm", "-f", "web2")
		mustDocker(t, d1, "stop", "-t", "1", "web")
		if err := waitCond(10*time.Second, func() error {
			if _, err := dialHTTP(out.Netns, hostPort); err == nil {
				return errf("still answers")
			}
			return nil
		}); err != nil {
			t.Errorf("after docker stop: %v", err)
		}
	})
}

var errf = fmt.Errorf

// dialHTTP sends GET / from inside ns and returns the whole answer.
func dialHTTP(ns, addr string) (string, error) {
	var c net.Conn
	if err := nsutil.Do(ns, func() error {
		var err error
		network := "tcp4"
		if strings.HasPrefix(addr, "[") {
			network = "tcp6"
		}
		c, err = net.DialTimeout(network, addr, time.Second)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}
