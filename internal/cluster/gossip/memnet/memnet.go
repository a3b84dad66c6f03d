// Package memnet is an in-memory network for memberlist: members of one
// process (the simulation, unit tests) gossip without any socket.
package memnet

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Network is an in-memory network for memberlist: packets go through
// buffered queues and are dropped when one is full (as UDP would), streams
// are pipes. memberlist's own MockTransport hands packets over unbuffered,
// so two members answering each other at once block each other for good.
type Network struct {
	mu     sync.RWMutex
	byAddr map[string]*Transport
	port   int
	// Msgs and Bytes count what every member sent; Dropped the packets
	// lost to full queues.
	Msgs, Bytes, Dropped atomic.Int64
}

type memAddr string

func (a memAddr) Network() string { return "mem" }
func (a memAddr) String() string  { return string(a) }

// NewTransport adds a member's transport at a new address.
func (n *Network) NewTransport() *Transport {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byAddr == nil {
		n.byAddr = map[string]*Transport{}
	}
	n.port++
	t := &Transport{net: n, ip: net.IPv4(127, 0, 0, 1), port: n.port,
		packets: make(chan *memberlist.Packet, 1024), streams: make(chan net.Conn, 64)}
	t.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(t.port))
	n.byAddr[t.addr] = t
	return t
}

func (n *Network) lookup(addr string) (*Transport, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	t, ok := n.byAddr[addr]
	if !ok || t.closed.Load() {
		return nil, fmt.Errorf("no member at %s", addr)
	}
	return t, nil
}

// Transport is one member's end of the network.
type Transport struct {
	net     *Network
	addr    string
	ip      net.IP
	port    int
	packets chan *memberlist.Packet
	streams chan net.Conn
	closed  atomic.Bool
}

var _ memberlist.NodeAwareTransport = (*Transport)(nil)

func (t *Transport) FinalAdvertiseAddr(string, int) (net.IP, int, error) { return t.ip, t.port, nil }

func (t *Transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *Transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	t.net.Msgs.Add(1)
	dest, err := t.net.lookup(a.Addr)
	if err != nil { // as UDP: a packet to a member that is gone is lost, not refused
		t.net.Dropped.Add(1)
		return now, nil
	}
	t.net.Bytes.Add(int64(len(b)))
	select {
	case dest.packets <- &memberlist.Packet{Buf: append([]byte(nil), b...), From: memAddr(t.addr), Timestamp: now}:
	default:
		t.net.Dropped.Add(1)
	}
	return now, nil
}

func (t *Transport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *Transport) DialTimeout(addr string, d time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, d)
}

func (t *Transport) DialAddressTimeout(a memberlist.Address, d time.Duration) (net.Conn, error) {
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
	t.net.Msgs.Add(1)
	return countedConn{mine, &t.net.Bytes}, nil
}

func (t *Transport) StreamCh() <-chan net.Conn { return t.streams }

func (t *Transport) Shutdown() error {
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
