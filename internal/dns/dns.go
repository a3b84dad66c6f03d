// Package dns is the agent's resolver for container names across hosts.
//
// Containers' DNS queries, to whatever server they were sent, are
// redirected (the host firewall's VXNET-DNS chain) to this resolver at
// their network's gateway. It answers the names of the querier's network
// from the cluster state and passes every other query on, unchanged, to
// the server it was sent to (found in the connection tracking table), so
// names outside the cluster resolve exactly as before, through the
// container's own upstream servers. Docker's embedded resolver forwards
// the names it does not know (containers on other hosts) this way too.
package dns

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Verdict says how to answer a name.
type Verdict int

const (
	// Forward passes the query on to where it was sent.
	Forward Verdict = iota
	// Answer answers from the cluster: the addresses, or NXDOMAIN when none.
	Answer
	// Refuse refuses a query from outside vxnet's networks.
	Refuse
)

// Names resolves cluster names for the resolver.
type Names interface {
	// Resolve decides how to answer name (lower case, no trailing dot)
	// asked by a container at src.
	Resolve(src netip.Addr, name string) (Verdict, []netip.Addr)
	// RedirectedTo returns the address queries from src are redirected
	// to (its network's gateway): an unconnected UDP socket does not tell.
	RedirectedTo(src netip.Addr) (netip.Addr, bool)
}

// Upstream finds where a redirected query was going.
type Upstream interface {
	// OriginalDst returns the destination a query from client had before
	// it was redirected to local (proto "udp" or "tcp").
	OriginalDst(proto string, client, local netip.AddrPort) (netip.AddrPort, error)
}

// TTL of the answers from the cluster: short, containers come and go.
const TTL = 5

// Server is the resolver, on UDP and TCP.
type Server struct {
	names    Names
	upstream Upstream
	log      *slog.Logger
	servers  []*dns.Server
	// Timeout bounds a forwarded query.
	Timeout time.Duration
}

// Listen starts the resolver on addr (host:port) for UDP and TCP.
func Listen(addr string, names Names, upstream Upstream, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{names: names, upstream: upstream, log: log, Timeout: 2 * time.Second}
	// Both families (containers ask at their IPv4 or IPv6 gateway); an
	// IPv4 querier's address comes as IPv4-mapped (see addrPort).
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolver on %s/udp: %w", addr, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("resolver on %s/tcp: %w", addr, err)
	}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: s}, {Listener: ln, Handler: s}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		s.servers = append(s.servers, srv)
		go func() {
			if err := srv.ActivateAndServe(); err != nil {
				log.Error("resolver", "err", err)
			}
		}()
		<-started
	}
	return s, nil
}

// Close stops the resolver.
func (s *Server) Close() error {
	var errs []error
	for _, srv := range s.servers {
		errs = append(errs, srv.Shutdown())
	}
	return errors.Join(errs...)
}

// addrPort is a's address and port, an IPv4-mapped address unmapped.
func addrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// ServeDNS answers one query.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	reply := func(m *dns.Msg) {
		if err := w.WriteMsg(m); err != nil {
			s.log.Debug("resolver reply", "err", err)
		}
	}
	fail := func(code int) {
		m := new(dns.Msg)
		m.SetRcode(r, code)
		reply(m)
	}
	if len(r.Question) != 1 {
		fail(dns.RcodeFormatError)
		return
	}
	q := r.Question[0]
	client, local := addrPort(w.RemoteAddr()), addrPort(w.LocalAddr())
	name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
	verdict, ips := s.names.Resolve(client.Addr(), name)
	switch verdict {
	case Refuse:
		fail(dns.RcodeRefused)
		return
	case Answer:
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		if len(ips) == 0 {
			m.Rcode = dns.RcodeNameError
		}
		for _, ip := range ips {
			switch {
			case ip.Is4() && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY):
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: TTL}, A: ip.AsSlice()})
			case ip.Is6() && (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY):
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: TTL}, AAAA: ip.AsSlice()})
			}
		}
		reply(m)
		return
	}
	proto := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		proto = "tcp"
	}
	if !local.Addr().IsValid() || local.Addr().IsUnspecified() {
		if gw, ok := s.names.RedirectedTo(client.Addr()); ok {
			local = netip.AddrPortFrom(gw, local.Port())
		}
	}
	dst, err := s.upstream.OriginalDst(proto, client, local)
	if err != nil || dst == local {
		s.log.Debug("resolver: no upstream for a query", "client", client, "name", name, "err", err)
		fail(dns.RcodeServerFailure)
		return
	}
	c := &dns.Client{Net: proto, Timeout: s.Timeout}
	resp, _, err := c.Exchange(r, dst.String())
	if err != nil {
		s.log.Debug("resolver: upstream failed", "upstream", dst, "name", name, "err", err)
		fail(dns.RcodeServerFailure)
		return
	}
	resp.Id = r.Id
	reply(resp)
}
