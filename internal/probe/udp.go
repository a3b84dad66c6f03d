package probe

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vxnet/vxnet/internal/nsutil"
)

// ListenUDP opens a UDP socket on port inside the namespace at nsPath.
func ListenUDP(nsPath string, port int) (net.PacketConn, error) {
	return listenUDP(nsPath, "udp4", port)
}

func listenUDP(nsPath, network string, port int) (net.PacketConn, error) {
	var pc net.PacketConn
	err := nsutil.Do(nsPath, func() error {
		var err error
		pc, err = net.ListenPacket(network, fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen udp %d in %s: %w", port, nsPath, err)
	}
	return pc, nil
}

// SendUDP sends one datagram from the namespace at nsPath; broadcast
// destinations are allowed.
func SendUDP(nsPath string, dst netip.AddrPort, payload []byte) error {
	network := "udp4"
	if dst.Addr().Is6() && !dst.Addr().Is4In6() {
		network = "udp6"
	}
	pc, err := listenUDP(nsPath, network, 0)
	if err != nil {
		return err
	}
	defer pc.Close()
	raw, err := pc.(*net.UDPConn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("SO_BROADCAST: %w", serr)
	}
	if _, err := pc.WriteTo(payload, net.UDPAddrFromAddrPort(dst)); err != nil {
		return fmt.Errorf("send udp to %s: %w", dst, err)
	}
	return nil
}

// VXLANFrame builds a VXLAN payload (RFC 7348 header and an inner Ethernet
// frame) that carries one IPv4 UDP datagram: what an attacker on the
// underlay would send to inject a packet into a network.
func VXLANFrame(vni uint32, dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, dport uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+14+20+8+len(payload))
	b[0] = 0x08 // I flag: the VNI is valid
	b[4], b[5], b[6] = byte(vni>>16), byte(vni>>8), byte(vni)
	b = append(b, dstMAC...)
	b = append(b, srcMAC...)
	b = append(b, 0x08, 0x00)
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	total := 20 + 8 + len(payload)
	ip[2], ip[3] = byte(total>>8), byte(total)
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	c := Checksum(ip)
	ip[10], ip[11] = byte(c>>8), byte(c)
	b = append(b, ip...)
	udp := []byte{0x15, 0xb3, byte(dport >> 8), byte(dport), byte((8 + len(payload)) >> 8), byte(8 + len(payload)), 0, 0}
	b = append(b, udp...)
	return append(b, payload...)
}
