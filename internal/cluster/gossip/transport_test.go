package gossip

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/testutil"
)

// TestShutdownUnderLoad: a member whose gossip port keeps receiving
// packets shuts down at once. (memberlist's listener hands every packet
// over before it can stop; the path transport, which sorts them, keeps
// taking them until the sockets are closed. Before, a packet that came
// after the sorting stopped held Shutdown, and the agent, forever.) Real
// sockets, on the loopback of a namespace of the test's own.
func TestShutdownUnderLoad(t *testing.T) {
	_, ns := testutil.Netns(t)
	h, err := nsutil.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	loop := netip.MustParseAddr("127.0.0.1")
	for round := range 5 {
		var g *Gossip
		var flood *net.UDPConn
		err := nsutil.Do(ns, func() error {
			var err error
			if g, err = Start(Config{Name: "h1", Addr: loop, Port: 17947, Insecure: true}, cluster.NewState("h1")); err != nil {
				return err
			}
			flood, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(loop, 17947)))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
					_, _ = flood.Write([]byte{0x07, 1, 2, 3}) // not a path probe: for memberlist
				}
			}
		}()
		time.Sleep(50 * time.Millisecond) // packets in flight, not an assertion
		done := make(chan error, 1)
		go func() { done <- g.Shutdown() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Shutdown under a stream of packets has not returned after 10 s", round)
		}
		close(stop)
		flood.Close()
	}
}
