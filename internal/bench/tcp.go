// Package bench measures datapaths between namespaces (TCP throughput and
// request/response latency, in Go; throughput with iperf3 when asked) and
// summarises results.
package bench

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vxnet/vxnet/internal/nsutil"
)

func listen(ns string, addr netip.AddrPort) (net.Listener, error) {
	var ln net.Listener
	err := nsutil.Do(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, ns, err)
	}
	return ln, nil
}

func dial(ns string, addr netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := nsutil.Do(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr.String(), 3*time.Second)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", addr, ns, err)
	}
	return c, nil
}

// Throughput sends TCP data with streams parallel connections from the
// client namespace to a server in the server namespace for d, and returns
// the received rate in bits per second (counted at the receiver, after a
// warm-up of d/8).
func Throughput(serverNS, clientNS string, dst netip.Addr, port, streams int, d time.Duration) (float64, error) {
	if streams < 1 {
		return 0, fmt.Errorf("streams %d: need at least 1", streams)
	}
	ln, err := listen(serverNS, netip.AddrPortFrom(dst, uint16(port)))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	var received atomic.Int64
	var wg sync.WaitGroup
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for i := 0; i < streams; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 256<<10)
				for {
					n, err := c.Read(buf)
					received.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	stop := make(chan struct{})
	var senders sync.WaitGroup
	var sendErr atomic.Value
	for i := 0; i < streams; i++ {
		c, err := dial(clientNS, netip.AddrPortFrom(dst, uint16(port)))
		if err != nil {
			close(stop)
			senders.Wait()
			return 0, err
		}
		senders.Add(1)
		go func() {
			defer senders.Done()
			defer c.Close()
			buf := make([]byte, 128<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Write(buf); err != nil {
					sendErr.Store(err)
					return
				}
			}
		}()
	}
	warm := d / 8
	time.Sleep(warm)
	start, b0 := time.Now(), received.Load()
	time.Sleep(d - warm)
	elapsed, b1 := time.Since(start), received.Load()
	close(stop)
	senders.Wait()
	mu.Lock()
	for _, c := range conns {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	if e, ok := sendErr.Load().(error); ok && !errors.Is(e, net.ErrClosed) && b1 == b0 {
		return 0, fmt.Errorf("send: %w", e)
	}
	if b1 == b0 {
		return 0, errors.New("no data received")
	}
	return float64(b1-b0) * 8 / elapsed.Seconds(), nil
}

// RequestResponse runs n one-byte TCP request/response exchanges over one
// connection (TCP_NODELAY) and returns each round trip.
func RequestResponse(serverNS, clientNS string, dst netip.Addr, port, n int) ([]time.Duration, error) {
	ln, err := listen(serverNS, netip.AddrPortFrom(dst, uint16(port)))
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c) // echo
	}()
	c, err := dial(clientNS, netip.AddrPortFrom(dst, uint16(port)))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	out := make([]time.Duration, 0, n)
	b := []byte{0}
	for i := 0; i < n; i++ {
		t := time.Now()
		if _, err := c.Write(b); err != nil {
			return out, fmt.Errorf("request %d: %w", i, err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return out, fmt.Errorf("response %d: %w", i, err)
		}
		out = append(out, time.Since(t))
	}
	return out, nil
}
