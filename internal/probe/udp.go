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
	var pc net.PacketConn
	err := nsutil.Do(nsPath, func() error {
		var err error
		pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
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
	pc, err := ListenUDP(nsPath, 0)
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
