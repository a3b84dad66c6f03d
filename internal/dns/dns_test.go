package dns

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

type names map[string][]netip.Addr

func (n names) Resolve(src netip.Addr, name string) (Verdict, []netip.Addr) {
	if !src.IsLoopback() {
		return Refuse, nil
	}
	ips, ok := n[name]
	if !ok {
		return Forward, nil
	}
	return Answer, ips
}

func (n names) RedirectedTo(src netip.Addr) (netip.Addr, bool) { return src, true }

type upstream struct{ to netip.AddrPort }

func (u upstream) OriginalDst(proto string, client, local netip.AddrPort) (netip.AddrPort, error) {
	if !u.to.IsValid() {
		return u.to, errors.New("no conntrack entry")
	}
	return u.to, nil
}

// serve starts a plain DNS server on loopback answering every A query with
// 192.0.2.1, NXDOMAIN for "nx.".
func serve(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if r.Question[0].Name == "nx." {
			m.Rcode = dns.RcodeNameError
		} else {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
		}
		_ = w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestResolver(t *testing.T) {
	up := serve(t)
	n := names{"c1": {netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.0.0.6")}, "gone.web": nil,
		"ds": {netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("fd00:1::7")}}
	s, err := Listen("127.0.0.1:0", n, upstream{up}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := s.servers[0].PacketConn.LocalAddr().String()
	tcpAddr := s.servers[1].Listener.Addr().String()
	for _, tc := range []struct {
		name, net string
		qtype     uint16
		rcode     int
		answers   int
		aa        bool
	}{
		{"c1.", "udp", dns.TypeA, dns.RcodeSuccess, 2, true},
		{"C1.", "tcp", dns.TypeA, dns.RcodeSuccess, 2, true},
		{"c1.", "udp", dns.TypeAAAA, dns.RcodeSuccess, 0, true},
		// Dual stack: A answers IPv4, AAAA IPv6, ANY both.
		{"ds.", "udp", dns.TypeA, dns.RcodeSuccess, 1, true},
		{"ds.", "udp", dns.TypeAAAA, dns.RcodeSuccess, 1, true},
		{"ds.", "tcp", dns.TypeANY, dns.RcodeSuccess, 2, true},
		{"gone.web.", "udp", dns.TypeA, dns.RcodeNameError, 0, true},
		{"example.org.", "udp", dns.TypeA, dns.RcodeSuccess, 1, false},
		{"nx.", "udp", dns.TypeA, dns.RcodeNameError, 0, false},
	} {
		m := new(dns.Msg)
		m.SetQuestion(tc.name, tc.qtype)
		to := addr
		if tc.net == "tcp" {
			to = tcpAddr
		}
		r, _, err := (&dns.Client{Net: tc.net}).Exchange(m, to)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.Rcode != tc.rcode || len(r.Answer) != tc.answers || r.Authoritative != tc.aa || r.Id != m.Id {
			t.Errorf("%s %s %d: rcode %d answers %d aa %v; want %d %d %v", tc.net, tc.name, tc.qtype, r.Rcode, len(r.Answer), r.Authoritative, tc.rcode, tc.answers, tc.aa)
		}
		for _, rr := range r.Answer {
			if aaaa, ok := rr.(*dns.AAAA); ok && aaaa.AAAA.String() != "fd00:1::7" || tc.qtype == dns.TypeAAAA && !ok {
				t.Errorf("%s %d: answer %v", tc.name, tc.qtype, rr)
			}
		}
	}
	// Without a conntrack entry there is nowhere to forward to.
	s2, err := Listen("127.0.0.1:0", n, upstream{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	m := new(dns.Msg)
	m.SetQuestion("example.org.", dns.TypeA)
	r, _, err := (&dns.Client{}).Exchange(m, s2.servers[0].PacketConn.LocalAddr().String())
	if err != nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("no upstream: %v %v", r, err)
	}
}

// The resolver answers IPv6 queriers (containers asking at their IPv6
// gateway), over UDP and TCP.
func TestResolverIPv6(t *testing.T) {
	n := names{"ds": {netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("fd00:1::7")}}
	s, err := Listen("[::1]:0", n, upstream{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, to := range []string{s.servers[0].PacketConn.LocalAddr().String(), s.servers[1].Listener.Addr().String()} {
		proto := "udp"
		if to == s.servers[1].Listener.Addr().String() {
			proto = "tcp"
		}
		m := new(dns.Msg)
		m.SetQuestion("ds.", dns.TypeAAAA)
		r, _, err := (&dns.Client{Net: proto}).Exchange(m, to)
		if err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.AAAA).AAAA.String() != "fd00:1::7" {
			t.Errorf("%s AAAA over IPv6: %v %v", proto, r, err)
		}
	}
}

// A socket of both families gives IPv4 queriers IPv4-mapped addresses:
// the resolver sees them as IPv4 (their network is found by them).
func TestAddrPort(t *testing.T) {
	for _, tc := range []struct {
		in   net.Addr
		want string
	}{
		{&net.UDPAddr{IP: net.ParseIP("::ffff:10.0.0.5"), Port: 5353}, "10.0.0.5:5353"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.5"), Port: 53}, "10.0.0.5:53"},
		{&net.UDPAddr{IP: net.ParseIP("fd00::5"), Port: 53}, "[fd00::5]:53"},
		{&net.UDPAddr{IP: net.IPv4(10, 0, 0, 5).To4(), Port: 53}, "10.0.0.5:53"},
	} {
		if got := addrPort(tc.in).String(); got != tc.want {
			t.Errorf("addrPort(%v) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
