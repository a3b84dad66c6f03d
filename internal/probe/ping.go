// Package probe sends test traffic from inside a network namespace (ICMP
// echo with an exact size and the DF bit) and captures VXLAN frames on an
// underlay, without external tools.
package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// PingResult is the outcome of one echo.
type PingResult struct {
	RTT time.Duration
	// TooBig is set when the kernel refused the size locally (EMSGSIZE) or a
	// router answered "fragmentation needed".
	TooBig bool
}

var pingID atomic.Uint32

// Ping sends one ICMP echo request from the namespace at nsPath to dst with
// size bytes of ICMP payload (the IPv4 packet is size+28 bytes, the IPv6
// packet size+48). With df the packet may not be fragmented. It returns an
// error when no reply came.
func Ping(nsPath string, dst netip.Addr, size int, df bool, timeout time.Duration) (PingResult, error) {
	var (
		fd  int
		err error
		sa  unix.Sockaddr
	)
	id := uint16(os.Getpid()) ^ uint16(pingID.Add(1)*7919)
	const seq = 1
	pkt := EchoRequest(id, seq, size)
	classify := func(p []byte, _ unix.Sockaddr) replyKind { return classifyReply(p, dst, id, seq) }
	if dst.Is6() && !dst.Is4In6() {
		fd, err = ICMP6Socket(nsPath, df)
		sa, pkt = &unix.SockaddrInet6{Addr: dst.As16()}, EchoRequest6(id, seq, size)
		classify = func(p []byte, from unix.Sockaddr) replyKind { return classifyReply6(p, from, dst, id, seq) }
	} else {
		fd, err = ICMPSocket(nsPath, df)
		sa = &unix.SockaddrInet4{Addr: dst.Unmap().As4()}
	}
	if err != nil {
		return PingResult{}, fmt.Errorf("ping %s: %w", dst, err)
	}
	defer unix.Close(fd)
	start := time.Now()
	if err := unix.Sendto(fd, pkt, 0, sa); err != nil {
		if errors.Is(err, unix.EMSGSIZE) {
			return PingResult{TooBig: true}, fmt.Errorf("ping %s size %d: packet larger than the path MTU: %w", dst, size, err)
		}
		return PingResult{}, fmt.Errorf("ping %s: send: %w", dst, err)
	}
	buf := make([]byte, 65536)
	deadline := start.Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return PingResult{}, fmt.Errorf("ping %s size %d: no reply within %s", dst, size, timeout)
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return PingResult{}, fmt.Errorf("set timeout: %w", err)
		}
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return PingResult{}, fmt.Errorf("ping %s: receive: %w", dst, err)
		}
		kind := classify(buf[:n], from)
		switch kind {
		case replyOK:
			return PingResult{RTT: time.Since(start)}, nil
		case replyTooBig:
			return PingResult{TooBig: true}, fmt.Errorf("ping %s size %d: fragmentation needed", dst, size)
		}
	}
}

// EchoRequest builds an ICMP echo request with size payload bytes.
func EchoRequest(id, seq uint16, size int) []byte {
	b := make([]byte, 8+size)
	b[0] = 8 // echo request
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	for i := 8; i < len(b); i++ {
		b[i] = byte(i)
	}
	binary.BigEndian.PutUint16(b[2:], Checksum(b))
	return b
}

// EchoRequest6 builds an ICMPv6 echo request with size payload bytes; the
// kernel fills in its checksum (it covers the IPv6 pseudo-header).
func EchoRequest6(id, seq uint16, size int) []byte {
	b := EchoRequest(id, seq, size)
	b[0], b[2], b[3] = 128, 0, 0
	return b
}

// Checksum is the Internet checksum (RFC 1071).
func Checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

type replyKind int

const (
	replyOther replyKind = iota
	replyOK
	replyTooBig
)

// classifyReply looks at one raw IPv4 packet received on the ICMP socket.
func classifyReply(p []byte, dst netip.Addr, id, seq uint16) replyKind {
	if len(p) < 20 || p[0]>>4 != 4 {
		return replyOther
	}
	ihl := int(p[0]&0x0f) * 4
	if len(p) < ihl+8 {
		return replyOther
	}
	src, _ := netip.AddrFromSlice(p[12:16])
	icmp := p[ihl:]
	switch {
	case icmp[0] == 0 && src == dst && binary.BigEndian.Uint16(icmp[4:]) == id && binary.BigEndian.Uint16(icmp[6:]) == seq:
		return replyOK
	case icmp[0] == 3 && icmp[1] == 4 && len(icmp) >= 8+20+8:
		inner := icmp[8:]
		iihl := int(inner[0]&0x0f) * 4
		if len(inner) >= iihl+8 && binary.BigEndian.Uint16(inner[iihl+4:]) == id {
			return replyTooBig
		}
	}
	return replyOther
}

// classifyReply6 looks at one ICMPv6 message (no IPv6 header: a raw ICMPv6
// socket reads none) received from from.
func classifyReply6(p []byte, from unix.Sockaddr, dst netip.Addr, id, seq uint16) replyKind {
	if len(p) < 8 {
		return replyOther
	}
	src := netip.Addr{}
	if sa, ok := from.(*unix.SockaddrInet6); ok {
		src = netip.AddrFrom16(sa.Addr)
	}
	switch {
	case p[0] == 129 && src == dst && binary.BigEndian.Uint16(p[4:]) == id && binary.BigEndian.Uint16(p[6:]) == seq:
		return replyOK
	case p[0] == 2 && len(p) >= 8+40+8: // packet too big: our request inside
		inner := p[8+40:]
		if inner[0] == 128 && binary.BigEndian.Uint16(inner[4:]) == id {
			return replyTooBig
		}
	}
	return replyOther
}
