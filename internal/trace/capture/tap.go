// Package capture holds the side of a trace that touches the host: taps
// (packet sockets on one interface) and the probe sent from a container's
// namespace.
package capture

import (
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/probe"
	"github.com/vxnet/vxnet/internal/trace"
)

// Tap captures the probe's frames on one interface of a namespace.
type Tap struct {
	fd    int
	l3    bool // the device shows IP packets, no Ethernet header
	probe trace.Probe
	port  uint16
	start time.Time
	mu    sync.Mutex
	seen  []trace.Seen
	done  chan struct{}
	wg    sync.WaitGroup
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// StartTap opens a packet socket on iface inside the namespace at nsPath
// ("" for the caller's) and records the probe's frames until Stop.
func StartTap(nsPath, iface string, p trace.Probe, vxlanPort uint16) (*Tap, error) {
	t := &Tap{probe: p, port: vxlanPort, done: make(chan struct{})}
	open := func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return fmt.Errorf("interface %s: %w", iface, err)
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket on %s: %w", iface, err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", iface, err)
		}
		t.fd = fd
		t.l3 = len(ifi.HardwareAddr) == 0 // a WireGuard device: IP packets, no Ethernet
		return nil
	}
	var err error
	if nsPath == "" {
		err = open()
	} else {
		err = nsutil.Do(nsPath, open)
	}
	if err != nil {
		return nil, err
	}
	tv := unix.Timeval{Usec: 50000}
	if err := unix.SetsockoptTimeval(t.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(t.fd)
		return nil, fmt.Errorf("tap timeout: %w", err)
	}
	t.start = time.Now()
	t.wg.Add(1)
	go t.loop()
	return t, nil
}

func (t *Tap) loop() {
	defer t.wg.Done()
	probe.ReadLoop(t.fd, t.done, func(frame []byte) {
		match := func() (trace.Sighting, bool) { return trace.Match(frame, t.probe, t.port) }
		if t.l3 {
			match = func() (trace.Sighting, bool) { return trace.MatchIP(frame, t.probe) }
		}
		if s, ok := match(); ok {
			t.mu.Lock()
			t.seen = append(t.seen, trace.Seen{Sighting: s, After: time.Since(t.start)})
			t.mu.Unlock()
		}
	})
}

// Stop ends the capture and returns what it saw.
func (t *Tap) Stop() []trace.Seen {
	close(t.done)
	t.wg.Wait()
	unix.Close(t.fd)
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.seen
}

// Send sends the probe's echo request (size bytes of payload, DF set) from
// inside the namespace at nsPath; the reply is left to the taps.
func Send(nsPath string, p trace.Probe, size int) error {
	pkt := probe.EchoRequest(p.ID, p.Seq, size)
	var sa unix.Sockaddr
	open, overhead := probe.ICMPSocket, 28
	if p.Dst.Is6() {
		pkt, sa, open, overhead = probe.EchoRequest6(p.ID, p.Seq, size), &unix.SockaddrInet6{Addr: p.Dst.As16()}, probe.ICMP6Socket, 48
	} else {
		sa = &unix.SockaddrInet4{Addr: p.Dst.As4()}
	}
	fd, err := open(nsPath, true)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, pkt, 0, sa); err != nil {
		return fmt.Errorf("send probe to %s (%d bytes): %w", p.Dst, size+overhead, err)
	}
	return nil
}
