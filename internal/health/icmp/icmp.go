// Package icmp sends the health probes: ICMP echo over one raw socket
// opened inside the health namespace.
package icmp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/probe"
)

// ICMP sends echo requests from one network namespace over a single raw
// socket (opened inside it) and matches the replies; safe for concurrent
// use. Every packet carries DF: a full-size probe that does not fit is lost
// or refused, never fragmented.
type ICMP struct {
	fd      int
	v6      bool
	id      uint16
	mu      sync.Mutex
	seq     uint16
	waiting map[uint16]chan struct{}
	done    chan struct{}
	closed  sync.Once
}

// OpenICMP opens the probe socket inside the namespace at nsPath.
func OpenICMP(nsPath string, id uint16) (*ICMP, error) {
	fd, err := probe.ICMPSocket(nsPath, true)
	if err != nil {
		return nil, fmt.Errorf("health probes: %w", err)
	}
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("health probe socket: set timeout: %w", err)
	}
	c := &ICMP{fd: fd, id: id, waiting: map[uint16]chan struct{}{}, done: make(chan struct{})}
	go c.receive()
	return c, nil
}

// OpenICMP6 opens an ICMPv6 probe socket in the caller's namespace (DF:
// IPv6 routers never fragment, and this socket does not either).
func OpenICMP6(id uint16) (*ICMP, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		return nil, fmt.Errorf("tunnel probes: ICMPv6 socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tunnel probe socket: no fragmentation: %w", err)
	}
	// Only echo replies reach the socket (ICMP6_FILTER: block all, pass 129).
	var filter [8]uint32
	for i := range filter {
		filter[i] = 0xffffffff
	}
	filter[129>>5] &^= 1 << (129 & 31)
	if err := unix.SetsockoptString(fd, unix.IPPROTO_ICMPV6, unix.ICMPV6_FILTER, string(unsafeBytes(filter[:]))); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tunnel probe socket: filter: %w", err)
	}
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tunnel probe socket: set timeout: %w", err)
	}
	c := &ICMP{fd: fd, v6: true, id: id, waiting: map[uint16]chan struct{}{}, done: make(chan struct{})}
	go c.receive()
	return c, nil
}

// unsafeBytes returns the bytes of a filter (host order, as the kernel
// reads it).
func unsafeBytes(words []uint32) []byte {
	b := make([]byte, 4*len(words))
	for i, w := range words {
		binary.NativeEndian.PutUint32(b[4*i:], w)
	}
	return b
}

// Ping sends one echo of size bytes of ICMP payload (the packet is size+28
// bytes over IPv4, size+48 over IPv6) to dst and waits up to timeout for
// its reply.
func (c *ICMP) Ping(dst netip.Addr, size int, timeout time.Duration) (time.Duration, error) {
	if dst.Is4() == c.v6 {
		return 0, fmt.Errorf("health probe to %s: this socket sends %s", dst, map[bool]string{true: "ICMPv6", false: "ICMP over IPv4"}[c.v6])
	}
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	c.seq++
	seq := c.seq
	c.waiting[seq] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiting, seq)
		c.mu.Unlock()
	}()
	start := time.Now()
	var err error
	if c.v6 {
		req := probe.EchoRequest(c.id, seq, size)
		req[0], req[2], req[3] = 128, 0, 0 // echo request; the kernel sums ICMPv6
		err = unix.Sendto(c.fd, req, 0, &unix.SockaddrInet6{Addr: dst.As16()})
	} else {
		err = unix.Sendto(c.fd, probe.EchoRequest(c.id, seq, size), 0, &unix.SockaddrInet4{Addr: dst.As4()})
	}
	if err != nil {
		return 0, fmt.Errorf("health probe to %s (%d bytes of payload): %w", dst, size, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
		return time.Since(start), nil
	case <-t.C:
		return 0, fmt.Errorf("health probe to %s (%d bytes of payload): no reply within %s", dst, size, timeout)
	case <-c.done:
		return 0, errors.New("health probe socket closed")
	}
}

func (c *ICMP) receive() {
	probe.ReadLoop(c.fd, c.done, func(p []byte) {
		parse := echoReply
		if c.v6 {
			parse = echoReply6
		}
		seq, ok := parse(p, c.id)
		if !ok {
			return
		}
		c.mu.Lock()
		if ch, ok := c.waiting[seq]; ok {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
		c.mu.Unlock()
	})
}

// echoReply returns the sequence number of an IPv4 echo reply with our id.
func echoReply(p []byte, id uint16) (uint16, bool) {
	if len(p) < 20 || p[0]>>4 != 4 {
		return 0, false
	}
	ihl := int(p[0]&0x0f) * 4
	if len(p) < ihl+8 {
		return 0, false
	}
	icmp := p[ihl:]
	if icmp[0] != 0 || binary.BigEndian.Uint16(icmp[4:]) != id {
		return 0, false
	}
	return binary.BigEndian.Uint16(icmp[6:]), true
}

// echoReply6 returns the sequence number of an ICMPv6 echo reply with our
// id (a raw ICMPv6 socket reads no IPv6 header).
func echoReply6(p []byte, id uint16) (uint16, bool) {
	if len(p) < 8 || p[0] != 129 || binary.BigEndian.Uint16(p[4:]) != id {
		return 0, false
	}
	return binary.BigEndian.Uint16(p[6:]), true
}

// Close stops the receiver and closes the socket.
func (c *ICMP) Close() error {
	var err error
	c.closed.Do(func() {
		close(c.done)
		err = unix.Close(c.fd)
	})
	return err
}

// Namespace returns the path of the named network namespace for the
// health endpoint, making it (with lo up) when there is none. onHost says
// whether the host sees the same namespace there (see nsutil.Ensure).
func Namespace(name string) (path string, onHost bool, err error) {
	p, onHost, err := nsutil.Ensure(name)
	if err != nil {
		return "", false, fmt.Errorf("health namespace: %w", err)
	}
	h, err := nsutil.Handle(p)
	if err != nil {
		return "", false, fmt.Errorf("health namespace %s: %w", p, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil && lo.Attrs().Flags&net.FlagUp == 0 {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		return "", false, fmt.Errorf("health namespace %s: lo: %w", p, err)
	}
	return p, onHost, nil
}

// Neighbours makes the permanent IPv4 neighbour entries on ifname of the
// namespace at nsPath exactly want (address to MAC): the health endpoint
// then never ARPs for its peers. Permanent entries do not count against
// the kernel's neighbour-table limits (gc_thresh), which a host shares
// between all its namespaces; a thousand peers' dynamic entries would not
// fit in the default 1,024.
func Neighbours(nsPath, ifname string, want map[netip.Addr]net.HardwareAddr) error {
	h, err := nsutil.Handle(nsPath)
	if err != nil {
		return fmt.Errorf("health namespace %s: %w", nsPath, err)
	}
	defer h.Close()
	link, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("health namespace %s: %s: %w", nsPath, ifname, err)
	}
	have, err := h.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list neighbours of %s: %w", ifname, err)
	}
	seen := map[netip.Addr]bool{}
	for _, n := range have {
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		mac, wanted := want[a]
		if n.State == netlink.NUD_PERMANENT && wanted && bytes.Equal(n.HardwareAddr, mac) {
			seen[a] = true
			continue
		}
		if n.State == netlink.NUD_PERMANENT || wanted {
			if err := h.NeighDel(&n); err != nil {
				return fmt.Errorf("remove neighbour %s: %w", a, err)
			}
		}
	}
	for a, mac := range want {
		if seen[a] {
			continue
		}
		n := &netlink.Neigh{LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: net.IP(a.AsSlice()), HardwareAddr: mac}
		if err := h.NeighSet(n); err != nil {
			return fmt.Errorf("set neighbour %s -> %s: %w", a, mac, err)
		}
	}
	return nil
}
