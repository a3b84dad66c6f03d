package probe

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/nsutil"
)

// ICMPSocket opens a raw ICMP socket inside the namespace at nsPath (the
// socket stays in that namespace); with df every packet it sends carries
// DF and is never fragmented, without it the kernel may fragment.
func ICMPSocket(nsPath string, df bool) (int, error) {
	var fd int
	err := nsutil.Do(nsPath, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("ICMP socket in %s: %w", nsPath, err)
	}
	mode := unix.IP_PMTUDISC_DONT
	if df {
		mode = unix.IP_PMTUDISC_PROBE
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, mode); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("ICMP socket in %s: set DF %v: %w", nsPath, df, err)
	}
	return fd, nil
}

// ICMP6Socket is ICMPSocket for ICMPv6: with df, a packet larger than
// the interface's MTU is refused at once (EMSGSIZE), never fragmented.
func ICMP6Socket(nsPath string, df bool) (int, error) {
	var fd int
	err := nsutil.Do(nsPath, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("ICMPv6 socket in %s: %w", nsPath, err)
	}
	if df {
		err = errors.Join(unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE),
			unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_DONTFRAG, 1))
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("ICMPv6 socket in %s: set DF: %w", nsPath, err)
	}
	return fd, nil
}

// ReadLoop reads packets from fd (which has a receive timeout, so that
// done is noticed) and hands each to handle, until done is closed or the
// socket fails (closed).
func ReadLoop(fd int, done <-chan struct{}, handle func([]byte)) {
	buf := make([]byte, 65536)
	for {
		select {
		case <-done:
			return
		default:
		}
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		handle(buf[:n])
	}
}
