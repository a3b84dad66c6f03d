package lab

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setGRO turns generic receive offload on for dev in the calling thread's
// namespace (the ETHTOOL_SGRO request of SIOCETHTOOL).
func setGRO(dev string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for ethtool: %w", err)
	}
	defer unix.Close(fd)
	const ethtoolSGRO = 0x0000002c
	val := struct{ cmd, data uint32 }{ethtoolSGRO, 1}
	// struct ifreq: the name, then (in its 24-byte union) a pointer to
	// the request.
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [16]byte
	}
	copy(ifr.name[:unix.IFNAMSIZ-1], dev)
	ifr.data = unsafe.Pointer(&val)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(&val)
	if errno != 0 {
		return fmt.Errorf("turn GRO on for %s: %w", dev, errno)
	}
	return nil
}
