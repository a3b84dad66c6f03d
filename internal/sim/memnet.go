package sim

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// memNet is an in-memory network for memberlist: packets go through
// buffered queues and are dropped when one is full (as UDP would), streams
// are pipes. memberlist's own MockTransport hands packets over unbuffered,
// so two members answering each other at once block each other for good.
type memNet struct {
	mu     sync.RWMutex
	byAddr map[string]*memTransport
	port   int
	// msgs and bytes count what every member sent; dropped the packets
	// lost to full queues.
	msgs, bytes, dropped atomic.Int64
}

type memAddr string

func (a memAddr) Network() string { return "mem" }
func (a memAddr) String() string  { return string(a) }

// newTransport adds a member's transport at a new address.
func (n *memNet) newTransport() *memTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byAddr == nil {
		n.byAddr = map[string]*memTransport{}
	}
	n.port++
	t := &memTransport{net: n, ip: net.IPv4(127, 0, 0, 1), port: n.port,
		packets: make(chan *memberlist.Packet, 1024), streams: make(chan net.Conn, 64)}
	t.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(t.port))
	n.byAddr[t.addr] = t
	return t
}

func (n *memNet) lookup(addr string) (*memTransport, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	t, ok := n.byAddr[addr]
	if !ok || t.closed.Load() {
		return nil, fmt.Errorf("no member at %s", addr)
	}
	return t, nil
}

type memTransport struct {
	net     *memNet
	addr    string
	ip      net.IP
	port    int
	packets chan *memberlist.Packet
	streams chan net.Conn
	closed  atomic.Bool
}

var _ memberlist.NodeAwareTransport = (*memTransport)(nil)

func (t *memTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) { return t.ip, t.port, nil }

func (t *memTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *memTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	dest, err := t.net.lookup(a.Addr)
	if err != nil {
		return now, err
	}
	t.net.msgs.Add(1)
	t.net.bytes.Add(int64(len(b)))
	select {
	case dest.packets <- &memberlist.Packet{Buf: append([]byte(nil), b...), From: memAddr(t.addr), Timestamp: now}:
	default:
		t.net.dropped.Add(1)
	}
	return now, nil
}

func (t *memTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *memTransport) DialTimeout(addr string, d time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, d)
}

func (t *memTransport) DialAddressTimeout(a memberlist.Address, d time.Duration) (net.Conn, error) {
	dest, err := t.net.lookup(a.Addr)
	if err != nil {
		return nil, err
	}
	mine, theirs := net.Pipe()
	select {
	case dest.streams <- theirs:
	case <-time.After(d):
		mine.Close()
		theirs.Close()
		return nil, fmt.Errorf("dial %s: timeout", a.Addr)
	}
	t.net.msgs.Add(1)
	return countedConn{mine, &t.net.bytes}, nil
}

func (t *memTransport) StreamCh() <-chan net.Conn { return t.streams }

func (t *memTransport) Shutdown() error {
	t.closed.Store(true)
	return nil
}

type countedConn struct {
	net.Conn
	bytes *atomic.Int64
}

func (c countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.bytes.Add(int64(n))
	return n, err
}
