package probe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/nsutil"
)

// CaptureStats counts VXLAN traffic seen on an underlay.
type CaptureStats struct {
	VXLAN      int64 // VXLAN frames
	InnerARP   int64 // ARP frames inside VXLAN
	InnerBcast int64 // broadcast frames inside VXLAN
	// InnerIPv6 counts IPv6 frames inside VXLAN; InnerND those that are
	// Neighbour Discovery (solicitations and advertisements).
	InnerIPv6, InnerND int64
	// VNIs counts VXLAN frames per VNI; Markers counts the frames holding
	// each marker (StartCaptureMarkers), in the markers' order.
	VNIs    map[uint32]int64
	Markers []int64
	// Addrs counts the IPv4 and IPv6 frames per outer address (source
	// and destination).
	Addrs map[netip.Addr]int64
}

// Capture listens on every interface of a namespace for VXLAN frames.
type Capture struct {
	fd    int
	port  uint16
	stop  atomic.Bool
	wg    sync.WaitGroup
	stats struct{ vxlan, arp, bcast, ipv6, nd atomic.Int64 }
	// markers are the byte strings looked for in every frame.
	markers [][]byte
	mu      sync.Mutex
	vnis    map[uint32]int64
	found   []int64
	addrs   map[netip.Addr]int64
}

// StartCapture opens a packet socket in the namespace at nsPath and counts
// VXLAN frames to UDP port until Stop.
func StartCapture(nsPath string, port int) (*Capture, error) {
	return StartCaptureMarkers(nsPath, port)
}

// StartCaptureMarkers is StartCapture that also counts VXLAN frames per VNI
// and, in any frame at all, the byte strings markers.
func StartCaptureMarkers(nsPath string, port int, markers ...[]byte) (*Capture, error) {
	return StartCaptureOn(nsPath, "", port, markers...)
}

// StartCaptureOn is StartCaptureMarkers on one interface of the namespace
// (dev; empty: all).
func StartCaptureOn(nsPath, dev string, port int, markers ...[]byte) (*Capture, error) {
	c := &Capture{port: uint16(port), markers: markers, vnis: map[uint32]int64{}, found: make([]int64, len(markers)), addrs: map[netip.Addr]int64{}}
	err := nsutil.Do(nsPath, func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		c.fd = fd
		if err != nil || dev == "" {
			return err
		}
		ifi, err := net.InterfaceByName(dev)
		if err == nil {
			err = unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind to %s: %w", dev, err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture socket in %s: %w", nsPath, err)
	}
	tv := unix.Timeval{Usec: 100000}
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(c.fd)
		return nil, fmt.Errorf("capture timeout: %w", err)
	}
	c.wg.Add(1)
	go c.loop()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) loop() {
	defer c.wg.Done()
	buf := make([]byte, 65536)
	for !c.stop.Load() {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		f := buf[:n]
		vx, arp, bcast := ClassifyFrame(f, c.port)
		c.mu.Lock()
		if src, dst, _, ok := outerIP(f); ok {
			c.addrs[src]++
			c.addrs[dst]++
		}
		for i, m := range c.markers {
			if bytes.Contains(f, m) {
				c.found[i]++
			}
		}
		if vx {
			c.stats.vxlan.Add(1)
			vxh := vxlanPayload(f, c.port)
			c.vnis[binary.BigEndian.Uint32(vxh[4:8])>>8]++
			if v6, nd := innerIPv6(vxh[8:]); v6 {
				c.stats.ipv6.Add(1)
				if nd {
					c.stats.nd.Add(1)
				}
			}
		}
		c.mu.Unlock()
		if arp {
			c.stats.arp.Add(1)
		}
		if bcast {
			c.stats.bcast.Add(1)
		}
	}
}

// Stop ends the capture and returns the counts.
func (c *Capture) Stop() CaptureStats {
	c.stop.Store(true)
	c.wg.Wait()
	unix.Close(c.fd)
	return c.Stats()
}

// Stats returns the counts so far.
func (c *Capture) Stats() CaptureStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CaptureStats{VXLAN: c.stats.vxlan.Load(), InnerARP: c.stats.arp.Load(), InnerBcast: c.stats.bcast.Load(),
		InnerIPv6: c.stats.ipv6.Load(), InnerND: c.stats.nd.Load(),
		VNIs: maps.Clone(c.vnis), Markers: slices.Clone(c.found), Addrs: maps.Clone(c.addrs)}
}

// ClassifyFrame parses an Ethernet frame: is it VXLAN to port (over IPv4
// or IPv6), and does it carry an ARP frame or a broadcast frame inside.
func ClassifyFrame(f []byte, port uint16) (vxlan, innerARP, innerBcast bool) {
	vx := vxlanPayload(f, port)
	if vx == nil {
		return false, false, false
	}
	inner := vx[8:]
	bcast := true
	for _, b := range inner[:6] {
		if b != 0xff {
			bcast = false
		}
	}
	return true, binary.BigEndian.Uint16(inner[12:]) == 0x0806, bcast
}

// outerIP reads an Ethernet frame's IPv4 or IPv6 header: its addresses,
// and what follows it when that is UDP (IPv6 without extension headers).
func outerIP(f []byte) (src, dst netip.Addr, udp []byte, ok bool) {
	if len(f) < 14 {
		return src, dst, nil, false
	}
	ip := f[14:]
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0800:
		if len(ip) < 20 || ip[0]>>4 != 4 {
			return src, dst, nil, false
		}
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		if ihl := int(ip[0]&0x0f) * 4; ip[9] == unix.IPPROTO_UDP && len(ip) >= ihl {
			udp = ip[ihl:]
		}
	case 0x86dd:
		if len(ip) < 40 || ip[0]>>4 != 6 {
			return src, dst, nil, false
		}
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		if ip[6] == unix.IPPROTO_UDP {
			udp = ip[40:]
		}
	default:
		return src, dst, nil, false
	}
	return src, dst, udp, true
}

// vxlanPayload is the VXLAN header and inner frame of an Ethernet frame
// that is VXLAN to port; nil for anything else.
func vxlanPayload(f []byte, port uint16) []byte {
	_, _, udp, ok := outerIP(f)
	if !ok || len(udp) < 8+8+14 || binary.BigEndian.Uint16(udp[2:]) != port {
		return nil
	}
	return udp[8:]
}

// innerIPv6 looks at the Ethernet frame inside VXLAN: is it IPv6, and is it
// Neighbour Discovery (ICMPv6 135 or 136 right after the IPv6 header, as
// solicitations and advertisements are sent).
func innerIPv6(f []byte) (v6, nd bool) {
	if len(f) < 14+40 || binary.BigEndian.Uint16(f[12:]) != 0x86dd {
		return false, false
	}
	ip := f[14:]
	if ip[6] != unix.IPPROTO_ICMPV6 || len(ip) < 41 {
		return true, false
	}
	return true, ip[40] == 135 || ip[40] == 136
}
